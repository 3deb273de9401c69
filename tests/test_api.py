"""The Python API as a script or notebook meets it (session 39's QA): what a scripter passes
(Config values, models, paths, arrays), each case one fault found there and fixed."""

from __future__ import annotations

import re

import pytest

from stylefu.core import Config, UserError


@pytest.mark.parametrize("changes, message", [
    # compile=False ran compiled: every value but "off" and "auto" meant "on"
    ({"compile": False}, r"^--compile must be one of auto, on, off, not False\.$"),
    ({"compile": "yes"}, r"^--compile must be one of auto, on, off, not 'yes'\.$"),
    # a None where the field has a value was a TypeError from deep inside the run
    ({"size": None}, r"^--size must be a whole number, not None\.$"),
    ({"seed": None}, r"^--seed must be a whole number, not None\.$"),
    ({"tv_weight": None}, r"^--tv-weight must be a number, not None\.$"),
    # one number for a list was "'float' object is not iterable"
    ({"style_blend": 1.0}, r"^--style-blend must be a list of numbers, not 1\.0\.$"),
    ({"style_layer_weights": 2}, r"^--style-layer-weights must be a list of numbers, not 2\.$"),
    ({"preset": ["draft"]}, r"^Unknown preset \['draft'\]"),  # was "unhashable type: 'list'"
    ({"optimizer": None}, r"^--optimizer must be one of lbfgs, adam, not None\.$"),
])
def test_a_config_value_of_the_wrong_kind_is_one_sentence_naming_its_field(changes, message):
    with pytest.raises(UserError, match=message):
        Config(**changes).validate()


def test_config_takes_the_lists_a_script_has():
    """Tuples, lists and numpy arrays of weights all validate (None: the preset's schedule)."""
    import numpy as np

    for weights in ((1, 2, 3, 4, 5), [1.0] * 5, np.ones(5)):
        Config(style_layer_weights=weights).validate()
    Config(style_blend=np.array([1.0, 3.0]), evaluations=None, levels=None).validate()


def test_every_call_takes_a_model_from_load_model_or_a_path_of_any_kind(model_path, images,
                                                                         tmp_path):
    """load_model's docstring sends its model to stylize, preview and stylize_many: stylize_many
    raised a TypeError from inside pathlib for it; a bytes path was a TypeError in stylize and an
    AttributeError in preview; model=5 too. Now: one model, three calls, the same pixels; a path
    as str, Path or bytes; anything else one sentence."""
    import os

    import numpy as np

    from stylefu.core import load_model, preview, save_image, stylize, stylize_many

    config = Config(size=48, evaluations=3, levels=1, engine="onnx")
    content = save_image(tmp_path / "c.png", images[0])
    style = save_image(tmp_path / "s.png", images[1])
    loaded = load_model(model_path, engine="onnx")
    # engine auto: the loaded model's kind decides (torch would be auto's choice here)
    [item] = stylize_many([(content, style)], config.with_(engine="auto"), model=loaded,
                          workers=1, keep_images=True)
    assert item.status == "ok", item.error
    for model in (loaded, str(model_path), model_path, os.fsencode(model_path)):
        assert np.array_equal(stylize(content, style, config=config, model=model).image, item.image)
    shown = preview(content, [style], config=config, size=48, model=os.fsencode(model_path))
    assert shown.styles[0].error is None
    for call in (lambda m: stylize(content, style, config=config, model=m),
                 lambda m: preview(content, [style], config=config, size=48, model=m),
                 lambda m: list(stylize_many([(content, style)], config, model=m))):
        with pytest.raises(UserError, match=r"^model must be a path or a model from load_model, "
                                            r"not int\.$"):
            call(5)


