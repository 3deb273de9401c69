"""Style previews: a short real stylization per candidate style plus its numbers, on one sheet.

A full run takes minutes on a CPU; a preview shows in seconds what each candidate style would do
to the content, so the user can choose before paying for the full run. Per style:
- a quick low-resolution stylization: `stylize()` itself, with the caller's config (the same the
  full run would use) at the preview size and, by default, the `draft` schedule;
- the style distance between content and style, computed by ONNX Runtime: per style layer the
  mean squared difference of their Gram matrices, and the layer-weighted total (which is the
  style loss of the unstyled content, the starting point of the optimisation);
- after the preview run, the remaining style and content loss (ONNX Runtime, float32), so styles
  can be compared by numbers as well as by eye.
A style that cannot be read gets a marked empty cell; the others still render.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import jsontext
from ..engines import load_engine_model, model_kind, torch_threads
from ..engines.steps import CancelToken, check_cancel, check_hooks, check_workers, is_cancelled
from ..errors import UserError
from ..io.cache import cached_grams, grams_of_image, target_cache
from ..io.files import atomic_write
from ..io.images import (
    PILLOW_FORMATS,
    SAVE_OPTIONS,
    Picture,
    fit_long_side,
    load_image,
    one_or_many,
    resize_array,
    sheet_mark,
)
from ..io.inputs import expand_inputs
from ..method import balance, guides
from ..method.config import PLAIN_STYLE_WEIGHT, STRENGTH_NEUTRAL, Config, given_config
from ..method.objective import LossSpec
from ..method.targets import load_style, style_array, target_arrays
from ..method.tiling import check_memory, runs_in_memory
from ..network.vgg import STYLE_LAYERS
from .pipeline import check_content, level_sizes, stylize

if TYPE_CHECKING:
    from ..engines.torch.model import StyleModel

AUTO_WORKERS = "auto"  # preview(workers=): as many styles at once as the CPU's threads serve
PREVIEW_SIZE = 192  # long side of each preview in px: about 3 s per style on 2 CPU cores
PREVIEW_PRESET = "draft"


@dataclass
class StylePreview:
    """One style's preview: the stylized image and its numbers, or why the style was skipped."""

    name: str
    source: str
    image: np.ndarray | None = field(default=None, repr=False)
    alpha: np.ndarray | None = field(default=None, repr=False)  # the content's, at image's size
    swatch: np.ndarray | None = field(default=None, repr=False)
    distance: dict[str, float] = field(default_factory=dict)
    distance_total: float | None = None
    style_loss: float | None = None
    content_loss: float | None = None
    style_loss_per_layer: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    failed_stage: str | None = None  # "read" (the file) or "run" (e.g. the loss diverged)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def style_left(self) -> float | None:
        """Remaining style loss as a fraction of the starting distance (lower: better matched)."""
        if self.style_loss is None or not self.distance_total:
            return None
        return self.style_loss / self.distance_total

    @property
    def style_left_percent(self) -> str:
        """style_left as shown: "33.3 %", or "over 100 %" (the content was near the style
        already and the painting moved off it: "16958.7 %" said nothing more)."""
        left = self.style_left
        if left is None:  # no distance to begin with: the content has this style's Grams
            return "-"
        return "over 100 %" if left > 1 else f"{100 * left:.1f} %"

    def figures(self) -> dict:
        """The numbers, for JSON."""
        if not self.ok:
            return {"name": self.name, "source": self.source, "ok": False, "error": self.error,
                    "failed_stage": self.failed_stage}
        return {"name": self.name, "source": self.source, "ok": True,
                "style_distance": {"total": self.distance_total, "per_layer": self.distance},
                "after_preview": {"style_loss": self.style_loss, "content_loss": self.content_loss,
                                  "style_loss_per_layer": self.style_loss_per_layer,
                                  "style_left_fraction": self.style_left},
                "size": list(self.image.shape[:2]), "seconds": round(self.seconds, 3)}


