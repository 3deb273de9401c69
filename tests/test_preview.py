"""Style previews: the API's numbers, the contact sheet, and the CLI's errors and exit codes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_fuzz import strict_records

from stylefu.core import Config, UserError, load_model, losses, preview, save_image
from stylefu.core.cli.main import main
from stylefu.core.engines.torch.vggnet import load_torch_model
from stylefu.core.network.vgg import STYLE_LAYERS
from stylefu.core.run.preview import ERROR, contact_sheet

# Tiny schedule so a preview costs a fraction of a second per style at 48 px.
QUICK = ["--size", "48", "--iterations", "4", "--coarse-iterations", "4", "--scales", "1"]
QUICK_CONFIG = Config(preset="draft", size=48, evaluations=4, coarse_evaluations=4, levels=1)


@pytest.fixture
def files(tmp_path, images):
    content, style = images
    paths = {"content": tmp_path / "content.png", "stripes": tmp_path / "stripes.png",
             "noise": tmp_path / "noise.png", "broken": tmp_path / "broken.png"}
    save_image(paths["content"], content)
    save_image(paths["stripes"], style)
    save_image(paths["noise"], np.random.default_rng(5).random((40, 56, 3), dtype=np.float32))
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    return paths


def red_cross_pixels(sheet: Image.Image) -> int:
    return int((np.asarray(sheet.convert("RGB")) == np.array(ERROR, np.uint8)).all(-1).sum())


def test_preview_numbers_are_real_and_ranked(model_path, images):
    content, style = images
    # The plain loss (equal layer weights), so the total is the sum of the per-layer distances.
    result = preview(content, [content, style], config=QUICK_CONFIG.with_(style_weight=1e6),
                     model=model_path)
    same, striped = result.styles
    assert result.info["size"] == [36, 48] and result.info["provider"] == "CPUExecutionProvider"
    assert result.info["levels"] == [48]  # the levels really used (too small to halve), not "3"
    # The content as its own style: identical Gram matrices, distance exactly zero.
    assert same.ok and same.distance_total == 0.0
    assert striped.ok and striped.distance_total > 0
    assert sum(striped.distance.values()) == pytest.approx(striped.distance_total)
    # The distance is the Gram MSE, checked here with the torch network (not ONNX Runtime).
    net = load_torch_model(model_path)
    with torch.no_grad():
        a = net(torch.from_numpy(result.content).permute(2, 0, 1)[None], STYLE_LAYERS)
        s = torch.nn.functional.interpolate(torch.from_numpy(style).permute(2, 0, 1)[None],
                                            size=(48, 48), mode="bilinear", antialias=True)
        b = net(s, STYLE_LAYERS)
    for name in STYLE_LAYERS:
        expected = float(losses.style_layer_loss(losses.gram(a[name]), losses.gram(b[name])))
        assert striped.distance[name] == pytest.approx(expected, rel=2e-2), name
    # The short run really moved toward the style: less style loss than where it started.
    assert striped.image.shape == (36, 48, 3)
    assert 0 < striped.style_loss < striped.distance_total and 0 < striped.style_left < 1
    assert striped.content_loss > 0
    assert np.abs(striped.image - result.content).mean() > 1e-3
    assert result.sheet.width > 3 * 160 and red_cross_pixels(result.sheet) == 0


def test_the_sheet_shows_content_swatch_and_preview(model_path, images):
    content, style = images
    result = preview(content, [style], config=QUICK_CONFIG, model=model_path)
    sheet = np.asarray(result.sheet, np.float32) / 255
    # Cells are 160 px on the long side; each must appear somewhere in the sheet: find the
    # content cell by scanning for the thumbnail's exact top row of pixels.
    thumb = np.asarray(Image.fromarray(np.round(result.content * 255).astype(np.uint8))
                       .resize((160, 120), Image.LANCZOS), np.float32) / 255
    hits = [(y, x) for y in range(sheet.shape[0] - 120) for x in (12,)
            if np.abs(sheet[y, x:x + 160] - thumb[0]).max() < 1 / 255 + 1e-6]
    assert hits, "the content thumbnail is not in the first column"
    y = hits[0][0]
    # Level with it, in the next column: the preview, different from the content.
    cell = sheet[y:y + 120, 12 + 172:12 + 172 + 160]
    assert np.abs(cell - thumb).mean() > 0.01


def test_many_styles_make_rows_each_starting_with_the_content(model_path, images):
    """A folder of 30 styles made one row 5,000 px wide: past 8 styles the sheet has balanced
    rows of at most 6, the content first in each. "Style left" past 100 % (the content near the
    style already) reads "over 100 %", not "16958.7 %"."""
    from stylefu.core.run.preview import sheet_columns

    assert [sheet_columns(n) for n in (1, 2, 8, 9, 12, 13, 30)] == [1, 2, 8, 5, 6, 5, 6]
    content, style = images
    result = preview(content, [style], config=QUICK_CONFIG, model=model_path)
    one = result.sheet
    result.styles = result.styles * 9
    sheet = np.asarray(contact_sheet(result), np.float32)
    assert sheet.shape[1] == one.width + 4 * (160 + 12)  # content + 5 columns, cells 160 px
    assert sheet.shape[0] == 56 + 2 * (one.height - 56)  # two rows under the title
    row = one.height - 56
    first, second = (sheet[56 + dy:56 + dy + 120 + 12 + 120, 12:172] for dy in (0, row))
    assert np.array_equal(first, second)  # each row starts with the content
    assert np.abs(sheet[56 + row:, 12 + 172 * 5:].astype(np.float32) - 255).max() == 0  # 5th: paper
    (item,) = result.styles[:1]
    item.style_loss = 3 * item.distance_total
    assert item.style_left_percent == "over 100 %"
    item.style_loss = item.distance_total / 4
    assert item.style_left_percent == "25.0 %"


def test_the_sheet_shows_transparent_parts_as_paper(model_path, images):
    """A cut-out content's previews (and the content) show its transparent parts as the sheet's
    paper, not the painting under them; a cut-out style's swatch too."""
    content, style = images
    alpha = np.zeros(content.shape[:2], np.float32)
    alpha[8:40, 10:54] = 1
    style_alpha = np.ones(style.shape[:2], np.float32)
    style_alpha[:20, :20] = 0  # a corner: the style's visible part still spans it all
    result = preview(np.dstack([content, alpha]), [np.dstack([style, style_alpha])],
                     config=QUICK_CONFIG, model=model_path)
    (item,) = result.styles
    assert item.ok and item.alpha.shape == item.image.shape[:2] == result.content_alpha.shape
    assert (item.swatch[:20, :20] == 1).all()  # the swatch: paper where the style is transparent

    def paper(sheet):
        return int((np.asarray(sheet) == 255).all(-1).sum())
    shown = paper(result.sheet)
    item.alpha = result.content_alpha = None
    without = paper(contact_sheet(result))
    cells = 2 * 160 * 120 * (1 - float(alpha.mean()))  # content and preview, at the cells' size
    assert shown - without > 0.7 * cells, (shown, without, cells)


