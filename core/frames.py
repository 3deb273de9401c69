"""Frame sequences: the flicker figure, and the previous result warped onto the next frame.

`--frames` starts each frame's optimisation from the previous frame's result, so the optimiser
lands in the same basin from frame to frame instead of a new one each time (the flicker of frames
stylized independently). Warping moves that result along the motion between the two input frames
(dense optical flow, coarse-to-fine Horn-Schunck, estimated here in torch: no extra dependency).
Which start is steadier was measured with `flicker` (tests/bench_batch.py --frames;
docs/batches.md, "Frames").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


def _gray(image: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return (rgb @ torch.tensor([0.299, 0.587, 0.114]))[None, None]


def _sample(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`image` [N,C,H,W] read at x + flow(x) (flow [1,2,H,W] in pixels, x then y), border clamp."""
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    gx = (xs + flow[0, 0]) * 2 / max(w - 1, 1) - 1
    gy = (ys + flow[0, 1]) * 2 / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], dim=-1)[None].expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def estimate_flow(current: np.ndarray, previous: np.ndarray) -> torch.Tensor:
    """Flow [1,2,H,W] in pixels such that current(x) ~ previous(x + flow(x)) (both [H,W,3])."""
    cur, prev = _gray(current), _gray(previous)
    pyramid = [(cur, prev)]
    for _ in range(FLOW_LEVELS - 1):
        c, p = pyramid[-1]
        if min(c.shape[-2:]) < 16:
            break
        pyramid.append((F.avg_pool2d(c, 2), F.avg_pool2d(p, 2)))
    kernel_x = torch.tensor([[[[-0.5, 0.0, 0.5]]]])
    average = torch.tensor([[[[1, 2, 1], [2, 0, 2], [1, 2, 1]]]], dtype=torch.float32) / 12
    flow = torch.zeros(1, 2, *pyramid[-1][0].shape[-2:])
    for c, p in reversed(pyramid):
        if flow.shape[-2:] != c.shape[-2:]:
            flow = 2 * F.interpolate(flow, size=c.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(FLOW_WARPS):  # re-linearise about the refined flow (large motion)
            warped = _sample(p, flow)
            ix = F.conv2d(F.pad(warped, (1, 1, 0, 0), mode="replicate"), kernel_x)
            iy = F.conv2d(F.pad(warped, (0, 0, 1, 1), mode="replicate"), kernel_x.transpose(-1, -2))
            it = warped - c
            # Smoothness relative to the image's own gradient energy: the same flow for a
            # low-contrast frame as for a high-contrast one.
            alpha2 = FLOW_SMOOTHNESS * float((ix ** 2 + iy ** 2).mean()) + 1e-9
            du = torch.zeros_like(flow)
            for _ in range(FLOW_ITERATIONS):
                padded = F.pad(du, (1, 1, 1, 1), mode="replicate")
                mean = F.conv2d(padded.view(2, 1, *padded.shape[-2:]), average).view_as(du)
                # Linearised brightness constancy about the current flow: Ix u + Iy v + It = 0.
                step = (ix * mean[:, :1] + iy * mean[:, 1:] + it) / (alpha2 + ix ** 2 + iy ** 2)
                du = torch.cat([mean[:, :1] - ix * step, mean[:, 1:] - iy * step], dim=1)
            flow = flow + du
    return flow


def warp_previous(result: np.ndarray, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The previous frame's `result` moved onto the current frame ([H,W,3] each; the inputs are
    resized to the result's size first)."""
    from .images import resize_array

    h, w = result.shape[:2]
    flow = estimate_flow(resize_array(current, h, w), resize_array(previous, h, w))
    image = torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32)).permute(2, 0, 1)[None]
    return _sample(image, flow)[0].permute(1, 2, 0).clamp(0, 1).numpy()
