"""The paper's losses, always in float32: Gram matrices, content, style and total variation.

Normalisation makes the weights mean the same at every image size: a Gram matrix is divided by
C*H*W (so it is an average over positions), the content loss and each layer's style loss are
means of squared errors, and the TV loss is a mean over pixels. Doubling the resolution leaves
each term's scale roughly unchanged, so `style_weight / content_weight` is one control at any size.
"""

from __future__ import annotations

import torch

# Low-precision Gram matrices are summed in float32 from partial products over GRAM_CHUNK
# positions each; only layers with at least GRAM_MIN_CHUNKS chunks take that path (each partial's
# bf16 rounding, ~1e-3, averages down to <= 3e-4 relative), smaller ones are cast to float32.
GRAM_CHUNK = 512
GRAM_MIN_CHUNKS = 16


class _Gram(torch.autograd.Function):
    """G = F^T diag(m) F / (C * sum(m)) over positions, with a hand-written backward.

    Why not plain autograd of `flat @ flat.T`: for bf16/fp16 features it needed a float32 copy of
    every activation, two float32 matmuls in the backward and a gradient in another memory layout
    than the network's (an expensive strided add); together a third of a 512 px evaluation.
    Here the features stay in their dtype and layout (channels-last: positions x channels is a
    plain view), the backward is one matmul (G is symmetric), and its result is already in the
    dtype the convolutions' backward wants. Large low-precision layers (relu1_1, relu2_1 at
    working sizes) are multiplied in their dtype in chunks and summed in float32 (see GRAM_CHUNK).
    """

    @staticmethod
    def forward(ctx, features, weights, scale):
        n, c, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view when channels-last
        ctx.save_for_backward(flat, weights)
        ctx.scale, ctx.shape = scale, (n, c, h, w)
        full = (h * w) // GRAM_CHUNK * GRAM_CHUNK
        chunked = flat.dtype in (torch.bfloat16, torch.float16) and full >= GRAM_MIN_CHUNKS * GRAM_CHUNK
        if not chunked:
            flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
        weighted = flat if weights is None else flat * weights.to(flat.dtype)
        if not chunked:
            return weighted.transpose(1, 2) @ flat * scale
        gram = flat.new_zeros((n, c, c), dtype=torch.float32)
        if full:
            a = weighted[:, :full].reshape(-1, GRAM_CHUNK, c)
            b = flat[:, :full].reshape(-1, GRAM_CHUNK, c)
            gram += (a.transpose(1, 2) @ b).float().reshape(n, -1, c, c).sum(1)
        if full < h * w:
            gram += (weighted[:, full:].transpose(1, 2) @ flat[:, full:]).float()
        return gram * scale

    @staticmethod
    def backward(ctx, grad):
        flat, weights = ctx.saved_tensors
        n, c, h, w = ctx.shape
        sym = ((grad + grad.transpose(1, 2)) * ctx.scale).to(flat.dtype)
        grad_flat = flat @ sym
        if weights is not None:
            grad_flat = grad_flat * weights.to(flat.dtype)
        return grad_flat.reshape(n, h, w, c).permute(0, 3, 1, 2), None, None


def gram(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """G = F F^T / (C*H*W) for [N,C,H,W] features, in float32 whatever the input precision.

    With a [N,1,H,W] `mask` (already at the features' size), positions are weighted by the mask and
    the division uses the mask's total instead of H*W: the guided Gram matrix of Gatys et al. 2017.
    """
    n, c, h, w = features.shape
    if mask is None:
        return _Gram.apply(features, None, 1.0 / (c * h * w))
    mask = mask.float()
    weights = mask.permute(0, 2, 3, 1).reshape(mask.shape[0], h * w, 1)
    return _Gram.apply(features, weights, 1.0 / (c * float(mask.sum().clamp_min(1e-8))))


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((features.float() - target) ** 2)


def style_layer_loss(gram_matrix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((gram_matrix - target) ** 2)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (suppresses high-frequency noise)."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return torch.mean(dy.float() ** 2) + torch.mean(dx.float() ** 2)