def test_a_cut_out_contents_distances_are_of_its_visible_part(model_path, images):
    """The distances (before and after the preview) weigh the content's visible part, as its run
    does: what its transparent pixels hide changes no figure. A content transparent everywhere
    is refused as `run` refuses it."""
    content, style = images
    alpha = np.zeros(content.shape[:2], np.float32)
    alpha[8:40, 10:54] = 1
    figures = []
    for hidden in (0.0, 1.0):
        rgba = np.dstack([np.where(alpha[..., None] > 0, content, hidden), alpha])
        (item,) = preview(rgba, [style], config=QUICK_CONFIG, model=model_path).styles
        figures.append((item.distance_total, item.style_loss))
    assert figures[0] == figures[1]
    (opaque,) = preview(content, [style], config=QUICK_CONFIG, model=model_path).styles
    assert opaque.distance_total != figures[0][0]
    with pytest.raises(UserError, match="transparent everywhere"):
        preview(np.dstack([content, 0 * alpha]), [style], config=QUICK_CONFIG, model=model_path)


def test_zero_styles_or_unreadable_content_is_a_user_error(model_path, files, capsys):
    with pytest.raises(UserError, match="at least one style"):
        preview(files["content"], [], model=model_path)
    with pytest.raises(UserError, match="cannot be read|not an image"):
        preview(files["broken"], [files["stripes"]], model=model_path)
    out = files["content"].with_name("sheet.png")
    code = main(["preview", str(files["broken"]), str(files["stripes"]), "-o", str(out),
                 "--model", str(model_path), *QUICK])
    assert code == 2 and not out.exists()
    assert "broken.png" in capsys.readouterr().err
    # argparse: no style given (one line and exit code 2, like every user error)
    assert main(["preview", str(files["content"]), "-o", str(out)]) == 2 and not out.exists()
    code = main(["preview", str(files["content"]), str(files["broken"]), "-o", str(out),
                 "--model", str(model_path), *QUICK])
    assert code == 2 and not out.exists()
    assert "None of the 1 style image(s) could be previewed" in capsys.readouterr().err


