"""The worker bridge the plug-ins carry (plugin/common/stylefu_bridge.py) and the worker options
it relies on (`stylefu run --keep-size --watch-stdin --progress json`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stylefu.core.cli import build_parser
from stylefu.core.config import Config
from stylefu.plugin import installer

bridge = installer.load_bridge()
WORKER = [sys.executable, "-m", "stylefu.core"]


@pytest.fixture()
def files(tmp_path, images):
    content, style = images
    rgba = np.concatenate([content, np.linspace(0, 1, content.shape[1], dtype=np.float32)
                           [None, :, None].repeat(content.shape[0], 0)], axis=2)
    np.save(tmp_path / "content.npy", rgba)
    np.save(tmp_path / "style.npy", style)
    return tmp_path / "content.npy", tmp_path / "style.npy"


def test_npy_files_without_numpy_round_trip(tmp_path):
    pixels = np.random.default_rng(0).random((5, 7, 4), dtype=np.float32)
    bridge.write_npy(str(tmp_path / "a.npy"), pixels.tobytes(), pixels.shape)
    assert np.array_equal(np.load(tmp_path / "a.npy"), pixels)
    np.save(tmp_path / "b.npy", pixels)
    shape, data = bridge.read_npy(str(tmp_path / "b.npy"))
    assert shape == (5, 7, 4) and data == pixels.tobytes()
    u8 = np.arange(30, dtype=np.uint8).reshape(2, 5, 3)
    bridge.write_npy(str(tmp_path / "c.npy"), u8.tobytes(), u8.shape, kind="u8")
    assert np.array_equal(np.load(tmp_path / "c.npy"), u8)
    np.save(tmp_path / "d.npy", pixels.astype(np.float64))
    with pytest.raises(bridge.BridgeError, match="not a float32"):
        bridge.read_npy(str(tmp_path / "d.npy"))


def test_style_strength_maps_to_decades_of_style_weight():
    settings = {"defaults": {"style_weight": 1e6}}
    assert bridge.style_weight(50, settings) == pytest.approx(1e6)
    assert bridge.style_weight(75, settings) == pytest.approx(1e7)
    assert bridge.style_weight(0, settings) == pytest.approx(1e4)
    assert bridge.style_weight(100, settings) == pytest.approx(1e8)


def test_flatpak_runs_the_worker_on_the_host():
    settings = {"python": "/home/u/env/bin/python"}
    assert bridge.worker_command(settings, ["run"], flatpak=False) == \
        ["/home/u/env/bin/python", "-m", "stylefu.core", "run"]
    assert bridge.worker_command(settings, ["run"], flatpak=True)[:4] == \
        ["flatpak-spawn", "--host", "--watch-bus", "/home/u/env/bin/python"]
    assert bridge.in_flatpak() == os.path.exists("/.flatpak-info")


def test_dialog_values_become_run_options(model_path):
    settings = installer.plugin_settings("3", sys.executable, model_path)
    values = dict(settings["defaults"], iterations=7, preserve_colors="luminance", style_scale=0.5)
    options = bridge.run_options(values, settings)
    pairs = dict(zip(options[::2], options[1::2]))
    assert "--watch-stdin" in options and "--keep-size" in options
    assert pairs["--iterations"] == "7" and pairs["--preserve-colors"] == "luminance"
    assert pairs["--style-scale"] == "0.5" and pairs["--model"] == str(model_path)
    assert float(pairs["--style-weight"]) == Config().style_weight
    assert pairs["--save-every"] == str(installer.PREVIEW_EVERY)
    # Every option is one `stylefu run` accepts:
    assert build_parser().parse_args(["run", "c.png", "s.png", "-o", "o.png"] + options).evaluations == 7


def test_second_style_and_tile_size_become_run_options(model_path):
    settings = installer.plugin_settings("3", sys.executable, model_path)
    # The dialog's defaults come from Config: tile size 0 (automatic), equal blend (None).
    assert settings["defaults"]["tile_size"] == Config().crop_side == 0
    assert Config().style_blend is None and settings["defaults"]["second_style_weight"] == 0.5
    assert "--style-blend" not in bridge.run_options(settings["defaults"], settings)
    values = dict(settings["defaults"], tile_size=512, style_blend=bridge.second_style_blend(0.75))
    options = bridge.run_options(values, settings)
    pairs = dict(zip(options[::2], options[1::2]))
    assert pairs["--tile-size"] == "512" and pairs["--style-blend"] == "0.25,0.75"
    args = build_parser().parse_args(["run", "c.png", "a.png", "b.png", "-o", "o.png",
                                      "--mask", "m.npy"] + options)
    assert args.style_blend == (0.25, 0.75) and args.crop_side == 512  # --tile-size: an alias
    assert bridge.second_style_blend(1.5) == (0.0, 1.0) and bridge.second_style_blend(0) == (1.0, 0.0)


def test_second_style_goes_defaults_to_everywhere_from_one_place(model_path):
    """The choice's places and default live in the bridge; the installer's settings (what both
    plug-ins register their dialogs with) and the plug-ins' fallback take them from there."""
    settings = installer.plugin_settings("2.10", sys.executable, model_path)
    assert bridge.SECOND_STYLE_PLACES == ("everywhere", "outside")
    assert settings["defaults"]["second_style_goes"] == "everywhere"
    assert settings["choices"]["second_style_goes"] == ["everywhere", "outside"]
    assert bridge.UNSET_SETTINGS["defaults"]["second_style_goes"] == "everywhere"
    assert bridge.UNSET_SETTINGS["choices"]["second_style_goes"] == ["everywhere", "outside"]
    assert set(bridge.SECOND_STYLE_LABELS) == set(bridge.SECOND_STYLE_PLACES)
    # The default keeps today's run: no region masks, whatever the selection and styles.
    assert not bridge.second_style_outside("everywhere", 2, True)
    assert not bridge.second_style_outside("everywhere", 1, False)
    assert bridge.second_style_outside("outside", 2, True)


