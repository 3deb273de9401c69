"""Compiled loss-and-gradient evaluations: torch.compile (inductor) where it pays, eager elsewhere.

About 40 % of an eager bf16 evaluation is memory-bound elementwise work between the convolutions
(ReLU and its backward, adds, multiplies, fills); inductor fuses it into a few loops around the
oneDNN convolutions and matmuls. One compiled graph serves every size (dynamic shapes), so the
coarse-to-fine levels, the styles of a preview and later runs in the same process reuse it; the
compiled code is kept on disk in stylefu's cache folder, so a new process loads it in seconds
instead of compiling again (tens of seconds).

Compiling is an optimisation, never a requirement: without a C++ compiler (typical for GIMP
users on Windows and macOS), with a torch too old, or on any failure of the compiler, the run
continues uncompiled after ONE line saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ... import notes
from ...io.paths import cache_dir
from ...method.config import COMPILE_MODES  # noqa: F401  (re-exported: the modes this module decides)

MIN_TORCH = (2, 4)  # dynamic shapes through custom autograd Functions (our Gram) work from 2.4 on
# `auto` compiles a run whose planned work (pixels x evaluations, summed over its levels) is at
# least this: there the time saved exceeds loading the compiled code from a warm cache. With AMX
# compiled evaluations pay back from about `normal` at 512 px (31 M); `draft` at 256 px (2 M)
# does not (figures: docs/speed.md, "Compiling").
COMPILE_MIN_WORK = 16e6
# Without AMX a compiled bf16 evaluation saves little and the warm load is long: only runs like
# `best` at 512 px (144 M) compile. Re-tune from bench_speed's normal_512 against its eager run.
COMPILE_MIN_WORK_NO_AMX = 100e6
# `auto` leaves levels below this many pixels eager: there the compiled code won nothing; the
# one compiled graph serves the others.
COMPILE_MIN_PIXELS = 192 * 192
# On CUDA `auto` never compiles: the compiled loss ran about 10x slower than eager on an H200
# (docs/speed.md, "GPU"); `--compile on` still asks for it.
AUTO_COMPILES_ON_CUDA = False
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# What compiling adds to a run's start-up before this machine has measured it (run/eta.py keeps
# the measured seconds, cold and warm apart): from an empty compile cache (30-70 s with AMX; 44 s
# on the float32 path, docs/speed.md "Compiling") and loading the code from a filled one (3 s
# with AMX).
COLD_COMPILE_SECONDS = 45.0
WARM_COMPILE_SECONDS = 3.0

_state = {"problem": None, "compiles": 0, "told": False, "seconds": 0.0}
_lock = threading.Lock()


def inductor_cache() -> Path:
    """Inductor's on-disk cache: stylefu's cache folder (one per torch version), unless the user
    chose one with $TORCHINDUCTOR_CACHE_DIR."""
    chosen = os.environ.get(CACHE_ENV)
    # Importing torch._dynamo sets the variable to torch's /tmp default: that is not a choice.
    if chosen and chosen != _torch_default_cache():
        return Path(chosen)
    return cache_dir() / f"inductor-{torch.__version__.split('+')[0]}"


def usable_cache_variable() -> None:
    """Drop a $TORCHINDUCTOR_CACHE_DIR that cannot be created (e.g. another user's folder, inherited):
    importing torch._dynamo, which torch.optim does, creates it and would fail the run, where a
    cache may only cost speed. torch then takes its per-user default."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        try:
            os.makedirs(chosen, exist_ok=True)
        except OSError:
            del os.environ[CACHE_ENV]


def _torch_default_cache() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        return os.path.abspath(default_cache_dir())
    except Exception:  # a private torch function: absent means no default to tell apart
        return None


def compile_problem(device: torch.device) -> str | None:
    """Why compiling cannot work here, in a few words, or None when it can be tried."""
    usable_cache_variable()  # before importing torch._dynamo below
    if _state["problem"]:
        return _state["problem"]
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCH:
        return f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}"
    try:
        from torch._dynamo import is_dynamo_supported
        if not is_dynamo_supported():
            return "torch.compile does not support this Python"
        if device.type == "cuda":
            import importlib.util
            if importlib.util.find_spec("triton") is None:
                return "triton is not installed"
        else:
            if sys.platform == "darwin" and subprocess.run(
                    ["xcode-select", "-p"], capture_output=True).returncode != 0:
                # Without the command line tools, running /usr/bin/g++ opens an install dialog.
                return "no C++ compiler was found"
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
    except Exception as exc:  # InvalidCxxCompiler and whatever an odd install raises
        return "no C++ compiler was found" if "Cxx" in type(exc).__name__ else _why(exc)
    return None


