"""stylefu.core: neural style transfer (Gatys et al.) with torch gradients and ONNX Runtime passes.

    from stylefu.core import stylize, Config
    result = stylize("photo.jpg", "starry.jpg", config=Config(size=512))
    result.save("out.png")

Names are imported on first use (PEP 562), so `import stylefu.core.cli` (the `stylefu` command)
and the torch-free engine never import torch or the pipeline they do not run.
"""

import importlib

_HOMES = {
    "BatchItem": "batch", "ItemResult": "batch", "RunOptions": "batch", "stylize_many": "batch",
    "PRESETS": "config", "Config": "config",
    "Cancelled": "errors", "NumericalError": "errors", "UserError": "errors",
    "Picture": "images", "load_image": "images", "save_image": "images",
    "StyleModel": "model", "load_model": "model",
    "PreviewResult": "preview", "StylePreview": "preview", "preview": "preview",
    "Progress": "stylize", "StylizeResult": "stylize", "stylize": "stylize",
}
__all__ = list(_HOMES)
# Bound now, not on first use: importing the submodules `stylize` and `preview` would otherwise
# leave the package attribute naming the module instead of the function (both import no torch).
from .preview import preview as preview  # noqa: E402
from .stylize import stylize as stylize  # noqa: E402


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
