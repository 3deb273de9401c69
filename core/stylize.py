"""Gatys et al.'s optimisation: pixels optimised by L-BFGS (or Adam) against content and style.

Pipeline: load images -> per scale (coarse to fine): targets from ONNX Runtime, optimise the image
with torch (bf16 convolutions where fast, float32 losses) -> final metrics from ONNX Runtime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import color, losses, tiling
from . import masks as masking
from .compiled import Evaluation, compile_seconds, should_compile
from .compiled import failure as compiled_failure
from .config import Config
from .errors import Cancelled, NumericalError, UserError
from .images import (
    Picture,
    check_min_side,
    fit_long_side,
    load_image,
    resize_array,
    save_image,
    to_array,
    to_tensor,
)
from .model import StyleModel, load_model, resolve_precision
from .vgg import MIN_SIDE, STYLE_LAYERS

CancelToken = threading.Event | Callable[[], bool] | None


@dataclass
class Progress:
    """What a callback gets at every evaluation; `image()` renders the current result on request."""

    stage: str
    scale: int
    scales: int
    iteration: int
    iterations: int
    size: tuple[int, int]
    loss: float
    content_loss: float
    style_loss: float
    tv_loss: float
    image: Callable[[], np.ndarray] = field(repr=False, default=lambda: None)
    # The optimised pixels as they are, unclipped (benchmarks judge the optimiser's own variable).
    pixels: Callable[[], torch.Tensor] = field(repr=False, default=lambda: None)

    @property
    def fraction(self) -> float:
        """Overall progress 0..1 (each scale counted by its share of evaluations)."""
        return self.iteration / max(1, self.iterations) if self.scales == 1 else \
            ((self.scale - 1) + self.iteration / max(1, self.iterations)) / self.scales


@dataclass
class StylizeResult:
    """The stylized image (RGB float32 0..1 [H,W,3], alpha if the content had one) and metrics."""

    image: np.ndarray
    alpha: np.ndarray | None
    metrics: dict

    def save(self, path, bits: int = 8):
        return save_image(path, self.image, self.alpha, bits=bits)


@dataclass
class StyleTerm:
    """One style loss term: Gram targets, its weight, and where it applies ([1,1,H,W] mask at the
    working size, guided Gram matrices; None: everywhere)."""

    grams: dict[str, torch.Tensor]
    weight: float = 1.0
    mask: torch.Tensor | None = None


@dataclass
class Targets:
    """What the optimiser matches at one scale: content features (None when tiled: per tile),
    blended style Grams, and the style terms when masks split the image into regions."""

    content: torch.Tensor | None
    grams: dict[str, torch.Tensor]
    terms: list[StyleTerm] = field(default_factory=list)

    def style_terms(self) -> list[StyleTerm]:
        """The loss terms: without masks, one term with the blended Grams everywhere."""
        return self.terms or [StyleTerm(self.grams)]


def is_cancelled(cancel: CancelToken) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


def scale_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine; the coarsest keeps at least 64 px on its short side."""
    full = fit_long_side(height, width, config.size)
    sizes = [full]
    for _ in range(config.schedule_value("scales") - 1):
        h, w = sizes[0]
        if min(h, w) // 2 < max(64, MIN_SIDE):
            break
        sizes.insert(0, (h // 2, w // 2))
    return sizes


def style_layer_weights(config: Config) -> dict[str, float]:
    weights = config.style_layer_weights or (1.0,) * len(STYLE_LAYERS)
    return dict(zip(STYLE_LAYERS, weights))


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
    come from the on-disk target cache (core/cache.py) when this model saw the image before; a
    style too large for one forward pass gets its Grams in tiles (tiling.grams, not cached).
    `content_features=False` skips the content pass (tiled runs compute content features per tile).
    """
    from .cache import cached_features, cached_grams, target_cache

    cache = target_cache(model)
    h, w = size
    content_feat = None
    if content_features:
        layer = config.content_layer
        content_feat = cached_features(cache, model.engine, content, (h, w), (layer,))[layer]
    grams: dict[str, torch.Tensor] = {}
    for weight, style in zip(blend_weights(len(styles), config), styles):
        sh, sw = fit_long_side(*style.shape[:2], max(MIN_SIDE, round(max(h, w) * config.style_scale)))
        sh, sw = max(sh, MIN_SIDE), max(sw, MIN_SIDE)
        tile = tiling.ort_tile(sh, sw, model.device)
        if tile and max(sh, sw) > tile:
            style_grams = tiling.grams(model.engine, resize_array(style, sh, sw), STYLE_LAYERS,
                                       model.device)
        else:
            style_grams = {n: torch.from_numpy(g) for n, g in cached_grams(
                cache, model.engine, style, (sh, sw), STYLE_LAYERS, config.style_scale).items()}
        for name in STYLE_LAYERS:
            g = weight * style_grams[name]
            grams[name] = grams[name] + g if name in grams else g
    device = model.device
    return Targets(None if content_feat is None else torch.from_numpy(content_feat).to(device),
                   {k: v.to(device) for k, v in grams.items()})


def region_targets(model: StyleModel, content: np.ndarray, styles: Sequence[np.ndarray],
                   size: tuple[int, int], config: Config, masks: Sequence[np.ndarray],
                   content_features: bool = True) -> Targets:
    """`compute_targets` plus spatial control: one mask restricts the (blended) style to a region;
    one mask per style gives each style its own region, its own Grams and its own loss term.

    With one mask per style, each term's weight is its normalised blend weight times the number of
    styles, so equal weights (the default) give every region the full --style-weight.
    """
    targets = compute_targets(model, content, styles, size, config, content_features)
    if not masks:
        return targets
    at_size = [masking.at_size(m, *size).to(model.device) for m in masks]
    if len(masks) == 1:
        targets.terms = [StyleTerm(targets.grams, 1.0, at_size[0])]
        return targets
    single = config.with_(style_blend=None)
    for weight, style, mask in zip(blend_weights(len(styles), config), styles, at_size):
        grams = compute_targets(model, content, [style], size, single, content_features=False).grams
        targets.terms.append(StyleTerm(grams, weight * len(styles), mask))
    return targets


class Objective:
    """Total loss alpha*content + beta*style + gamma*tv of an image, with its parts."""

    def __init__(self, model: StyleModel, targets: Targets, config: Config, dtype: torch.dtype):
        self.net, self.targets, self.config, self.dtype = model.net_in(dtype), targets, config, dtype
        self.device = model.device
        self.layer_weights = style_layer_weights(config)
        self.style_layers = tuple(n for n in STYLE_LAYERS if self.layer_weights[n] > 0 and
                                  config.style_weight > 0)
        self.layers = self.style_layers
        self.content_layer = config.content_layer
        if config.content_weight > 0:
            self.layers += (self.content_layer,)
        # Per term, the mask at each style layer's resolution; layers where a term's region is
        # empty (a tile outside it) are left out of that term.
        self.terms = []
        for term in targets.style_terms():
            layer_masks = None
            if term.mask is not None:
                layer_masks = masking.layer_masks(term.mask.float(), STYLE_LAYERS)
                layer_masks = {n: m for n, m in layer_masks.items() if float(m.sum()) > 1e-6}
            self.terms.append((term, layer_masks))

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # channels_last convolutions are faster here; the optimised image stays NCHW because
        # torch.optim.LBFGS cannot view a channels_last parameter.
        x = image.contiguous(memory_format=torch.channels_last)
        feats = self.net(x, self.layers)
        zero = image.new_zeros(())
        parts = {"content": zero, "style": zero, "tv": zero}
        if self.content_layer in feats and self.config.content_weight > 0:
            parts["content"] = losses.content_loss(feats[self.content_layer], self.targets.content)
        for term, layer_masks in self.terms:
            for name in STYLE_LAYERS:
                if name not in self.style_layers or (layer_masks is not None and
                                                     name not in layer_masks):
                    continue
                mask = None if layer_masks is None else layer_masks[name]
                layer_loss = term.weight * losses.style_layer_loss(losses.gram(feats[name], mask),
                                                                   term.grams[name])
                parts[name] = parts[name] + layer_loss if name in parts else layer_loss
                parts["style"] = parts["style"] + self.layer_weights[name] * layer_loss
        if self.config.tv_weight > 0:
            parts["tv"] = losses.tv_loss(image)
        total = (self.config.content_weight * parts["content"] + self.config.style_weight *
                 parts["style"] + self.config.tv_weight * parts["tv"])
        return total, parts


def initial_image(content: np.ndarray, size: tuple[int, int], config: Config,
                  generator: torch.Generator) -> torch.Tensor:
    h, w = size
    if config.init == "content":
        return to_tensor(resize_array(content, h, w))
    if config.init == "noise":
        return torch.rand((1, 3, h, w), generator=generator)
    return to_tensor(resize_array(load_image(config.init).rgb, h, w))


EARLY_STOP_WINDOW = 10  # evaluations over which `tolerance` measures the loss's fall


def should_stop(losses: Sequence[float], tolerance: float, window: int = EARLY_STOP_WINDOW) -> bool:
    """True when the best loss fell by less than `tolerance` (relative) over the last `window`.

    The best-so-far loss is compared, not the last one: L-BFGS without a line search sometimes
    steps uphill for an evaluation, which must not end a level that is still improving.
    """
    if tolerance <= 0 or len(losses) <= window:
        return False
    before, now = min(losses[:-window]), min(losses)
    return before - now < tolerance * abs(before)


def loss_scale(config: Config) -> Callable[[torch.Tensor], float]:
    """The factor the optimiser sees the loss times: for L-BFGS, 1 / the loss's first value when
    that is below 1 (a loss of 1e-3 starts at 1), else 1.

    torch's L-BFGS keeps a curvature pair only when y's > 1e-10, an absolute threshold made for
    losses near 1. Ours fall to 1e-3 and below with pixel gradients near 1e-7; at a fine level
    that starts close to convergence every pair was dropped, and each step stayed a tiny gradient
    step (a 512 px level moved the loss by 0.01 % in 30 evaluations). Larger losses are left as
    they are: divided down, their first pair (after torch's tiny first step) fell below the
    threshold instead, and a 64 px run stalled the same way.
    """
    first: list[float] = []

    def factor(total: torch.Tensor) -> float:
        if config.optimizer != "lbfgs":
            return 1.0
        if not first:
            first.append(max(abs(float(total.detach())), 1e-30))
        return max(1.0, 1.0 / first[0])
    return factor


def optimise(objective: Objective, image: torch.Tensor, evaluations: int, config: Config,
             report: Callable[[int, float, dict, torch.Tensor], None],
             cancel: CancelToken, tolerance: float = 0.0, compiled: bool = False,
             log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, int]:
    """Run up to `evaluations` loss+gradient evaluations of L-BFGS or Adam on `image`'s pixels.

    torch.optim.LBFGS with max_iter=1 per step() keeps its history across steps, so each step is
    exactly one evaluation: progress and cancel are checked at every one. Stops early when the
    loss stops falling (`should_stop` with `tolerance`). Returns the image and the number of
    evaluations made. The image is the one after the last step when the last evaluation was the
    best so far (so even one evaluation moves it), else the best one evaluated: L-BFGS without a
    line search (the paper's usual set-up) sometimes oversteps, and the loss jumps 10-1000x.
    `compiled`: evaluate through torch.compile (core/compiled.py; eager after one line if it fails).
    """
    x = image.clone().requires_grad_(True)
    evaluation = Evaluation(objective, compiled, log)
    if config.optimizer == "lbfgs":
        # torch's absolute stopping thresholds (gradient 1e-7, change 1e-9) are made for losses
        # near 1; ours are near 1e-3 with per-pixel gradients near 1e-7, and L-BFGS would stop
        # stepping after ~200 evaluations while the loss still falls. `tolerance` decides instead.
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100, tolerance_grad=-1.0,
                                tolerance_change=-1.0)
    else:
        opt = torch.optim.Adam([x], lr=config.learning_rate)
    last: dict = {}
    history: list[float] = []
    best = {"loss": float("inf"), "image": None}
    scale = loss_scale(config)

    def closure():
        opt.zero_grad(set_to_none=True)
        total, parts, backward = evaluation(x)
        if not torch.isfinite(total):
            raise NumericalError("The loss became NaN or infinite; lower --style-weight or "
                                 "--learning-rate, or use --precision fp32.")
        factor = scale(total)
        backward(factor)
        last["total"], last["parts"] = total.detach(), {k: v.detach() for k, v in parts.items()}
        loss = float(last["total"])
        if loss < best["loss"]:
            best.update(loss=loss, image=x.detach().clone())
        return (total * factor).detach()

    done = 0
    for done in range(1, evaluations + 1):
        if is_cancelled(cancel):
            raise Cancelled("Cancelled.")
        opt.step(closure)
        history.append(float(last["total"]))
        report(done, history[-1], last["parts"], x)
        if should_stop(history, tolerance):
            break
    return (x.detach() if history[-1] <= best["loss"] else best["image"]), done


def optimise_tiled(model: StyleModel, image: torch.Tensor, content: np.ndarray, targets: Targets,
                   tile: int, evaluations: int, config: Config, dtype: torch.dtype,
                   report: Callable[[int, float, dict, torch.Tensor], None], cancel: CancelToken,
                   generator: torch.Generator) -> tuple[torch.Tensor, list]:
    """`optimise` for an image too large for memory: the WHOLE image's loss and gradient are
    computed crop by crop (tiling.core_grid: non-overlapping cores, each seen in a `tile` px crop
    with a margin of context), and one optimiser steps all pixels at once (L-BFGS keeping
    tiling.TILED_HISTORY pairs).

    Per evaluation, a first pass (no gradients) sums the cores' Gram matrices into the whole
    image's; a second pass backpropagates, crop by crop, the whole loss through the core's features
    (the Gram residual fixed by the first pass) and adds each crop's gradient into the image's.
    This is the untiled optimisation: no tile matches the style on its own (that made tiles drift
    apart in colour) and nothing is blended back. The gradient is exact up to context beyond the
    margin; the core grid moves (seeded by `generator`) at every evaluation, so that error never
    stays at one border. `content` is the content at this scale ([H,W,3]). Returns the image and
    the last evaluation's cores (for the seam metric).
    """
    height, width = image.shape[-2:]
    margin = tiling.context_margin(tile)
    side = tiling.core_side(tile, margin)
    net = model.net_in(dtype)
    layer_weights = style_layer_weights(config)
    style_layers = tuple(n for n in STYLE_LAYERS if layer_weights[n] > 0 and config.style_weight > 0)
    content_layer = config.content_layer if config.content_weight > 0 else None
    layers = style_layers + ((content_layer,) if content_layer else ())
    terms = targets.style_terms()
    content_map = None  # the content's features at content_layer over the whole image, once
    if content_layer:
        f = 2 ** masking.pools_before(content_layer)
        for core, feats in tiling.feature_passes(model.engine, [content], (content_layer,),
                                                 model.device):
            part = torch.from_numpy(np.ascontiguousarray(feats[content_layer]))
            if content_map is None:
                content_map = part.new_zeros(part.shape[:2] + (height // f, width // f))
            content_map[..., core.y0 // f:core.y0 // f + part.shape[-2],
                        core.x0 // f:core.x0 // f + part.shape[-1]] = part
        content_map = content_map.to(model.device)
        content_count = content_map.shape[-2] * content_map.shape[-1]

    def layout():
        """A core grid at a random offset, each term's masks over its cores, and each term's
        positions (mask mass) per layer that its whole-image Gram matrices average over."""
        offset = tuple(int(v) * tiling.TILE_ALIGN for v in
                       torch.randint(0, side // tiling.TILE_ALIGN, (2,), generator=generator))
        cores = list(tiling.core_grid(height, width, tile, margin, offset))
        masks = [[None if m is None else {n: v.to(model.device) for n, v in m.items()}
                  for m in (tiling.core_mask(term.mask, core, style_layers) for core, _ in cores)]
                 for term in terms]
        totals = [{n: sum(core_positions(core, n) if m is None else float(m[n].sum())
                          for (core, _), m in zip(cores, term_masks)) for n in style_layers}
                  for term_masks in masks]
        return cores, masks, totals

    def core_loss(pixels, k, core, crop, grid, residuals=None):
        """Core k's part of the loss from its crop's `pixels`: with `residuals` (pass 2), its Gram
        parts dotted with the fixed Gram residuals plus its content loss; without (pass 1), the
        Gram parts and the content loss themselves."""
        _, masks, totals = grid
        feats = net(pixels.contiguous(memory_format=torch.channels_last), layers)
        feats = {n: tiling.core_of(v, core, crop, masking.pools_before(n)) for n, v in feats.items()}
        parts, loss = {}, torch.zeros((), device=pixels.device)
        for t in range(len(terms)):
            for name in style_layers:
                mask = None if masks[t][k] is None else masks[t][k][name]
                mass = core_positions(core, name) if mask is None else float(mask.sum())
                if mass <= 1e-8:
                    continue
                part = losses.gram(feats[name], mask) * (mass / totals[t][name])
                if residuals is None:
                    parts[(t, name)] = part
                else:
                    loss = loss + (residuals[(t, name)] * part).sum()
        if content_layer:
            f = 2 ** masking.pools_before(content_layer)
            target = content_map[..., core.y0 // f:core.y1 // f, core.x0 // f:core.x1 // f]
            diff = feats[content_layer].float() - target
            parts["content"] = (diff ** 2).sum() / (content_count * diff.shape[1])
            loss = loss + config.content_weight * parts["content"]
        return loss, parts

    x = image.detach().clone().requires_grad_(True)
    opt = (torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=tiling.TILED_HISTORY,
                             tolerance_grad=-1.0, tolerance_change=-1.0)
           if config.optimizer == "lbfgs" else torch.optim.Adam([x], lr=config.learning_rate))
    last: dict = {}
    best = {"loss": float("inf"), "image": None}
    scale = loss_scale(config)

    def crops(grid):
        for k, (core, crop) in enumerate(grid[0]):
            if is_cancelled(cancel):
                raise Cancelled("Cancelled.")
            ys, xs = crop.slices
            yield k, core, crop, x.detach()[..., ys, xs]

    def closure():
        grid = layout()
        last["cores"] = [core for core, _ in grid[0]]
        grams: dict = {}
        content_loss = x.new_zeros(())
        with torch.no_grad():  # pass 1: the whole image's Gram matrices and content loss
            for k, core, crop, pixels in crops(grid):
                _, parts = core_loss(pixels, k, core, crop, grid)
                content_loss = content_loss + parts.pop("content", 0.0)
                for key, g in parts.items():
                    grams[key] = grams[key] + g if key in grams else g
        per_layer = {name: x.new_zeros(()) for name in style_layers}
        residuals = {}
        for (t, name), g in grams.items():
            target, weight = terms[t].grams[name], terms[t].weight
            per_layer[name] = per_layer[name] + weight * losses.style_layer_loss(g, target)
            # d(beta * w_layer * weight * mean((G - T)^2)) / dG: what each core's Gram part meets
            residuals[(t, name)] = (config.style_weight * layer_weights[name] * weight
                                    * 2 * (g - target) / g.numel())
        grad = torch.zeros_like(x)
        for k, core, crop, pixels in crops(grid):  # pass 2: the gradient, crop by crop
            pixels = pixels.clone().requires_grad_(True)
            core_loss(pixels, k, core, crop, grid, residuals)[0].backward()
            ys, xs = crop.slices
            grad[..., ys, xs] += pixels.grad
        tv = x.new_zeros(())
        if config.tv_weight > 0:
            with torch.enable_grad():
                tv = losses.tv_loss(x)
                grad += torch.autograd.grad(config.tv_weight * tv, x)[0]
        style = sum(layer_weights[n] * v for n, v in per_layer.items())
        total = (config.content_weight * content_loss + config.style_weight * style
                 + config.tv_weight * tv.detach())
        if not torch.isfinite(total):
            raise NumericalError("The loss became NaN or infinite; lower --style-weight or "
                                 "--learning-rate, or use --precision fp32.")
        factor = scale(total)
        x.grad = grad * factor
        last["total"] = total
        last["parts"] = {"content": content_loss, "style": style, "tv": tv.detach(), **per_layer}
        if float(total) < best["loss"]:
            best.update(loss=float(total), image=x.detach().clone())
        return total * factor

    loss = float("inf")
    for done in range(1, evaluations + 1):
        opt.step(closure)
        loss = float(last["total"])
        report(done, loss, last["parts"], x)
    # As in `optimise`: the stepped image when the last evaluation was the best, else the best.
    result = x.detach() if loss <= best["loss"] else best["image"]
    return result, [last.get("cores", [])]


def core_positions(core: tiling.Tile, layer: str) -> int:
    """Feature positions of `core` at `layer` (cores start on multiples of 16 px)."""
    f = 2 ** masking.pools_before(layer)
    return ((core.y1 - core.y0) // f) * ((core.x1 - core.x0) // f)


def evaluate(model: StyleModel, image: np.ndarray, targets: Targets, config: Config,
             content: np.ndarray | None = None) -> dict:
    """Loss figures of a finished image, computed by ONNX Runtime in float32.

    After a tiled run (`targets.content` is None) the content loss is measured against `content`
    at the image's size. An image too large for one ONNX Runtime pass is evaluated in tiles (Grams
    are sums over tile cores, each seen with tiling.CONTEXT_MARGIN px of context).
    """
    content_layer = config.content_layer
    layers = tuple(dict.fromkeys(STYLE_LAYERS + (content_layer,)))
    terms = targets.style_terms()
    sums = [tiling.GramSum() for _ in terms]
    images = [image] if targets.content is not None else [image, content]
    squares, count = 0.0, 0
    for core, feats in tiling.feature_passes(model.engine, images, layers, model.device):
        reference = feats[content_layer][1:] if len(images) == 2 else targets.content.cpu().numpy()
        diff = feats[content_layer][:1].astype(np.float64) - reference
        squares, count = squares + float(np.sum(diff ** 2)), count + diff.size
        for acc, term in zip(sums, terms):
            layer_masks = tiling.core_mask(term.mask, core, STYLE_LAYERS)
            for name in STYLE_LAYERS:
                acc.add(name, feats[name][:1], None if layer_masks is None else layer_masks[name])
    per_layer = dict.fromkeys(STYLE_LAYERS, 0.0)
    for acc, term in zip(sums, terms):
        grams = acc.grams()
        for name in STYLE_LAYERS:
            per_layer[name] += term.weight * float(losses.style_layer_loss(
                grams[name], term.grams[name].cpu()))
    content_loss = squares / max(count, 1)
    weights = style_layer_weights(config)
    style = sum(weights[n] * v for n, v in per_layer.items())
    tv = float(losses.tv_loss(to_tensor(image)))
    total = config.content_weight * content_loss + config.style_weight * style + config.tv_weight * tv
    return {"total_loss": total, "content_loss": content_loss, "style_loss": style,
            "style_loss_per_layer": per_layer, "tv_loss": tv}


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text


def stylize(content, style_or_styles, *, config: Config | None = None,
            model: StyleModel | str | None = None,
            callback: Callable[[Progress], None] | None = None,
            cancel: CancelToken = None, masks: Sequence | None = None,
            log: Callable[[str], None] | None = None) -> StylizeResult:
    """Stylize `content` with one style or several (path, PIL image, array or Picture each).

    `masks` (paths, PIL images or [H,W] arrays, white = style) limit where the style applies: one
    mask for all styles, or one per style (each style painted into its own region). Pixels outside
    every mask stay exactly the content's; gray values blend.

    Returns a StylizeResult with the image at the working size (long side `config.size`) and the
    final metrics. Images too large for memory are optimised in tiles; `log` (default: the
    `stylefu` logger) is told so. Raises UserError for bad input or when memory runs out anyway,
    Cancelled when `cancel` fires (checked at every evaluation), NumericalError if the loss
    diverges. Same seed and inputs -> same bytes.
    """
    started = time.perf_counter()
    config = (config or Config()).validate()
    log = log or logging.getLogger("stylefu").info
    styles_in = ([style_or_styles] if isinstance(style_or_styles, (str, bytes)) or
                 not isinstance(style_or_styles, Sequence) else list(style_or_styles))
    if not styles_in:
        raise UserError("Give at least one style image.")
    content_pic = load_image(content, "content")
    style_pics: list[Picture] = [load_image(s, f"style {i + 1}") for i, s in enumerate(styles_in)]
    for picture in [content_pic, *style_pics]:
        check_min_side(picture)
    blend_weights(len(style_pics), config)  # a weight count that does not match fails early
    mask_arrays = [masking.load_mask(m, f"mask {i + 1}") for i, m in enumerate(masks or [])]
    if mask_arrays:
        masking.check_masks(mask_arrays, len(style_pics), content_pic.height, content_pic.width)
    if not isinstance(model, StyleModel):
        model = load_model(model, config.device)
    dtype = resolve_precision(config.precision, model.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    sizes = scale_sizes(content_pic.height, content_pic.width, config)
    if min(sizes[-1]) < MIN_SIDE:
        raise UserError(f"At --size {config.size} the content's short side is under {MIN_SIDE} px; "
                        "raise --size.")
    # Colour preservation changes what the optimiser sees (see color.py).
    content_rgb, styles = color.prepare(config.preserve_colors, content_pic.rgb,
                                        [p.rgb for p in style_pics])
    image = initial_image(content_rgb, sizes[0], config, generator)
    evaluations, tiles, layouts = 0, {}, []
    plan = [(s, config.schedule_value("iterations" if k == len(sizes) else "coarse_iterations"))
            for k, s in enumerate(sizes, start=1)]
    compiled = should_compile(config.compile, model.device, plan, log)
    compile_started = compile_seconds()
    try:
        for k, size in enumerate(sizes, start=1):
            final = k == len(sizes)
            count = config.schedule_value("iterations" if final else "coarse_iterations")
            tile = tiling.choose_tile(*size, config.tile_size, config.optimizer, model.device)
            if tile:
                tiles[f"{size[1]}x{size[0]}"] = tile
                need = tiling.torch_bytes(*size, config.optimizer) / 1e9
                why = ("--tile-size" if config.tile_size else
                       f"about {need:.1f} GB needed at once, "
                       f"{tiling.torch_budget(model.device) / 1e9:.1f} GB usable")
                log(f"{size[1]}x{size[0]} px is optimised in {tile} px tiles ({why}).")
            targets = region_targets(model, content_rgb, styles, size, config, mask_arrays,
                                     content_features=not tile)
            image = torch.nn.functional.interpolate(image, size=size, mode="bilinear",
                                                    align_corners=False).to(model.device)

            def report(i, total, parts, x, k=k, count=count, size=size):
                if callback is not None:
                    callback(Progress("optimise", k, len(sizes), i, count, size, total,
                                      float(parts["content"]), float(parts["style"]),
                                      float(parts["tv"]), image=lambda: to_array(x),
                                      pixels=lambda: x.detach().clone()))

            content_at_size = resize_array(content_rgb, *size)
            if tile:
                image, layouts = optimise_tiled(model, image, content_at_size, targets, tile, count,
                                                config, dtype, report, cancel, generator)
                done = count
            else:
                objective = Objective(model, targets, config, dtype)
                image, done = optimise(objective, image, count, config, report, cancel,
                                       tolerance=config.schedule_value("tolerance"),
                                       compiled=compiled, log=log)
            if mask_arrays:
                # Outside every mask the content, exactly; soft edges blend.
                region = masking.union([t.mask for t in targets.style_terms()])
                image = masking.composite(image, to_tensor(content_at_size).to(image), region)
            evaluations += done
        result = to_array(image)
        metrics = evaluate(model, result, targets, config, content_at_size)
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        raise UserError(f"Ran out of memory at {size[1]}x{size[0]} px on {model.device}; "
                        "set a smaller --tile-size (e.g. 512) or lower --size.") from None
    result = color.finish(config.preserve_colors, result, resize_array(content_pic.rgb,
                                                                       *result.shape[:2]))
    alpha = None
    if content_pic.alpha is not None:
        alpha = resize_array(content_pic.alpha, *result.shape[:2])
    metrics.update(iterations=evaluations, seconds=round(time.perf_counter() - started, 3),
                   device=str(model.device), precision=str(dtype).replace("torch.", ""),
                   weights_source=model.weights_source, model=str(model.path),
                   sizes=[list(s) for s in sizes], tiles=tiles,
                   compiled=compiled and not compiled_failure(),
                   compile_seconds=round(compile_seconds() - compile_started, 3))
    if tile:
        metrics["seam_ratio"] = tiling.seam_ratio(result, layouts)
    return StylizeResult(result, alpha, metrics)
