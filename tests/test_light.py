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


def test_load_model_of_the_public_api_serves_the_torch_free_engine(model_path, images):
    # stylefu.core.load_model was torch's alone: ModuleNotFoundError 'torch' in the light install
    from stylefu.core import load_model

    for model in [load_model(model_path, engine="onnx")] + ([load_model(model_path)] if LIGHT else []):
        assert type(model).__name__ == "OnnxModel"
        result = stylize(*images, config=Config(size=32, levels=1, evaluations=2), model=model)
        assert result.metrics["engine"] == "onnx"


def test_help_lists_the_api_and_a_torch_only_name_says_why():
    # help(stylefu.core) in the light install failed on StyleModel ("No module named 'torch'")
    code = "import stylefu.core as c; help(c)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "stylize_many" in out.stdout and "load_model" in out.stdout
    if LIGHT:
        with pytest.raises(ImportError, match="torch is not installed here"):
            from stylefu.core import StyleModel  # noqa: F401


# torch hidden from the import system, as in the light install (the full env runs that path too).
HIDE_TORCH = ("import importlib.machinery as m; find = m.PathFinder.find_spec; "
              "m.PathFinder.find_spec = staticmethod(lambda name, path=None, target=None: None "
              "if name.split('.')[0] == 'torch' else find(name, path, target)); ")


