"""The light install (no torch): `make test` runs this file, test_package_weights.py and the
GIMP 3 plug-in's tests in .venv-light too (STYLEFU_LIGHT_ENV=1); in the full env they run as well,
on the torch-free engine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stylefu.core import Config, preview, stylize
from stylefu.core.io.demo import demo_content, demo_style
from stylefu.core.io.images import save_image

LIGHT = os.environ.get("STYLEFU_LIGHT_ENV") == "1"


@pytest.mark.skipif(not LIGHT, reason="only in the light environment (.venv-light)")
def test_torch_is_not_installed_here():
    assert importlib.util.find_spec("torch") is None, "the light environment must not hold torch"


@pytest.fixture
def pictures(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    save_image(content, demo_content(48, 64))
    save_image(style, demo_style(64))
    return content, style


def test_run_on_the_onnx_engine_imports_no_torch(model_path, pictures, tmp_path):
    """`stylefu run --engine onnx`: a stylized picture, the JSON events, and torch never imported
    (the process reports sys.modules at exit)."""
    content, style = pictures
    out = tmp_path / "out.png"
    code = ("import sys, atexit; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, "
            "file=sys.stderr)); from stylefu.core.cli.main import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(content), str(style), "-o", str(out),
                           "--model", str(model_path), "--engine", "onnx", "--size", "64",
                           "--preset", "draft", "--progress", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["metrics"]["engine"] == "onnx"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["loss"] < progress[0]["loss"]
    assert "TORCH False" in proc.stderr
    assert out.is_file()


def test_stylize_onnx_lowers_the_loss_keeps_the_api(model_path, images):
    content, style = images
    seen, cancel_after = [], None
    result = stylize(content, style, config=Config(size=64, engine="onnx", preset="draft"),
                     model=model_path, callback=seen.append)
    assert result.image.shape == (48, 64, 3) and 0 <= result.image.min() <= result.image.max() <= 1
    assert {p.level for p in seen} == {1} and seen[-1].loss < 0.5 * seen[0].loss
    assert result.metrics["evaluations"] == len(seen) and result.metrics["engine"] == "onnx"
    assert result.metrics["total_loss"] < seen[0].loss
    del cancel_after


def test_cancel_and_guides_on_the_onnx_engine(model_path, images):
    from stylefu.core.errors import Cancelled

    content, style = images
    config = Config(size=64, engine="onnx", evaluations=5, levels=1)
    with pytest.raises(Cancelled):
        stylize(content, style, config=config, model=model_path, cancel=lambda: True)
    mask = np.zeros((48, 64), np.float32)
    mask[:, :32] = 1.0
    result = stylize(content, style, config=config, model=model_path, masks=[mask])
    expected = stylize(content, style, config=config.with_(evaluations=1, style_weight=0.0,
                                                           content_weight=1.0), model=model_path)
    assert result.image.shape == expected.image.shape
    # Outside the guide the content, exactly (up to 8-bit-free float rounding).
    from stylefu.core.io.images import resize_array
    assert np.allclose(result.image[:, 40:], resize_array(content, 48, 64)[:, 40:], atol=1e-6)


def test_preview_on_the_onnx_engine(model_path, images):
    content, style = images
    result = preview(content, [style, style[::-1]], config=Config(engine="onnx", preset="draft",
                                                                  evaluations=5),
                     model=model_path, size=64)
    assert all(p.ok for p in result.styles) and all(p.distance_total > 0 for p in result.styles)


def test_engine_torch_is_one_sentence_without_torch(model_path, images):
    from stylefu.core.errors import UserError

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    with pytest.raises(UserError, match="needs PyTorch"):
        stylize(*images, config=Config(size=64, engine="torch"), model=model_path)


@pytest.mark.parametrize("installed, expected", [(True, "torch"), (False, "onnx")])
def test_auto_engine_is_decided_by_what_is_installed(monkeypatch, installed, expected):
    from stylefu.core import engines

    monkeypatch.setattr(engines, "torch_installed", lambda: installed)
    assert engines.resolve_engine("auto") == expected
    assert engines.resolve_engine("onnx") == "onnx"


def test_batch_of_frames_on_the_onnx_engine_imports_no_torch(model_path, tmp_path):
    """`stylefu batch --engine onnx --frames --warp` (the one pipeline: batches and frames on the
    torch-free engine): every frame painted, the manifest says so, the driver never imports torch,
    and each frame after the first starts from its predecessor's result moved along the motion, so
    its first loss lies far below the first frame's (measured: 0.37 and 0.31 of it, random weights)."""
    frames = []
    for k in range(3):  # the same scene moving 2 px right per frame
        path = tmp_path / f"frame{k}.png"
        save_image(path, np.roll(demo_content(48, 64), 2 * k, axis=1))
        frames.append(str(path))
    style = tmp_path / "style.png"
    save_image(style, demo_style(64))
    out = tmp_path / "out"
    code = ("import sys, atexit; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, "
            "file=sys.stderr)); from stylefu.core.cli.main import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "batch", *frames, "--style", str(style),
                           "-o", str(out), "--model", str(model_path), "--engine", "onnx",
                           "--size", "64", "--preset", "draft", "--frames", "--warp",
                           "--workers", "1", "--progress", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 3
    assert all((out / f"frame{k}.png").is_file() for k in range(3))
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    first = {}
    for e in events:
        if e.get("event") == "progress" and "loss" in e:
            first.setdefault(e["item"], e["loss"])
    assert first[1] < 0.6 * first[0] and first[2] < 0.6 * first[0], first
