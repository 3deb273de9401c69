"""Make the README's "Controls" pictures by running exactly the `stylefu run` commands it shows.

    .venv/bin/python tests/make_figures.py

Writes the inputs (generated content, two styles, masks) and one before/after strip per control
(controls-*.png) into tests/figures/. The commands run in that folder with a RANDOM-weights model
(seed 0, through $STYLEFU_MODEL), so the effects are weaker than with real VGG19 weights.
Not collected by pytest.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FIGURES = Path(__file__).resolve().parent / "figures"
COMMON = "--size 192 --preset draft"

# (figure name, caption, [(label, command)]): the README shows these commands verbatim.
CONTROLS = [
    ("controls-colour", "Colour preservation", [
        ("default", f"stylefu run content.png style.png -o plain.png {COMMON}"),
        ("--preserve-colors luminance",
         f"stylefu run content.png style.png -o luminance.png --preserve-colors luminance {COMMON}"),
        ("--preserve-colors histogram",
         f"stylefu run content.png style.png -o histogram.png --preserve-colors histogram {COMMON}"),
    ]),
    ("controls-scale", "Style scale", [
        ("--style-scale 0.5",
         f"stylefu run content.png style.png -o scale-0.5.png --style-scale 0.5 {COMMON}"),
        ("--style-scale 2",
         f"stylefu run content.png style.png -o scale-2.png --style-scale 2 {COMMON}"),
    ]),
    ("controls-blend", "Two styles blended", [
        ("--style-blend 0.7,0.3", "stylefu run content.png style.png style2.png -o blend.png "
                                  f"--style-blend 0.7,0.3 {COMMON}"),
    ]),
    ("controls-mask", "Spatial control", [
        ("--mask mask.png",
         f"stylefu run content.png style.png -o masked.png --mask mask.png {COMMON}"),
        ("two styles, two masks", "stylefu run content.png style.png style2.png -o regions.png "
                                  f"--mask sky.png --mask land.png {COMMON}"),
    ]),
    ("controls-tiles", "Tiles (high resolution)", [
        ("--tile-size 128",
         f"stylefu run content.png style.png -o tiled.png --tile-size 128 {COMMON}"),
    ]),
]


def make_inputs() -> None:
    from stylefu.core.demo import demo_content, demo_style
    from stylefu.core.images import save_image

    content = demo_content(192, 256)
    save_image(FIGURES / "content.png", content)
    save_image(FIGURES / "style.png", demo_style(256))
    # A second style: warm diagonal brush strokes.
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:256, 0:256] / 256
    strokes = np.sin(60 * (x + y) + 2 * np.sin(9 * x)) + 0.6 * rng.standard_normal((256, 256))
    level = np.clip((strokes + 2) / 4, 0, 1)[..., None]
    style2 = level * np.array([0.95, 0.55, 0.15]) + (1 - level) * np.array([0.45, 0.05, 0.1])
    save_image(FIGURES / "style2.png", style2.astype(np.float32))
    # Masks: an ellipse around the house (soft edge); the sky and the land (soft border).
    mask = Image.new("L", (256, 192), 0)
    ImageDraw.Draw(mask).ellipse([20, 55, 150, 180], fill=255)
    mask.filter(ImageFilter.GaussianBlur(6)).save(FIGURES / "mask.png")
    sky = (content[..., 2] > content[..., 1] + 0.15).astype(np.uint8) * 255
    sky = Image.fromarray(sky).filter(ImageFilter.GaussianBlur(3))
    sky.save(FIGURES / "sky.png")
    Image.fromarray(255 - np.asarray(sky)).save(FIGURES / "land.png")


def run(command: str, env: dict) -> None:
    argv = shlex.split(command)
    assert argv[0] == "stylefu"
    print("$", command, flush=True)
    subprocess.run([sys.executable, "-m", "stylefu.core", *argv[1:], "--progress", "none"],
                   cwd=FIGURES, env=env, check=True)


def main() -> int:
    from stylefu.core.demo import side_by_side
    from stylefu.core.images import load_image, save_image
    from stylefu.export import export

    FIGURES.mkdir(parents=True, exist_ok=True)
    make_inputs()
    model = Path(tempfile.mkdtemp()) / "random.onnx"
    export("random", model, seed=0, progress=False)
    env = {**os.environ, "STYLEFU_MODEL": str(model)}
    done: set[str] = set()
    for name, _caption, runs in CONTROLS:
        panels = [("content", load_image(FIGURES / "content.png").rgb)]
        inputs = {"style.png", "style2.png", "mask.png", "sky.png", "land.png"}
        for label, command in runs:
            argv = shlex.split(command)
            for arg in argv:
                if arg in inputs and arg not in {p[0] for p in panels}:
                    panels.append((arg, load_image(FIGURES / arg).rgb))
            output = argv[argv.index("-o") + 1]
            if output not in done:
                run(command, env)
                done.add(output)
            if not any(lbl == "default" for lbl, _ in panels) and output != "plain.png":
                panels.append(("default", load_image(FIGURES / "plain.png").rgb))
            panels.append((label, load_image(FIGURES / output).rgb))
        sheet = side_by_side(panels, height=160)
        save_image(FIGURES / f"{name}.png", np.asarray(sheet, np.float32) / 255.0)
        print("wrote", FIGURES / f"{name}.png", flush=True)
    for output in done:  # the strips keep what the README shows; the single results go
        (FIGURES / output).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