def test_bytes_paths_work_wherever_a_path_does(model_path, images, tmp_path):
    """os's functions take bytes paths (a name that is no UTF-8, os.listdir(b".")): content, style,
    mask, init, every save and stylize_many's items take them too (they were "not bytes", a
    TypeError, or a file named "b'...'"); an image file's contents given as bytes is told so."""
    import io
    import os

    import numpy as np
    from PIL import Image

    from stylefu.core import Config, load_image, preview, save_image, stylize, stylize_many

    def b(path):
        return os.fsencode(path)

    content = save_image(b(tmp_path / "c\xe9.png"), images[0])  # the save returns a Path
    style = save_image(tmp_path / "s.png", images[1])
    mask = save_image(tmp_path / "m.png", np.ones((48, 64, 3), np.float32))
    config = Config(size=48, evaluations=2, levels=1, engine="onnx", init=b(content))
    expected = stylize(content, style, config=config.with_(init=content), model=model_path,
                       masks=mask)
    result = stylize(b(content), [b(style)], config=config, model=model_path, masks=b(mask))
    assert np.array_equal(result.image, expected.image)
    assert result.save(b(tmp_path / "out.png")) == tmp_path / "out.png"
    assert preview(b(content), [b(style)], config=config, size=48, model=model_path).save(
        b(tmp_path / "sheet.png")) == tmp_path / "sheet.png"
    [item] = stylize_many([(b(content), b(style), b(tmp_path / "o" / "batch.png"))], config,
                          model=model_path, workers=1)
    assert item.status == "ok" and load_image(tmp_path / "o" / "batch.png").rgb.shape == (36, 48, 3)
    with pytest.raises(UserError, match=r"^content: these bytes are an image file's contents, "
                                        r"not a path; give PIL.Image.open\(io.BytesIO\(data\)\)\.$"):
        stylize(content.read_bytes(), style, config=config, model=model_path)
    picture = Image.open(io.BytesIO(content.read_bytes()))  # what the message says works
    assert np.array_equal(load_image(picture).rgb, load_image(content).rgb)


def test_arrays_and_pil_images_of_every_kind_load_as_their_pixels():
    """What a script holds: arrays of either byte order ('>u2' was "ambiguous integer pixels"),
    any layout numpy makes (views, read-only), and Pillow's premultiplied modes (La was
    Pillow's ValueError, RGBa lost its alpha): each loads as the same picture as plain RGB(A)."""
    import numpy as np
    from PIL import Image

    from stylefu.core import load_image

    rng = np.random.default_rng(39)
    rgb8 = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = rgb8.astype(np.float32) / 255
    rgb16 = rgb8.astype(np.uint16) * 257
    read_only = rgb8.copy()
    read_only.flags.writeable = False
    arrays = [rgb16.astype(">u2"), rgb16.astype("<u2"), rgb8[:, ::-1][:, ::-1], read_only,
              np.asfortranarray(rgb8), expected.astype(">f4"), expected.astype(np.float64)]
    for array in arrays:
        picture = load_image(array)
        assert np.allclose(picture.rgb, expected, atol=1e-6), array.dtype
        assert picture.rgb.dtype == np.float32 and picture.rgb.flags.c_contiguous
    alpha = np.full((20, 30), 128, np.uint8)
    rgba = Image.fromarray(np.dstack([rgb8, alpha]), "RGBA")
    gray = Image.fromarray(np.dstack([rgb8[..., 0], alpha]), "LA")
    for premultiplied, plain in ((rgba.convert("RGBa"), rgba), (gray.convert("La"), gray)):
        got, want = load_image(premultiplied), load_image(plain)
        assert np.array_equal(got.alpha, want.alpha)
        # premultiplied 8-bit colour keeps about 7 of its bits at alpha 128
        assert np.abs(got.rgb - want.rgb).max() < 3 / 255, premultiplied.mode


