"""Gatys et al.'s optimisation: pixels optimised by L-BFGS (or Adam) against content and style.

Pipeline: load images -> per scale (coarse to fine): targets from ONNX Runtime, optimise the image
with torch (bf16 convolutions where fast, float32 losses) -> final metrics from ONNX Runtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import losses
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
class Targets:
    """What the optimiser matches at one scale: content features and blended style Grams."""

    content: torch.Tensor
    grams: dict[str, torch.Tensor]


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
                    size: tuple[int, int], config: Config) -> Targets:
    """Content features at `size` and style Gram matrices (blended over styles), by ONNX Runtime.

    Each style is resized so its long side is `style_scale` times the working long side. Both
    come from the on-disk target cache (core/cache.py) when this model saw the image before.
    """
    from .cache import cached_features, cached_grams, target_cache

    cache = target_cache(model)
    h, w = size
    layer = config.content_layer
    content_feat = cached_features(cache, model.engine, content, (h, w), (layer,))[layer]
    grams: dict[str, torch.Tensor] = {}
    for weight, style in zip(blend_weights(len(styles), config), styles):
        sh, sw = fit_long_side(*style.shape[:2], max(MIN_SIDE, round(max(h, w) * config.style_scale)))
        sh, sw = max(sh, MIN_SIDE), max(sw, MIN_SIDE)
        style_grams = cached_grams(cache, model.engine, style, (sh, sw), STYLE_LAYERS,
                                   config.style_scale)
        for name in STYLE_LAYERS:
            g = weight * torch.from_numpy(style_grams[name])
            grams[name] = grams[name] + g if name in grams else g
    device = model.device
    return Targets(torch.from_numpy(content_feat).to(device),
                   {k: v.to(device) for k, v in grams.items()})


class Objective:
    """Total loss alpha*content + beta*style + gamma*tv of an image, with its parts."""

    def __init__(self, model: StyleModel, targets: Targets, config: Config, dtype: torch.dtype):
        self.net, self.targets, self.config, self.dtype = model.net, targets, config, dtype
        self.device = model.device
        self.layer_weights = style_layer_weights(config)
        self.layers = tuple(n for n in STYLE_LAYERS if self.layer_weights[n] > 0 and
                            config.style_weight > 0)
        self.content_layer = config.content_layer
        if config.content_weight > 0:
            self.layers += (self.content_layer,)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # channels_last convolutions are faster here; the optimised image stays NCHW because
        # torch.optim.LBFGS cannot view a channels_last parameter.
        x = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            feats = self.net(x, self.layers)
        zero = image.new_zeros(())
        parts = {"content": zero, "style": zero, "tv": zero}
        if self.content_layer in feats and self.config.content_weight > 0:
            parts["content"] = losses.content_loss(feats[self.content_layer], self.targets.content)
        for name in STYLE_LAYERS:
            if name in feats and name in self.layers:
                layer_loss = losses.style_layer_loss(losses.gram(feats[name]),
                                                     self.targets.grams[name])
                parts[name] = layer_loss
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


def optimise(objective: Objective, image: torch.Tensor, evaluations: int, config: Config,
             report: Callable[[int, float, dict, torch.Tensor], None],
             cancel: CancelToken, tolerance: float = 0.0) -> tuple[torch.Tensor, int]:
    """Run up to `evaluations` loss+gradient evaluations of L-BFGS or Adam on `image`'s pixels.

    torch.optim.LBFGS with max_iter=1 per step() keeps its history across steps, so each step is
    exactly one evaluation: progress and cancel are checked at every one. Stops early when the
    loss stops falling (`should_stop` with `tolerance`). Returns the image after the last step
    (never the unmoved start, even after one evaluation) and the number of evaluations made.
    """
    x = image.clone().requires_grad_(True)
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

    def closure():
        opt.zero_grad(set_to_none=True)
        total, parts = objective(x)
        if not torch.isfinite(total):
            raise NumericalError("The loss became NaN or infinite; lower --style-weight or "
                                 "--learning-rate, or use --precision fp32.")
        total.backward()
        last["total"], last["parts"] = total.detach(), {k: v.detach() for k, v in parts.items()}
        return total

    done = 0
    for done in range(1, evaluations + 1):
        if is_cancelled(cancel):
            raise Cancelled("Cancelled.")
        opt.step(closure)
        history.append(float(last["total"]))
        report(done, history[-1], last["parts"], x)
        if should_stop(history, tolerance):
            break
    return x.detach(), done


def evaluate(model: StyleModel, image: np.ndarray, targets: Targets, config: Config) -> dict:
    """Loss figures of a finished image, computed by ONNX Runtime in float32."""
    layers = tuple(dict.fromkeys(STYLE_LAYERS + (config.content_layer,)))
    feats = model.engine.features(image.transpose(2, 0, 1)[None], layers)
    content = float(np.mean((feats[config.content_layer] - targets.content.cpu().numpy()) ** 2))
    per_layer = {}
    for name in STYLE_LAYERS:
        g = losses.gram(torch.from_numpy(feats[name]))
        per_layer[name] = float(losses.style_layer_loss(g, targets.grams[name].cpu()))
    weights = style_layer_weights(config)
    style = sum(weights[n] * v for n, v in per_layer.items())
    tv = float(losses.tv_loss(to_tensor(image)))
    total = config.content_weight * content + config.style_weight * style + config.tv_weight * tv
    return {"total_loss": total, "content_loss": content, "style_loss": style,
            "style_loss_per_layer": per_layer, "tv_loss": tv}


def stylize(content, style_or_styles, *, config: Config | None = None,
            model: StyleModel | str | None = None,
            callback: Callable[[Progress], None] | None = None,
            cancel: CancelToken = None) -> StylizeResult:
    """Stylize `content` with one style or several (path, PIL image, array or Picture each).

    Returns a StylizeResult with the image at the working size (long side `config.size`) and the
    final metrics. Raises UserError for bad input, Cancelled when `cancel` fires (checked at
    every evaluation), NumericalError if the loss diverges. Same seed and inputs -> same bytes.
    """
    started = time.perf_counter()
    config = (config or Config()).validate()
    styles_in = ([style_or_styles] if isinstance(style_or_styles, (str, bytes)) or
                 not isinstance(style_or_styles, Sequence) else list(style_or_styles))
    if not styles_in:
        raise UserError("Give at least one style image.")
    content_pic = load_image(content, "content")
    style_pics: list[Picture] = [load_image(s, f"style {i + 1}") for i, s in enumerate(styles_in)]
    for picture in [content_pic, *style_pics]:
        check_min_side(picture)
    if not isinstance(model, StyleModel):
        model = load_model(model, config.device)
    dtype = resolve_precision(config.precision, model.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    sizes = scale_sizes(content_pic.height, content_pic.width, config)
    if min(sizes[-1]) < MIN_SIDE:
        raise UserError(f"At --size {config.size} the content's short side is under {MIN_SIDE} px; "
                        "raise --size.")
    image = initial_image(content_pic.rgb, sizes[0], config, generator)
    styles = [p.rgb for p in style_pics]
    evaluations = 0
    for k, size in enumerate(sizes, start=1):
        final = k == len(sizes)
        count = config.schedule_value("iterations" if final else "coarse_iterations")
        targets = compute_targets(model, content_pic.rgb, styles, size, config)
        image = torch.nn.functional.interpolate(image, size=size, mode="bilinear",
                                                align_corners=False)
        objective = Objective(model, targets, config, dtype)

        def report(i, total, parts, x, k=k, count=count, size=size):
            if callback is not None:
                callback(Progress("optimise", k, len(sizes), i, count, size, total,
                                  float(parts["content"]), float(parts["style"]),
                                  float(parts["tv"]), image=lambda: to_array(x),
                                  pixels=lambda: x.detach().clone()))

        image, done = optimise(objective, image.to(model.device), count, config, report, cancel,
                               tolerance=config.schedule_value("tolerance"))
        evaluations += done
    result = to_array(image)
    metrics = evaluate(model, result, targets, config)
    alpha = None
    if content_pic.alpha is not None:
        alpha = resize_array(content_pic.alpha, *result.shape[:2])
    metrics.update(iterations=evaluations, seconds=round(time.perf_counter() - started, 3),
                   device=str(model.device), precision=str(dtype).replace("torch.", ""),
                   weights_source=model.weights_source, model=str(model.path),
                   sizes=[list(s) for s in sizes])
    return StylizeResult(result, alpha, metrics)