@pytest.mark.parametrize("torch_hidden", [False, True], ids=["as installed", "torch hidden"])
def test_star_import_gives_what_this_install_can_import(torch_hidden):
    # `from stylefu.core import *` in the light install failed on StyleModel (torch's)
    code = ((HIDE_TORCH if torch_hidden else "") + "from stylefu.core import *; "
            "import sys; print(sorted(n for n in dir() if n[0].isupper() or n[0].islower()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names = out.stdout
    assert "'stylize'" in names and "'stylize_many'" in names and "'load_model'" in names
    assert ("'StyleModel'" in names) == (not LIGHT and not torch_hidden)


@pytest.mark.parametrize("installed, expected", [(True, "torch"), (False, "onnx")])
def test_auto_engine_is_decided_by_what_is_installed(monkeypatch, installed, expected):
    from stylefu.core import engines

    monkeypatch.setattr(engines, "torch_installed", lambda: installed)
    assert engines.resolve_engine("auto") == expected
    assert engines.resolve_engine("onnx") == "onnx"
    if not installed:  # `stylefu info`'s precision line: the torch-free engine's float32
        assert engines.auto_precision().startswith("auto is fp32 (the torch-free engine")


def test_batch_of_frames_on_the_onnx_engine_imports_no_torch(model_path, tmp_path):
    """`stylefu batch --engine onnx --frames --warp` (the one pipeline: batches and frames on the
    torch-free engine): every frame painted, the manifest says so, the driver never imports torch,
    and each frame after the first starts from its predecessor's result moved along the motion, so
    its first loss lies far below the first frame's (measured: 0.34 and 0.30 of it, random weights)."""
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


@pytest.mark.parametrize("guided", [False, True])
def test_tiled_onnx_objective_is_the_whole_images_loss(model_path, images, guided):
    """Crop by crop (pass 1: the cores' Grams summed; pass 2: the graph with each core's targets)
    the torch-free engine's tiled loss and gradient are the whole image's, exactly where every crop
    sees the whole image (48x64 px in 256 px crops: 1-4 cores by the grid's random offset), with
    two guided terms too. Measured: loss to 1e-7, gradient to 4e-7 of its largest entry."""
    from stylefu.core.engines.onnx.engine import OnnxObjective, load_onnx_model
    from stylefu.core.engines.onnx.runner import OnnxRunner
    from stylefu.core.engines.onnx.tiled import TiledOnnxObjective

    content, style = images
    model = load_onnx_model(model_path)
    config = Config(size=64, style_weight=1e6, content_weight=1.0, tv_weight=1e-3)
    runner = OnnxRunner(model, config, print)
    styles, masks = [style], []
    if guided:
        left = np.zeros(content.shape[:2], np.float32)
        left[:, :32] = 1.0
        styles, masks = [style, style[::-1].copy()], [left, 1 - left]
    content_features, terms = runner.terms(content, styles, (48, 64), masks)
    x = runner.pixels(np.clip(content + np.random.default_rng(1).normal(0, 0.1, content.shape),
                              0, 1).astype(np.float32))
    total, parts, gradient = OnnxObjective(model, content_features, terms, config)(x)
    grids = set()
    for seed in range(4):
        tiled = TiledOnnxObjective(model, content, terms, 256, config, np.random.default_rng(seed), None)
        tiled_total, tiled_parts, tiled_gradient = tiled(x)
        grids.add(len(tiled.cores))
        assert tiled_total == pytest.approx(total, rel=1e-5)
        for key in ("content", "style", "tv"):
            assert tiled_parts[key] == pytest.approx(parts[key], rel=1e-5, abs=1e-12)
        assert np.abs(tiled_gradient - gradient).max() < 1e-5 * np.abs(gradient).max()
    assert len(grids) > 1  # the grid moved: different core counts, the same loss


def test_tiled_run_on_the_onnx_engine(model_path, images):
    """64x48 px in 48 px crops on the torch-free engine: thin edge cores run, the loss falls (best
    0.42 of the first, random weights), the metrics name the tiles."""
    content, style = images
    config = Config(size=64, evaluations=16, levels=1, crop_side=48, engine="onnx")
    seen = []
    result = stylize(content, style, config=config, model=model_path,
                     callback=lambda p: seen.append(p.loss))
    assert result.metrics["tiles"] == {"64x48": 48} and result.metrics["engine"] == "onnx"
    assert min(seen) < 0.8 * seen[0]
    assert np.abs(result.image - content).mean() > 0.01


@pytest.mark.skipif(LIGHT, reason="ONNX Runtime alone: the full environment's run is the same")
def test_onnx_tiles_do_not_drift_apart(model_path):
    """test_tiling.test_tiles_do_not_drift_apart on the torch-free engine: a flat sky over two
    112 px tiles changes alike in both, as untiled, and the loss (the untiled graph's) stays
    near the untiled run's. Measured: sky gap / change untiled 0.131, tiled 0.184; tiled loss
    1.55x untiled (12 evaluations; the torch engine's: 1.35-1.43x). Drifting tiles gave 0.92, 9x."""
    from stylefu.core.engines.onnx.engine import OnnxObjective, load_onnx_model
    from stylefu.core.engines.onnx.runner import OnnxRunner

    height, width = 96, 192
    content = np.empty((height, width, 3), np.float32)
    content[:] = np.array([0.45, 0.62, 0.85], np.float32)
    content[height // 2:, : width // 2] = demo_content(height, width)[height // 2:, : width // 2]
    style = demo_style(96)
    model = load_onnx_model(model_path)
    runs = {}
    for tile in (0, 112):
        config = Config(size=width, evaluations=12, levels=1, crop_side=tile, tolerance=0,
                        engine="onnx")
        result = stylize(content, style, config=config, model=model_path)
        change = result.image - content
        left = change[8:height // 2 - 8, 8:width // 2 - 24].mean((0, 1))
        right = change[8:height // 2 - 8, width // 2 + 24:width - 8].mean((0, 1))
        runner = OnnxRunner(model, config, print)  # the judge: the plain loss, untiled
        features, terms = runner.terms(content, [style], (height, width), [])
        loss = OnnxObjective(model, features, terms, config)(runner.pixels(result.image))[0]
        runs[tile] = (float(np.abs(left - right).sum()),
                      float(np.abs(left).sum() + np.abs(right).sum()) / 2, loss)
    gap, change, loss = runs[112]
    assert runs[0][0] < 0.25 * runs[0][1]
    assert gap < 0.3 * change
    assert loss < 2.5 * runs[0][2]


def _stylefu_without_torch(*args) -> subprocess.CompletedProcess:
    """`stylefu ARGS` where torch cannot be imported (the light install, or torch hidden)."""
    code = HIDE_TORCH + "import sys; from stylefu.core.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_what_needs_torch_is_one_sentence_without_it(model_path, pictures, tmp_path):
    """Without torch: `export --weights x.pth` was an internal error (ModuleNotFoundError), plain
    `export` (torchvision) downloaded 548 MB first, `--device cuda` was an internal error (torch's
    memory query), and a missing model's sentence named `stylefu export`, which needs torch."""
    (tmp_path / "w.pth").write_bytes(b"\x80\x02}q\x00.")
    for weights in (tmp_path / "w.pth", "torchvision"):
        done = _stylefu_without_torch("export", "--weights", weights, "-o", tmp_path / "m.onnx")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"--weights {weights} reads a .pth checkpoint, which needs torch" in done.stderr
        assert "use --weights auto" in done.stderr
    content, style = pictures
    if not os.path.exists("/dev/nvidia0"):  # a GPU with onnxruntime-gpu runs it
        done = _stylefu_without_torch("run", content, style, "-o", tmp_path / "o.png", "--model",
                                      model_path, "--size", "64", "--device", "cuda")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "--device cuda was asked for, but ONNX Runtime runs on the CPU here" in done.stderr
    done = _stylefu_without_torch("run", content, style, "-o", tmp_path / "o.png", "--model",
                                  tmp_path / "none.onnx")
    assert done.returncode == 2
    assert "create one with `stylefu export --weights auto`" in done.stderr


def test_compile_on_is_answered_on_the_torch_free_engine(model_path, images):
    # README: a WARNING where compile="on" runs uncompiled; the torch-free engine said nothing
    said = []
    stylize(*images, config=Config(size=64, levels=1, evaluations=2, engine="onnx", compile="on"),
            model=model_path, log=said.append)
    assert [str(n) for n in said if "nothing to compile" in str(n)], said


def test_a_damaged_gradient_graph_is_named_where_the_loss_becomes_nan(model_path, pictures,
                                                                      tmp_path):
    # bytes of the cached graph overwritten in place (its size kept: it loads): "use --precision
    # fp32", which this engine computes in already; the damaged cache file went unnamed
    content, style = pictures
    env = dict(os.environ, STYLEFU_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "stylefu.core", "run", str(content), str(style), "-o",
               str(tmp_path / "o.png"), "--model", str(model_path), "--engine", "onnx",
               "--size", "64", "--evaluations", "3", "--levels", "1", "--progress", "none"]
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    (graph,) = (tmp_path / "cache" / "gradient").glob("*.onnx")
    with open(graph, "r+b") as f:  # inside the weights, which fill most of the file
        f.seek(graph.stat().st_size // 2)
        f.write(b"\x7f" * 4096)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "a damaged gradient graph does this too: `stylefu cache prune --max-mb 0`" in done.stderr


def test_a_style_too_large_for_one_pass_needs_no_torch(model_path, pictures, tmp_path):
    """A style whose Grams come in cores (at --size 2048 with 24 GB, here forced by a small
    budget) imported torch: the light install stopped with ModuleNotFoundError."""
    content, style = pictures
    save_image(style, demo_style(320))
    code = ("import sys, atexit; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, "
            "file=sys.stderr)); from stylefu.core.method import tiling; "
            "tiling.ort_budget = lambda device='cpu': tiling.ort_bytes(128, 128); "
            "from stylefu.core.cli.main import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "run", str(content), str(style), "-o",
                           str(tmp_path / "out.png"), "--model", str(model_path), "--engine",
                           "onnx", "--size", "320", "--levels", "1", "--evaluations", "2",
                           "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stderr