@pytest.mark.parametrize("name, message", [
    ("iterations", r"^Config has no field 'iterations': it was renamed evaluations \(the command "
                   r"line still takes --iterations\)\.$"),
    ("tile_size", r"^Config has no field 'tile_size': it was renamed crop_side "),
    ("sise", r"^Config has no field 'sise'; did you mean size\?$"),
    ("colour", r"^Config has no field 'colour'; help\(Config\) lists its fields\.$"),
])
def test_an_unknown_config_field_names_the_field_meant(name, message):
    """Config(iterations=300), the field's name before issue 13 (docs/compat.md), was Python's
    bare "unexpected keyword argument"; Config.with_ and dataclasses.replace say the same."""
    import dataclasses
    import inspect

    for make in (lambda: Config(**{name: 3}), lambda: Config().with_(**{name: 3}),
                 lambda: dataclasses.replace(Config(), **{name: 3})):
        with pytest.raises(TypeError, match=message):
            make()
    assert "size" in inspect.signature(Config).parameters  # help() and editors still see the fields
    assert Config(64, seed=3).size == 64  # positional and keyword fields as before


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_runs_from_threads_at_once_give_the_bytes_each_gives_alone(model_path, images, engine):
    """A script's ThreadPoolExecutor: three runs at once on one loaded model (one of them asking
    for the current image at every evaluation) and one on a path, each equal to its run alone
    (the README says threads work)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from stylefu.core import load_model, stylize

    model = load_model(model_path, engine=engine)
    contents = [np.roll(images[0], 5 * k, axis=1) for k in range(4)]
    config = Config(size=48, evaluations=6, coarse_evaluations=3, levels=2, engine=engine)

    def run(k):
        return stylize(contents[k], images[1], config=config.with_(seed=k),
                       model=model_path if k == 3 else model,
                       callback=(lambda p: p.image()) if k == 1 else None).image
    alone = [run(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, range(4)))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
    assert not np.array_equal(alone[0], alone[2])  # the runs differ: no one result for all


def test_help_of_config_says_what_each_field_means():
    # help(Config) showed names and defaults only; the refusal of an unknown field points there
    import pydoc
    import subprocess
    import sys

    text = pydoc.render_doc(Config, renderer=pydoc.plaintext)
    assert "size: long side of the result in pixels" in text and "strength: style strength" in text
    assert subprocess.run([sys.executable, "-OO", "-c", "import stylefu.core.method.config"],
                          capture_output=True).returncode == 0  # no docstrings: no help added


def test_a_picture_a_caller_builds_is_checked_as_an_array_would_be():
    """Picture is public and stylize takes one: 0..255 floats were taken as 0..1 (a white
    result), an HxW array failed inside ("axes don't match"), and its repr printed the pixels."""
    import numpy as np

    from stylefu.core import Picture, UserError, load_image

    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    as_given = Picture(pixels / np.float32(255), np.ones((20, 30), np.float32), "mine")
    assert load_image(as_given) is as_given  # a Picture as stylefu makes them: as it is
    for built in (Picture(pixels), Picture(pixels[..., 0] / 255.0)):
        picture = load_image(built)
        assert picture.rgb.dtype == np.float32 and picture.rgb.shape == (20, 30, 3)
        assert np.allclose(picture.rgb[..., 0], pixels[..., 0] / 255, atol=1e-6)
    refusals = {"; divide by 255": Picture(pixels.astype(np.float32)),
                "its alpha is (20, 31)": Picture(pixels, np.ones((20, 31))),
                "NaN": Picture(np.full((20, 30, 3), np.nan, np.float32))}
    for words, built in refusals.items():
        with pytest.raises(UserError, match=re.escape(words)):
            load_image(built)
    assert repr(as_given) == "Picture(rgb=<20x30x3 float32>, alpha=<20x30 float32>, name='mine')"


def test_a_closed_pil_image_is_named_as_closed(tmp_path):
    # "the picture's file is truncated or damaged", of a file that was whole
    from PIL import Image

    from stylefu.core import UserError, load_image

    Image.new("RGB", (20, 20)).save(tmp_path / "p.png")
    image = Image.open(tmp_path / "p.png")
    image.close()
    with pytest.raises(UserError, match="this PIL image was closed before it was read"):
        load_image(image)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_progress_kept_past_its_callback_keeps_its_figures_not_the_pixels(model_path, images,
                                                                          engine):
    """A script keeping the Progress objects: on torch each one's image() later showed the last
    evaluation's pixels (L-BFGS steps them in place), on the torch-free engine each held its
    evaluation's pixels alive. Now both keep the figures, and image() later says to call it in
    the callback, where it gives that evaluation's picture."""
    import numpy as np

    from stylefu.core import UserError, stylize

    kept, frames = [], []

    def collect(p):
        kept.append(p)
        frames.append(p.image())

    config = Config(size=48, evaluations=5, levels=1, engine=engine)
    result = stylize(*images, config=config, model=model_path, callback=collect)
    assert [p.evaluation for p in kept] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(p.loss) and p.loss > 0 for p in kept)
    assert not np.array_equal(frames[0], frames[-1]) and frames[0].shape == result.image.shape
    for late in (kept[0].image, kept[0].pixels):
        with pytest.raises(UserError, match=r"work inside the callback, during their evaluation"):
            late()


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_keyboard_interrupt_mid_run_leaves_the_process_as_it_was(model_path, images, engine):
    """A notebook's stop button (KeyboardInterrupt, here raised by the callback at evaluations
    1, 4 and 8 of 10): it reaches the caller as itself, and the next run gives the same bytes as
    before it, no thread or descriptor more."""
    import os
    import threading

    import numpy as np

    from stylefu.core import load_model, stylize

    model = load_model(model_path, engine=engine)
    config = Config(size=48, evaluations=10, levels=1, engine=engine)
    before = stylize(*images, config=config, model=model).image
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    for stop_at in (1, 4, 8):
        def interrupt(progress, stop_at=stop_at):
            if progress.evaluation >= stop_at:
                raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            stylize(*images, config=config, model=model, callback=interrupt)
        assert np.array_equal(stylize(*images, config=config, model=model).image, before)
    assert threading.active_count() == threads and len(os.listdir("/proc/self/fd")) <= fds


