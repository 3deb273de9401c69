"""The paper's losses, always in float32: Gram matrices, content, style and total variation.

Normalisation makes the weights mean the same at every image size: a Gram matrix is divided by
C*H*W (so it is an average over positions), the content loss and each layer's style loss are
means of squared errors, and the TV loss is a mean over pixels. Doubling the resolution leaves
each term's scale roughly unchanged, so `style_weight / content_weight` is one control at any size.
"""

from __future__ import annotations

import torch


def gram(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """G = F F^T / (C*H*W) for [N,C,H,W] features, in float32 whatever the input precision.

    With a [N,1,H,W] `mask` (already at the features' size), positions are weighted by the mask and
    the division uses the mask's total instead of H*W: the guided Gram matrix of Gatys et al. 2017.
    """
    n, c, h, w = features.shape
    flat = features.float().reshape(n, c, h * w)
    if mask is None:
        return flat @ flat.transpose(1, 2) / (c * h * w)
    weights = mask.float().reshape(n, 1, h * w)
    return (flat * weights) @ flat.transpose(1, 2) / (c * weights.sum().clamp_min(1e-8))


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((features.float() - target) ** 2)


def style_layer_loss(gram_matrix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((gram_matrix - target) ** 2)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (suppresses high-frequency noise)."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    return torch.mean(dy.float() ** 2) + torch.mean(dx.float() ** 2)
