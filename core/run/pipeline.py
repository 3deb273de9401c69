"""The pipeline, one for both engines: load and check the inputs -> plan the levels (sizes,
evaluations, tiles where memory asks) -> balance the loss -> per level, coarse to fine: the
engine's targets and minimised pixels, guides composited -> final figures, colour, alpha,
metrics. Gatys et al.'s method: pixels optimised by L-BFGS (or Adam) against content and style.

An engine (core/engines: torch, or the torch-free onnx) supplies a runner: its pixels, a level's
targets and minimiser, the final figures. This module imports no torch itself.
"""

from __future__ import annotations

import contextlib
import functools
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import engines, notes
from ..engines.steps import CancelToken, check_hooks
from ..errors import Cancelled, UserError
from ..io.images import (
    Picture,
    array_text,
    centre_of_shape,
    check_min_side,
    fit_long_side,
    load_image,
    one_or_many,
    resize_array,
    save_image,
)
from ..method import balance, color, fullres, guides, margin, tiling
from ..method.config import Config, given_config
from ..method.fullres import UPSCALE_MODES, check_upscale
from ..method.objective import check_finite
from ..method.targets import blend_weights, load_style, style_array, target_arrays
from ..network.vgg import MIN_SIDE

if TYPE_CHECKING:
    import torch

    from ..engines.torch.model import StyleModel


@dataclass
class Progress:
    """What a callback gets at every evaluation; `image()` renders that evaluation's result on
    request, inside the callback (a Progress kept past it keeps its figures only)."""

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
    # The optimised pixels as they are, unclipped, margin included (benchmarks judge the
    # optimiser's own variable).
    pixels: Callable[[], torch.Tensor] = field(repr=False, default=lambda: None)
    # Whether this level's evaluations run compiled (the runner's `compiles`): run/eta.py keeps
    # compiled and eager speeds apart.
    compiled: bool = False

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

    def save(self, path: str | Path, bits: int = 8, log: Callable[[str], None] | None = None) -> Path:
        """Write the image (with its alpha) atomically, the format from the suffix; `bits` 16 for
        .png/.tif (.npy keeps float32). Returns the path written; UserError for a bad one.
        `log` (as stylize's: the `stylefu` logger by default) is told when .jpg drops the alpha."""
        return save_image(path, self.image, self.alpha, bits=bits, log=log or notes.to_logger)

    def __repr__(self) -> str:
        # Shapes and the headline figures: the arrays' and metrics' own reprs fill a terminal.
        headline = {k: self.metrics[k] for k in ("total_loss", "evaluations", "seconds")
                    if k in self.metrics}
        return (f"StylizeResult(image={array_text(self.image)}, alpha={array_text(self.alpha)}, "
                f"metrics={{{', '.join(f'{k!r}: {v!r}' for k, v in headline.items())}, ...}})")


@dataclass(frozen=True)
class Level:
    """One level of the coarse-to-fine schedule: its number (1 = coarsest), the canvas it paints
    (h, w: the working size plus `margin` mirrored px on each side, method/margin.py), evaluation
    budget, and crop side (0: optimised whole)."""

    number: int
    size: tuple[int, int]
    evaluations: int
    crop_side: int
    margin: int = 0

    @property
    def picture(self) -> tuple[int, int]:
        """The working size (h, w) inside the margin."""
        return self.size[0] - 2 * self.margin, self.size[1] - 2 * self.margin

    def canvas(self, array: np.ndarray) -> np.ndarray:
        """A picture (content, guide) at this level's working size with its mirrored margin."""
        return margin.pad(resize_array(array, *self.picture), self.margin)