def whole_image_levels(plan) -> list[tuple[tuple[int, int], int]]:
    """[((h, w), evaluations)] of a plan's (run/pipeline.py's Levels) untiled levels: the ones
    whose work decides compiling (tiled levels stay eager)."""
    return [(lv.size, lv.evaluations) for lv in plan if not lv.crop_side]


def planned_work(levels: Sequence[tuple[tuple[int, int], int]]) -> float:
    """Pixels x evaluations of a run's levels [((h, w), evaluations), ...] that `auto` compiles."""
    return float(sum(h * w * n for (h, w), n in levels if level_compiled("auto", (h, w))))


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, where compiled bf16 evaluations pay most."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # a private torch function: absent or failing means "no"
        return False


def min_work(dtype: torch.dtype) -> float:
    """The planned work from which `auto` compiles a CPU run evaluating in `dtype`. A float32
    evaluation (an AVX2-only laptop's path) compiled takes about a quarter less time, so there
    `normal` at 512 px pays back as with AMX; `draft` and `normal` at 256 px do not."""
    fast = cpu_has_amx() or dtype == torch.float32
    return COMPILE_MIN_WORK if fast else COMPILE_MIN_WORK_NO_AMX


def level_compiled(mode: str, size: tuple[int, int]) -> bool:
    """Whether a level of a compiling run uses the compiled code: `on` everywhere, `auto` at
    COMPILE_MIN_PIXELS and up."""
    return mode == "on" or size[0] * size[1] >= COMPILE_MIN_PIXELS


def level_runs_compiled(compiling: bool, mode: str, level) -> bool:
    """Whether a planned level (run/pipeline.py's Level) evaluates compiled in a run whose
    decision is `compiling`: the whole-image levels `level_compiled` admits (tiles stay eager)."""
    return compiling and not level.crop_side and level_compiled(mode, level.size)


def wants_compile(mode: str, device: torch.device, dtype: torch.dtype,
                  levels: Sequence[tuple[tuple[int, int], int]]) -> bool:
    """Whether the configuration asks a run to compile: `on` always, `off` never, `auto` when
    the planned work pays for the compiled code (`min_work`: more for bf16 without AMX). No side
    effects (no compiler looked for, nothing logged): estimates ask it too (run/eta.py)."""
    if mode == "off" or not levels:
        return False
    return mode != "auto" or (planned_work(levels) >= min_work(dtype) and
                              (device.type != "cuda" or AUTO_COMPILES_ON_CUDA))


def should_compile(mode: str, device: torch.device, dtype: torch.dtype,
                   levels: Sequence[tuple[tuple[int, int], int]],
                   log: Callable[[str], None] | None = None) -> bool:
    """Whether a run compiles its evaluations: where the configuration asks it (`wants_compile`)
    and compiling can work here.

    Decided from the configuration only, never from timings or the cache's state, so the same
    inputs give the same bytes on a machine. Where compiling cannot work, `log` gets one line.
    """
    if not wants_compile(mode, device, dtype, levels):
        return False
    problem = compile_problem(device)
    if problem:
        line = f"the loss runs uncompiled ({problem})."  # asked for: to act on; `auto`: as it may
        _tell(notes.act(line) if mode == "on" else line, log)
        return False
    if cache_is_cold():
        _tell(f"compiling the loss for this machine: once, about half a minute; later runs "
              f"load it from {inductor_cache()}.", log)
    return True


def cache_is_cold() -> bool:
    """Whether a run compiling now starts from an empty compile cache (compiles from scratch)
    rather than loading the code earlier runs left there. No side effects: estimates ask it."""
    return not _has_entries(inductor_cache())


