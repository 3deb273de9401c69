"""The optimisers: L-BFGS (or Adam) on the image's pixels, one loss+gradient evaluation per step.

`optimise` differentiates an `Objective` (the whole image in memory); `optimise_tiled` a
`TiledObjective`, the same loss computed crop by crop for images too large for memory. Both run
the same loop (`minimise`): one optimiser factory, one loss factor, early stopping by
`tolerance`, cancel checks, and the best-iterate rule; both return an `Optimised`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...method import tiling
from ...method.config import Config
from ...method.objective import LossSpec, Objective, check_finite
from ...method.tiling import Window
from ...network.vgg import layer_stride
from ..steps import (
    BestIterate,
    CancelToken,
    check_cancel,
    delivered,
    loss_factor,
    range_penalty,
    should_stop,
)

if TYPE_CHECKING:
    import torch

    from ...method.targets import Targets
    from .model import StyleModel


# report(evaluation, loss, parts, pixels): called after every evaluation.
Report = Callable[[int, float, dict, "torch.Tensor"], None]
# A loss for `minimise`: (total, parts, backward) where backward(multiplier) sets x.grad to
# multiplier * d(total)/dx.
LossFunction = Callable[["torch.Tensor"], tuple["torch.Tensor", dict, Callable[[float], None]]]



@dataclass
class Optimised:
    """An optimiser's result: the image, the evaluations made, and (tiled) the last core grid."""

    image: torch.Tensor
    evaluations: int
    cores: list[Window] = field(default_factory=list)






def make_step(x: torch.Tensor, config: Config, history: int, steps: int):
    """The optimiser's step(x, g), which moves the pixels `x` in place: L-BFGS (lbfgs.py: one
    evaluation per step, `history` pairs, torch.optim.LBFGS's rule with one host sync) or
    torch's Adam."""
    if config.optimizer == "lbfgs":
        from .lbfgs import LBFGS

        return LBFGS(x, history, steps).step
    import torch

    from .compiled import usable_cache_variable

    usable_cache_variable()  # before torch.optim's first import of torch._dynamo
    adam = torch.optim.Adam([x], lr=config.learning_rate)

    def step(x: torch.Tensor, g: torch.Tensor) -> None:
        x.grad = g
        adam.step()
    return step


def minimise(loss: LossFunction, image: torch.Tensor, evaluations: int, config: Config,
             report: Report, cancel: CancelToken, tolerance: float = 0.0,
             history: int = tiling.LBFGS_HISTORY) -> Optimised:
    """Up to `evaluations` steps of the configured optimiser on a copy of `image`'s pixels, each
    one evaluation, with progress and cancel checked at every one. Stops early when the loss
    stops falling (`should_stop` with `tolerance`).

    The loss, the range factor and the parts cross to the host together, once per evaluation
    (one sync, plus L-BFGS's own): on a GPU each sync stalls the queue of kernels.
    """
    import torch

    x = image.detach().clone()
    step = make_step(x, config, history, evaluations)
    best, factor, seen = BestIterate(), loss_factor(config), []
    done = 0
    for done in range(1, evaluations + 1):
        check_cancel(cancel)
        seen_x = x.clamp(0.0, 1.0).requires_grad_(True)  # as delivered (`delivered`)
        total, parts, backward = loss(seen_x)
        total = total.detach() if torch.is_tensor(total) else total
        multiplier = factor(total)
        outside, outside_grad = range_penalty(x, total)
        backward(multiplier * outside)
        grad = delivered(x, seen_x.grad) + multiplier * outside_grad
        names = [k for k, v in parts.items() if torch.is_tensor(v)]
        values = torch.stack([torch.as_tensor(v, device=x.device).float() for v in
                              (total, outside, *(parts[k].detach() for k in names))]).tolist()
        loss_value, outside_value = values[0], values[1]
        check_finite(loss_value)
        best.update(loss_value * outside_value, x)
        step(x, grad)
        seen.append(loss_value)  # the delivered loss, as reported: what stopping judges
        report(done, loss_value, {**parts, **dict(zip(names, values[2:]))}, x)
        if should_stop(seen, tolerance):
            break
    return Optimised(best.result(x), done)