def level_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine; the coarsest keeps at least 64 px on its short side."""
    full = fit_long_side(height, width, config.size)
    sizes = [full]
    for _ in range(config.planned_levels() - 1):
        h, w = sizes[0]
        if min(h, w) // 2 < max(64, MIN_SIDE):
            break
        sizes.insert(0, (h // 2, w // 2))
    return sizes


def check_working_size(height: int, width: int, config: Config) -> None:
    """UserError when --size makes the content's short side too small for the network, naming
    the smallest --size that works (a long strip needs a much larger one)."""
    needed = least_long_side(height, width, config.size)
    if needed > config.size:
        raise UserError(f"At --size {config.size} the content ({width}x{height} px) has a short "
                        f"side under {MIN_SIDE} px; use --size {needed} or more.")


def least_long_side(height: int, width: int, at_least: int) -> int:
    """The smallest long side from `at_least` on at which a `height` x `width` picture keeps its
    short side at MIN_SIDE or more (a long strip needs a much larger one)."""
    needed = at_least
    while min(fit_long_side(height, width, needed)) < MIN_SIDE:
        needed = max(needed + 1, round(needed * MIN_SIDE / min(fit_long_side(height, width, needed))))
    while needed > at_least + 1 and min(fit_long_side(height, width, needed - 1)) >= MIN_SIDE:
        needed -= 1
    return needed


def canvas_sizes(height: int, width: int, config: Config) -> list[tuple[int, int]]:
    """What each level paints, coarse to fine: its working size with the mirrored margin."""
    sizes = level_sizes(height, width, config)
    return [margin.padded(size, m) for size, m in zip(sizes, margin.level_margins(sizes))]


def plan_levels(height: int, width: int, config: Config, device: torch.device) -> list[Level]:
    sizes = level_sizes(height, width, config)
    margins = margin.level_margins(sizes)
    canvases = canvas_sizes(height, width, config)
    # Whether a level is tiled goes by its picture: a margin alone does not tile a level that fits.
    return [Level(k, canvas, config.level_evaluations(final=k == len(sizes)),
                  tiling.choose_crop_side(*size, config.crop_side, config.optimizer, device), m)
            for k, (size, canvas, m) in enumerate(zip(sizes, canvases, margins), start=1)]


def balanced(config: Config, model: StyleModel, content: np.ndarray, styles: Sequence[np.ndarray],
             size: tuple[int, int]) -> Config:
    """`config` with its loss weights set (core/method/balance.py) from the targets at the first level's
    `size` (at most 512 px: a tiled level has no whole-image pass; a long strip's more, its short
    side at the network's least). The target cache makes the level's own targets free afterwards."""
    if config.plain_loss:
        return balance.normalised_weights(config, None, {})
    size = fit_long_side(*size, least_long_side(*size, min(512, max(size))))
    content_features, grams = target_arrays(model, content, styles, size, config)
    return balance.normalised_weights(config, content_features, grams)


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


def check_content(picture: Picture) -> None:
    """A content the network can read (check_min_side) with something to show."""
    check_min_side(picture)
    if picture.alpha is not None and picture.alpha.max() <= 0:
        raise UserError(f"{picture.name} is transparent everywhere, so its result would be "
                        "invisible; give a picture with visible pixels.")


def load_inputs(content, style_or_styles, masks, config: Config):
    """The content and style Pictures and the guides' arrays, checked (both engines)."""
    styles_in = one_or_many(style_or_styles)
    if not styles_in:
        raise UserError("Give at least one style image.")
    content_pic = load_image(content, "content")
    style_pics: list[Picture] = [load_style(s, f"style {i + 1}") for i, s in enumerate(styles_in)]
    check_content(content_pic)
    blend_weights(len(style_pics), config)  # a weight count that does not match fails early
    mask_arrays = [guides.load_mask(m, f"mask {i + 1}")
                   for i, m in enumerate(one_or_many(masks) if masks is not None else [])]
    if mask_arrays:
        guides.check_masks(mask_arrays, len(style_pics), content_pic.height, content_pic.width,
                           content_pic.alpha)
    return content_pic, style_pics, mask_arrays


def start_image(path: str, content: Picture, log: Callable[[str], None]) -> Picture:
    """The --init image, its centre cut to the content's aspect ratio where that differs by more
    than rounding (a resize alone would stretch it), and said so."""
    init = load_image(path, "--init")
    check_min_side(init)
    rgb = centre_of_shape(init.rgb, content.height, content.width)
    h, w = rgb.shape[:2]
    if init.height - h + init.width - w <= max(2, 0.01 * max(init.height, init.width)):
        return init
    log(f"--init {Path(path).name} is {init.width}x{init.height} px, the content "
        f"{content.width}x{content.height}: its centre {w}x{h} starts the run (not stretched).")
    return Picture(rgb, None, init.name)


def _checked_inputs(content, style_or_styles, masks, config: Config, keep_size: bool, model,
                    log: Callable[[str], None]):
    """load_inputs, the run's config (`keep_size`: its working size at most the content's long
    side), the engine's runner (not loaded), the --init Picture (or None), and what they and the
    plan refuse (memory, --size too small, the engine's own limits): every check that needs no
    model."""
    content_pic, style_pics, mask_arrays = load_inputs(content, style_or_styles, masks, config)
    for note in dict.fromkeys(n for p in (content_pic, *style_pics) for n in p.notes):
        log(note)  # once, though one file be content and style
    init = None  # a --init file that is no image fails here, not after loading
    if config.init not in ("content", "noise"):
        init = start_image(config.init, content_pic, log)
    if keep_size:
        config = fullres.working_config(config, content_pic.height, content_pic.width)
    runner = engines.runner(config, model, log)
    runner.check(content_pic, style_pics)
    check_working_size(content_pic.height, content_pic.width, config)
    return content_pic, style_pics, mask_arrays, config, runner, init


def check_inputs(content, style_or_styles, masks, config: Config, keep_size: bool = False):
    """The content and style Pictures and the guides' arrays (as `stylize` takes them), after
    every check a run makes before its model loads: a command calls it before loading the model,
    so a bad input is refused in one sentence without a model's load or an engine line."""
    checked = _checked_inputs(content, style_or_styles, masks, config, keep_size, None,
                              notes.to_logger)
    return checked[:3]


def _memory_given_back(run):
    """`run`, then the C heap's freed pages given back, whether it returns or raises (a cancelled
    preview too): a new image shape every run would otherwise grow a long-lived process."""
    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except Cancelled as exc:  # its frames' arrays freed now, so that the trim gets them too
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            tiling.release_freed_memory()
    return wrapped


@_memory_given_back
def stylize(content, style_or_styles, *, config: Config | None = None,
            model: StyleModel | str | None = None,
            callback: Callable[[Progress], None] | None = None,
            cancel: CancelToken = None, masks: Sequence | None = None,
            log: Callable[[str], None] | None = None, keep_size: bool = False,
            upscale: str = UPSCALE_MODES[0]) -> StylizeResult:
    """Stylize `content` with one style or several (path, PIL image, array or Picture each).

    `masks` (paths, PIL images or [H,W] arrays, white = style) limit where the style applies: one
    mask for all styles (alone or in a list), or one per style (each style painted into its own
    region). Pixels outside every mask stay exactly the content's; gray values blend.

    Returns a StylizeResult with the image at the working size (long side `config.size`) and the
    final metrics. `keep_size`: the image at the content's own size and with its alpha instead,
    painted at `config.size` (or the content's long side if smaller) and brought up by `upscale`:
    "detail" adds the content's own fine detail, "stretch" only resizes (method/fullres.py).
    Images too large for memory are optimised in tiles. `log(note)` gets the run's notes (tiles,
    compiling; default: the `stylefu` logger, at INFO, or WARNING for a note to act on:
    core/notes.py). Raises UserError for bad input or when memory runs out anyway, Cancelled
    when `cancel` fires (checked at every evaluation), NumericalError if the loss diverges. Same
    seed and inputs -> same bytes.
    """
    started = time.perf_counter()
    config = given_config(config)
    check_hooks(callback, cancel)
    check_hooks(log, None, "log")
    check_upscale(upscale, keep_size)
    log = log or notes.to_logger
    content_pic, style_pics, mask_arrays, config, runner, init = _checked_inputs(
        content, style_or_styles, masks, config, keep_size, model, log)
    if config.paints_nothing:
        log(f"{'--style-weight' if config.plain_loss else '--strength'} 0 keeps the content as "
            "it is: no evaluation runs.")
    plan = plan_levels(content_pic.height, content_pic.width, config, runner.device)
    final = plan[-1]
    model = runner.load(plan)
    # Colour preservation changes what the optimiser sees (see color.py), matching the colours of
    # the part each style paints; a content's transparent pixels show the optimiser the visible
    # colours around them (guides.fill_hidden).
    visible = guides.visible_part(content_pic.alpha)
    content_seen = guides.fill_hidden(content_pic.rgb, visible)
    painted = () if config.preserve_colors == "none" else guides.within(
        [resize_array(m, content_pic.height, content_pic.width) for m in mask_arrays], visible)
    content_rgb, styles = color.prepare(config.preserve_colors, content_seen,
                                        [style_array(p) for p in style_pics], painted)
    keep = balance.detail_kept(config.strength)  # (balanced() turns the strength into weights)
    config = balanced(config, model, plan[0].canvas(content_rgb), styles, plan[0].size)
    runner.config = config
    x = initial_pixels(runner, content_rgb if init is None else init.rgb, plan[0], config)
    evaluations, coarser = 0, None
    for level in plan:
        # Each level paints a canvas: the content and guides with a mirrored margin (margin.py).
        content_canvas = level.canvas(content_rgb)
        masks_canvas = [level.canvas(m) for m in mask_arrays]
        style_guides = guides.within(masks_canvas, None if visible is None else level.canvas(visible))
        with _memory_guard(level.picture, runner.device):
            x = runner.resize(x, level.size)
            if keep and coarser is not None:  # the content's detail the enlargement lacks
                x = x + keep * (runner.pixels(content_canvas)
                                - runner.resize(runner.pixels(coarser), level.size))
            coarser = content_canvas
            x, done = runner.run_level(level, x, content_canvas, styles, style_guides,
                                       _reporter(runner, level, len(plan), callback), cancel)
            evaluations += done
            if mask_arrays:  # outside every guide the content, exactly; soft edges blend
                x = guides.composite(x, runner.pixels(content_canvas),
                                     runner.pixels(guides.union(masks_canvas)))
    with _memory_guard(final.picture, runner.device):
        result = runner.image(x)
        metrics = runner.measure(result, content_canvas, tiled=bool(final.crop_side))
        result = margin.crop(result, final.margin)
    check_finite(metrics["total_loss"])  # the final figures too: no NaN reported
    result = color.finish(config.preserve_colors, result, resize_array(content_seen,
                                                                       *result.shape[:2]))
    alpha = None
    if content_pic.alpha is not None:
        alpha = resize_array(content_pic.alpha, *result.shape[:2])
    if keep_size:
        upscale_started = time.perf_counter()
        result = fullres.to_layer_size(result, content_seen, detail=upscale == "detail")
        if mask_arrays:  # outside every guide the content, exactly, at its own size too
            region = guides.union([resize_array(m, content_pic.height, content_pic.width)
                                   for m in mask_arrays])
            result = guides.composite(result, content_pic.rgb, region[..., None])
        alpha = content_pic.alpha
        metrics.update(upscale=upscale,
                       upscale_seconds=round(time.perf_counter() - upscale_started, 3))
    metrics.update(evaluations=evaluations, iterations=evaluations,
                   seconds=round(time.perf_counter() - started, 3),
                   weights_source=model.weights_source, model=str(model.path),
                   sizes=[list(level.picture) for level in plan],
                   tiles={f"{lv.picture[1]}x{lv.picture[0]}": lv.crop_side
                          for lv in plan if lv.crop_side},
                   loss_weights=balance.weights_record(config))
    return StylizeResult(result, alpha, metrics)


def initial_pixels(runner, start: np.ndarray, level: Level, config: Config):
    """The first level's start in the engine's pixels: noise, or `start` (the content or the
    --init image) on the level's canvas."""
    if config.init == "noise":
        return runner.noise(*level.size)
    return runner.pixels(level.canvas(start))


def _reporter(runner, level: Level, levels: int, callback):
    """The engines' report(evaluation, loss, parts, pixels) as a Progress for `callback`."""
    def report(i, total, parts, x):
        if callback is None:
            return
        progress = Progress(level.number, levels, i, level.evaluations, level.picture,
                            float(total), float(parts["content"]), float(parts["style"]),
                            float(parts["tv"]),
                            image=lambda: margin.crop(runner.image(x), level.margin),
                            pixels=lambda: runner.copy(x), compiled=runner.compiles(level))
        callback(progress)
        # A Progress kept past its callback keeps its figures, not the pixels: torch steps them
        # in place (a later image() was the last evaluation's), and a copy each would hold every
        # evaluation's pixels for a script keeping them for a loss curve.
        progress.image = progress.pixels = _past_its_evaluation
    return report


def _past_its_evaluation():
    raise UserError("Progress.image() and .pixels() work inside the callback, during their "
                    "evaluation; call them there and keep what they return.")