def test_one_style_alone_is_one_preview(model_path, files, images, tmp_path):
    # a path or an array given alone (not in a list): not its characters or its rows as styles;
    # a folder alone: its images
    import shutil

    _, style = images
    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(files["stripes"], folder / "kept.png")
    for alone in (str(files["stripes"]), style, folder):
        result = preview(files["content"], alone, config=QUICK_CONFIG, model=model_path)
        assert len(result.styles) == 1 and result.styles[0].error is None
    assert result.styles[0].name == "kept"


def test_cli_marks_an_unreadable_style_and_renders_the_others(model_path, files, capsys):
    out, numbers = files["content"].with_name("sheet.png"), files["content"].with_name("n.json")
    code = main(["preview", str(files["content"]), str(files["stripes"]), str(files["broken"]),
                 str(files["noise"]), "-o", str(out), "--json", str(numbers),
                 "--model", str(model_path), "--style-weight", "1e7", *QUICK])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (f"broken: SKIPPED, {files['broken']} is not an image stylefu can read; save it as PNG, "
            "JPEG or TIFF.") in err
    report = json.loads(numbers.read_text())
    assert [s["name"] for s in report["styles"]] == ["stripes", "broken", "noise"]
    assert [s["ok"] for s in report["styles"]] == [True, False, True]
    assert report["config"]["preset"] == "draft" and report["config"]["style_weight"] == 1e7
    assert report["config"]["evaluations"] == 4 and report["size"] == [36, 48]
    for s in (report["styles"][0], report["styles"][2]):
        per_layer = s["style_distance"]["per_layer"]
        assert set(per_layer) == set(STYLE_LAYERS) and all(v > 0 for v in per_layer.values())
        assert s["after_preview"]["style_loss"] < s["style_distance"]["total"]
    sheet = Image.open(out)
    assert sheet.format == "PNG" and red_cross_pixels(sheet) > 500


