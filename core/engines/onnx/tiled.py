"""The torch-free engine's loss for images too large for one pass: the whole image's loss and
gradient, crop by crop, with the gradient graph of gradient.py.

The torch engine's TiledObjective, with the graph in place of autograd. Per evaluation a core
grid at a random offset cuts the image; pass 1 (ONNX Runtime forward passes) sums the cores'
Gram matrices into the whole image's and measures the content loss; pass 2 runs the graph on
each crop with targets chosen so that its gradient is the whole loss's through that core:

- style: the crop's guided Gram G_c (its core's positions only, mass m_c) meets the target
  A' = G_c - s (G - A), s = m_c / m (the core's share of the whole mass m); the graph's gradient
  2 (G_c - A') / C^2 x dG_c is then 2 s (G - A) / C^2 x dG_c, the whole loss's through the core;
- content: outside its core the crop's target is the crop's own features (no residual), inside
  the content's; the weight is scaled from the crop's feature count to the whole image's;
- TV: the whole image's, in numpy.
"""

from __future__ import annotations

import numpy as np

from ...method import tiling
from ...method.objective import LossSpec
from ...network.vgg import STYLE_LAYERS, layer_masks, layer_stride
from ..steps import check_cancel
from .engine import EMPTY_REGION  # (a core's guide mass below it: the core is left out there)


