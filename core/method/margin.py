"""The mirrored margin a run paints around the picture and crops away at the end.

The network pads every convolution with zeros, so at the picture's border it sees a black frame.
The style loss then uses the outermost pixels to make edge features against that frame: a 1-4 px
coloured or bright line around the result (a green frame with a dark starry style). Painting a
canvas of the picture with a mirrored margin puts that frame in the margin, where the border
pixels are optimised as interior ones, and the crop drops it (docs/method.md, "Borders").
"""

from __future__ import annotations

import numpy as np

# Margin in px at the finest level, halved at each coarser one: the frame reaches about 4 px deep.
MARGIN = 8


def level_margins(sizes: list[tuple[int, int]]) -> list[int]:
    """Each level's margin for picture `sizes` coarse to fine: MARGIN at the finest, halved with
    the size, at least 1 px and under the short side (a mirror needs that many pixels)."""
    return [min(max(1, MARGIN >> (len(sizes) - k)), min(size) - 1)
            for k, size in enumerate(sizes, start=1)]


def padded(size: tuple[int, int], margin: int) -> tuple[int, int]:
    """The canvas size (h, w) of a picture of `size` with `margin` on each side."""
    return size[0] + 2 * margin, size[1] + 2 * margin


def pad(array: np.ndarray, margin: int) -> np.ndarray:
    """[H,W] or [H,W,C] with `margin` px mirrored on each side (no edge pixel repeated)."""
    widths = [(margin, margin)] * 2 + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="reflect")


def crop(array: np.ndarray, margin: int) -> np.ndarray:
    """The picture inside a canvas with `margin` on each side ([H,W,...] array)."""
    return array[margin:array.shape[0] - margin, margin:array.shape[1] - margin]
