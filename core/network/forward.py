"""ONNX Runtime feature engine: forward passes of the artifact, without gradients.

Used for everything that needs no gradient: style and content targets, metrics, previews and
the exporter's verification. Providers: CUDA when it truly loads, else CPU, without ONNX
Runtime's own error spam on machines that have no GPU. The provider in use is `engine.provider`.
"""

from __future__ import annotations

import functools
import os
import struct
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import artifact_meta
from .artifact_meta import MAKE_MODEL
from .vgg import EXPORTED_LAYERS, MIN_SIDE, ArtifactInfo, read_artifact

THREADS_ENV = "STYLEFU_THREADS"
# Past this many threads one VGG forward pass gains little (thread start-up and memory bandwidth
# dominate the small deep layers), and a 64-core box is usually shared: leave the rest to others.
MAX_THREADS = 16


def session_source(path: str | Path) -> str | bytes:
    """What ONNX Runtime is given to open `path`: the path, or the file's bytes where the name is
    not valid UTF-8 (ORT takes only UTF-8 paths; a POSIX file name may be any bytes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return Path(path).read_bytes()
    return str(path)


def usable_cores(cpu_folder: str = "/sys/devices/system/cpu") -> int:
    """Physical cores this process may run on (affinity-aware on Linux): the right thread count
    for ORT and torch. Two hyperthreads share one core's FMA units, so convolutions gain nothing
    from the second (ONNX Runtime's and torch's own defaults count physical cores too)."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        known = (_mac_cores() if sys.platform == "darwin" else
                 _windows_cores() if sys.platform == "win32" else 0)
        return known or _logical_cpus()
    cores = set()
    for cpu in cpus:
        try:  # the CPUs sharing this one's core, e.g. "0,4" or "0-1"
            with open(f"{cpu_folder}/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:  # no topology (some containers): each CPU counts
            cores.add(str(cpu))
    return max(1, len(cores))


def _logical_cpus() -> int:
    return max(1, os.cpu_count() or 1)


def _mac_cores(sysctl=None) -> int:
    """Apple Silicon's performance cores (an efficiency core does a third of one's work, and an
    even split of a convolution waits for the slowest thread), else an Intel Mac's physical
    cores; 0 when unknown. `sysctl(name) -> int | None` stands in for sysctlbyname in tests."""
    sysctl = sysctl or _sysctl_int
    for name in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
        value = sysctl(name)
        if value:
            return value
    return 0


def _sysctl_int(name: str) -> int | None:
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        value, size = ctypes.c_int(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
        if libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
            return None
        return value.value
    except (OSError, AttributeError):
        return None


RELATION_PROCESSOR_CORE = 0  # LOGICAL_PROCESSOR_RELATIONSHIP


def _windows_cores() -> int:
    """Windows' physical cores (GetLogicalProcessorInformationEx); 0 when unknown."""
    import ctypes
    from ctypes import wintypes
    try:
        kernel32 = ctypes.WinDLL("kernel32")
        size = wintypes.DWORD(0)
        kernel32.GetLogicalProcessorInformationEx(RELATION_PROCESSOR_CORE, None, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        if not size.value or not kernel32.GetLogicalProcessorInformationEx(
                RELATION_PROCESSOR_CORE, buffer, ctypes.byref(size)):
            return 0
        return count_core_records(buffer.raw[:size.value])
    except (OSError, AttributeError):
        return 0


def count_core_records(records: bytes) -> int:
    """Processor-core records in a SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX list: each starts with
    its Relationship and its Size in bytes (two little-endian DWORDs)."""
    count = offset = 0
    while offset + 8 <= len(records):
        relationship, size = struct.unpack_from("<II", records, offset)
        if size < 8:  # malformed: stop rather than loop
            break
        count += relationship == RELATION_PROCESSOR_CORE
        offset += size
    return count


def engine_threads(cores: int | None = None) -> int:
    """Intra-op threads for ONNX Runtime: $STYLEFU_THREADS, else one per usable core up to 16.

    Never more than the cores (4 threads on 2 cores made passes 2.6x slower here); 2 cores -> 2,
    64 cores -> 16.
    """
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted:
        try:
            if int(wanted) >= 1:
                return int(wanted)
        except ValueError:
            pass
        raise UserError(f"${THREADS_ENV} must be a positive whole number, not {wanted!r}.")
    return max(1, min(cores or usable_cores(), MAX_THREADS))


def cuda_is_usable() -> bool:
    """True when a CUDA device is really there (asking torch avoids ORT's probe noise)."""
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def run_options(release: bool):
    """ORT's run options: `release` gives the CPU arena's free regions back when the run ends
    (ONNX Runtime otherwise keeps a session's peak, hundreds of MB, for the session's life);
    not on every evaluation of a level, where allocating them again cost 10 % (docs/speed.md,
    "Memory over many runs")."""
    return _release_options() if release else None


@functools.cache
def _release_options():
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def checked_batch(batch: np.ndarray, layers) -> np.ndarray:
    """A forward pass's input as contiguous float32 [N,3,H,W], after the checks every engine makes
    (shape, the smallest side, known layers)."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected an [N,3,H,W] batch, got shape {batch.shape}")
    if min(batch.shape[2:]) < MIN_SIDE:
        raise UserError(f"Images must be at least {MIN_SIDE} px on each side, "
                        f"not {batch.shape[3]}x{batch.shape[2]}.")
    unknown = [n for n in layers if n not in EXPORTED_LAYERS]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the artifact has {EXPORTED_LAYERS}")
    return batch


class FeatureEngine:
    """An ONNX Runtime session over a stylefu artifact. `features(batch)` -> {layer: array}.

    `provider` names the execution provider that runs the graph ("CUDAExecutionProvider" or
    "CPUExecutionProvider"), `threads` the CPU threads, and `calls` counts forward passes (the
    tests use it to prove that the target cache saves work).
    """

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int | None = None,
                 info: ArtifactInfo | None = None, sha256: str | None = None):
        import onnxruntime as ort

        self.path = Path(model_path)
        if info is None and not self.path.is_file():
            read_artifact(self.path)  # its one-sentence UserError
        ort.set_default_logger_severity(3)  # errors only: no warnings about unused providers
        options = ort.SessionOptions()
        # ORT_ENABLE_ALL: the full graph fusions, the fastest level for these convolutions.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = threads or engine_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle ORT threads must not spin: torch's optimiser runs right after each target pass on
        # the same cores, and spinning workers would steal its CPU time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        want_cuda = device == "cuda" or (device == "auto" and cuda_is_usable())
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
            # Its libraries failing to load (no GPU, no cuDNN) is a coloured log line: the
            # provider actually used says it (`provider`), in our own words.
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(session_source(self.path), options,
                                                providers=providers)
        except Exception as exc:  # e.g. the CUDA provider's libraries do not load
            if info is None:
                read_artifact(self.path)  # not an ONNX file: its one-sentence UserError
            if len(providers) == 1:
                raise UserError(f"ONNX Runtime cannot open {self.path} ({exc.__class__.__name__}); "
                                f"re-create it with {MAKE_MODEL}.") from None
            self.session = ort.InferenceSession(session_source(self.path), options,
                                                providers=["CPUExecutionProvider"])
        finally:
            ort.set_default_logger_severity(3)
        # The metadata from the session, not from parsing the file's 52 MB with onnx a second
        # time (0.3-0.5 s of start-up); a caller that has read the file passes `info`.
        self.info = info or artifact_meta.decode(
            self.session.get_modelmeta().custom_metadata_map, self.path)
        # ORT silently drops a provider that fails to load: report what it really uses.
        self.provider = self.session.get_providers()[0]
        self.calls = 0
        # The sha256 of the file this session was made from, given by the model loaders: the
        # target cache's key (hashing `path` later may hash a file an export put there since).
        self.sha256 = sha256

    @property
    def uses_gpu(self) -> bool:
        return self.provider != "CPUExecutionProvider"

    def describe(self) -> str:
        """One line for logs: provider and threads."""
        if self.uses_gpu:
            return f"ONNX Runtime on {self.provider}"
        return f"ONNX Runtime on {self.provider} with {self.threads} thread(s)"

    def features(self, batch: np.ndarray, layers=EXPORTED_LAYERS,
                 release: bool = True) -> dict[str, np.ndarray]:
        """Activations for a float32 [N,3,H,W] RGB 0..1 batch (any N, H, W >= 16).

        Returns {layer: [N,C,h,w] float32}. One call is one forward pass of the whole batch.
        `release`: give ORT's arena back afterwards (`run_options`); False for the passes of
        every evaluation.
        """
        batch = checked_batch(batch, layers)
        self.calls += 1
        outputs = self.session.run(list(layers), {"image": batch}, run_options(release))
        return dict(zip(layers, outputs))

    def image_features(self, image: np.ndarray, layers=EXPORTED_LAYERS) -> dict[str, np.ndarray]:
        """Activations of one [H,W,3] image: {layer: [1,C,h,w]}."""
        return self.features(np.asarray(image, np.float32).transpose(2, 0, 1)[None], layers)
