"""The full-size level's L-BFGS variables (core/engines/torch/basis.py): the same image, other steps."""

from __future__ import annotations

import math

import torch

from stylefu.core import Config, stylize
from stylefu.core.engines.torch import basis as basis_module
from stylefu.core.engines.torch import optimise
from stylefu.core.engines.torch.basis import FourierBasis


def test_the_basis_holds_the_same_image():
    x = torch.rand(1, 3, 24, 40)
    basis = FourierBasis(24, 40)
    assert torch.allclose(basis.decode(basis.encode(x)), x, atol=1e-5)


def smooth_target(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    t = (0.5 + 0.2 * torch.sin(2 * math.pi * xx) * torch.cos(2 * math.pi * yy)
         + 0.1 * torch.cos(6 * math.pi * xx + 2 * math.pi * yy))
    return t.expand(1, 3, h, w).contiguous()


def smoothness_loss(target: torch.Tensor):
    """mean squared differences of neighbours of (x - target), plus 1e-3 x its mean square: a
    loss whose broad forms (low frequencies) are the slow ones for steps in the pixels."""
    def loss(x):
        with torch.enable_grad():
            d = x - target
            total = (((d[..., 1:, :] - d[..., :-1, :]) ** 2).mean()
                     + ((d[..., :, 1:] - d[..., :, :-1]) ** 2).mean() + 1e-3 * (d ** 2).mean())
            grad, = torch.autograd.grad(total, x)

        def backward(multiplier):
            x.grad = grad * multiplier
        return total.detach(), {}, backward
    return loss


def test_lbfgs_in_the_basis_reaches_broad_forms_sooner():
    """L-BFGS is not invariant to the change of variables: on a loss whose low frequencies are
    slow, 20 evaluations in the basis end far lower than 20 in the pixels (measured: 6.1e-8
    against 6.5e-6, 100x; a = 0.5: 4e-9)."""
    target = smooth_target(32, 48)
    start = torch.full((1, 3, 32, 48), 0.5)
    ends = []
    for basis in (None, FourierBasis(32, 48)):
        run = optimise.minimise(smoothness_loss(target), start, 20, Config(), lambda *_: None,
                                None, basis=basis)
        assert run.evaluations == 20
        ends.append(float(smoothness_loss(target)(run.image.requires_grad_(True))[0]))
    assert ends[1] < 0.1 * ends[0]


def test_only_the_full_size_level_steps_in_the_basis(monkeypatch, model_path, images):
    sizes = []

    class Recorded(FourierBasis):
        def __init__(self, height, width, *args):
            sizes.append((height, width))
            super().__init__(height, width, *args)

    monkeypatch.setattr(basis_module, "FourierBasis", Recorded)
    content, style = images
    result = stylize(content, style, model=model_path,
                     config=Config(size=64, levels=2, evaluations=4, coarse_evaluations=3,
                                   precision="fp32", compile="off"))
    assert sizes == [tuple(result.image.shape[:2])] == [(48, 64)]