@dataclass
class PreviewResult:
    """All previews of one content image, the contact sheet, and how they were made."""

    content: np.ndarray = field(repr=False)
    content_name: str
    styles: list[StylePreview]
    config: Config
    info: dict
    sheet: Image.Image | None = field(default=None, repr=False)
    content_alpha: np.ndarray | None = field(default=None, repr=False)

    def figures(self) -> dict:
        return {"content": self.content_name, **self.info,
                "config": dataclasses.asdict(self.config),
                "styles": [s.figures() for s in self.styles]}

    def save(self, path: str | Path) -> Path:
        """Write the contact sheet atomically, the format from the suffix (.png, .jpg, ...); `path`:
        a str, bytes or path object."""
        path = Path(os.fsdecode(path))
        suffix = path.suffix.lower()
        if suffix not in PILLOW_FORMATS:
            raise UserError(f"Unknown image type {suffix or '(no suffix)'!r} for {path}; end the "
                            f"name with one of {', '.join(PILLOW_FORMATS)}.")
        fmt = PILLOW_FORMATS[suffix]
        mark = {} if fmt == "BMP" else {"exif": sheet_mark()}
        return atomic_write(path, lambda tmp: self.sheet.save(
            tmp, format=fmt, **mark, **SAVE_OPTIONS.get(fmt, {})))

    def save_json(self, path: str | Path) -> Path:
        """Write the figures as strict JSON (a non-finite number becomes null), atomically."""
        text = jsontext.dumps(self.figures(), indent=2)
        return atomic_write(Path(os.fsdecode(path)), lambda tmp: tmp.write_text(text))


def _folder_or_one(source) -> list:
    """A folder's images (a path naming a folder, as `stylefu preview` takes one), else `source`."""
    if isinstance(source, (str, bytes, os.PathLike)) and os.path.isdir(source):
        return expand_inputs([os.fsdecode(source)])
    return [source]


