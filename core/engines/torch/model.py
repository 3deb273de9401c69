"""One loaded artifact, seen by both engines: the torch network (gradients) and ONNX Runtime."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ...errors import UserError
from ...io.cache import model_hash
from ...io.files import load_unchanged
from ...io.paths import model_file
from ...network.forward import FeatureEngine
from .features import TorchFeatures
from .vggnet import VGGFeatures, load_torch_model


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when torch sees a GPU, else CPU; 'cuda' without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise UserError(f"--device cuda was asked for, but torch ({torch.__version__}, {build}) "
                        "sees no GPU; use --device cpu or install a CUDA build of torch.")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not {name!r}.")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it emulates
    it, far slower than float32. Honours ONEDNN_MAX_CPU_ISA (how tests take an AVX2 CPU's path).
    A torch built without oneDNN (macOS on Apple Silicon) lacks the op: no fast bf16 there."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The convolution dtype: bf16 where the hardware runs it fast (AMX/AVX512-BF16, CUDA)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on a CPU.")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@dataclass
class StyleModel:
    """The artifact at `path`: `net` for gradients on `device`, `engine` for forward passes."""

    path: Path
    net: VGGFeatures
    engine: FeatureEngine | TorchFeatures
    device: torch.device
    # The network per convolution dtype other than float32 (`net_in`), made on first use.
    _nets: dict[torch.dtype, VGGFeatures] = field(default_factory=dict, repr=False, compare=False)

    @property
    def info(self):
        return self.net.info

    @property
    def weights_source(self) -> str:
        return self.net.info.weights_source

    def net_in(self, dtype: torch.dtype) -> VGGFeatures:
        """The network with its weights stored in `dtype` (made once per dtype).

        A bf16/fp16 copy of the weights, not autocast: autocast re-casts all 20 M weights at every
        evaluation, whatever the image size.
        """
        if dtype == torch.float32:
            return self.net
        if dtype not in self._nets:
            net = copy.deepcopy(self.net)
            net.convs.to(dtype=dtype, memory_format=torch.channels_last)
            self._nets[dtype] = net
        return self._nets[dtype]


@lru_cache(maxsize=4)
def _load(path: Path, device_type: str, file_stamp) -> StyleModel:
    """`file_stamp` keys the cache only: a file replaced since (a new export) is loaded anew."""
    device = torch.device(device_type)

    def load() -> StyleModel:
        net = load_torch_model(path).to(device)
        if device.type == "cuda":  # forward passes on the GPU too (features.py)
            engine = TorchFeatures(path, net, device, sha256=model_hash(path))
        else:
            engine = FeatureEngine(path, device=device_type, info=net.info, sha256=model_hash(path))
        return StyleModel(path, net, engine, device)
    # An export may replace the file meanwhile: the network, ONNX Runtime's session and the hash
    # that keys the target cache must all be the same file's (else a mixed run, a poisoned cache).
    return load_unchanged(path, load)


def load_model(path: str | Path | None = None, device: str = "auto") -> StyleModel:
    """Load (once per process and file) the artifact at `path`, default: $STYLEFU_MODEL or the
    cache's. Bounds oneDNN's primitive cache in this process unless the user chose a capacity
    (tiling.primitive_cache_env): a script's runs of new image shapes then grow it no more than
    the `stylefu` command's. oneDNN reads it at its first use, so a script that convolved first
    keeps oneDNN's default."""
    from ...io.files import stamp
    from ...method.tiling import primitive_cache_env

    os.environ.update(primitive_cache_env())

    file = model_file(path)
    return _load(file, resolve_device(device).type, stamp(file))
