"""The torch-free engine's gradient graph (core/gradient.py) against torch autograd of the torch
engine's own loss (objective.Objective), and its numpy L-BFGS against torch.optim.LBFGS."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stylefu.core import Config  # noqa: E402
from stylefu.core.gradient import build_gradient_graph  # noqa: E402
from stylefu.core.lbfgs import LBFGS  # noqa: E402
from stylefu.core.model import load_model  # noqa: E402
from stylefu.core.objective import Objective  # noqa: E402
from stylefu.core.onnx_engine import GradientSession, OnnxObjective  # noqa: E402
from stylefu.core.targets import StyleTerm, Targets  # noqa: E402
from stylefu.core.vgg import STYLE_LAYERS  # noqa: E402

LIMIT = 1e-4  # relative to the gradient's largest entry


@pytest.fixture(scope="module")
def max_model_path(tmp_path_factory):
    from stylefu.export import export

    return export("random", tmp_path_factory.mktemp("max") / "max.onnx", seed=1, pooling="max",
                  progress=False)[0]


def both_gradients(path, tmp_path, h, w, guided: bool):
    """The loss and gradient at a random image by torch autograd and by the ONNX graph, with
    random targets, two guided terms (or one plain), all three loss weights and uneven layer
    weights."""
    rng = np.random.default_rng(h * w)
    model = load_model(path, "cpu")
    image = rng.random((1, 3, h, w), dtype=np.float32)
    with torch.no_grad():
        feats = model.net(torch.from_numpy(image))
    content = torch.from_numpy(rng.random(feats["relu4_2"].shape, dtype=np.float32))
    terms = []
    for t in range(2 if guided else 1):
        grams = {}
        for n in STYLE_LAYERS:
            c = feats[n].shape[1]
            a = rng.random((1, c, c), dtype=np.float32) * float(feats[n].pow(2).mean())
            grams[n] = torch.from_numpy((a + a.transpose(0, 2, 1)) / 2)  # symmetric, as Grams are
        mask = torch.from_numpy(rng.random((1, 1, h, w), dtype=np.float32)) if guided else None
        terms.append(StyleTerm(grams, 0.7 + t if guided else 1.0, mask))
    config = Config(content_weight=1.3, style_weight=2e3, tv_weight=0.5,
                    style_layer_weights=(1.0, 0.5, 2.0, 1.0, 3.0))
    x = torch.from_numpy(image).requires_grad_(True)
    total, _ = Objective(model, Targets(content, terms[0].grams, terms if guided else []), config,
                         torch.float32)(x)
    total.backward()
    graph = tmp_path / "g.onnx"
    import onnx

    onnx.save(build_gradient_graph(path, config.content_layer), str(graph))
    onnx_model = type("M", (), {"gradient": lambda self, layer: GradientSession(graph)})()
    objective = OnnxObjective(onnx_model, content.numpy(),
                              [({n: g.numpy() for n, g in term.grams.items()}, term.weight,
                                None if term.mask is None else term.mask[0, 0].numpy())
                               for term in terms], config)
    onnx_total, _, onnx_grad = objective(image)
    return float(total.detach()), x.grad.numpy(), onnx_total, onnx_grad


@pytest.mark.parametrize("h, w", [(37, 53), (64, 48)])
@pytest.mark.parametrize("guided", [False, True])
def test_gradient_matches_torch_autograd_avg_pooling(model_path, tmp_path, h, w, guided):
    total, grad, onnx_total, onnx_grad = both_gradients(model_path, tmp_path, h, w, guided)
    assert onnx_total == pytest.approx(total, rel=LIMIT)
    assert np.abs(onnx_grad - grad).max() <= LIMIT * np.abs(grad).max()


@pytest.mark.parametrize("h, w", [(37, 53), (64, 48)])
def test_gradient_matches_torch_autograd_max_pooling(max_model_path, tmp_path, h, w):
    """Max pooling: where two inputs of a window tie to float32 rounding, ORT and torch may pick
    different ones (a kink of the loss, both right); all but 0.5 % of the pixels must agree."""
    total, grad, onnx_total, onnx_grad = both_gradients(max_model_path, tmp_path, h, w, False)
    assert onnx_total == pytest.approx(total, rel=LIMIT)
    error = np.abs(onnx_grad - grad) / np.abs(grad).max()
    assert np.quantile(error, 0.995) <= LIMIT
    assert np.linalg.norm(onnx_grad - grad) <= 1e-2 * np.linalg.norm(grad)


def test_gradient_matches_torch_autograd_trained_weights(trained_model_path, tmp_path):
    total, grad, onnx_total, onnx_grad = both_gradients(trained_model_path, tmp_path, 37, 53, True)
    assert onnx_total == pytest.approx(total, rel=LIMIT)
    assert np.abs(onnx_grad - grad).max() <= LIMIT * np.abs(grad).max()


def test_numpy_lbfgs_takes_torchs_steps():
    """Ten steps on a badly scaled quadratic: the same iterates as torch.optim.LBFGS configured
    as optimise.make_optimiser does (history 3, so pairs are also dropped)."""
    rng = np.random.default_rng(0)
    scales = np.float32(10.0) ** rng.uniform(-2, 1, 50).astype(np.float32)
    start = rng.standard_normal(50).astype(np.float32)
    x = torch.from_numpy(start.copy()).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=3, tolerance_grad=-1.0,
                            tolerance_change=-1.0)
    mine, y = LBFGS(history=3), start.copy()

    def closure():
        opt.zero_grad()
        loss = (torch.from_numpy(scales) * x ** 2).sum()
        loss.backward()
        return loss

    for _ in range(10):
        opt.step(closure)
        y = mine.step(y, 2 * scales * y)
        assert np.allclose(y, x.detach().numpy(), rtol=1e-4, atol=1e-6)
