"""Spatial control (Gatys et al. 2017, section 4): guides, grayscale masks that say where a style
applies (the `--mask` option and the `masks` parameter of `stylize`).

A mask is 0..1 per pixel (soft masks blend). It acts twice: the style loss of its style uses the
guided Gram matrix (feature positions weighted by the mask, `losses.gram(features, mask)`), and the
final image is composited by the mask over the content, so pixels outside every mask are exactly
the content's.

Masks reach each style layer through the same 2x2 pools as the features (network.vgg.layer_masks):
a layer after k pools sees the mask average-pooled k times (the fraction of each 2^k x 2^k block
inside the mask). Average pooling keeps soft edges soft and gives exactly the features' (floored)
sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..io.images import load_image, resize_array

if TYPE_CHECKING:
    import torch


GRID = 65535  # guide values are multiples of 1 / GRID


@dataclass(frozen=True)
class Inverse:
    """1 - a mask (`--mask-inverse PATH`): the style goes where the mask leaves out, soft edges
    kept soft (mask + inverse = 1), e.g. a second style outside a GIMP selection."""

    source: object


def load_mask(source, name: str = "mask") -> np.ndarray:
    """A mask from a path, PIL image, array or Inverse of one: [H,W] float32 in 0..1.

    Gray value is the weight (white: style, black: content); an alpha channel multiplies it, so a
    selection saved as a transparent PNG works too.
    """
    if isinstance(source, Inverse):
        return _on_grid(1.0 - load_mask(source.source, name))
    picture = load_image(source, name, to_srgb=False)
    mask = picture.rgb.mean(axis=2)
    if picture.alpha is not None:
        mask = mask * picture.alpha
    return _on_grid(np.clip(mask, 0.0, 1.0))


def _on_grid(mask: np.ndarray) -> np.ndarray:
    """The mask on the 16-bit grid (k / 65535), float32: what a guide file can hold anyway, and
    `Inverse(m)` then equals a file holding 1 - m bit for bit (float32's 1 - m does not)."""
    return (np.round(mask.astype(np.float64) * GRID) / GRID).astype(np.float32)


def check_mask_count(masks: int, styles: int) -> None:
    """One mask for all styles or one per style (the command line checks it before any work)."""
    if masks not in (1, styles):
        raise UserError(f"{masks} masks for {styles} style{'s' * (styles != 1)}: give one "
                        "--mask for all styles "
                        "or one per style, in the same order.")


def check_masks(masks: list[np.ndarray], styles: int, height: int, width: int,
                alpha: np.ndarray | None = None) -> None:
    """One mask for all styles or one per style, each with the content's aspect ratio, white
    somewhere the content (its `alpha`) shows."""
    check_mask_count(len(masks), styles)
    for i, mask in enumerate(masks, start=1):
        mh, mw = mask.shape
        if abs(mh / mw - height / width) > 0.02 * height / width:
            raise UserError(f"Mask {i} is {mw}x{mh} px but the content is {width}x{height} px; "
                            "give a mask with the content's aspect ratio (ideally its size).")
        if mask.max() <= 0:
            raise UserError(f"Mask {i} is black everywhere, so its style would apply nowhere; "
                            "paint white where the style should go.")
        if alpha is not None and (resize_array(mask, height, width) * alpha).max() <= 0:
            raise UserError(f"Mask {i} is white only where the content is transparent, so its "
                            "style would show nowhere; paint white where the content shows.")


def at_size(mask: np.ndarray, height: int, width: int) -> torch.Tensor:
    """The mask resized to (height, width) as a [1,1,H,W] float32 tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(resize_array(mask, height, width)))[None, None]


def fill_hidden(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """`rgb` with its fully transparent pixels' colour replaced by the visible colours around them,
    smoothly (push-pull: alpha-weighted 2x2 means up to one pixel, then back down, each level
    filling its holes from the coarser one's bilinear enlargement). What a transparent pixel
    hides (often black) then reaches no feature near the visible edge as an edge of its own."""
    if alpha is None or alpha.min() > 0:
        return rgb
    weight = (alpha > 0).astype(np.float32)
    levels = [(rgb * weight[..., None], weight)]
    while max(levels[-1][1].shape) > 1:
        colour, weight = levels[-1]
        h, w = weight.shape
        padded = (0, h % 2), (0, w % 2)  # odd sides padded with no weight
        colour = np.pad(colour, padded + ((0, 0),)).reshape((h + 1) // 2, 2, (w + 1) // 2, 2, 3)
        weight = np.pad(weight, padded).reshape((h + 1) // 2, 2, (w + 1) // 2, 2)
        levels.append((colour.mean(axis=(1, 3)), weight.mean(axis=(1, 3))))
    filled = None
    for colour, weight in reversed(levels):
        own = colour / np.maximum(weight, 1e-12)[..., None]
        if filled is not None:
            coarse = resize_array(filled, *weight.shape, clip=False)
            own = own * weight[..., None] + coarse * (1 - weight[..., None])
        filled = own
    return np.where(alpha[..., None] > 0, rgb, filled).astype(np.float32)


def visible_part(alpha: np.ndarray | None) -> np.ndarray | None:
    """A content's alpha where it has transparency, else None (an opaque alpha guides nothing)."""
    return None if alpha is None or alpha.min() >= 1.0 else alpha


def within(masks: list, visible) -> list:
    """The guides the style loss weighs positions by: the masks (none: everywhere) times the
    content's `visible_part`, so its transparent parts take no share of the style's statistics
    (a cut-out is painted as a whole picture would be, not brightened to make up for a hidden
    black background). Only the masks composite the result: a soft alpha keeps its painting."""
    if visible is None:
        return masks
    return [m * visible for m in masks] or [visible]


def composite(result, content, mask):
    """mask * result + (1 - mask) * content: outside the mask the content, unchanged (tensors or
    arrays)."""
    return mask * result + (1 - mask) * content


def union(masks: list):
    """Where any style applies: the masks' sum, capped at 1 (tensors or arrays)."""
    return sum(masks).clip(0.0, 1.0)