def optimise(objective: Objective, image: torch.Tensor, evaluations: int, config: Config,
             report: Report, cancel: CancelToken, tolerance: float = 0.0, compiled: bool = False,
             log: Callable[[str], None] | None = None) -> Optimised:
    """Optimise a whole image held in memory against `objective`; `compiled`: through
    torch.compile (core/engines/torch/compiled.py: eager after one line if compiling fails)."""
    from .compiled import Evaluation

    return minimise(Evaluation(objective, compiled, log), image, evaluations, config, report,
                    cancel, tolerance)


class TiledObjective:
    """The whole image's loss and gradient for an image too large for memory, crop by crop.

    tiling.core_grid cuts the image into non-overlapping cores, each seen in a `crop_side` px crop
    with a margin of context. Per evaluation, a first pass (no gradients) sums the cores' Gram
    matrices into the whole image's; a second pass backpropagates, crop by crop, the whole loss
    through each core's features (the Gram residual fixed by the first pass) and adds each crop's
    gradient into the image's. That is the untiled loss: no crop matches the style on its own and
    nothing is blended back. The gradient is exact up to context beyond the margin; the core grid
    moves (seeded by `generator`) at every evaluation, so that error never stays at one border.
    """

    def __init__(self, model: StyleModel, content: np.ndarray, targets: Targets, crop_side: int,
                 config: Config, dtype: torch.dtype, cancel: CancelToken,
                 generator: torch.Generator):
        self.height, self.width = content.shape[:2]
        self.crop_side, self.margin = crop_side, tiling.context_margin(crop_side)
        self.side = tiling.core_side(crop_side, self.margin)
        self.net, self.device, self.cancel, self.generator = (model.net_in(dtype), model.device,
                                                              cancel, generator)
        self.spec = LossSpec.from_config(config)
        self.terms = targets.style_terms()
        self.cores: list[Window] = []  # the last evaluation's core grid (for the seam metric)
        self.content_map = None  # the content's features over the whole image, computed once
        if self.spec.uses_content:
            self.content_map = self._content_map(model, content)

    def _content_map(self, model: StyleModel, content: np.ndarray) -> torch.Tensor:
        import torch

        layer, f = self.spec.content_layer, layer_stride(self.spec.content_layer)
        content_map = None
        for core, feats in tiling.feature_passes(model.engine, [content], (layer,), model.device):
            part = torch.from_numpy(np.ascontiguousarray(feats[layer]))
            if content_map is None:
                content_map = part.new_zeros(part.shape[:2] + (self.height // f, self.width // f))
            content_map[..., core.y0 // f:core.y0 // f + part.shape[-2],
                        core.x0 // f:core.x0 // f + part.shape[-1]] = part
        return content_map.to(model.device)

    def layout(self):
        """A core grid at a random offset, each term's guides over its cores, and each term's
        positions (guide mass) per layer that its whole-image Gram matrices average over."""
        import torch

        align = tiling.TILE_ALIGN
        offset = tuple(int(v) * align for v in
                       torch.randint(0, self.side // align, (2,), generator=self.generator))
        cores = list(tiling.core_grid(self.height, self.width, self.crop_side, self.margin, offset))
        layers = self.spec.style_layers
        masks = [[None if m is None else {n: v.to(self.device) for n, v in m.items()}
                  for m in (tiling.core_mask(term.mask, core, layers) for core, _ in cores)]
                 for term in self.terms]
        totals = [{n: sum(core_positions(core, n) if m is None else float(m[n].sum())
                          for (core, _), m in zip(cores, term_masks)) for n in layers}
                  for term_masks in masks]
        return cores, masks, totals

    def crops(self, x: torch.Tensor, grid):
        for k, (core, crop) in enumerate(grid[0]):
            check_cancel(self.cancel)
            ys, xs = crop.slices
            yield k, core, crop, x.detach()[..., ys, xs]

    def core_loss(self, pixels, k, core, crop, grid, residuals=None):
        """Core k's part of the loss from its crop's `pixels`: with `residuals` (pass 2), its Gram
        parts dotted with the fixed Gram residuals plus its content loss; without (pass 1), the
        Gram parts and the content loss themselves."""
        import torch

        from ...method import losses

        _, masks, totals = grid
        spec = self.spec
        feats = self.net(pixels.contiguous(memory_format=torch.channels_last), spec.layers)
        feats = {n: tiling.core_of(v, core, crop, layer_stride(n)) for n, v in feats.items()}
        parts, loss = {}, torch.zeros((), device=pixels.device)
        for t in range(len(self.terms)):
            for name in spec.style_layers:
                mask = None if masks[t][k] is None else masks[t][k][name]
                mass = core_positions(core, name) if mask is None else float(mask.sum())
                if mass <= 1e-8:
                    continue
                part = losses.gram(feats[name], mask) * (mass / totals[t][name])
                if residuals is None:
                    parts[(t, name)] = part
                else:
                    loss = loss + (residuals[(t, name)] * part).sum()
        if spec.uses_content:
            f = layer_stride(spec.content_layer)
            target = self.content_map[..., core.y0 // f:core.y1 // f, core.x0 // f:core.x1 // f]
            diff = feats[spec.content_layer].float() - target
            count = self.content_map.shape[-2] * self.content_map.shape[-1]
            parts["content"] = (diff ** 2).sum() / (count * diff.shape[1])
            loss = loss + spec.content_weight * parts["content"]
        return loss, parts

    def __call__(self, x: torch.Tensor):
        import torch

        from ...method import losses

        spec = self.spec
        grid = self.layout()
        self.cores = [core for core, _ in grid[0]]
        grams: dict = {}
        content_loss = x.new_zeros(())
        with torch.no_grad():  # pass 1: the whole image's Gram matrices and content loss
            for k, core, crop, pixels in self.crops(x, grid):
                _, parts = self.core_loss(pixels, k, core, crop, grid)
                content_loss = content_loss + parts.pop("content", 0.0)
                for key, g in parts.items():
                    grams[key] = grams[key] + g if key in grams else g
        per_layer = {name: x.new_zeros(()) for name in spec.style_layers}
        residuals = {}
        for (t, name), g in grams.items():
            target, weight = self.terms[t].grams[name], self.terms[t].weight
            per_layer[name] = per_layer[name] + weight * losses.style_layer_loss(g, target)
            # d(beta * w_layer * weight * mean((G - T)^2)) / dG: what each core's Gram part meets
            residuals[(t, name)] = (spec.style_weight * spec.layer_weights[name] * weight
                                    * 2 * (g - target) / g.numel())
        grad = torch.zeros_like(x)
        for k, core, crop, pixels in self.crops(x, grid):  # pass 2: the gradient, crop by crop
            pixels = pixels.clone().requires_grad_(True)
            self.core_loss(pixels, k, core, crop, grid, residuals)[0].backward()
            ys, xs = crop.slices
            grad[..., ys, xs] += pixels.grad
        tv = x.new_zeros(())
        if spec.tv_weight > 0:
            with torch.enable_grad():
                tv = losses.tv_loss(x)
                grad += torch.autograd.grad(spec.tv_weight * tv, x)[0]
        style = spec.style(per_layer)
        total = spec.total(content_loss, style, tv.detach())
        parts = {"content": content_loss, "style": style, "tv": tv.detach(), **per_layer}

        def backward(multiplier: float) -> None:
            x.grad = grad * multiplier
        return total, parts, backward


def optimise_tiled(model: StyleModel, image: torch.Tensor, content: np.ndarray, targets: Targets,
                   crop_side: int, evaluations: int, config: Config, dtype: torch.dtype,
                   report: Report, cancel: CancelToken, generator: torch.Generator,
                   tolerance: float = 0.0) -> Optimised:
    """`optimise` for an image too large for memory (`TiledObjective`); one optimiser steps all
    pixels at once, L-BFGS keeping tiling.TILED_HISTORY pairs. `content` is the content at this
    level ([H,W,3]). The result's `cores` are the last evaluation's (for the seam metric)."""
    objective = TiledObjective(model, content, targets, crop_side, config, dtype, cancel, generator)
    result = minimise(objective, image, evaluations, config, report, cancel, tolerance,
                      history=tiling.TILED_HISTORY)
    result.cores = objective.cores
    return result


def core_positions(core: Window, layer: str) -> int:
    """Feature positions of `core` at `layer` (cores start on multiples of TILE_ALIGN px)."""
    f = layer_stride(layer)
    return ((core.y1 - core.y0) // f) * ((core.x1 - core.x0) // f)