def _label(source, index: int) -> tuple[str, str]:
    """(short name for the sheet, source for messages) of a style given as path or array."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return Path(os.fsdecode(source)).stem, os.fsdecode(source)
    if isinstance(source, Picture) and source.name:
        return source.name, source.name
    return f"style {index}", f"style {index}"


def style_distance(model: StyleModel, content: np.ndarray, style: np.ndarray,
                   config: Config, image: np.ndarray | None = None,
                   alpha: np.ndarray | None = None) -> tuple[dict[str, float], float]:
    """Gram-matrix distance between content and style at the preview's working size.

    Per style layer: mean squared difference of the two Gram matrices (ONNX Runtime features,
    float32 Gram); total: the sum weighted like the style loss (at the default strength each
    layer relative to its target's magnitude, core/method/balance.py, so styles compare fairly). The
    style is sized exactly as for the optimisation (`style_scale`), and both Grams come from the
    target cache. With `image` (the preview's result), that image's distance to the style instead
    of the content's, weighted the same: the style loss of the picture delivered, on the same
    footing (the run's own figures include its margin, method/margin.py). With the content's
    `alpha` (guides.visible_part), the distance of the visible part, as the run weighs it.
    """
    size = fit_long_side(*content.shape[:2], config.size)
    content_features, grams = target_arrays(model, content, [style], size, config)

    def weighed(rgb):  # the alpha as a fourth channel: guided Grams
        return rgb if alpha is None else np.dstack([rgb, resize_array(alpha, *rgb.shape[:2])])
    if image is None:
        image_grams = cached_grams(target_cache(model), model.engine, weighed(content), size,
                                   STYLE_LAYERS)
    else:  # a one-off picture: not kept in the cache
        image_grams = grams_of_image(model.engine, weighed(image), size, STYLE_LAYERS)
    # losses.style_layer_loss, in numpy (previews need no torch)
    per_layer = {name: float(np.mean(np.square(image_grams[name] - np.asarray(grams[name]),
                                               dtype=np.float64)))
                 for name in STYLE_LAYERS}
    weighted = balance.normalised_weights(config, content_features, grams)
    return per_layer, LossSpec.from_config(weighted).style(per_layer)


def preview(content, styles: Sequence, *, config: Config | None = None,
            model: StyleModel | str | None = None, size: int | None = None,
            on_style: Callable[[StylePreview], None] | None = None,
            cancel: CancelToken = None, workers: int | str | None = 1) -> PreviewResult:
    """Preview each of `styles` (a list, or one alone) on `content` (paths, PIL images, arrays or
    Pictures; a path naming a folder gives the folder's images, in natural order).

    `config` is the full run's configuration (default: `Config(preset="draft")`); the preview
    uses it at `size` px long side (default: `PREVIEW_SIZE`, or `config.size` when a config is
    given without a size). Each style is optimised on its own (no blend). `on_style` is called
    with each finished StylePreview (the CLI prints a line). Raises UserError for zero styles, an
    unreadable content image or when no style can be read; an unreadable style is reported in its
    StylePreview.error and drawn as a marked empty cell. Raises Cancelled when `cancel` (an Event,
    or a function returning True to stop) fires: checked at every evaluation of every style.
    `workers`: styles painted at once (default 1; "auto": `previews_at_once`'s, on a CPU one per
    torch thread, what `stylefu preview` paints); `on_style` is then called as each finishes,
    the result keeps the styles' order. Painting several sets torch's thread count for the whole
    process meanwhile (torch work started in another thread then keeps one thread), hence not
    the library's default.
    """
    started = time.perf_counter()
    check_hooks(on_style, cancel, "on_style")
    if workers != AUTO_WORKERS:
        check_workers(workers)
    styles = [style for given in one_or_many(styles) for style in _folder_or_one(given)]
    if not styles:
        raise UserError("Give at least one style image to preview.")
    config = given_config(config, Config(preset=PREVIEW_PRESET, size=size or PREVIEW_SIZE))
    if size is not None:
        config = config.with_(size=size)
    config = config.with_(style_blend=None).validate()  # one style at a time: no blend
    # A path is named by its file name (load_image's default), anything else "content".
    content_pic = load_image(content, None if isinstance(content, (str, bytes, os.PathLike))
                             else "content")
    check_content(content_pic)
    # The distances weigh the visible part, as the runs do (guides.within).
    visible = guides.visible_part(content_pic.alpha)
    content_seen = guides.fill_hidden(content_pic.rgb, visible)
    model = load_engine_model(model, config)  # a path (or None) loads; a loaded model stays
    check_memory(content_pic, [], config, model.device)

    paint = functools.partial(_preview_one, content_pic, content_seen, visible, config, model)
    at_once, threads_each = previews_at_once(len(styles), config, model, workers)
    if at_once == 1:
        previews = []
        for index, source in enumerate(styles, start=1):
            previews.append(paint(index, source, cancel))
            if on_style is not None:
                on_style(previews[-1])
    else:
        with torch_threads(threads_each):
            previews = _painted_at_once(paint, styles, at_once, on_style, cancel)
    if not any(p.ok for p in previews):
        raise UserError(f"None of the {len(previews)} style image(s) could be previewed: "
                        f"{previews[0].error}")
    h, w = fit_long_side(content_pic.height, content_pic.width, config.size)
    levels = level_sizes(content_pic.height, content_pic.width, config)
    info = {"size": [h, w], "levels": [max(size) for size in levels],
            "preset": config.preset, "model": str(model.path),
            "weights_source": model.weights_source,
            "weights_random": model.info.is_random, "provider": model.engine.provider,
            "device": str(model.device), "styles_at_once": at_once,
            "seconds": round(time.perf_counter() - started, 3)}
    alpha = None if content_pic.alpha is None else resize_array(content_pic.alpha, h, w)
    result = PreviewResult(resize_array(content_pic.rgb, h, w), content_pic.name, previews,
                           config, info, content_alpha=alpha)
    result.sheet = contact_sheet(result)
    return result


def previews_at_once(styles: int, config: Config, model: StyleModel,
                     workers: int | str | None = AUTO_WORKERS) -> tuple[int, int]:
    """(styles painted at once, torch threads each) for `workers` (None: 1). "auto": where the
    torch engine runs on the CPU, one style per torch thread, as many as the memory holds: a
    small preview uses a second thread poorly, a second style fully (docs/speed.md, "Preview
    speed"). Elsewhere one: a GPU runs one style at a time, and the torch-free engine's sessions
    keep their own threads."""
    threads = sys.modules["torch"].get_num_threads() if model_kind(model) == "torch" else 1
    if workers == AUTO_WORKERS:
        workers = (min(threads, runs_in_memory(config)) if str(model.device) == "cpu" else 1)
    at_once = max(1, min(workers or 1, styles))
    return at_once, max(1, threads // at_once)


def _preview_one(content_pic: Picture, content_seen: np.ndarray, visible, config: Config,
                 model: StyleModel, index: int, source, cancel: CancelToken) -> StylePreview:
    """One style's preview (its image and figures, or why it failed); Cancelled passes through."""
    check_cancel(cancel)
    name, where = _label(source, index)
    item = StylePreview(name, where)
    t0 = time.perf_counter()
    try:
        picture = load_style(source, name)
    except UserError as exc:
        item.error, item.failed_stage = str(exc), "read"
    else:
        item.swatch = on_paper(picture.rgb, picture.alpha)
        try:
            check_memory(content_pic, [picture], config, model.device)
            item.distance, item.distance_total = style_distance(
                model, content_seen, style_array(picture), config, alpha=visible)
            result = stylize(content_pic, picture, config=config, model=model, cancel=cancel)
        except UserError as exc:  # e.g. NumericalError: this style fails, the others go on
            item.error, item.failed_stage = str(exc), "run"
        else:
            item.image, item.alpha = result.image, result.alpha
            item.style_loss_per_layer, item.style_loss = style_distance(
                model, content_seen, style_array(picture), config, image=result.image,
                alpha=visible)
            item.content_loss = result.metrics["content_loss"]
    item.seconds = time.perf_counter() - t0
    return item


def _painted_at_once(paint: Callable, styles: list, at_once: int,
                     on_style: Callable[[StylePreview], None] | None,
                     cancel: CancelToken) -> list[StylePreview]:
    """`paint` (index, source, cancel) for each style, `at_once` in threads; the previews in the
    styles' order, `on_style` called in this thread as each finishes. A cancel, or an error in
    one style or in `on_style`, stops the others at their next evaluation and is raised."""
    stop = threading.Event()

    def stopped() -> bool:
        return stop.is_set() or is_cancelled(cancel)
    previews: list = [None] * len(styles)
    with ThreadPoolExecutor(at_once, thread_name_prefix="stylefu-preview") as pool:
        futures = {pool.submit(paint, index, source, stopped): index - 1
                   for index, source in enumerate(styles, start=1)}
        try:
            for future in as_completed(futures):
                previews[futures[future]] = future.result()
                if on_style is not None:
                    on_style(previews[futures[future]])
        finally:
            stop.set()
            for future in futures:
                future.cancel()
    return previews


# ---------------------------------------------------------------------------------------------
# The contact sheet: one column per image, in rows (sheet_columns). In each row, top: style
# swatches; middle: the content, then each preview at the same size (so the eye compares them
# side by side); bottom: figures.

INK, MUTED, PAPER, PANEL = (30, 30, 30), (105, 105, 105), (255, 255, 255), (236, 236, 236)
BAR, BAR_LEFT, ERROR = (70, 110, 190), (220, 140, 40), (200, 40, 40)
PAD = 12
MAX_ONE_ROW, SHEET_COLUMNS = 8, 6  # previews in one row at most, else per row at most


def balance_label(config: Config) -> str:
    """The run's style/content balance in words: its strength, or its plain style weight."""
    if config.plain_loss:
        return f"style weight {config.style_weight or PLAIN_STYLE_WEIGHT:g}"
    return f"strength {STRENGTH_NEUTRAL if config.strength is None else config.strength:g}"


@functools.cache  # a TrueType font loads each time otherwise
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def on_paper(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """A picture as the sheet shows it: its transparent parts the sheet's paper (white)."""
    if alpha is None:
        return rgb
    return rgb * alpha[..., None] + np.asarray(PAPER, np.float32) / 255 * (1 - alpha[..., None])


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))


def _fit(image: Image.Image, box: tuple[int, int], crop: bool) -> Image.Image:
    """Scale `image` into box (w, h): cropped to fill it, or letterboxed on the panel colour."""
    bw, bh = box
    if crop:
        scale = max(bw / image.width, bh / image.height)
    else:
        scale = min(bw / image.width, bh / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.LANCZOS)
    cell = Image.new("RGB", box, PANEL)
    cell.paste(image, ((bw - size[0]) // 2, (bh - size[1]) // 2))
    return cell


def _clip_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, lines: int) -> list[str]:
    words, out, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width:
            line = trial
        else:
            out.append(line)
            line = word
    out.append(line)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = _clip_text(draw, out[-1] + " ...", font, width)
    return out


def _mark_missing(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    """An empty cell crossed out in red: this style could not be read."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=(250, 228, 228), outline=ERROR, width=3)
    draw.line((x0, y0, x1, y1), fill=ERROR, width=3)
    draw.line((x0, y1, x1, y0), fill=ERROR, width=3)


def sheet_columns(styles: int) -> int:
    """Previews per row of the sheet: all in one up to MAX_ONE_ROW, else balanced rows of at
    most SHEET_COLUMNS (a folder of 30 styles made one row 5,000 px wide)."""
    if styles <= MAX_ONE_ROW:
        return max(1, styles)
    rows = -(-styles // SHEET_COLUMNS)
    return -(-styles // rows)


def contact_sheet(result: PreviewResult) -> Image.Image:
    """Render `result` as one picture: rows of swatches and previews, each row starting with the
    content, names and figures under each."""
    h, w = result.info["size"]
    scale = max(160, min(320, max(h, w))) / max(h, w)  # cells 160..320 px on the long side
    cw, ch = max(120, round(w * scale)), round(h * scale)
    title_f, small_f = _font(20), _font(12)
    ok = [p for p in result.styles if p.ok]
    top = max(p.distance_total for p in ok) or 1.0
    columns = sheet_columns(len(result.styles))
    rows = -(-len(result.styles) // columns)
    title_h, name_h, figures_h = 56, 26, 222
    row_h = name_h + ch + PAD + ch + PAD + figures_h + PAD
    width = PAD + (columns + 1) * (cw + PAD)
    sheet = Image.new("RGB", (width, title_h + rows * row_h), PAPER)
    draw = ImageDraw.Draw(sheet)

    info, cfg = result.info, result.config
    draw.text((PAD, 10), "stylefu preview", font=title_f, fill=INK)
    weights = info["weights_source"]
    levels = "/".join(str(px) for px in info["levels"])
    sub = (f"{w}x{h} px, preset {cfg.preset} (levels {levels} px), "
           f"{balance_label(cfg)}, colours: {cfg.preserve_colors}, weights: {weights}"
           + (f", {info['styles_at_once']} styles at a time" if info["styles_at_once"] > 1 else "")
           + ("  (RANDOM: weak effect)" if info["weights_random"] else ""))
    draw.text((PAD, 34), _clip_text(draw, sub, small_f, width - 2 * PAD), font=small_f, fill=MUTED)
    content = _fit(_to_pil(on_paper(result.content, result.content_alpha)), (cw, ch), crop=False)
    for row in range(rows):
        y = title_h + row * row_h
        _content_column(draw, sheet, result, content, (cw, ch), y, y + name_h, legend=row == 0)
        for column in range(columns):
            index = row * columns + column
            if index < len(result.styles):
                _style_column(draw, sheet, result.styles[index], index + 1, top, (cw, ch),
                              PAD + (column + 1) * (cw + PAD), y, y + name_h)
    return sheet


def _content_column(draw, sheet, result: PreviewResult, content: Image.Image, cell, y_name: int,
                    y_swatch: int, legend: bool) -> None:
    """A row's first column: the content, level with the previews (and the legend, once)."""
    (cw, ch), x = cell, PAD
    y_main = y_swatch + ch + PAD
    text_f, small_f = _font(14), _font(12)
    draw.text((x, y_name), "content", font=_font(16), fill=INK)
    sheet.paste(content, (x, y_main))
    if legend:
        lines = ["top: the style image", "middle: content, then each", "  style's quick preview",
                 "", "style distance: Gram MSE", "  content <-> style (ONNX RT);",
                 "  bar: relative to the largest", "style left: loss after the",
                 "  preview / distance", "content: content loss after"]
        for i, line in enumerate(lines):
            draw.text((x, y_main + ch + PAD + i * 17), line, font=small_f, fill=MUTED)
    if result.content_name != "content":
        draw.text((x, y_swatch + ch // 2 - 20), _clip_text(draw, result.content_name, text_f, cw),
                  font=text_f, fill=INK)
    draw.text((x, y_swatch + ch // 2 + 4), "styles ->", font=text_f, fill=MUTED)


def _style_column(draw, sheet, p: StylePreview, index: int, top: float, cell, x: int,
                  y_name: int, y_swatch: int) -> None:
    """One style's column: its name, swatch, preview and figures (or, failed, why)."""
    cw, ch = cell
    y_main = y_swatch + ch + PAD
    y = y_main + ch + PAD
    name_f, text_f, small_f = _font(16), _font(14), _font(12)
    draw.text((x, y_name), _clip_text(draw, f"{index}. {p.name}", name_f, cw), font=name_f,
              fill=INK if p.ok else ERROR)
    if not p.ok:
        if p.swatch is None:
            _mark_missing(draw, (x, y_swatch, x + cw - 1, y_swatch + ch - 1))
        else:
            sheet.paste(_fit(_to_pil(p.swatch), (cw, ch), crop=True), (x, y_swatch))
        _mark_missing(draw, (x, y_main, x + cw - 1, y_main + ch - 1))
        draw.text((x, y), "NOT READ" if p.failed_stage == "read" else "FAILED", font=name_f,
                  fill=ERROR)
        for i, line in enumerate(_wrap(draw, p.error, small_f, cw, 9)):
            draw.text((x, y + 24 + i * 16), line, font=small_f, fill=INK)
        return
    sheet.paste(_fit(_to_pil(p.swatch), (cw, ch), crop=True), (x, y_swatch))
    sheet.paste(_fit(_to_pil(on_paper(p.image, p.alpha)), (cw, ch), crop=False), (x, y_main))
    draw.text((x, y), f"style distance {p.distance_total:.3g}", font=text_f, fill=INK)
    y += 19
    draw.rectangle((x, y, x + cw - 1, y + 9), fill=PANEL)
    draw.rectangle((x, y, x + max(2, round((cw - 1) * p.distance_total / top)), y + 9), fill=BAR)
    y += 16
    draw.text((x, y), f"style left {p.style_left_percent}", font=text_f, fill=INK)
    y += 19
    draw.rectangle((x, y, x + cw - 1, y + 9), fill=PANEL)
    draw.rectangle((x, y, x + max(2, round((cw - 1) * min(1.0, p.style_left or 0.0))), y + 9),
                   fill=BAR_LEFT)
    y += 16
    draw.text((x, y), f"content loss {p.content_loss:.3g}", font=text_f, fill=INK)
    y += 22
    draw.text((x, y), "distance by layer:", font=small_f, fill=MUTED)
    y += 16
    for name in STYLE_LAYERS:
        draw.text((x, y), f"{name}  {p.distance[name]:.2e}", font=small_f, fill=MUTED)
        y += 15
    draw.text((x, y + 2), f"preview made in {p.seconds:.1f} s", font=small_f, fill=MUTED)
