"""The image a run starts from (`Config.init`), the same for both engines: the content, the
content in the style's colours (the default), uniform noise, or an image file.

The colour-matched start gives the content the mean and covariance of the styles' colours
(color.match_histogram, the map `--preserve-colors histogram` applies the other way round) before
the first evaluation. Optimised unbounded, the pixels of a content start drift outside 0..1 while
the colours move towards the style's, and the final clip then costs the delivered image several
percent of its loss (docs/speed.md, issue 30).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .color import match_histogram
from .images import load_image, resize_array


def style_colours(content: np.ndarray, styles: Sequence[np.ndarray]) -> np.ndarray:
    """`content` [H,W,3] with the colour mean and covariance of all `styles`' pixels together."""
    pixels = np.concatenate([s.reshape(-1, 3) for s in styles])[:, None]
    return match_histogram(content, pixels)


def start_array(init: str, content: np.ndarray, styles: Sequence[np.ndarray], size,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The start image [h,w,3] at `size` for `init` (noise from `rng`, which only noise needs)."""
    h, w = size
    if init == "noise":
        return rng.random((h, w, 3), dtype=np.float32)
    if init in ("content", "colour-matched"):
        image = resize_array(content, h, w)
        return style_colours(image, styles) if init == "colour-matched" else image
    return resize_array(load_image(init).rgb, h, w)