def test_cli_takes_a_folder_of_styles(model_path, files, capsys, tmp_path):
    """`stylefu preview photo.jpg styles/` previewed nothing ("a folder, not a file"): folders,
    globs and @lists give their images as `batch` takes its inputs, in natural order, each once;
    HEIC photos beside them are left out with a note."""
    import shutil

    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(files["noise"], folder / "b10.png")
    shutil.copy(files["stripes"], folder / "b9.png")
    (folder / "notes.txt").write_text("not a style")
    (folder / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    numbers = tmp_path / "n.json"
    code = main(["preview", str(files["content"]), str(folder), str(folder / "b9.png"), "-o",
                 str(tmp_path / "sheet.png"), "--json", str(numbers), "--model", str(model_path),
                 "--progress", "json", *QUICK])
    out, err = capsys.readouterr()
    assert code == 0, err
    figures = json.loads(numbers.read_text())
    assert [s["name"] for s in figures["styles"]] == ["b9", "b10"]
    assert f"warning: 1 HEIC photo(s) in {folder} left out" in err
    assert figures["notes"] == [{"event": "notice", "level": "warning", "message":
                                 f"1 HEIC photo(s) in {folder} left out: stylefu cannot read "
                                 "HEIC; save them as JPEG to include them."}]
    # --progress json (the plug-ins'): strict JSON records, the notes told as `run` tells them,
    # one as the work starts and one per style done (in the order they finish: painted at once
    # where torch has two threads), then the result.
    records = strict_records(out)
    assert records[0] == figures["notes"][0]
    assert [(r["event"], r.get("done")) for r in records[1:]] == [
        ("progress", 0), ("progress", 1), ("progress", 2), ("result", None)]
    assert {r.get("style") for r in records[2:4]} == {"b9", "b10"}
    assert [r["fraction"] for r in records[1:4]] == [0.0, 0.5, 1.0]
    assert records[-1]["output"] == str(tmp_path / "sheet.png")
    assert main(["preview", str(files["content"]), str(files["broken"]), "-o",
                 str(tmp_path / "none.png"), "--model", str(model_path), "--progress", "json",
                 *QUICK]) == 2
    assert strict_records(capsys.readouterr().out)[-1]["event"] == "error"


def test_watched_stdin_closed_cancels_the_previews(model_path, files, tmp_path):
    """`--watch-stdin` (the GIMP plug-ins'): stdin closed mid-preview (the plug-in cancelled or
    gone), the previews stop at the next evaluation: exit 130, a last `cancelled` record, no
    sheet."""
    import subprocess
    import sys

    sheet = tmp_path / "sheet.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stylefu.core", "preview", str(files["content"]),
         str(files["stripes"]), "-o", str(sheet), "--model", str(model_path), "--progress", "json",
         "--watch-stdin", "--size", "32", "--iterations", "100000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = json.loads(proc.stdout.readline())
    assert (first["event"], first["done"], first["of"]) == ("progress", 0, 1)
    proc.stdin.close()  # at work on its one style (100000 evaluations)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130
    assert strict_records(rest)[-1] == {"event": "cancelled", "reason": "cancelled"}
    assert not sheet.exists()


def test_a_sheet_written_beside_its_styles_previews_again(model_path, files, capsys, tmp_path):
    """`stylefu preview photo.jpg styles/ -o styles/sheet.png` worked once; run again, it was
    refused ("is also an input": the first sheet was now among the styles). The folder's copy of
    this preview's own -o is left out, with a line; named alone, it is still refused."""
    import shutil

    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(files["stripes"], folder / "stripes.png")
    sheet = folder / "sheet.png"
    command = ["preview", str(files["content"]), str(folder), "-o", str(sheet), "--json",
               str(tmp_path / "n.json"), "--model", str(model_path), *QUICK]
    assert main(command) == 0
    capsys.readouterr()
    first = sheet.stat().st_mtime_ns
    assert main(command) == 0
    err = capsys.readouterr().err
    assert f"1 stylefu preview sheet(s) in {folder} left out (sheet.png); name one alone" in err
    assert [s["name"] for s in json.loads((tmp_path / "n.json").read_text())["styles"]] == \
        ["stripes"]
    assert sheet.stat().st_mtime_ns != first
    assert main([*command[:2], str(folder / "stripes.png"), str(sheet), *command[3:]]) == 2
    assert "is also an input" in capsys.readouterr().err
    # A sheet without the mark (BMP has no place for it; an older stylefu's) is this -o's own.
    unmarked = folder / "sheet.bmp"
    Image.open(sheet).save(unmarked)
    assert main([*command[:3], "-o", str(unmarked), *command[5:]]) == 0
    assert f"{unmarked}, this preview's -o, left out of the styles." in capsys.readouterr().err


def test_a_sheet_in_the_styles_folder_is_no_style_for_another_preview_or_a_batch(
        model_path, files, images, capsys, tmp_path):
    """A sheet written into the styles' folder was a style for a preview with another -o and for
    `batch --styles-each` over that folder; its mark now leaves it out there, with a line."""
    import shutil

    from stylefu.core.io.images import PILLOW_FORMATS, is_preview_sheet

    result = preview(*images[:1], [images[1]], config=QUICK_CONFIG, model=model_path)
    for suffix in set(PILLOW_FORMATS) - {".bmp"}:  # every format with a place for EXIF
        assert is_preview_sheet(result.save(tmp_path / f"s{suffix}")), suffix
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    assert not is_preview_sheet(tmp_path / "photo.png")
    suffix = ".jpg"
    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(files["stripes"], folder / "stripes.png")
    quick = ["--model", str(model_path), *QUICK]
    assert main(["preview", str(files["content"]), str(folder), "-o",
                 str(folder / f"sheet{suffix}"), *quick]) == 0
    capsys.readouterr()
    assert main(["preview", str(files["content"]), str(folder), "-o", str(tmp_path / "b.png"),
                 "--json", str(tmp_path / "b.json"), *quick]) == 0
    assert f"preview sheet(s) in {folder} left out (sheet{suffix})" in capsys.readouterr().err
    assert [s["name"] for s in json.loads((tmp_path / "b.json").read_text())["styles"]] == \
        ["stripes"]
    assert main(["batch", str(files["content"]), "--style", str(folder / "*"), "--styles-each",
                 "-o", str(tmp_path / "out"), "--size", "64", "--evaluations", "1", "--levels",
                 "1", "--model", str(model_path), "--progress", "none"]) == 0
    assert "left out" in capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    # Named alone it is a style like any picture; a folder of sheets only is one sentence.
    assert main(["preview", str(files["content"]), str(folder / f"sheet{suffix}"),
                 "-o", str(tmp_path / "c.png"), *quick]) == 0
    (folder / "stripes.png").unlink()
    capsys.readouterr()
    assert main(["preview", str(files["content"]), str(folder), "-o", str(tmp_path / "d.png"),
                 *quick]) == 2
    assert f"{folder} brings in only stylefu preview sheets (sheet{suffix}); name one" in \
        capsys.readouterr().err


def test_preview_defaults_are_the_draft_preset_at_preview_size(model_path, files, tmp_path):
    from stylefu.core.cli.main import build_parser
    from stylefu.core.run.preview import PREVIEW_PRESET, PREVIEW_SIZE

    args = build_parser().parse_args(["preview", "c.png", "s.png", "-o", "x.png"])
    assert (args.size, args.preset) == (PREVIEW_SIZE, PREVIEW_PRESET) == (192, "draft")
    run = build_parser().parse_args(["run", "c.png", "s.png", "-o", "x.png"])
    assert (run.size, run.preset) == (Config().size, Config().preset)  # run keeps its own
    # The target cache makes a second preview of the same styles skip their forward passes.
    model = load_model(model_path, "cpu")
    preview(files["content"], [files["stripes"]], config=QUICK_CONFIG, model=model)
    start = model.engine.calls
    preview(files["content"], [files["stripes"]], config=QUICK_CONFIG, model=model)
    # Only the new image's: its final evaluation and its style distance (the picture's figure).
    assert model.engine.calls == start + 2


def test_a_style_whose_run_fails_is_marked_and_the_others_render(model_path, images, monkeypatch):
    import sys

    from stylefu.core import NumericalError, Picture

    # The module, not the function that stylefu.core exports under the same name.
    preview_module = sys.modules["stylefu.core.run.preview"]

    content, style = images
    real = preview_module.stylize

    def diverging_for_the_noise_style(content, picture, **kwargs):
        if picture.name == "noisy":
            raise NumericalError("The loss became NaN or infinite; lower --style-weight.")
        return real(content, picture, **kwargs)

    monkeypatch.setattr(preview_module, "stylize", diverging_for_the_noise_style)
    noisy = Picture(np.random.default_rng(2).random((40, 40, 3), dtype=np.float32), name="noisy")
    result = preview(content, [noisy, style], config=QUICK_CONFIG, model=model_path)
    failed, good = result.styles
    assert (failed.ok, failed.failed_stage, good.ok) == (False, "run", True)
    assert failed.swatch is not None and failed.image is None and "NaN" in failed.error
    assert result.figures()["styles"][0] == {"name": "noisy", "source": "noisy", "ok": False,
                                             "error": failed.error, "failed_stage": "run"}
    assert red_cross_pixels(result.sheet) > 500


def test_cancel_stops_the_previews(model_path, files):
    # a notebook's or a dialog's stop: at the next evaluation, and no later style started
    import threading

    from stylefu.core.errors import Cancelled

    stop, seen = threading.Event(), []

    def stop_after_first(item):
        seen.append(item.name)
        stop.set()

    styles = [files["stripes"], files["noise"]]
    with pytest.raises(Cancelled):
        preview(files["content"], styles, config=QUICK_CONFIG, model=model_path,
                on_style=stop_after_first, cancel=stop, workers=1)
    assert seen == ["stripes"]
    polled = []  # a function as the token, True from its third call: stops mid-style
    with pytest.raises(Cancelled):
        preview(files["content"], styles, config=QUICK_CONFIG, model=model_path,
                on_style=seen.append, cancel=lambda: polled.append(1) or len(polled) > 2,
                workers=1)
    assert len(seen) == 1
    with pytest.raises(UserError, match="cancel must be"):
        preview(files["content"], styles, config=QUICK_CONFIG, model=model_path, cancel=5)


# --- several styles at once ----------------------------------------------------------------------

def preview_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("stylefu-preview")]