NOTES_SCRIPT = """
import logging, sys
import numpy as np
from stylefu.core.engines.torch import model
from stylefu.core import Config, stylize
from stylefu.core.io.demo import demo_content, demo_style

model.cpu_has_fast_bf16 = lambda: False  # as an AVX2-only CPU answers: bf16 emulated
if sys.argv[2] == "info":  # the README's two lines (with a format to tell the levels apart)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stylefu").setLevel(logging.INFO)
stylize(demo_content(48, 64), demo_style(64), model=sys.argv[1],
        config=Config(size=64, levels=1, evaluations=2, crop_side=48, precision="bf16",
                      compile="off"))
"""


@pytest.mark.parametrize("setup", ["none", "info"])
def test_a_note_to_act_on_is_shown_by_default_and_information_on_request(setup, model_path):
    """The API's notes all went to the `stylefu` logger at INFO with no handler: a notebook
    never showed even "bf16 is emulated, about 20x slower". A note to act on is a WARNING record
    (Python's last-resort handler shows it on stderr with no logging set up); information (the
    tiles) stays INFO, shown once the user turns it on as the README says, and never by the
    library configuring logging itself."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NOTES_SCRIPT, str(model_path), setup],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "bf16 is emulated, about 20x slower" in done.stderr
    tiles = "px is optimised in 48 px tiles"
    if setup == "none":
        assert tiles not in done.stderr and "Traceback" not in done.stderr
    else:
        assert f"INFO stylefu: 64x48 {tiles}" in done.stderr
        assert "WARNING stylefu: this CPU has no AVX512-BF16 or AMX" in done.stderr


def test_a_jpeg_saved_from_the_api_says_it_drops_the_transparency(model_path, images, tmp_path,
                                                                    caplog):
    """`stylefu run -o x.jpg` said the content's transparent parts become opaque; the API's
    `result.save("x.jpg")` dropped them without a word. Now it says so as a note to act on: a
    WARNING record of the `stylefu` logger, or to `log=`; a .png (alpha kept) or an opaque
    content says nothing."""
    import logging

    import numpy as np

    from stylefu.core import stylize
    from stylefu.core.notes import ActionNote

    content, style = images
    alpha = np.ones(content.shape[:2], np.float32)
    alpha[:, :20] = 0
    config = Config(size=48, evaluations=3, levels=1, engine="onnx")
    clear = stylize(np.dstack([content, alpha]), style, config=config, model=model_path)
    opaque = stylize(content, style, config=config, model=model_path)
    with caplog.at_level(logging.INFO, logger="stylefu"):
        caplog.clear()
        clear.save(tmp_path / "x.jpg")
        [record] = caplog.records
        assert record.levelno == logging.WARNING and record.name == "stylefu"
        assert record.getMessage().startswith("x.jpg has no alpha channel: the content's "
                                              "transparent parts become opaque")
        caplog.clear()
        clear.save(tmp_path / "x.png")
        opaque.save(tmp_path / "y.jpg")
        assert caplog.records == []
    said = []
    clear.save(tmp_path / "z.jpeg", log=said.append)
    assert len(said) == 1 and isinstance(said[0], ActionNote) and said[0].startswith("z.jpeg ")
