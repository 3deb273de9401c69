"""The result at the layer's own size (`--keep-size`, the GIMP plug-ins): the painting made at the
working size, carried up to the layer's size with the layer's own fine detail, and the sharpness
figure that judges it (docs/gimp.md, "The result at the layer's size", with figures).

The detail is what the working size cannot hold: the layer's luminance minus the same luminance
taken down to the working size and back up. Added to the painting carried up the same way, a
painting equal to the content at the working size gives back the layer's luminance exactly.
No torch: both engines and the torch-free install use it.
"""

from __future__ import annotations

import numpy as np

from ..io.images import resize_array
from .color import RGB_TO_YIQ

# How --keep-size reaches the layer's size (the first is the default): the layer's detail added,
# or stretched only (what it was before issue 27).
UPSCALE_MODES = ("detail", "stretch")
# The finest octave: detail = luminance minus its Gaussian blur of this sigma (pixels).
DETAIL_SIGMA = 1.0


def luminance(rgb: np.ndarray) -> np.ndarray:
    """[H,W] luminance Y of YIQ (color.py's weights), in float32 (a 3000 px layer is large)."""
    r, g, b = (RGB_TO_YIQ[0, c].astype(np.float32) for c in range(3))
    return r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]


def _blur(y: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an [H,W] array, edges reflected (numpy only)."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = y.astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)],
                        mode="reflect")
        length = out.shape[axis]
        window = [slice(None), slice(None)]
        total = np.zeros_like(out)
        for k, t in enumerate(taps):
            window[axis] = slice(k, k + length)
            total += t * padded[tuple(window)]
        out = total
    return out


def _fine_energy(y: np.ndarray) -> float:
    """Mean squared fine detail of an [H,W] luminance: it minus its blur (DETAIL_SIGMA)."""
    return float(np.mean((y - _blur(y, DETAIL_SIGMA)) ** 2))


def detail_energy(rgb: np.ndarray) -> float:
    """Mean squared fine detail of an [H,W,3] image's luminance."""
    return _fine_energy(luminance(np.asarray(rgb, np.float32)))


def sharpness(image: np.ndarray, layer: np.ndarray) -> float:
    """The sharpness figure: `image`'s fine-detail energy over the `layer`'s at the image's size
    (the layer resized to it first). 1: as much detail as the photo; a stretched painting falls
    towards 0 as the stretch grows."""
    reference = resize_array(layer, *image.shape[:2])
    return detail_energy(image) / max(detail_energy(reference), 1e-12)


def _luminance_down(layer: np.ndarray, working: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The `layer`'s luminance, and that luminance taken down to the `working` (h, w) size."""
    y = luminance(np.asarray(layer, np.float32))
    return y, resize_array(y, *working, clip=False)


def layer_detail(layer: np.ndarray, working: tuple[int, int]) -> np.ndarray:
    """[H,W] luminance detail of `layer` that a `working` (h, w) image cannot hold."""
    return _detail(*_luminance_down(layer, working))


def _detail(y: np.ndarray, small: np.ndarray) -> np.ndarray:
    return y - resize_array(small, *y.shape, clip=False)


# The detail gain's bounds: a painting that flattened or multiplied the photo's fine detail many
# times over still gets some of the layer's detail, and never a harsh excess of it.
DETAIL_GAIN_RANGE = (0.25, 2.0)


def detail_gain(painting: np.ndarray, layer: np.ndarray) -> float:
    """How strongly the painting holds fine detail against the photo, both at the working size
    (amplitude: the square root of their fine-detail energies' ratio). The layer's finer detail is
    added at that strength, so a textured painting stays as crisp at the layer's size and a smooth
    one stays smooth; a painting equal to the content gets exactly 1."""
    return _gain(painting, _luminance_down(layer, painting.shape[:2])[1])


def _gain(painting: np.ndarray, small: np.ndarray) -> float:
    ratio = detail_energy(painting) / max(_fine_energy(small), 1e-12)
    return float(np.clip(np.sqrt(ratio), *DETAIL_GAIN_RANGE))


def to_layer_size(painting: np.ndarray, layer: np.ndarray, detail: bool = True) -> np.ndarray:
    """The working-size `painting` at the `layer`'s size: stretched, plus (if `detail`) the
    layer's fine luminance detail, times `detail_gain`, added equally to R, G and B (the
    painting's colours kept). The layer is taken down to the working size once, as luminance."""
    height, width = layer.shape[:2]
    up = resize_array(painting, height, width, clip=False)
    if detail and painting.shape[:2] != (height, width):
        y, small = _luminance_down(layer, painting.shape[:2])
        up += np.float32(_gain(painting, small)) * _detail(y, small)[..., None]
    return np.clip(up, 0.0, 1.0)


# Seconds per layer pixel of to_layer_size and writing the result, a generous round figure
# (measured in docs/speed.md, "The result at the layer's size").
SECONDS_PER_PIXEL = 0.5e-6


def check_upscale(upscale: str, keep_size: bool, name: str = "upscale") -> None:
    """The API's `upscale` (stylize's, RunOptions'): a known mode, and "stretch" only with
    `keep_size` (without, there is nothing to bring up: it would be ignored without a word)."""
    from ..errors import UserError

    if upscale not in UPSCALE_MODES:
        raise UserError(f"{name} must be one of {', '.join(UPSCALE_MODES)}, not {upscale!r}.")
    if upscale != UPSCALE_MODES[0] and not keep_size:
        raise UserError(f"{name}={upscale!r} chooses how keep_size brings the result to the "
                        "content's size; give keep_size=True too, or leave it out.")


def upscale_mode(given: str | None, keep_size: bool) -> str:
    """The command line's --upscale (None: not given) as the mode a --keep-size run takes; a
    UserError when it is given without --keep-size, where it would change nothing."""
    if given is not None and not keep_size:
        from ..errors import UserError
        raise UserError(f"--upscale {given} chooses how --keep-size brings the result to the "
                        "content's size; give it with --keep-size, or leave it out.")
    return given or UPSCALE_MODES[0]


def working_config(config, height: int, width: int):
    """`config` with its working size at most the layer's long side (`height` x `width`): painting
    bigger than the layer and shrinking the result costs up to (size / side)^2 the time (a 64 px
    layer at the default 512 px: 115 s instead of 4 s) for strokes the layer cannot show."""
    side = max(int(height), int(width))
    return config if config.size <= side else config.with_(size=side)


def seconds_to_layer_size(pixels: int) -> float:
    """What bringing a result to a layer of `pixels` adds to a run, roughly (run/eta.py's finish)."""
    return SECONDS_PER_PIXEL * pixels