class TiledOnnxObjective:
    """The loss of one level's targets for [1,3,H,W] pixels, crop by crop: (total, parts, gradient)."""

    def __init__(self, model, content: np.ndarray, terms, crop_side: int, config, rng, cancel):
        """`content`: the content at this level [H,W,3]; `terms`: (grams {layer: [1,C,C]},
        weight, guide [H,W] or None) per style term, as OnnxObjective takes them."""
        self.spec = spec = LossSpec.from_config(config)
        self.session, self.engine = model.gradient(spec.content_layer), model.engine
        self.height, self.width = content.shape[:2]
        self.crop_side, self.margin = crop_side, tiling.context_margin(crop_side)
        self.side = tiling.core_side(crop_side, self.margin)
        self.terms = [({n: np.asarray(g[n], np.float64).reshape(g[n].shape[-2:]) for n in STYLE_LAYERS},
                       float(weight), None if guide is None else np.asarray(guide, np.float32))
                      for g, weight, guide in terms]
        self.rng, self.cancel, self.cores = rng, cancel, []
        self.layer_weights = np.array([spec.layer_weights[n] for n in STYLE_LAYERS], np.float32)
        self.layers = tuple(dict.fromkeys(STYLE_LAYERS + (spec.content_layer,)))
        self.content_map = self._content_map(content) if spec.uses_content else None

    def _content_map(self, content: np.ndarray) -> np.ndarray:
        """The content's features at the content layer over the whole image, core by core."""
        layer, f = self.spec.content_layer, layer_stride(self.spec.content_layer)
        whole = None
        for core, feats in tiling.feature_passes(self.engine, [content], (layer,)):
            part = feats[layer]
            if whole is None:
                whole = np.zeros(part.shape[:2] + (self.height // f, self.width // f), np.float32)
            whole[..., core.y0 // f:core.y0 // f + part.shape[-2],
                  core.x0 // f:core.x0 // f + part.shape[-1]] = part
        return whole

    def layout(self):
        """A core grid at a random offset (multiples of TILE_ALIGN px)."""
        align = tiling.TILE_ALIGN
        offset = tuple(int(v) * align for v in self.rng.integers(0, self.side // align, 2))
        return list(tiling.core_grid(self.height, self.width, self.crop_side, self.margin, offset))

    def _masks(self, core, crop):
        """Per term and layer: the crop-sized guide of the core's positions (ones there, or the
        term's guide) and its mass."""
        shape = (crop.y1 - crop.y0, crop.x1 - crop.x0)
        out = []
        for _, _, guide in self.terms:
            pooled = None if guide is None else layer_masks(
                guide[None, None, core.y0:core.y1, core.x0:core.x1], STYLE_LAYERS)
            per_layer = {}
            for name in STYLE_LAYERS:
                f = layer_stride(name)
                mask = np.zeros((1, 1, shape[0] // f, shape[1] // f), np.float32)
                region = tiling.core_of(mask, core, crop, f)
                if pooled is None:
                    region[...] = 1.0
                else:
                    h, w = region.shape[-2:]
                    region[..., :h, :w] = pooled[name][..., :h, :w]
                per_layer[name] = (mask, float(region.sum()))
            out.append(per_layer)
        return out

    def __call__(self, x: np.ndarray, release: bool = False) -> tuple[float, dict, np.ndarray]:
        """`release`: the run's last call (the final figures) gives ORT's arenas back."""
        spec, cores = self.spec, self.layout()
        self.cores = [core for core, _ in cores]
        passes, sums, masses = [], {}, {}
        content_squares = 0.0
        for core, crop in cores:  # pass 1: the whole image's Grams and content loss
            check_cancel(self.cancel)
            ys, xs = crop.slices
            pixels = np.ascontiguousarray(x[..., ys, xs], np.float32)
            feats = self.engine.features(pixels, self.layers, release)
            masks, parts = self._masks(core, crop), {}
            for t, per_layer in enumerate(masks):
                for name in STYLE_LAYERS:
                    mask, mass = per_layer[name]
                    if mass <= EMPTY_REGION:
                        continue
                    # float32 products (as tiling.GramSum), summed in float64: float64 copies
                    # of relu1_1 at a 1872 px crop took 3.6 GB
                    flat = feats[name][0].reshape(feats[name].shape[1], -1)
                    product = ((flat * mask.reshape(1, -1)) @ flat.T).astype(np.float64)
                    parts[(t, name)] = (product, mass)
                    sums[(t, name)] = sums.get((t, name), 0.0) + product
                    masses[(t, name)] = masses.get((t, name), 0.0) + mass
            own = feats[spec.content_layer].copy()  # the graph's content target for this crop
            if spec.uses_content:
                f = layer_stride(spec.content_layer)
                target = self.content_map[..., core.y0 // f:core.y1 // f, core.x0 // f:core.x1 // f]
                region = tiling.core_of(own, core, crop, f)
                h, w = min(region.shape[-2], target.shape[-2]), min(region.shape[-1], target.shape[-1])
                diff = region[..., :h, :w].astype(np.float64) - target[..., :h, :w]
                content_squares += float((diff ** 2).sum())
                region[..., :h, :w] = target[..., :h, :w]  # pass 2's target: the content in the core
            passes.append((core, crop, pixels, masks, parts, own))
        grams = {key: s / (s.shape[0] * masses[key]) for key, s in sums.items()}
        per_layer = dict.fromkeys(STYLE_LAYERS, 0.0)
        for (t, name), g in grams.items():
            per_layer[name] += self.terms[t][1] * float(np.mean((g - self.terms[t][0][name]) ** 2))
        content_numel = self.content_map.size if self.content_map is not None else 1
        content = content_squares / content_numel
        grad = np.zeros_like(x, dtype=np.float32)
        for _core, crop, pixels, masks, parts, own in passes:  # pass 2: the gradient, crop by crop
            check_cancel(self.cancel)
            feeds = self._feeds(masks, parts, grams, masses, own, content_numel)
            out = self.session.run(pixels, feeds, release)
            ys, xs = crop.slices
            grad[..., ys, xs] += out["gradient"]
        tv, tv_grad = total_variation(x)
        grad += np.float32(spec.tv_weight) * tv_grad
        style = spec.style(per_layer)
        total = float(spec.total(content, style, tv))
        return total, {"content": content, "style": style, "tv": tv, **per_layer}, grad

    def _feeds(self, masks, parts, grams, masses, own, content_numel) -> dict:
        """The graph's inputs for one crop: targets A' per term and layer, the core's guides, the
        content target with the crop's own features outside the core, scaled weights."""
        spec, count = self.spec, len(self.terms)
        alpha = spec.content_weight * own.size / content_numel if spec.uses_content else 0.0
        feeds = {"loss_weights": np.array([alpha, spec.style_weight, 0.0], np.float32),
                 "layer_weights": self.layer_weights,
                 "term_weights": np.zeros((count, len(STYLE_LAYERS)), np.float32)}
        feeds["content_target"] = own.astype(np.float32)
        for k, name in enumerate(STYLE_LAYERS):
            targets, layer_masks = [], []
            for t, (target, weight, _) in enumerate(self.terms):
                mask, mass = masks[t][name]
                if (t, name) in parts:
                    product, _ = parts[(t, name)]
                    crop_gram = product / (product.shape[0] * mass)
                    share = mass / masses[(t, name)]
                    targets.append(crop_gram - share * (grams[(t, name)] - target[name]))
                    layer_masks.append(mask)
                    feeds["term_weights"][t, k] = weight
                else:  # nothing of this term here: any target, ones (no division by zero), weight 0
                    targets.append(target[name])
                    layer_masks.append(np.ones_like(mask))
            feeds[f"gram.{name}"] = np.stack(targets).astype(np.float32)
            feeds[f"mask.{name}"] = np.concatenate(layer_masks)
        return feeds


def total_variation(x: np.ndarray) -> tuple[float, np.ndarray]:
    """losses.tv_loss in numpy: mean squared difference of neighbours, and its gradient."""
    dy = x[..., 1:, :] - x[..., :-1, :]
    dx = x[..., :, 1:] - x[..., :, :-1]
    grad = np.zeros_like(x, dtype=np.float32)
    gy, gx = 2 * dy / dy.size, 2 * dx / dx.size
    grad[..., 1:, :] += gy
    grad[..., :-1, :] -= gy
    grad[..., :, 1:] += gx
    grad[..., :, :-1] -= gx
    return float(np.mean(dy.astype(np.float64) ** 2) + np.mean(dx.astype(np.float64) ** 2)), grad