def _has_entries(folder: Path) -> bool:
    """Whether `folder` holds anything; False where it cannot be read (then it only costs speed)."""
    try:
        return any(folder.iterdir())
    except OSError:
        return False


def failure() -> str | None:
    """Why this process stopped compiling (a compiler failure), or None."""
    return _state["problem"]


class Evaluation:
    """`fn(image) -> (total, parts)` as an optimiser's loss, compiled or eager.

    `__call__(x)` returns (total, parts, backward); `backward(factor)` adds factor * d(total)/dx
    to `x.grad` (`factor`: the optimiser's loss scaling, applied before the backward pass so that
    low-precision gradients stay clear of underflow). A compiler failure at any point (the first
    compile, the backward's, a new shape) switches this process to eager for good after one line
    saying why, and the evaluation that failed is redone eagerly: a fallback never fails a run.
    """

    def __init__(self, fn: Callable, compiled: bool, log: Callable[[str], None] | None = None):
        self.fn, self.log = fn, log
        self.compiled = compiled and not _state["problem"]
        self._compiled_fn = _compile(fn) if self.compiled else None

    def __call__(self, x: torch.Tensor):
        if self.compiled and not _state["problem"]:
            try:
                total, parts = _timed(self._compiled_fn, x)
                return total, parts, self._compiled_backward(x, total)
            except Exception as exc:
                self._failed(exc)
        self.compiled = False
        total, parts = self.fn(x)
        return total, parts, lambda factor: (total * factor).backward()

    def _compiled_backward(self, x: torch.Tensor, total: torch.Tensor) -> Callable[[float], None]:
        def backward(factor: float) -> None:
            try:
                _timed(lambda: (total * factor).backward())
            except Exception as exc:
                self._failed(exc)
                x.grad = None
                again, _ = self.fn(x)
                (again * factor).backward()
        return backward

    def _failed(self, exc: Exception) -> None:
        if _out_of_memory(exc):
            raise exc
        self.compiled = False
        _state["problem"] = f"compiling failed: {_why(exc)}"
        _remove_own_temporaries(inductor_cache())
        _tell(notes.act(f"the loss runs uncompiled ({_state['problem']})."), self.log)  # unforeseen


def _remove_own_temporaries(folder: Path) -> None:
    """Inductor's files this process left half-written (`.PID.THREAD.tmp`, when a write failed on
    a full disk or quota): a failed compile leaves nothing in the compile cache."""
    with contextlib.suppress(OSError):
        for path in folder.rglob(f".{os.getpid()}.*.tmp"):
            with contextlib.suppress(OSError):
                path.unlink()


def _timed(fn: Callable, *args):
    """fn(*args), its wall time added to `compile_seconds` when it compiled (or loaded) a graph."""
    count, started = _state["compiles"], time.perf_counter()
    out = fn(*args)
    if _state["compiles"] > count:
        _state["seconds"] += time.perf_counter() - started
    return out


def compile_count() -> int:
    """Graphs compiled (or loaded from the cache) by this process: a recompile shows up here."""
    return _state["compiles"]


def compile_seconds() -> float:
    """Wall time of this process's evaluations that compiled (or loaded compiled code)."""
    return _state["seconds"]


def _backend(gm, example_inputs):
    """Inductor, counting graphs. One function for the whole process: dynamo keeps compiled code
    per backend, and a new backend object would compile every objective again."""
    from torch._inductor.compile_fx import compile_fx

    with _lock:
        _state["compiles"] += 1
    return compile_fx(gm, example_inputs)


def _compile(fn: Callable) -> Callable:
    os.environ[CACHE_ENV] = str(inductor_cache())  # not setdefault: torch set its default already
    usable_cache_variable()
    # Dynamic from the first call: a second size would otherwise compile once more.
    return torch.compile(fn, backend=_backend, dynamic=True)


def _tell(line: str, log: Callable[[str], None] | None) -> None:
    if not _state["told"]:
        _state["told"] = True
        (log or notes.to_logger)(line)


def _why(exc: BaseException) -> str:
    """The root cause's type and first line (dynamo wraps a compiler's error in its own)."""
    while getattr(exc, "inner_exception", None) or exc.__cause__:
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text