def test_styles_painted_at_once_come_back_as_one_at_a_time(model_path, files, images):
    """Three styles, two at a time: the previews in the styles' order, each as a preview made
    alone (same figures; the image within a thread count's rounding), `on_style` called once per
    style in the caller's thread, torch's thread count as it was, no thread left."""
    import threading

    styles = [files["stripes"], files["noise"], images[1]]
    model = load_model(model_path, "cpu")
    alone = preview(files["content"], styles, config=QUICK_CONFIG, model=model, workers=1)
    threads, called = torch.get_num_threads(), []

    def on_style(item):
        called.append((item.name, threading.current_thread() is threading.main_thread()))
    both = preview(files["content"], styles, config=QUICK_CONFIG, model=model, workers=2,
                   on_style=on_style)
    assert [p.name for p in both.styles] == ["stripes", "noise", "style 3"]
    assert (alone.info["styles_at_once"], both.info["styles_at_once"]) == (1, 2)
    assert sorted(called) == sorted((p.name, True) for p in both.styles)
    assert torch.get_num_threads() == threads and not preview_threads()
    for one, two in zip(alone.styles, both.styles):
        assert two.ok and two.distance_total == one.distance_total  # the same cached targets
        assert two.style_loss == pytest.approx(one.style_loss, rel=0.05), one.name
        assert np.abs(two.image - one.image).max() < 0.05, one.name
    assert both.sheet.size == alone.sheet.size