@pytest.mark.parametrize("place, styles, selected, words", [
    ("outside", 1, True, "needs a second style"),
    ("outside", 2, False, "needs a selection for the first style"),
    ("inside", 2, True, "must be one of everywhere, outside"),
])
def test_second_style_outside_needs_a_selection_and_a_second_style(place, styles, selected, words):
    with pytest.raises(bridge.BridgeError, match=words) as error:
        bridge.second_style_outside(place, styles, selected)
    assert "\n" not in str(error.value)


def test_selection_and_its_inverse_become_one_mask_per_style(tmp_path):
    """Soft values are kept: the second style's mask is 1 - m (float) or 255 - m (8 bits), and the
    two masks reach `stylefu run` as --mask selection --mask inverse, in style order."""
    m = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], np.float32)[..., None]
    one = bridge.write_selection_masks(str(tmp_path), m.tobytes(), m.shape)
    assert one == [str(tmp_path / "selection.npy")]
    assert np.array_equal(np.load(one[0]), m)
    two = bridge.write_selection_masks(str(tmp_path), m.tobytes(), m.shape, outside=True)
    assert two == [str(tmp_path / "selection.npy"), str(tmp_path / "selection-inverse.npy")]
    assert np.array_equal(np.load(two[0]), m) and np.array_equal(np.load(two[1]), 1 - m)
    u8 = np.array([[0, 64, 128], [191, 255, 7]], np.uint8)[..., None]
    two = bridge.write_selection_masks(str(tmp_path), u8.tobytes(), u8.shape, "u8", True)
    assert np.array_equal(np.load(two[0]), u8) and np.array_equal(np.load(two[1]), 255 - u8)
    options = bridge.mask_options(two)
    assert options == ["--mask", two[0], "--mask", two[1]]
    args = build_parser().parse_args(["run", "c.png", "a.png", "b.png", "-o", "o.png"] + options)
    assert args.masks == two
    assert bridge.mask_options([]) == []
    # A selection of the whole layer leaves the second style nowhere: a clear error.
    full = np.ones((2, 3, 1), np.float32)
    with pytest.raises(bridge.BridgeError, match="The selection covers the whole layer"):
        bridge.write_selection_masks(str(tmp_path), full.tobytes(), full.shape, outside=True)
    with pytest.raises(bridge.BridgeError, match="The selection covers the whole layer"):
        bridge.write_selection_masks(str(tmp_path), b"\xff" * 6, (2, 3, 1), "u8", True)


def test_run_worker_follows_progress_and_returns_the_result(files, model_path, tmp_path):
    content, style = files
    out = tmp_path / "out.npy"
    records = []
    final = bridge.run_worker(WORKER + ["run", str(content), str(style), "-o", str(out),
                                        "--model", str(model_path), "--progress", "json",
                                        "--watch-stdin", "--keep-size", "--size", "32",
                                        "--iterations", "4", "--scales", "1", "--save-every", "2"],
                              on_record=records.append, cwd=str(tmp_path))
    assert final["event"] == "result"
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert [bool(r.get("image")) for r in records] == [False, True, False, True]
    # --keep-size: the result (and each preview) at the content's own size, with its own alpha
    source = np.load(content)
    for path in [out] + [r["image"] for r in records if r.get("image")]:
        result = np.load(path)
        assert result.shape == source.shape
        assert np.array_equal(result[..., 3], source[..., 3])
    assert np.abs(np.load(out)[..., :3] - source[..., :3]).mean() > 1e-3


