"""`stylefu demo`: the README's demo. Generated content and style (core/demo.py), a model
(installed, else the real weights fetched once, else random ones exported here), one run, and a
side-by-side PNG. It lives in export because it may have to make the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from stylefu.core.cli import say
from stylefu.core.config import Config
from stylefu.core.demo import demo_content, demo_style, side_by_side
from stylefu.core.errors import UserError
from stylefu.core.images import save_image
from stylefu.core.paths import cache_dir, default_model_path
from stylefu.core.stylize import stylize

from .artifact import export

DEMO_RANDOM_MODEL = "vgg19-random-demo.onnx"


def demo_model(progress=print) -> Path:
    """The installed model; else the real weights fetched once (short timeout); else random."""
    installed = default_model_path()
    if installed.is_file():
        return installed
    try:
        progress("No model installed yet: fetching the official VGG19 weights (548 MB) once...")
        return export("torchvision", installed, timeout=5)[0]
    except UserError as exc:
        progress(f"Offline ({exc}).")
    fallback = cache_dir() / DEMO_RANDOM_MODEL
    if not fallback.is_file():
        progress("Making a model with RANDOM weights instead (seed 0): random features give a "
                 "much weaker effect than real ones. Run `stylefu export` when online.")
        export("random", fallback, seed=0, progress=False)
    return fallback


def run_demo(output_dir: Path, size: int = 256, log=None) -> Path:
    """Stylize the generated scene with the generated style; write content | style | result."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    output_dir.mkdir(parents=True, exist_ok=True)
    content, style = demo_content(), demo_style()
    save_image(output_dir / "content.png", content)
    save_image(output_dir / "style.png", style)
    model = demo_model(log)
    result = stylize(content, style, config=Config(size=size, preset="draft"), model=model)
    result.save(output_dir / "result.png")
    m = result.metrics
    label = f"result ({m['weights_source']}, {m['seconds']:.0f} s)"
    sheet_path = output_dir / "side_by_side.png"
    sheet = side_by_side([("content", content), ("style", style), (label, result.image)])
    return save_image(sheet_path, np.asarray(sheet, np.float32) / 255.0)


def cmd_demo(args) -> int:
    path = run_demo(Path(args.output))
    say(f"stylefu demo: wrote {path} (content | style | result); open it to look.")
    return 0


def add_demo_parser(sub) -> None:
    """Add `stylefu demo` to the `stylefu` command's subparsers."""
    demo = sub.add_parser("demo", help="stylize built-in images and write a side-by-side PNG")
    demo.add_argument("-o", "--output", default="demo-output", help="output folder")
    demo.set_defaults(func=cmd_demo)
