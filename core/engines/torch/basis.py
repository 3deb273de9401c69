"""The variables L-BFGS steps in at the full-size level: the image's Fourier coefficients, each
scaled by 1 / f^FREQUENCY_EXPONENT (f its spatial frequency), instead of the pixels.

The image is the same linear function of either, and so is the loss, but L-BFGS with a finite
history is not invariant to a non-orthogonal change of variables: stepping in these coefficients
is stepping in the pixels with the preconditioner S^2 (frequencies weighted by 1 / f^(2a)), a
little more of each step to the broad forms, a little less to the finest detail. With trained
features it delivered a slightly lower loss for the same evaluations (docs/speed.md, issue 30);
a = 0.5 and 1 were slower early and a colour-decorrelated basis slower throughout.
"""

from __future__ import annotations

import torch

FREQUENCY_EXPONENT = 0.25


class FourierBasis:
    """x = irfft2(S * c) for an [N,C,H,W] image: `encode` gives the start's coefficients c (as
    real pairs, what torch's L-BFGS can step), `decode` the image, differentiably.

    S = 1 / max(f, 1 / max(H, W))^a, scaled to a root mean square of 1 (f in cycles per pixel), so
    the constant term gets the weight of the lowest frequency the image holds. The transform is
    orthonormal ("ortho"), so a = 0 steps exactly as in the pixels up to the half spectrum.
    """

    def __init__(self, height: int, width: int, exponent: float = FREQUENCY_EXPONENT):
        self.size = (height, width)
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        f = torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / max(height, width))
        scale = f ** -exponent
        self.scale = scale / scale.pow(2).mean().sqrt()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(x.detach().float(), norm="ortho") / self.scale.to(x.device)
        return torch.view_as_real(spectrum).contiguous()

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(c) * self.scale.to(c.device)
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")

    def gradient(self, g: torch.Tensor) -> torch.Tensor:
        """The gradient for the coefficients from the image's `g`: decode's adjoint (by autograd:
        the half spectrum's edge columns count once, the others twice)."""
        shape = g.shape[:-2] + (self.size[0], self.size[1] // 2 + 1, 2)
        c = torch.zeros(shape, device=g.device, requires_grad=True)
        with torch.enable_grad():
            return torch.autograd.grad(self.decode(c), c, g.float().contiguous())[0]

    @staticmethod
    def memory_format(like: torch.Tensor) -> torch.memory_format:
        """channels_last where `like` is laid out so (the decoded image keeps its layout)."""
        if like.dim() == 4 and not like.is_contiguous() and \
                like.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        return torch.contiguous_format
