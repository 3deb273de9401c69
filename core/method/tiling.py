"""High resolution: images too large for memory, computed in crops.

- An image is cut into non-overlapping cores (`core_grid`), each computed in a crop with a margin
  of real context around it, and only the core's features are used. Gram matrices are averages
  over positions, so the whole image's are exact sums over the cores (`GramSum`).
- Optimising such an image (optimise.TiledObjective) takes the whole image's loss and gradient
  crop by crop, and one optimiser steps every pixel: the same optimisation as untiled, so no
  crop matches the style on its own and no border is written back.
- Style targets are computed once per level for the whole style (in cores too when it is huge).

Memory is estimated from measured peaks (about linear in pixels, constants below) plus the
optimiser's state, against the memory that is actually free (/proc/meminfo, or CUDA's free
memory). An image that would not fit is tiled automatically and the caller is told.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError
from ..io.images import Picture, fit_long_side
from ..network.vgg import MIN_SIDE, layer_masks, layer_stride

if TYPE_CHECKING:
    import torch

    from .config import Config


# Measured on this project's CPUs (VGG19 to relu5_1): torch forward+backward peaks at ~1.1 GB at
# 512^2 px and ~3.0 GB at 1024^2 px, i.e. ~0.47 GB fixed + ~2.4 kB per pixel.
TORCH_FIXED_BYTES = 0.47e9
TORCH_BYTES_PER_PIXEL = 2.4e3
# ONNX Runtime forward: 0.55 GB at 512^2, up to 2.0 GB at 1024^2 (~0.2 GB + ~1.8 kB per pixel).
ORT_FIXED_BYTES = 0.2e9
ORT_BYTES_PER_PIXEL = 1.8e3
# Optimiser state per pixel (3 float32 channels = 12 bytes): L-BFGS keeps `LBFGS_HISTORY` pairs of
# image-sized vectors; Adam two moments; both a few more copies (image, gradient, direction).
# 50 pairs end as low as 100 (docs/speed.md, "L-BFGS history") in half the memory and less time.
LBFGS_HISTORY = 50
# Share of the free memory a run plans to use: the rest is for full-size arrays and others.
MEMORY_FRACTION = 0.6
# ONNX Runtime keeps its peak in its memory arena for the session's life, alongside what torch
# uses: the plan gives ORT passes this share of the budget and torch the rest, so both fit at once.
ORT_SHARE = 1 / 3
# oneDNN (torch's convolutions and bf16 matmuls on CPUs) keeps up to 1024 primitives, one per
# layer, pass and image shape: a long-lived process meeting new shapes grew by them. 256 holds a
# run's several times over (a 2-level draft run makes 64, a `normal` 512 px one 91), so repeated
# runs of one shape still find all of theirs (an LRU cache smaller than a run's cycle misses all).
ONEDNN_CACHE_CAPACITY = 256
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")
# Squared steps below this (a third of one 8-bit level, squared) count as flat in `seam_ratio`.
SEAM_FLOOR = (1 / 255 / 3) ** 2
TILE_ALIGN = 16  # tiles start on multiples of 16 px: four 2x2 pools map them to whole positions
MIN_CROP_SIDE = 64
CONTEXT_MARGIN = 96  # px of real context around each core of a tiled pass
# A tiled run keeps one optimiser for the whole image. Its L-BFGS history is shorter than
# LBFGS_HISTORY: each pair is two image-sized vectors (10 pairs at 4096x3072 px: 3 GB).
TILED_HISTORY = 10


def torch_bytes(height: int, width: int, optimizer: str = "lbfgs") -> float:
    """Estimated peak memory of optimising a height x width image (forward, backward, state)."""
    pixels = height * width
    return TORCH_FIXED_BYTES + pixels * (TORCH_BYTES_PER_PIXEL + optimiser_bytes_per_pixel(optimizer))


def optimiser_bytes_per_pixel(optimizer: str, history: int = LBFGS_HISTORY, extra: int = 0) -> int:
    """The optimiser's image-sized vectors (`history` pairs for L-BFGS, two moments for Adam, four
    more copies, plus `extra`) in bytes per pixel."""
    vectors = (2 * history if optimizer == "lbfgs" else 2) + 4 + extra
    return vectors * 12


def ort_bytes(height: int, width: int) -> float:
    """Estimated peak memory of one ONNX Runtime forward pass at height x width."""
    return ORT_FIXED_BYTES + height * width * ORT_BYTES_PER_PIXEL


def available_bytes(device: torch.device | str = "cpu") -> float:
    """Memory free for this run now: CUDA's free memory, else MemAvailable from /proc/meminfo
    (Windows: GlobalMemoryStatusEx's available physical memory)."""
    if str(device).startswith("cuda"):  # a CPU run (the torch-free engine's) never imports torch
        import torch

        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    if sys.platform == "win32":
        try:
            return _windows_available_bytes()
        except (OSError, AttributeError):
            pass  # the guess below
    if sys.platform == "darwin":  # no /proc/meminfo, and no SC_AVPHYS_PAGES in its sysconf
        try:
            return _macos_available_bytes()
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
            pass  # the guess below
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8e9  # unknown platform: assume a modest machine


def primitive_cache_env(environ=os.environ) -> dict[str, str]:
    """What a process stylefu starts adds to its environment: oneDNN's primitive cache bounded to
    ONEDNN_CACHE_CAPACITY unless the user chose a capacity (either spelling). oneDNN reads it once,
    when torch first uses it, so only a process's start can set it (docs/speed.md, "Memory over
    many runs")."""
    if any(name in environ for name in ONEDNN_CACHE_VARIABLES):
        return {}
    return {ONEDNN_CACHE_VARIABLES[0]: str(ONEDNN_CACHE_CAPACITY)}


def release_freed_memory() -> None:
    """Give the C heap's freed pages back to the system (glibc's malloc_trim; elsewhere nothing):
    glibc keeps what a run of a new image shape freed, so a long-lived process (a batch worker,
    `stylefu serve`, a script) would grow with every new shape (docs/speed.md, "Memory over many
    runs")."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library or system)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and others have none
        return None


def _windows_available_bytes() -> float:
    """ullAvailPhys of GlobalMemoryStatusEx (what Task Manager calls available)."""
    import ctypes

    class MemoryStatus(ctypes.Structure):  # MEMORYSTATUSEX
        _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32)] + [
            (name, ctypes.c_ulonglong) for name in (
                "ullTotalPhys", "ullAvailPhys", "ullTotalPageFile", "ullAvailPageFile",
                "ullTotalVirtual", "ullAvailVirtual", "ullAvailExtendedVirtual")]

    status = MemoryStatus(dwLength=ctypes.sizeof(MemoryStatus))
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
        raise OSError("GlobalMemoryStatusEx failed")
    return float(status.ullAvailPhys)


def _macos_available_bytes() -> float:
    """Free, inactive and speculative pages from vm_stat: memory macOS hands out without paging
    anything in use out (inactive pages are reclaimable caches)."""
    text = subprocess.run(["/usr/bin/vm_stat"], capture_output=True, text=True, check=True,
                          timeout=10).stdout
    page = int(re.search(r"page size of (\d+) bytes", text)[1])
    pages = {m[1]: int(m[2]) for m in re.finditer(r"^Pages ([\w ]+):\s+(\d+)\.", text, re.M)}
    return float(page * (pages["free"] + pages["inactive"] + pages.get("speculative", 0)))


def budget_bytes(device: torch.device | str = "cpu") -> float:
    """What a run may plan to use: MEMORY_FRACTION of the free memory."""
    return MEMORY_FRACTION * available_bytes(device)


def runs_in_memory(config: Config, device: torch.device | str = "cpu") -> int:
    """How many runs at `config.size` the memory budget holds side by side (at least one): each
    plans on the whole optimiser's budget, plus ONNX Runtime's share."""
    per_run = torch_bytes(config.size, config.size, config.optimizer) / (1 - ORT_SHARE)
    return max(1, int(budget_bytes(device) // per_run))


def torch_budget(device: torch.device | str = "cpu") -> float:
    """The optimiser's part of the budget (ONNX Runtime's arena holds the rest)."""
    return (1 - ORT_SHARE) * budget_bytes(device)


def ort_budget(device: torch.device | str = "cpu") -> float:
    return ORT_SHARE * budget_bytes(device)


def largest_crop_side(fits: Callable[[int], bool], limit: int) -> int:
    """The largest multiple of TILE_ALIGN (at least MIN_CROP_SIDE, at most `limit`) for which `fits`."""
    side = (limit // TILE_ALIGN) * TILE_ALIGN
    while side > MIN_CROP_SIDE and not fits(side):
        side -= TILE_ALIGN
    return max(side, MIN_CROP_SIDE)


def tiled_state_bytes(height: int, width: int, optimizer: str = "lbfgs") -> float:
    """Memory of a tiled run's whole-image optimiser: TILED_HISTORY pairs (or Adam's moments) and
    the usual copies, plus the gradient it assembles crop by crop and the best image so far."""
    return height * width * optimiser_bytes_per_pixel(optimizer, TILED_HISTORY, extra=2)


def choose_crop_side(height: int, width: int, requested: int, optimizer: str,
                device: torch.device | str = "cpu") -> int:
    """Crop side for optimising height x width in crops, or 0 when the whole image fits at once.

    `requested` > 0 is the user's --crop-side (used when the image is larger); 0 means automatic: tile
    only when the estimate exceeds the memory budget, with the largest crop whose forward and
    backward fit beside the whole image's optimiser state.
    """
    if requested > 0:
        return requested if max(height, width) > requested else 0
    budget = torch_budget(device)
    if torch_bytes(height, width, optimizer) <= budget:
        return 0
    left = budget - tiled_state_bytes(height, width, optimizer)
    return largest_crop_side(lambda s: crop_bytes(s) <= left, max(height, width))


# Whole-image float32 RGB arrays a run holds besides the optimiser (content, result, resized
# copies, the masks' composite): counted in `least_bytes` so the check errs on the safe side.
FULL_SIZE_COPIES = 6


def least_bytes(height: int, width: int, optimizer: str = "lbfgs") -> float:
    """The memory a run at height x width needs whatever its crop side: the whole image's
    optimiser state and arrays (a crop's fixed cost is left out: tiling adapts to it)."""
    return tiled_state_bytes(height, width, optimizer) + FULL_SIZE_COPIES * 12 * height * width


def largest_side(height: int, width: int, budget: float, optimizer: str = "lbfgs") -> int:
    """The largest long side (the image's aspect ratio kept) whose `least_bytes` fit `budget`."""
    pixels = budget / (least_bytes(1000, 1000, optimizer) / 1e6)
    return int((pixels * max(height, width) / min(height, width)) ** 0.5)


def crop_bytes(side: int) -> float:
    """Estimated peak memory of a forward and backward pass over a side x side crop."""
    return TORCH_FIXED_BYTES + side * side * TORCH_BYTES_PER_PIXEL


def context_margin(crop_side: int) -> int:
    """Context around each core of a `crop_side` px crop: CONTEXT_MARGIN, at most a quarter of it."""
    return min(CONTEXT_MARGIN, (crop_side // 4) // TILE_ALIGN * TILE_ALIGN)


@dataclass(frozen=True)
class Window:
    """A window [y0, y1) x [x0, x1) of the image."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def core_side(crop_side: int, margin: int) -> int:
    """Side of the cores of `crop_side` px crops with `margin` px of context (a TILE_ALIGN multiple)."""
    return max(TILE_ALIGN, ((crop_side - 2 * margin) // TILE_ALIGN) * TILE_ALIGN)


def core_grid(height: int, width: int, crop_side: int, margin: int, offset: tuple[int, int] = (0, 0)
              ) -> Iterator[tuple[Window, Window]]:
    """Non-overlapping cores covering the image, each with its crop (core + `margin` of context).

    `offset` (multiples of TILE_ALIGN below the core side) shifts the grid: the first row and
    column of cores are that much shorter. Core and crop bounds are multiples of TILE_ALIGN, so
    after k pools a core maps to whole positions of the crop's feature map (the image's last
    row/column aside, floored alike)."""
    core = core_side(crop_side, margin)

    def starts(length: int, shift: int) -> list[int]:
        return [0] + list(range(core - shift, length, core)) if shift else list(range(0, length, core))

    least = min(crop_side, MIN_CROP_SIDE)

    def span(start: int, end: int, length: int) -> tuple[int, int]:
        """The crop around core [start, end): the margin, grown to at least `least` px inside the
        image (a thin core at an edge would leave the network too few pixels to pool; a whole
        crop would cost 3x where crops overlap almost entirely)."""
        lo, hi = max(0, start - margin), min(length, end + margin)
        hi = min(length, max(hi, lo + least))
        lo = max(0, min(lo, hi - least)) // TILE_ALIGN * TILE_ALIGN
        return lo, hi

    ys, xs = starts(height, offset[0]), starts(width, offset[1])
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            c = Window(y, ys[i + 1] if i + 1 < len(ys) else height,
                     x, xs[j + 1] if j + 1 < len(xs) else width)
            yield c, Window(*span(c.y0, c.y1, height), *span(c.x0, c.x1, width))


def core_of(features, core: Window, crop: Window, stride: int):
    """The positions of `core` in [N,C,h,w] features of `crop` (numpy or torch), `stride` px apart."""
    f = stride
    return features[..., (core.y0 - crop.y0) // f:(core.y1 - crop.y0) // f,
                    (core.x0 - crop.x0) // f:(core.x1 - crop.x0) // f]


def tiled_pass(engine, images: list[np.ndarray], layers, crop_side: int, margin: int
               ) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
    """ONNX Runtime features of same-size [H,W,3] `images`, core by core: yields (core, {layer:
    [N,C,h,w] features of the core}) with N = len(images), each core seen with its margin."""
    height, width = images[0].shape[:2]
    margin = (margin // TILE_ALIGN) * TILE_ALIGN
    for core, crop in core_grid(height, width, crop_side, margin):
        ys, xs = crop.slices
        batch = np.stack([im[ys, xs].transpose(2, 0, 1) for im in images])
        feats = engine.features(batch, tuple(layers))
        yield core, {n: core_of(feats[n], core, crop, layer_stride(n)) for n in layers}


class GramSum:
    """Gram matrices accumulated over parts of an image: sums of (weighted) F F^T, one division."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.totals: dict[str, float] = {}

    def add(self, name: str, features: np.ndarray, weights=None) -> None:
        """Add [1,C,h,w] `features` of layer `name`, positions weighted by [1,1,h,w] `weights`
        (an array or a CPU tensor). numpy: the torch-free engine's targets use it too."""
        # float32 products (a part has at most a few million positions), summed in float64; by
        # torch where a run loaded it (numpy's BLAS threads doubled the final figures' CPU time)
        f = np.ascontiguousarray(features, np.float32)
        _, c, h, w = f.shape
        flat = f.reshape(c, h * w)
        wv = None if weights is None else np.asarray(weights, np.float32).reshape(1, h * w)
        torch = sys.modules.get("torch")
        if torch is not None:
            t = torch.from_numpy(flat)
            g = ((t if wv is None else t * torch.from_numpy(wv)) @ t.T).double().numpy()
        else:
            g = ((flat if wv is None else flat * wv) @ flat.T).astype(np.float64)
        total = float(h * w) if wv is None else float(wv.sum(dtype=np.float64))
        self.sums[name] = self.sums[name] + g if name in self.sums else g
        self.totals[name] = self.totals.get(name, 0.0) + total

    def grams(self) -> dict[str, np.ndarray]:
        """G = sum F F^T / (C * total weight), as losses.gram would give for the whole image."""
        return {n: (g / (g.shape[0] * max(self.totals[n], 1e-8))).astype(np.float32)[None]
                for n, g in self.sums.items()}


def core_mask(mask, core: Window, layers) -> dict | None:
    """A [1,1,H,W] image-size mask (a tensor, or an array) cut to `core` and pooled to each
    layer, on the CPU as it came (None stays None)."""
    if mask is None:
        return None
    ys, xs = core.slices
    part = mask[..., ys, xs]
    return layer_masks(part.float().cpu() if hasattr(part, "cpu") else
                       np.asarray(part, np.float32), layers)


def gram_sum(passes: Iterator[tuple[Window, dict[str, np.ndarray]]],
             mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gram matrices of a whole image from its core-by-core `passes` (`feature_passes`,
    `tiled_pass`): what `losses.gram` gives for the full image. With `mask` ([1,1,H,W]) guided."""
    acc = GramSum()
    for core, feats in passes:
        lm = core_mask(mask, core, feats)
        for name, f in feats.items():
            acc.add(name, f, None if lm is None else lm[name])
    return acc.grams()


def ort_crop_side(height: int, width: int, device: torch.device | str = "cpu", images: int = 1) -> int:
    """Crop side for ONNX Runtime passes over `images` images of height x width: 0 when one pass
    fits in ORT's share of the budget, else the largest crop that does (at least big enough for
    its margins)."""
    budget = ort_budget(device)
    if images * ort_bytes(height, width) <= budget:
        return 0
    side = largest_crop_side(lambda s: images * ort_bytes(s, s) <= budget, max(height, width))
    return max(side, 4 * TILE_ALIGN + 2 * CONTEXT_MARGIN)


def feature_passes(engine, images: list[np.ndarray], layers, device: torch.device | str = "cpu"
                   ) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
    """ONNX Runtime features of same-size [H,W,3] `images`: one pass over the whole when it fits
    in ONNX Runtime's budget, else core by core (`tiled_pass`). Yields (core, {layer: [N,C,h,w]})."""
    height, width = images[0].shape[:2]
    side = ort_crop_side(height, width, device, images=len(images))
    if side and max(height, width) > side:
        yield from tiled_pass(engine, images, layers, side, CONTEXT_MARGIN)
        return
    batch = np.stack([im.transpose(2, 0, 1) for im in images])
    yield Window(0, height, 0, width), engine.features(batch, tuple(layers))


def grams(engine, image: np.ndarray, layers, device: torch.device | str = "cpu"
          ) -> dict[str, np.ndarray]:
    """Gram matrices of `image` [H,W,3]: one forward pass when it fits in memory, else in cores;
    an [H,W,4] image's fourth channel weighs its pixels (as cache.cached_grams). No torch."""
    weights = None
    if image.shape[2] == 4:
        weights = np.ascontiguousarray(image[..., 3], np.float32)[None, None]
    rgb = np.ascontiguousarray(image[..., :3])
    return gram_sum(feature_passes(engine, [rgb], layers, device), weights)


def seam_ratio(image: np.ndarray, layouts: list[list[Window]], near: tuple[int, ...] = (-3, -2, 2, 3)
               ) -> float:
    """Gradient energy across tile borders relative to the gradient energy just beside them.

    For every edge of every tile (all layouts) inside the image: the mean squared step between the
    pixel rows (columns) on either side, along the edge's extent, divided by the same step `near`
    px away; the median over edges. About 1: no seam; a seam raises every edge's ratio. Comparing
    with the neighbourhood, and taking the median, keeps the picture's own edges (a roof that
    happens to lie on a tile border) out of the figure; steps far below one 8-bit level
    (`SEAM_FLOOR`) count as flat.
    """
    img = np.asarray(image, np.float64)
    height, width = img.shape[:2]

    def row_step(y, x0, x1):
        return float(((img[y, x0:x1] - img[y - 1, x0:x1]) ** 2).mean())

    def col_step(x, y0, y1):
        return float(((img[y0:y1, x] - img[y0:y1, x - 1]) ** 2).mean())

    ratios = []
    for tiles in layouts:
        for t in tiles:
            edges = [(row_step, y, t.x0, t.x1, height) for y in (t.y0, t.y1)]
            edges += [(col_step, x, t.y0, t.y1, width) for x in (t.x0, t.x1)]
            for step, at, lo, hi, length in edges:
                if not 0 < at < length:
                    continue
                around = [step(at + d, lo, hi) for d in near if 0 < at + d < length]
                if around:
                    ratios.append((step(at, lo, hi) + SEAM_FLOOR) / (np.mean(around) + SEAM_FLOOR))
    return float(np.median(ratios)) if ratios else 1.0


def check_memory(content: Picture, styles: Sequence[Picture], config: Config, device) -> None:
    """UserError, before anything is allocated, when the run cannot fit in memory even in crops:
    it names the option at fault (--size or --style-scale) and the largest value that fits."""
    budget = torch_budget(device)
    h, w = fit_long_side(content.height, content.width, config.size)
    need = least_bytes(h, w, config.optimizer)
    if need > budget:
        fits = largest_side(h, w, budget, config.optimizer)
        raise UserError(f"--size {config.size} makes the result {w}x{h} px, which needs about "
                        f"{need / 1e9:,.1f} GB even in crops; about {budget / 1e9:.1f} GB are usable "
                        f"on {device}, enough for --size {fits} at most.")
    side = max(MIN_SIDE, round(max(h, w) * config.style_scale))
    for picture in styles:
        sh, sw = fit_long_side(picture.height, picture.width, side)
        need = FULL_SIZE_COPIES * 12 * sh * sw
        if need > budget:
            raise UserError(f"--style-scale {config.style_scale:g} at --size {config.size} makes "
                            f"{picture.name} {sw}x{sh} px, which needs about {need / 1e9:,.1f} GB; "
                            f"about {budget / 1e9:.1f} GB are usable on {device}: lower either.")
