"""Colour preservation (Gatys et al. 2017, section 5): keep the content's colours, take the style's
texture.

Two ways, chosen by `Config.preserve_colors`:

- ``luminance``: the run sees only luminance. The content becomes its luminance Y (as a gray RGB
  image), each style becomes its luminance with mean and spread matched to the content's, and at the
  end the result's Y is recombined with the content's chroma (I and Q of YIQ). The result's chroma
  equals the content's wherever the recombined colour lies inside the RGB cube (clipping outside it
  is the only difference).
- ``histogram``: before the run each style's colours get the content's mean and covariance by a
  linear map x -> A (x - mu_s) + mu_c with A = Sigma_c^1/2 Sigma_s^-1/2 (symmetric square roots:
  the "image analogies" variant of the paper, which rotates colours least). A colour direction
  in which the style holds only pixel noise is not stretched (see `_whitening`).
"""

from __future__ import annotations

import numpy as np

# NTSC YIQ: Y is luminance, I and Q carry the colour. Rows give Y, I, Q from R, G, B.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]], dtype=np.float64)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
EPS = 1e-6
# Pixel noise (8-bit steps, JPEG) spreads a colour at most this much; a larger spread is the picture's.
NOISE_STD = 3.0 / 255.0
NOISE_PAIRS = 500_000  # neighbouring pairs each way the noise is measured on, at most about


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB -> [..., 3] YIQ (float32)."""
    return (rgb.astype(np.float64) @ RGB_TO_YIQ.T).astype(np.float32)


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    """[..., 3] YIQ -> [..., 3] RGB (float32, not clipped)."""
    return (yiq.astype(np.float64) @ YIQ_TO_RGB.T).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """[H,W,3] RGB -> [H,W] luminance Y."""
    return rgb_to_yiq(rgb)[..., 0]


def gray_rgb(y: np.ndarray) -> np.ndarray:
    """[H,W] luminance -> [H,W,3] gray RGB with that luminance (R = G = B = Y), clipped to 0..1."""
    return np.repeat(np.clip(y, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)


def _weights(weights: np.ndarray | None) -> np.ndarray | None:
    """Per-pixel weights (alpha) flattened for numpy's weighted moments; None weighs all alike."""
    return None if weights is None else weights.reshape(-1).astype(np.float64)


