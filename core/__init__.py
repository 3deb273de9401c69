"""stylefu.core: neural style transfer (Gatys et al.) with torch gradients and ONNX Runtime passes.

    from stylefu.core import stylize, Config
    result = stylize("photo.jpg", "starry.jpg", config=Config(size=512))
    result.save("out.png")

Names are imported on first use (PEP 562), so `import stylefu.core.cli` (the `stylefu` command)
and the torch-free engine never import torch or the pipeline they do not run.
"""

import importlib
import os

# ONNX Runtime otherwise writes a device id under ~/.cache/Microsoft and tries to send telemetry.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Each public name and the module it lives in (the rooms: docs/architecture in ARCHITECTURE.md).
_HOMES = {
    "BatchItem": "batch.driver", "ItemResult": "batch.driver", "RunOptions": "batch.driver",
    "stylize_many": "batch.driver",
    "PRESETS": "method.config", "Config": "method.config",
    "Cancelled": "errors", "NumericalError": "errors", "UserError": "errors",
    "Picture": "io.images", "load_image": "io.images", "save_image": "io.images",
    "StyleModel": "engines.torch.model", "load_model": "engines",  # the light install's too
    "PreviewResult": "run.preview", "StylePreview": "run.preview", "preview": "run.preview",
    "Progress": "run.pipeline", "StylizeResult": "run.pipeline", "stylize": "run.pipeline",
}
from . import compat as compat  # noqa: E402  (old module paths, e.g. stylefu.core.vgg, still import)
from .engines import torch_installed as _torch_installed  # noqa: E402

# The names this install can import: `from stylefu.core import *` and help() in the light install
# would fail on a torch-only one.
__all__ = [name for name, home in _HOMES.items()
           if _torch_installed() or not home.startswith("engines.torch")]


def __getattr__(name: str):
    if name in _HOMES:
        try:
            module = importlib.import_module(f".{_HOMES[name]}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise ImportError(f"stylefu.core.{name} is the torch engine's and torch is not "
                              "installed here (the light install); load_model gives the "
                              "torch-free engine's model.", name=__name__) from None
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too: help(), dir() and editors' completion list them before first use."""
    return sorted(set(globals()) | set(__all__))