def test_previews_at_once_stop_together(model_path, files, monkeypatch):
    """A cancel, or an error raised by `on_style`, while two styles paint at once: raised once
    both threads have stopped, each at its next evaluation, the third style never started."""
    import collections
    import sys

    from stylefu.core.errors import Cancelled

    preview_module = sys.modules["stylefu.core.run.preview"]
    real, evaluated = preview_module.stylize, []  # the style's name per evaluation

    def counted(content, picture, **kwargs):
        return real(content, picture, **kwargs, callback=lambda p: evaluated.append(picture.name))

    monkeypatch.setattr(preview_module, "stylize", counted)
    slow = QUICK_CONFIG.with_(evaluations=400, tolerance=0.0)
    styles = [files["stripes"], files["noise"], files["content"]]
    with pytest.raises(Cancelled):
        preview(files["content"], styles, config=slow, model=model_path, workers=2,
                cancel=lambda: len(evaluated) >= 10)
    assert not preview_threads()
    evaluations = collections.Counter(evaluated)
    assert set(evaluations) == {"stripes", "noise"} and max(evaluations.values()) < 20, evaluations

    def fails(item):
        raise RuntimeError("on_style failed")
    with pytest.raises(RuntimeError, match="on_style failed"):
        preview(files["content"], [files["stripes"], files["noise"]], config=QUICK_CONFIG,
                model=model_path, workers=2, on_style=fails)
    assert not preview_threads()


def test_a_run_started_in_another_thread_beside_a_default_preview_keeps_its_threads(
        model_path, files):
    """The README: runs from several threads at once each give the bytes they give alone. A
    thread's torch work takes torch's thread count as it first computes; painting several styles
    at once sets that count to one for the process meanwhile (a run started then kept one thread
    and other bytes), so preview() paints one at a time unless asked ("auto": the command's)."""
    import threading

    model = load_model(model_path, "cpu")
    threads = torch.get_num_threads()
    alone = preview(files["content"], files["stripes"], config=QUICK_CONFIG, model=model)
    seen = {}

    def run_beside():
        seen["threads"] = torch.get_num_threads()  # this thread's count, fixed from now on
        seen["preview"] = preview(files["content"], files["stripes"], config=QUICK_CONFIG,
                                  model=model)
    beside = threading.Thread(target=run_beside)

    def start_beside():  # called at the preview's first evaluation, while it paints
        if not beside.ident:
            beside.start()
        return False
    painted = preview(files["content"], [files["noise"], files["stripes"]], config=QUICK_CONFIG,
                      model=model, cancel=start_beside)
    beside.join()
    assert seen["threads"] == threads
    assert np.array_equal(seen["preview"].styles[0].image, alone.styles[0].image)
    assert painted.info["styles_at_once"] == 1


def test_default_previews_at_once_follow_torchs_threads(model_path):
    """"auto" (the command's default): one style per torch thread on the CPU (each then with
    one), never more than the styles; the torch-free engine one at a time."""
    from stylefu.core.run.preview import previews_at_once

    model = load_model(model_path, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert previews_at_once(5, QUICK_CONFIG, model) == (2, 1)
        assert previews_at_once(1, QUICK_CONFIG, model) == (1, 2)
        assert previews_at_once(5, QUICK_CONFIG, model, workers=1) == (1, 2)
        assert previews_at_once(5, QUICK_CONFIG, model, workers=None) == (1, 2)
        torch.set_num_threads(1)
        assert previews_at_once(5, QUICK_CONFIG, model) == (1, 1)
    finally:
        torch.set_num_threads(threads)
    onnx = load_model(model_path, "cpu", engine="onnx")
    assert previews_at_once(5, QUICK_CONFIG, onnx)[0] == 1