def test_worker_errors_come_back_as_one_sentence(files, tmp_path):
    content, style = files
    with pytest.raises(bridge.BridgeError) as error:
        bridge.run_worker(WORKER + ["run", str(content), str(style), "-o", str(tmp_path / "o.npy"),
                                    "--model", str(tmp_path / "none.onnx"), "--progress", "json"],
                          cwd=str(tmp_path))
    assert str(error.value).startswith("No model at") and "\n" not in str(error.value)
    with pytest.raises(bridge.BridgeError, match=r"stopped unexpectedly \(exit code 3\): boom"):
        bridge.run_worker([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); "
                           "sys.exit(3)"], cwd=str(tmp_path))
    with pytest.raises(bridge.BridgeError, match="Cannot start the stylefu worker"):
        bridge.run_worker([str(tmp_path / "no-python"), "-m", "stylefu.core"], cwd=str(tmp_path))


def test_worker_exits_cleanly_with_stdin_watched(files, model_path, tmp_path):
    """The plug-in keeps the worker's stdin open: the run must still end with exit code 0
    (a daemon thread blocked in sys.stdin used to abort the interpreter at exit)."""
    content, style = files
    proc = subprocess.Popen(WORKER + ["run", str(content), str(style), "-o", str(tmp_path / "o.npy"),
                                      "--model", str(model_path), "--progress", "none",
                                      "--watch-stdin", "--size", "32", "--iterations", "2"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()  # until the worker exits, its stdin still open
    code = proc.wait(timeout=120)
    proc.stdin.close()
    assert code == 0, stderr.decode()
    assert b"Fatal Python error" not in stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to watch the worker")
def test_no_orphan_worker_when_the_plugin_is_killed(files, model_path, tmp_path):
    """GIMP's Cancel kills the plug-in process: the worker must notice and stop by itself."""
    content, style = files
    script = f"""
import sys
sys.path.insert(0, {str(installer.BRIDGE.parent)!r})
import stylefu_bridge
def started(proc):
    print(proc.pid, flush=True)
stylefu_bridge.run_worker({WORKER!r} + ["run", {str(content)!r}, {str(style)!r}, "-o",
    {str(tmp_path / "o.npy")!r}, "--model", {str(model_path)!r}, "--progress", "json",
    "--watch-stdin", "--size", "32", "--iterations", "100000"], on_start=started,
    cwd={str(tmp_path)!r})
"""
    plugin = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(plugin.stdout.readline())
    time.sleep(1.0)
    assert _alive(worker_pid)
    os.kill(plugin.pid, signal.SIGKILL)  # what GIMP does to a cancelled plug-in
    plugin.wait()
    deadline = time.monotonic() + 60
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped = not _alive(worker_pid)
    if not stopped:
        os.kill(worker_pid, signal.SIGKILL)
    assert stopped, "the worker kept running after the plug-in died"


def test_progress_text_names_the_stage():
    record = {"event": "progress", "scale": 1, "scales": 2, "iteration": 10, "iterations": 60}
    assert bridge.progress_text(record) == "Neural style: scale 1 of 2, iteration 10 of 60"
    record.update(iteration=60)
    assert bridge.progress_text(record) == "Neural style: scale 2 of 2, computing targets"
    notice = {"event": "notice", "message": "2048x1536 px is optimised in 512 px tiles."}
    assert bridge.progress_text(notice) == "Neural style: 2048x1536 px is optimised in 512 px tiles."


def test_settings_missing_says_how_to_fix(tmp_path):
    with pytest.raises(bridge.BridgeError, match="run `stylefu gimp install`"):
        bridge.load_settings(str(tmp_path / "stylefu.py"))
    settings = tmp_path / "stylefu.json"
    settings.write_text(json.dumps({"version": bridge.SETTINGS_VERSION - 1, "python": "p"}))
    with pytest.raises(bridge.BridgeError, match="another stylefu version; run `stylefu gimp "
                                                 "install` again"):
        bridge.load_settings(str(tmp_path / "stylefu.py"))
    settings.write_text(json.dumps({"version": bridge.SETTINGS_VERSION, "python": "p"}))
    assert bridge.load_settings(str(tmp_path / "stylefu.py"))["python"] == "p"


def test_flatpak_exchanges_files_through_the_app_cache(tmp_path, monkeypatch):
    """Flatpak's /tmp is private to the sandbox: the worker on the host must see the files."""
    monkeypatch.setattr(bridge, "in_flatpak", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "app-cache"))
    folder = bridge.exchange_dir()
    assert os.path.dirname(folder) == str(tmp_path / "app-cache" / "stylefu")
    bridge.remove_dir(folder)
    assert not os.path.exists(folder)
