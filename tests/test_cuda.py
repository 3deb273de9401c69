"""The torch engine on an NVIDIA GPU (issue 26). Skipped where torch sees no CUDA device; run on
the lent GPU (docs/testing.md, "GPU"). Small sizes and random weights: seconds each."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from stylefu.core import Config, stylize
from stylefu.core.io.images import save_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def run(model_path, images, **overrides):
    content, style = images
    config = Config(**{"size": 64, "levels": 1, "evaluations": 30, "style_weight": 1e6,
                       "device": "cuda", **overrides})
    log = []
    return stylize(content, style, config=config, model=model_path, callback=log.append), log


def test_a_run_on_the_gpu_paints_in_bf16_without_compiling(model_path, images):
    result, log = run(model_path, images)
    metrics = result.metrics
    assert metrics["device"].startswith("cuda") and metrics["precision"] == "bfloat16"
    assert metrics["compiled"] is False  # --compile auto never compiles on CUDA
    assert np.isfinite(result.image).all() and 0 <= result.image.min() <= result.image.max() <= 1
    assert min(p.loss for p in log) < 0.5 * log[0].loss


def test_the_gpu_run_ends_near_the_cpu_float32_run(model_path, images):
    """Same problem on the GPU (bf16) and the CPU (float32): trajectories differ in their digits,
    the end must not (each within a factor 1.5 of the other)."""
    gpu, _ = run(model_path, images, evaluations=40)
    cpu, _ = run(model_path, images, evaluations=40, device="cpu", precision="fp32")
    ratio = gpu.metrics["total_loss"] / cpu.metrics["total_loss"]
    assert 1 / 1.5 < ratio < 1.5, ratio


def test_the_loop_syncs_with_the_host_at_most_twice_per_evaluation(model_path, images):
    """torch.optim.LBFGS synced twice per curvature pair (about 200 times a step with 100 pairs);
    the loop reads each evaluation's figures in one transfer and L-BFGS tests curvature once."""
    run(model_path, images, evaluations=3)  # warm: model, targets cache, cuDNN
    evaluations = 20
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run(model_path, images, evaluations=evaluations)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in seen)
    # Per evaluation: the figures and the curvature test; plus set-up and final figures once.
    assert syncs <= 2 * evaluations + 40, syncs


def test_device_lbfgs_takes_torch_optims_steps_on_the_gpu():
    from stylefu.core.engines.torch.lbfgs import LBFGS

    gen = torch.Generator().manual_seed(0)
    scales = (10.0 ** (torch.rand(2000, generator=gen) * 3 - 2)).cuda()
    start = torch.randn(2000, generator=gen).cuda()
    x = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=5, tolerance_grad=-1.0,
                            tolerance_change=-1.0)
    y = start.clone()
    mine = LBFGS(y, 5, steps=20)

    def closure():
        opt.zero_grad()
        loss = (scales * x ** 2).sum()
        loss.backward()
        return loss
    for _ in range(15):
        opt.step(closure)
        mine.step(y, 2 * scales * y)
        assert torch.allclose(y, x.detach(), rtol=1e-3, atol=1e-5)


def test_a_batch_uses_the_gpu(model_path, images, tmp_path):
    content, style = images
    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for k, path in enumerate(inputs):
        save_image(path, np.roll(content, 5 * k, axis=1))
    save_image(tmp_path / "style.png", style)
    done = subprocess.run([sys.executable, "-m", "stylefu.core", "batch", *map(str, inputs),
                           "--style", str(tmp_path / "style.png"), "-o", str(tmp_path / "out"),
                           "--size", "64", "--evaluations", "10", "--levels", "1",
                           "--model", str(model_path), "--device", "cuda"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]


def test_targets_and_final_figures_come_from_the_gpu(model_path, images):
    """No forward pass on ONNX Runtime's CPU provider: the float32 network on the GPU makes them."""
    from stylefu.core.engines.torch.model import load_model

    model = load_model(model_path, "cuda")
    assert model.engine.provider == "torch on cuda" and model.engine.uses_gpu
    before = model.engine.calls
    run(model_path, images, evaluations=5)
    assert model.engine.calls > before
