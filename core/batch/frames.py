"""Frame sequences: the flicker figure, and the previous result warped onto the next frame.

`--frames` starts each frame's optimisation from the previous frame's result, so the optimiser
lands in the same basin from frame to frame instead of a new one each time (the flicker of frames
stylized independently). Warping moves that result along the motion between the two input frames
(dense optical flow, coarse-to-fine Horn-Schunck, estimated here in numpy: no torch).
Which start is steadier was measured with `flicker` (tests/bench_batch.py --frames;
docs/batches.md, "Frames").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOW_LEVELS = 4  # pyramid levels: each halves the size, so motion up to ~2^4 px is found
FLOW_WARPS = 3  # re-linearisations per level
FLOW_ITERATIONS = 50  # Horn-Schunck Jacobi updates per linearisation
FLOW_SMOOTHNESS = 1.0  # Horn-Schunck's alpha^2 in units of the frame's mean squared gradient


def flicker(frames: Sequence[np.ndarray]) -> float:
    """Mean absolute difference between consecutive frames ([H,W,3] 0..1 each, same size).

    Divided by the same figure of the input frames it says how much a stylization adds to the
    change the video has anyway (1: none).
    """
    if len(frames) < 2:
        return 0.0
    return float(np.mean([np.abs(b.astype(np.float32) - a.astype(np.float32)).mean()
                          for a, b in zip(frames, frames[1:])]))


def _gray(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """`image` [H,W] or [H,W,C] read bilinearly at the positions (ys, xs), clamped to the border."""
    h, w = image.shape[:2]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0 = np.minimum(ys.astype(np.int64), max(h - 2, 0))
    x0 = np.minimum(xs.astype(np.int64), max(w - 2, 0))
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = ys - y0, xs - x0
    if image.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` [H,W] or [H,W,C] read at x + flow(x) (flow [2,H,W] in pixels, x then y)."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return _bilinear(image, ys + flow[1], xs + flow[0])


def _centred_difference(image: np.ndarray, axis: int) -> np.ndarray:
    """(next - previous) / 2 along `axis`, the border repeated."""
    padded = np.pad(image, [(1, 1) if a == axis else (0, 0) for a in range(image.ndim)], mode="edge")
    ahead = padded[2:] if axis == 0 else padded[:, 2:]
    behind = padded[:-2] if axis == 0 else padded[:, :-2]
    return (ahead - behind) / 2


def _neighbour_mean(image: np.ndarray) -> np.ndarray:
    """Horn-Schunck's weighted mean of the 8 neighbours (edges 1/6, corners 1/12), border repeated."""
    p = np.pad(image, 1, mode="edge")
    edges = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    corners = p[:-2, :-2] + p[:-2, 2:] + p[2:, :-2] + p[2:, 2:]
    return edges / 6 + corners / 12


def _half(image: np.ndarray) -> np.ndarray:
    """2x2 average pooling (an odd last row or column dropped)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[:2 * h, :2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3), dtype=np.float32)


def _enlarge(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Flow [2,h,w] resized bilinearly to `size` (pixel centres aligned) and scaled with it."""
    (h, w), (big_h, big_w) = flow.shape[-2:], size
    ys = np.clip((np.arange(big_h, dtype=np.float32) + 0.5) * h / big_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(big_w, dtype=np.float32) + 0.5) * w / big_w - 0.5, 0, w - 1)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([_bilinear(f, grid_y, grid_x) * 2 for f in flow])


def estimate_flow(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Flow [2,H,W] in pixels such that current(x) ~ previous(x + flow(x)) (both [H,W,3])."""
    pyramid = [(_gray(current), _gray(previous))]
    for _ in range(FLOW_LEVELS - 1):
        c, p = pyramid[-1]
        if min(c.shape) < 16:
            break
        pyramid.append((_half(c), _half(p)))
    flow = np.zeros((2, *pyramid[-1][0].shape), np.float32)
    for c, p in reversed(pyramid):
        if flow.shape[-2:] != c.shape:
            flow = _enlarge(flow, c.shape)
        for _ in range(FLOW_WARPS):  # re-linearise about the refined flow (large motion)
            warped = _sample(p, flow)
            ix, iy = _centred_difference(warped, 1), _centred_difference(warped, 0)
            it = warped - c
            # Smoothness relative to the image's own gradient energy: the same flow for a
            # low-contrast frame as for a high-contrast one.
            alpha2 = FLOW_SMOOTHNESS * float((ix ** 2 + iy ** 2).mean()) + 1e-9
            denominator = alpha2 + ix ** 2 + iy ** 2
            du = np.zeros_like(flow)
            for _ in range(FLOW_ITERATIONS):
                mean = np.stack([_neighbour_mean(d) for d in du])
                # Linearised brightness constancy about the current flow: Ix u + Iy v + It = 0.
                step = (ix * mean[0] + iy * mean[1] + it) / denominator
                du = np.stack([mean[0] - ix * step, mean[1] - iy * step])
            flow = flow + du
    return flow


def warp_previous(result: np.ndarray, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The previous frame's `result` moved onto the current frame ([H,W,3] each; the inputs are
    resized to the result's size first)."""
    from ..io.images import resize_array

    h, w = result.shape[:2]
    flow = estimate_flow(resize_array(current, h, w), resize_array(previous, h, w))
    return np.clip(_sample(np.asarray(result, np.float32), flow), 0.0, 1.0)