def _mean_std(y: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and standard deviation of `y`, each pixel weighed by `weights` (alpha)."""
    w = _weights(weights)
    mean = float(np.average(y.reshape(-1), weights=w))
    return mean, float(np.sqrt(np.average((y.reshape(-1) - mean) ** 2, weights=w)))


def match_luminance(style_y: np.ndarray, content_y: np.ndarray, style_weights=None,
                    content_weights=None) -> np.ndarray:
    """The style's luminance with the content's mean and standard deviation (paper, eq. 8), each
    measured over the pixels its weights keep (alpha, a mask), when given."""
    mean_s, std_s = _mean_std(style_y, style_weights)
    mean_c, std_c = _mean_std(content_y, content_weights)
    return ((style_y - mean_s) * (std_c / max(std_s, EPS)) + mean_c).astype(np.float32)


def chroma(rgb: np.ndarray) -> np.ndarray:
    """[H,W,3] RGB -> [H,W,2] chroma (I, Q of YIQ)."""
    return rgb_to_yiq(rgb)[..., 1:]


def with_chroma(y: np.ndarray, chroma_iq: np.ndarray) -> np.ndarray:
    """RGB (clipped to 0..1) from luminance `y` [H,W] and chroma `chroma_iq` [H,W,2]."""
    return np.clip(yiq_to_rgb(np.concatenate([y[..., None], chroma_iq], axis=2)), 0.0, 1.0)


def color_stats(rgb: np.ndarray, weights: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mean [3] and covariance [3,3] of an image's pixel colours (float64), each pixel weighed by
    `weights` (alpha: a transparent pixel's colour is none of the picture's; a mask)."""
    pixels, w = rgb.reshape(-1, 3).astype(np.float64), _weights(weights)
    return np.average(pixels, axis=0, weights=w), np.cov(pixels, rowvar=False, aweights=w)


def _sqrtm(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance."""
    values, vectors = np.linalg.eigh(cov)
    return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def _noise_variances(rgb: np.ndarray, directions: np.ndarray, weights=None) -> np.ndarray:
    """The pixel noise's variance along each colour direction (a column of `directions`): from
    neighbouring pixels' differences (their median, so that edges count as none), at most
    NOISE_STD squared (a larger spread between neighbours is fine texture, not noise). Every
    `step`-th row's and column's pairs: about NOISE_PAIRS of each (a 24 MP style's all took GBs)."""
    step = max(1, rgb.shape[0] * rgb.shape[1] // NOISE_PAIRS)
    rows, cols = (slice(None, None, step), slice(None)), (slice(None), slice(None, None, step))
    w = np.ones(rgb.shape[:2], np.float32) if weights is None else weights
    pairs = [(rgb[rows][:, 1:] - rgb[rows][:, :-1], np.minimum(w[rows][:, 1:], w[rows][:, :-1])),
             (rgb[cols][1:] - rgb[cols][:-1], np.minimum(w[cols][1:], w[cols][:-1]))]
    steps = np.concatenate([d[kept > 0] for d, kept in pairs])
    if not len(steps):
        return np.zeros(3)
    # a difference of two pixels holds twice one's noise; 1.4826 * median |x|: a normal's spread
    spread = 1.4826 * np.median(np.abs(steps.astype(np.float64) @ directions), axis=0) / np.sqrt(2)
    return np.minimum(spread, NOISE_STD) ** 2


def _whitening(style: np.ndarray, cov: np.ndarray, weights=None) -> np.ndarray:
    """The style's inverse covariance square root, each direction kept only for its share above
    the pixel noise: a two-colour style's other directions hold noise alone, which the content's
    spread there would have stretched into coloured speckles (gains of 50-100)."""
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, EPS)
    signal = np.maximum(values - 2.0 * _noise_variances(style, vectors, weights), 0.0) / values
    return (vectors * np.sqrt(signal / values)) @ vectors.T


def match_histogram(style: np.ndarray, content: np.ndarray, clip: bool = True,
                    style_weights=None, content_weights=None) -> np.ndarray:
    """`style` [H,W,3] with the colour mean and covariance of `content` (linear transfer), each
    measured over the pixels its weights keep (alpha, a mask), when given.

    The covariance matches up to the style's pixel noise, which is not stretched (`_whitening`);
    with `clip` the result is clipped to 0..1 (what the network sees), and the moments then
    match up to the few pixels pushed outside the RGB cube too.
    """
    mu_s, cov_s = color_stats(style, style_weights)
    mu_c, cov_c = color_stats(content, content_weights)
    transform = _sqrtm(cov_c) @ _whitening(style, cov_s, style_weights)
    out = (style.reshape(-1, 3).astype(np.float64) - mu_s) @ transform.T + mu_c
    out = out.reshape(style.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0) if clip else out


def prepare(mode: str, content: np.ndarray, styles: list[np.ndarray],
            regions: list[np.ndarray] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    """The content and styles the optimiser should see for colour mode `mode`; a style's fourth
    channel (its pixels' weights, targets.style_array) is kept as it is. The colours matched are
    those of the part each style paints: the content's weighed by `regions` (content-sized: one
    for all styles or one per style; none: all of it), a style's by its fourth channel."""
    def region(i: int):
        return regions[i if len(regions) > 1 else 0] if len(regions) else None
    if mode == "luminance":
        content_y = luminance(content)
        return gray_rgb(content_y), [_colours(s, lambda rgb, w, i=i: gray_rgb(match_luminance(
            luminance(rgb), content_y, w, region(i)))) for i, s in enumerate(styles)]
    if mode == "histogram":
        return content, [_colours(s, lambda rgb, w, i=i: match_histogram(
            rgb, content, style_weights=w, content_weights=region(i)))
            for i, s in enumerate(styles)]
    return content, styles


def _colours(style: np.ndarray, fit) -> np.ndarray:
    """`fit(rgb, weights)` applied to a style's RGB, its weights (a fourth channel) kept."""
    if style.shape[2] == 3:
        return fit(style, None)
    return np.dstack([fit(style[..., :3], style[..., 3]), style[..., 3]])


def finish(mode: str, result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The final colours: with `luminance`, the result's luminance on the content's chroma
    (`content` at the result's size)."""
    if mode == "luminance":
        return with_chroma(luminance(result), chroma(content))
    return result
