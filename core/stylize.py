"""The pipeline: load images -> per level (coarse to fine): targets from ONNX Runtime, the image
optimised with torch (bf16 convolutions where fast, float32 losses) -> final metrics from ONNX
Runtime. Gatys et al.'s method: pixels optimised by L-BFGS (or Adam) against content and style.

`Config.engine` "onnx" (or "auto" without torch installed) hands the run to onnx_engine.py, the
same pipeline without torch; this module imports torch only on the torch path.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import balance, color, guides, tiling
from .config import Config
from .errors import UserError
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
from .objective import Objective, check_finite, evaluate
from .optimise import CancelToken, Optimised, optimise, optimise_tiled
from .targets import blend_weights, region_targets, target_arrays
from .vgg import MIN_SIDE

if TYPE_CHECKING:
    import torch

    from .model import StyleModel



@dataclass
class Progress:
    """What a callback gets at every evaluation; `image()` renders the current result on request."""

    level: int
    levels: int
    evaluation: int
    evaluations: int
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
        """Overall progress 0..1 (each level counted by its share of evaluations)."""
        return self.evaluation / max(1, self.evaluations) if self.levels == 1 else \
            ((self.level - 1) + self.evaluation / max(1, self.evaluations)) / self.levels


@dataclass
class StylizeResult:
    """The stylized image (RGB float32 0..1 [H,W,3], alpha if the content had one) and metrics."""

    image: np.ndarray
    alpha: np.ndarray | None
    metrics: dict

    def save(self, path, bits: int = 8):
        return save_image(path, self.image, self.alpha, bits=bits)


@dataclass(frozen=True)
class Level:
    """One level of the coarse-to-fine schedule: its number (1 = coarsest), working size (h, w),
    evaluation budget, and crop side (0: optimised whole)."""

    number: int
    size: tuple[int, int]
    evaluations: int
    crop_side: int


def level_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine; the coarsest keeps at least 64 px on its short side."""
    full = fit_long_side(height, width, config.size)
    sizes = [full]
    for _ in range(config.schedule_value("levels") - 1):
        h, w = sizes[0]
        if min(h, w) // 2 < max(64, MIN_SIDE):
            break
        sizes.insert(0, (h // 2, w // 2))
    return sizes


def plan_levels(height: int, width: int, config: Config, device: torch.device) -> list[Level]:
    sizes = level_sizes(height, width, config)
    return [Level(k, size, config.schedule_value("evaluations" if k == len(sizes)
                                                 else "coarse_evaluations"),
                  tiling.choose_crop_side(*size, config.crop_side, config.optimizer, device))
            for k, size in enumerate(sizes, start=1)]


def balanced(config: Config, model: StyleModel, content: np.ndarray, styles: Sequence[np.ndarray],
             size: tuple[int, int]) -> Config:
    """`config` with its loss weights set (core/balance.py) from the targets at the first level's
    `size` (at most 512 px: a tiled level has no whole-image pass). The target cache makes the
    level's own targets free afterwards."""
    if config.plain_loss:
        return balance.normalised_weights(config, None, {})
    size = fit_long_side(*size, min(512, max(size)))
    content_features, grams = target_arrays(model, content, styles, size, config)
    return balance.normalised_weights(config, content_features, grams)


def initial_image(content: np.ndarray, size: tuple[int, int], config: Config,
                  generator: torch.Generator) -> torch.Tensor:
    import torch

    h, w = size
    if config.init == "content":
        return to_tensor(resize_array(content, h, w))
    if config.init == "noise":
        return torch.rand((1, 3, h, w), generator=generator)
    return to_tensor(resize_array(load_image(config.init).rgb, h, w))


def check_memory(content: Picture, styles: Sequence[Picture], config: Config, device) -> None:
    """UserError, before anything is allocated, when the run cannot fit in memory even in crops:
    it names the option at fault (--size or --style-scale) and the largest value that fits."""
    budget = tiling.torch_budget(device)
    h, w = fit_long_side(content.height, content.width, config.size)
    need = tiling.least_bytes(h, w, config.optimizer)
    if need > budget:
        fits = tiling.largest_side(h, w, budget, config.optimizer)
        raise UserError(f"--size {config.size} makes the result {w}x{h} px, which needs about "
                        f"{need / 1e9:,.1f} GB even in crops; about {budget / 1e9:.1f} GB are usable "
                        f"on {device}, enough for --size {fits} at most.")
    side = max(MIN_SIDE, round(max(h, w) * config.style_scale))
    for picture in styles:
        sh, sw = fit_long_side(picture.height, picture.width, side)
        need = tiling.FULL_SIZE_COPIES * 12 * sh * sw
        if need > budget:
            raise UserError(f"--style-scale {config.style_scale:g} at --size {config.size} makes "
                            f"{picture.name} {sw}x{sh} px, which needs about {need / 1e9:,.1f} GB; "
                            f"about {budget / 1e9:.1f} GB are usable on {device}: lower either.")


def torch_installed() -> bool:
    """True when torch can be imported here (asked without importing it: 1-2 s saved)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def resolve_engine(name: str, model=None) -> str:
    """'torch' or 'onnx' for Config.engine; a loaded model decides by its kind. `auto`: torch where
    it is installed (it covers every option: tiles, bf16, batches), else onnx. On a CPU without
    bf16 the onnx engine is faster (docs/torch-free-engine.md), but auto never trades an option
    for speed: --engine onnx asks for it."""
    from .onnx_engine import OnnxModel

    if isinstance(model, OnnxModel):
        kind = "onnx"
    elif model is not None and not isinstance(model, (str, bytes, Path)) and hasattr(model, "net"):
        kind = "torch"
    else:
        kind = None
    if name == "auto":
        return kind or ("torch" if torch_installed() else "onnx")
    if name == "torch" and not torch_installed():
        raise UserError("--engine torch needs PyTorch, which is not installed here; use "
                        "--engine onnx (or auto) or install stylefu's full requirements.")
    if kind and kind != name:
        raise UserError(f"The model given was loaded for the {kind} engine, not {name}.")
    return name


def load_engine_model(path, config: Config):
    """The model for config.engine: torch's StyleModel, or the torch-free engine's OnnxModel
    (which never imports torch)."""
    if resolve_engine(config.engine) == "onnx":
        from .onnx_engine import load_onnx_model

        return load_onnx_model(path, config.device)
    from .model import load_model

    return load_model(path, config.device)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text


@contextlib.contextmanager
def _memory_guard(size: tuple[int, int], device: torch.device):
    """Out of memory at `size` becomes one UserError sentence with the fix."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        raise UserError(f"Ran out of memory at {size[1]}x{size[0]} px on {device}; "
                        "set a smaller --crop-side (e.g. 512) or lower --size.") from None


def load_inputs(content, style_or_styles, masks, config: Config):
    """The content and style Pictures and the guides' arrays, checked (both engines)."""
    styles_in = ([style_or_styles] if isinstance(style_or_styles, (str, bytes)) or
                 not isinstance(style_or_styles, Sequence) else list(style_or_styles))
    if not styles_in:
        raise UserError("Give at least one style image.")
    content_pic = load_image(content, "content")
    style_pics: list[Picture] = [load_image(s, f"style {i + 1}") for i, s in enumerate(styles_in)]
    for picture in [content_pic, *style_pics]:
        check_min_side(picture)
    blend_weights(len(style_pics), config)  # a weight count that does not match fails early
    mask_arrays = [guides.load_mask(m, f"mask {i + 1}") for i, m in enumerate(masks or [])]
    if mask_arrays:
        guides.check_masks(mask_arrays, len(style_pics), content_pic.height, content_pic.width)
    return content_pic, style_pics, mask_arrays


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
    if resolve_engine(config.engine, model) == "onnx":
        from .onnx_engine import stylize_onnx  # imports no torch

        return stylize_onnx(content, style_or_styles, config=config, model=model,
                            callback=callback, cancel=cancel, masks=masks, log=log,
                            started=started)
    import torch

    from .compiled import compile_seconds, level_compiled, should_compile
    from .compiled import failure as compiled_failure
    from .model import StyleModel, cpu_has_fast_bf16, load_model, resolve_device, resolve_precision

    content_pic, style_pics, mask_arrays = load_inputs(content, style_or_styles, masks, config)
    check_memory(content_pic, style_pics, config,
                 model.device if isinstance(model, StyleModel) else resolve_device(config.device))
    if not isinstance(model, StyleModel):
        model = load_model(model, config.device)
    dtype = resolve_precision(config.precision, model.device)
    if dtype == torch.bfloat16 and model.device.type == "cpu" and not cpu_has_fast_bf16():
        log("this CPU has no AVX512-BF16 or AMX: bf16 is emulated, about 20x slower than "
            "--precision fp32 (which --precision auto takes here).")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    plan = plan_levels(content_pic.height, content_pic.width, config, model.device)
    final = plan[-1]
    if min(final.size) < MIN_SIDE:
        raise UserError(f"At --size {config.size} the content's short side is under {MIN_SIDE} px; "
                        "raise --size.")
    # Colour preservation changes what the optimiser sees (see color.py).
    content_rgb, styles = color.prepare(config.preserve_colors, content_pic.rgb,
                                        [p.rgb for p in style_pics])
    config = balanced(config, model, content_rgb, styles, plan[0].size)
    image = initial_image(content_rgb, plan[0].size, config, generator)
    # Whole-image levels may run compiled (tiled ones stay eager): decided once per run.
    compiled = should_compile(config.compile, model.device,
                              [(lv.size, lv.evaluations) for lv in plan if not lv.crop_side], log)
    compile_started = compile_seconds()
    evaluations, runs = 0, []
    for level in plan:
        with _memory_guard(level.size, model.device):
            image, run, targets = _run_level(level, len(plan), image, model, content_rgb, styles,
                                             mask_arrays, config, dtype, callback, cancel,
                                             generator, log,
                                             compiled and level_compiled(config.compile, level.size))
        evaluations += run.evaluations
        runs.append((run, targets))
    last_run, last_targets = runs[-1]
    with _memory_guard(final.size, model.device):
        result = to_array(image)
        metrics = evaluate(model, result, last_targets, config, resize_array(content_rgb, *final.size))
    check_finite(torch.tensor(metrics["total_loss"]))  # the final figures too: no NaN reported
    result = color.finish(config.preserve_colors, result, resize_array(content_pic.rgb,
                                                                       *result.shape[:2]))
    alpha = None
    if content_pic.alpha is not None:
        alpha = resize_array(content_pic.alpha, *result.shape[:2])
    metrics.update(evaluations=evaluations, iterations=evaluations,
                   seconds=round(time.perf_counter() - started, 3),
                   device=str(model.device), precision=str(dtype).replace("torch.", ""),
                   engine="torch",
                   weights_source=model.weights_source, model=str(model.path),
                   sizes=[list(level.size) for level in plan],
                   tiles={f"{lv.size[1]}x{lv.size[0]}": lv.crop_side for lv in plan if lv.crop_side},
                   loss_weights=balance.weights_record(config),
                   compiled=compiled and not compiled_failure(),
                   compile_seconds=round(compile_seconds() - compile_started, 3))
    if final.crop_side:
        metrics["seam_ratio"] = tiling.seam_ratio(result, [last_run.cores])
    return StylizeResult(result, alpha, metrics)


def _run_level(level: Level, levels: int, image: torch.Tensor, model: StyleModel,
               content_rgb: np.ndarray, styles: list[np.ndarray], mask_arrays: list[np.ndarray],
               config: Config, dtype: torch.dtype, callback, cancel: CancelToken,
               generator: torch.Generator, log: Callable[[str], None], compiled: bool = False):
    """One level: targets, the image resized to the level, optimised, composited by the guides.
    Returns the image, the optimiser's result and the targets (the last level's are measured).
    `compiled`: a whole-image level evaluates its loss through torch.compile (core/compiled.py)."""
    import torch

    size, side = level.size, level.crop_side
    if side:
        need = tiling.torch_bytes(*size, config.optimizer) / 1e9
        why = ("--crop-side" if config.crop_side else
               f"about {need:.1f} GB needed at once, "
               f"{tiling.torch_budget(model.device) / 1e9:.1f} GB usable")
        log(f"{size[1]}x{size[0]} px is optimised in {side} px tiles ({why}).")
    targets = region_targets(model, content_rgb, styles, size, config, mask_arrays,
                             content_features=not side)
    image = torch.nn.functional.interpolate(image, size=size, mode="bilinear",
                                            align_corners=False).to(model.device)

    def report(i, total, parts, x):
        if callback is not None:
            callback(Progress(level.number, levels, i, level.evaluations, size, total,
                              float(parts["content"]), float(parts["style"]), float(parts["tv"]),
                              image=lambda: to_array(x), pixels=lambda: x.detach().clone()))

    content_at_size = resize_array(content_rgb, *size)
    tolerance = config.schedule_value("tolerance")
    if side:
        run: Optimised = optimise_tiled(model, image, content_at_size, targets, side,
                                        level.evaluations, config, dtype, report, cancel,
                                        generator, tolerance)
    else:
        run = optimise(Objective(model, targets, config, dtype), image, level.evaluations, config,
                       report, cancel, tolerance, compiled=compiled, log=log)
    image = run.image
    if mask_arrays:
        # Outside every guide the content, exactly; soft edges blend.
        region = guides.union([t.mask for t in targets.style_terms()])
        image = guides.composite(image, to_tensor(content_at_size).to(image), region)
    return image, run, targets
