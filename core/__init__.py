"""stylefu.core: neural style transfer (Gatys et al.) with torch gradients and ONNX Runtime passes.

    from stylefu.core import stylize, Config
    result = stylize("photo.jpg", "starry.jpg", config=Config(size=512))
    result.save("out.png")
"""

from .batch import BatchItem, ItemResult, RunOptions, stylize_many
from .config import PRESETS, Config
from .errors import Cancelled, NumericalError, UserError
from .images import Picture, load_image, save_image
from .model import StyleModel, load_model
from .preview import PreviewResult, StylePreview, preview
from .stylize import Progress, StylizeResult, stylize

__all__ = ["Config", "PRESETS", "Cancelled", "NumericalError", "UserError", "Picture",
           "load_image", "save_image", "StyleModel", "load_model", "Progress", "StylizeResult",
           "stylize", "preview", "PreviewResult", "StylePreview", "stylize_many", "BatchItem",
           "ItemResult", "RunOptions"]
