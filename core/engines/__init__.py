"""The two engines that minimise a level's loss: `torch/` (autograd, bf16 where fast, tiles,
compiling) and `onnx/` (the torch-free engine: the gradient as an ONNX graph, L-BFGS in numpy).
Each offers a runner (the pipeline in run/pipeline.py asks it for a level's targets, the
minimised pixels and the final figures); `steps.py` holds the loop rules both share.

This module chooses the engine. `auto` takes torch wherever it is installed: it measured as fast
or faster on every CPU class and GPU tried (bf16, GPUs; docs/torch-free-engine.md, "Which engine
`--engine auto` picks"); without torch, the torch-free engine.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def torch_installed() -> bool:
    """True when torch can be imported here (asked without importing it: 1-2 s saved)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block (threads started in it take that
    count at their first operation), then as they were; nothing where torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def why_auto() -> str:
    """Why `--engine auto` takes the engine it takes here (for `stylefu info`)."""
    if torch_installed():
        return ("torch is installed: as fast or faster than the torch-free engine on every CPU "
                "class and GPU measured (bf16 where the CPU has it, the GPU where there is one)")
    return "torch is not installed: the torch-free engine (ONNX Runtime and numpy)"


def auto_precision() -> str:
    """What `--precision auto` computes in here, per device, and why (for `stylefu info`): where
    a laptop's runs are slow, this line says whether bf16 is there to be had."""
    if not torch_installed():
        return "auto is fp32 (the torch-free engine computes in float32)"
    import torch

    from .torch.model import resolve_precision

    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    cpu = names[resolve_precision("auto", torch.device("cpu"))]
    cpu += (" on cpu (it runs bf16 natively: AVX512-BF16 or AMX)" if cpu == "bf16" else
            " on cpu (no AVX512-BF16 or AMX: bf16 would be emulated, about 20x slower)")
    gpus = [f"{names[resolve_precision('auto', torch.device('cuda', i))]} on cuda:{i}"
            for i in range(torch.cuda.device_count())]
    return "auto is " + "; ".join([cpu, *gpus])


def model_kind(model) -> str | None:
    """'torch' or 'onnx' for a model `load_model` gave, None for a path (str, bytes or a path
    object) or None (the default model): what the API's `model=` takes. Anything else is one
    UserError (an int was a TypeError from inside pathlib)."""
    import os

    from .onnx.engine import OnnxModel

    if model is None or isinstance(model, (str, bytes, os.PathLike)):
        return None
    if isinstance(model, OnnxModel):
        return "onnx"
    if hasattr(model, "net"):
        return "torch"
    from ..errors import UserError

    raise UserError(f"model must be a path or a model from load_model, not {type(model).__name__}.")


def resolve_engine(name: str, model=None) -> str:
    """'torch' or 'onnx' for Config.engine; a loaded model decides by its kind."""
    kind = model_kind(model)
    if name == "auto":
        return kind or ("torch" if torch_installed() else "onnx")
    if name == "torch" and not torch_installed():
        from ..errors import UserError

        raise UserError("--engine torch needs PyTorch, which is not installed here; use "
                        "--engine onnx (or auto) or install stylefu's full requirements.")
    if kind and kind != name:
        from ..errors import UserError

        raise UserError(f"The model given was loaded for the {kind} engine, not {name}.")
    return name


def load_engine_model(path, config):
    """The model for config.engine: torch's StyleModel, or the torch-free engine's OnnxModel
    (which never imports torch). A model already loaded (`model_kind`) is itself."""
    if model_kind(path):
        resolve_engine(config.engine, path)  # one of the other engine is refused
        return path
    if resolve_engine(config.engine) == "onnx":
        from .onnx.engine import load_onnx_model

        return load_onnx_model(path, config.device)
    from .torch.model import load_model

    return load_model(path, config.device)


def device_type(config) -> str:
    """'cpu' or 'cuda': where config.engine runs on config.device, `auto` resolved as a load of
    the model would resolve it (a `cuda` without a GPU refused as it would be)."""
    engine = resolve_engine(config.engine)  # `torch` where it is not installed: refused
    if config.device == "cpu" or engine == "onnx":  # without importing torch
        return "cuda" if config.device == "cuda" else "cpu"
    from .torch.model import resolve_device

    return resolve_device(config.device).type


def load_driver_model(path, config, frames: bool, in_ray: bool):
    """(model, device type) for a batch's driver. Where workers (processes, Ray tasks) run the
    items, each loads the model for its engine and device, and the driver only checks the file
    and computes the style targets (ONNX Runtime passes): the torch-free engine's model on the
    CPU then, which puts no network in torch's memory nor on a GPU. `frames` not `in_ray`: the
    driver runs them itself, in order. A model already loaded is itself."""
    if model_kind(path) or (frames and not in_ray):
        loaded = load_engine_model(path, config)
        return loaded, getattr(loaded.device, "type", str(loaded.device))
    from .onnx.engine import load_onnx_model

    return load_onnx_model(path, "cpu"), device_type(config)


def load_model(path: str | Path | None = None, device: str = "auto", engine: str = "auto"):
    """Load (once per process and file) the artifact at `path`, default: $STYLEFU_MODEL or the
    cache's, for `engine` (auto: torch's StyleModel where torch is installed, else the torch-free
    engine's OnnxModel); either goes to stylize's, preview's or stylize_many's `model=`."""
    from ..method.config import Config

    return load_engine_model(path, Config(engine=engine, device=device).validate())


def runner(config, model, log):
    """The engine's runner for one run (not yet loaded: `load()` does that)."""
    if resolve_engine(config.engine, model) == "onnx":
        from .onnx.runner import OnnxRunner

        return OnnxRunner(model, config, log)
    from .torch.runner import TorchRunner

    return TorchRunner(model, config, log)
