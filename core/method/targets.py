"""What the optimiser matches at one level: content features and (blended, guided) style Grams.

Targets come from ONNX Runtime (no gradients), through the on-disk target cache (cache.py) when
this model saw the image before; a style too large for one forward pass gets its Grams in cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..io.cache import cached_features, cached_grams, target_cache
from ..io.images import Picture, check_min_side, fit_long_side, load_image, resize_array
from ..network.vgg import MIN_SIDE, STYLE_LAYERS
from . import guides, tiling
from .config import Config

if TYPE_CHECKING:
    import torch

    from ..engines.torch.model import StyleModel



@dataclass
class StyleTerm:
    """One style loss term: Gram targets, its weight, and where it applies ([1,1,H,W] guide at the
    working size, guided Gram matrices; None: everywhere)."""

    grams: dict[str, torch.Tensor]
    weight: float = 1.0
    mask: torch.Tensor | None = None


@dataclass
class Targets:
    """What the optimiser matches at one level: content features (None when tiled: per crop),
    blended style Grams, and the style terms when guides split the image into regions."""

    content: torch.Tensor | None
    grams: dict[str, torch.Tensor]
    terms: list[StyleTerm] = field(default_factory=list)

    def style_terms(self) -> list[StyleTerm]:
        """The loss terms: without guides, one term with the blended Grams everywhere."""
        return self.terms or [StyleTerm(self.grams)]


def load_style(source, name: str) -> Picture:
    """A style as its targets read it (a path, PIL image, array or Picture), checked. Where it has
    transparency: the part its visible pixels span, the colour of its fully transparent pixels
    replaced by the visible ones around them (guides.fill_hidden), and its alpha kept to weigh
    each pixel in its Gram matrices (style_array): a painting cut out on a transparent
    background gives the painting's style, not the background's hidden black."""
    picture = load_image(source, name)
    check_min_side(picture)
    if picture.alpha is None:
        return picture
    visible = picture.alpha > 0
    if not visible.any():
        raise UserError(f"{picture.name} is transparent everywhere: it has no pixels to take a "
                        "style from.")
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    part = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    rgb, alpha = picture.rgb[part], picture.alpha[part]
    if alpha.min() >= 1.0:  # opaque: plain Grams, the same cache entries as without alpha
        return replace(picture, rgb=np.ascontiguousarray(rgb), alpha=None)
    alpha = np.ascontiguousarray(alpha)
    return replace(picture, rgb=guides.fill_hidden(np.ascontiguousarray(rgb), alpha), alpha=alpha)


def style_array(picture: Picture) -> np.ndarray:
    """A load_style Picture as the targets take it: [H,W,3] RGB, or [H,W,4] with its alpha as the
    fourth channel, each pixel's weight in the style's Gram matrices."""
    return picture.rgb if picture.alpha is None else np.dstack([picture.rgb, picture.alpha])


def blend_weights(count: int, config: Config) -> list[float]:
    """Normalised blend weight per style; a count mismatch is the user's error to fix."""
    blend = config.style_blend or (1.0,) * count
    if len(blend) != count:
        raise UserError(f"--style-blend has {len(blend)} weights for {count} styles; give one per style.")
    if any(w < 0 for w in blend) or sum(blend) <= 0:
        raise UserError("--style-blend weights must be non-negative and not all zero.")
    return [w / sum(blend) for w in blend]


def compute_targets(model: StyleModel, content: np.ndarray, styles: Sequence[np.ndarray],
                    size: tuple[int, int], config: Config, content_features: bool = True) -> Targets:
    """Content features at `size` and style Gram matrices (blended over styles), by ONNX Runtime.

    Each style is resized so its long side is `style_scale` times the working long side. Both
    come from the on-disk target cache when this model saw the image before; a style too large
    for one forward pass gets its Grams in cores (tiling.grams, not cached).
    `content_features=False` skips the content pass (tiled runs compute content features per crop).
    """
    import torch

    content_feat, grams = target_arrays(model, content, styles, size, config, content_features)
    device = model.device
    return Targets(None if content_feat is None else torch.from_numpy(content_feat).to(device),
                   {k: torch.as_tensor(v).to(device) for k, v in grams.items()})


def target_arrays(model, content: np.ndarray, styles: Sequence[np.ndarray], size: tuple[int, int],
                  config: Config, content_features: bool = True):
    """compute_targets' arrays, without torch (the torch-free engine's targets): content features
    (or None) and {layer: blended [1,C,C] Grams}. `styles` as style_array gives them (a fourth
    channel weighs a style's pixels)."""
    cache = target_cache(model)
    h, w = size
    content_feat = None
    if content_features:
        layer = config.content_layer
        content_feat = cached_features(cache, model.engine, content, (h, w), (layer,))[layer]
    grams: dict = {}
    for weight, style in zip(blend_weights(len(styles), config), styles):
        sh, sw = fit_long_side(*style.shape[:2], max(MIN_SIDE, round(max(h, w) * config.style_scale)))
        sh, sw = max(sh, MIN_SIDE), max(sw, MIN_SIDE)
        side = tiling.ort_crop_side(sh, sw, model.device)
        if side and max(sh, sw) > side:
            style_grams = tiling.grams(model.engine, resize_array(style, sh, sw), STYLE_LAYERS,
                                       model.device)
        else:
            style_grams = cached_grams(cache, model.engine, style, (sh, sw), STYLE_LAYERS,
                                       config.style_scale)
        for name in STYLE_LAYERS:
            g = weight * style_grams[name]
            grams[name] = grams[name] + g if name in grams else g
    return content_feat, grams


def region_targets(model: StyleModel, content: np.ndarray, styles: Sequence[np.ndarray],
                   size: tuple[int, int], config: Config, masks: Sequence[np.ndarray],
                   content_features: bool = True) -> Targets:
    """`compute_targets` plus spatial control: one guide restricts the (blended) style to a region;
    one guide per style gives each style its own region, its own Grams and its own loss term.

    With one guide per style, each term's weight is its normalised blend weight times the number
    of styles, so equal weights (the default) give every region the full --style-weight.
    """
    targets = compute_targets(model, content, styles, size, config, content_features)
    if not masks:
        return targets
    at_size = [guides.at_size(m, *size).to(model.device) for m in masks]
    if len(masks) == 1:
        targets.terms = [StyleTerm(targets.grams, 1.0, at_size[0])]
        return targets
    single = config.with_(style_blend=None)
    for weight, style, mask in zip(blend_weights(len(styles), config), styles, at_size):
        grams = compute_targets(model, content, [style], size, single, content_features=False).grams
        targets.terms.append(StyleTerm(grams, weight * len(styles), mask))
    return targets
