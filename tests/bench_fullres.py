"""The result at the layer's own size: sharpness and cost of the ways to deliver it.

    .venv/bin/python tests/bench_fullres.py --model vgg16.onnx [--photos coffee chelsea astronaut]
        [--style immunohistochemistry] [--sizes 1500 3000] [--working 512] [--preset normal]
        [--refine 5] [--refine-sizes 1500] [--crops docs/figures] [--paintings DIR] [-o FILE]

Per photo: the painting at the working size (`stylize`, its time), then per layer size (the photo
resized to that long side: scikit-image's are 300-600 px, so there the layer's own detail is
what the enlargement kept) the ways to bring it to the layer's size:
- stretched: the painting resized (what --keep-size did before);
- detail: fullres.to_layer_size, the layer's fine luminance detail added (the default);
- refine N: N evaluations at the layer's size (tiled where memory asks) from the detail image.
Printed: time, sharpness figure (fullres.sharpness: fine-detail energy against the layer's; the
painting's own against the content at the working size), and the loss change of the refinement.
--crops saves one PNG per photo and size: 100 % crops (256 px) of layer | stretched | detail |
refined, side by side.

A photo is a scikit-image sample's name or an image file. Real detail at 1500 and 3000 px:
`--mosaic DIR` first writes DIR/wallpaper-mosaic.png, 3000 x 1600 px of three native-resolution
photos side by side (1000 px wide crops, never resized) from Debian's LGPL-3
plasma-workspace-wallpapers (`apt-get download plasma-workspace-wallpapers`, `dpkg-deb -x` it
into DIR), and adds it to the photos: its 3000 px layer is the mosaic itself, its 1500 px layer
the mosaic taken down (detail kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CROP = 256


def photo(name: str) -> np.ndarray:
    if Path(name).is_file():
        from stylefu.core.io.images import load_image

        return load_image(name, "content").rgb
    import skimage.data

    return np.asarray(getattr(skimage.data, name)(), np.float32)[..., :3] / 255.0


# The mosaic's photos (plasma-workspace-wallpapers 5.27, LGPL-3: moss by Risto Saukonpää, a
# forest path by Risto Saukonpää, boats at dusk) and the left edge of each 1000 px wide crop.
MOSAIC = (("OneStandsOut", 780), ("Path", 300), ("EveningGlow", 300))
MOSAIC_SIZE = (1600, 1000)  # each crop's height and width, native pixels


def make_mosaic(folder: str) -> str:
    from PIL import Image

    images = Path(folder) / "usr/share/wallpapers"
    height, width = MOSAIC_SIZE
    out = Image.new("RGB", (width * len(MOSAIC), height))
    for k, (name, left) in enumerate(MOSAIC):
        picture = Image.open(images / name / "contents/images/2560x1600.jpg").convert("RGB")
        out.paste(picture.crop((left, 0, left + width, height)), (k * width, 0))
    path = Path(folder) / "wallpaper-mosaic.png"
    out.save(path)
    return str(path)


def style_image(name: str) -> np.ndarray | str:
    return name if Path(name).is_file() else photo(name)


def crop(image: np.ndarray, where: tuple[float, float]) -> np.ndarray:
    """A CROP x CROP crop at relative position `where` (y, x of its centre)."""
    h, w = image.shape[:2]
    top = min(max(0, int(where[0] * h) - CROP // 2), h - CROP)
    left = min(max(0, int(where[1] * w) - CROP // 2), w - CROP)
    return image[top:top + CROP, left:left + CROP]


# Where the crops look: an edge-rich place in each photo (relative centre).
CROP_AT = {"coffee": (0.45, 0.35), "chelsea": (0.4, 0.45), "astronaut": (0.3, 0.45),
           "wallpaper-mosaic": (0.75, 0.78)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos", nargs="*", default=["coffee", "chelsea", "astronaut"])
    parser.add_argument("--style", default="immunohistochemistry",
                        help="a scikit-image sample (ihc: immunohistochemistry) or an image path")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1500, 3000])
    parser.add_argument("--working", type=int, default=512)
    parser.add_argument("--preset", default="normal")
    parser.add_argument("--refine", nargs="*", type=int, default=[],
                        help="evaluations at the layer's size to measure (0: none)")
    parser.add_argument("--refine-sizes", nargs="*", type=int, default=[1500],
                        help="layer sizes the refinement is measured at")
    parser.add_argument("--crops", help="folder for the 100 %% crop PNGs")
    parser.add_argument("--paintings", help="keep the working-size paintings here and reuse them "
                        "(to remake the crops without painting again)")
    parser.add_argument("-o", "--output", help="write the figures as JSON here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mosaic", metavar="DIR", help="add the wallpaper mosaic made from the "
                        "extracted plasma-workspace-wallpapers package in DIR")
    args = parser.parse_args()
    if args.mosaic:
        args.photos.append(make_mosaic(args.mosaic))

    from stylefu.core import Config, load_model, stylize
    from stylefu.core.io.images import fit_long_side, resize_array, save_image
    from stylefu.core.method.fullres import sharpness, to_layer_size

    model = load_model(args.model, args.device)
    style = style_image(args.style)
    figures = []
    tmp = Path(tempfile.mkdtemp())
    for source in args.photos:
        content, name = photo(source), Path(source).stem
        kept = Path(args.paintings or tmp) / f"painting-{name}-{args.working}-{args.preset}.npy"
        if kept.is_file():  # --paintings: made by an earlier run (its time is not re-measured)
            painting, painted = np.load(kept), float("nan")
        else:
            started = time.perf_counter()
            result = stylize(content, style, config=Config(size=args.working, preset=args.preset),
                             model=model)
            painting, painted = result.image, time.perf_counter() - started
            kept.parent.mkdir(parents=True, exist_ok=True)
            np.save(kept, painting)
        own = sharpness(painting, content)
        print(f"{name}: painting {painting.shape[1]}x{painting.shape[0]} in {painted:.1f} s, "
              f"sharpness {own:.3f} (against the content at that size)", flush=True)
        for size in args.sizes:
            layer = resize_array(content, *fit_long_side(*content.shape[:2], size))
            row = {"photo": name, "size": size, "layer": list(layer.shape[:2]),
                   "painting_seconds": round(painted, 2), "painting_sharpness": round(own, 4)}
            images = {"layer": layer}
            for method, detail in (("stretched", False), ("detail", True)):
                started = time.perf_counter()
                images[method] = to_layer_size(painting, layer, detail)
                row[method] = {"seconds": round(time.perf_counter() - started, 3),
                               "sharpness": round(sharpness(images[method], layer), 4)}
            for n in args.refine if size in args.refine_sizes else []:
                if n <= 0:
                    continue
                init = tmp / f"{name}-{size}.npy"
                np.save(init, images["detail"])
                config = Config(size=size, preset=args.preset, levels=1, evaluations=n,
                                tolerance=0.0, init=str(init))
                started = time.perf_counter()
                refined = stylize(layer, style, config=config, model=model)
                seconds = time.perf_counter() - started
                images[f"refine{n}"] = refined.image
                row[f"refine{n}"] = {"seconds": round(seconds, 2),
                                     "sharpness": round(sharpness(refined.image, layer), 4),
                                     "tiles": refined.metrics.get("tiles", {}),
                                     "loss": refined.metrics["total_loss"]}
            print(json.dumps(row), flush=True)
            figures.append(row)
            if args.crops:
                where = CROP_AT.get(name, (0.5, 0.5))
                gap = np.ones((CROP, 6, 3), np.float32)
                panels = [crop(image, where) for image in images.values()]
                strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
                out = Path(args.crops) / f"fullres-{name}-{size}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                save_image(out, strip)
                print(f"  crops ({' | '.join(images)}): {out}", flush=True)
    print("\nsharpness figure (time) | painting at working size | stretched | detail | refined")
    for row in figures:
        cells = [f"{row['painting_sharpness']:.2f} ({row['painting_seconds']:.0f} s)"]
        cells += [f"{row[m]['sharpness']:.2f} ({row[m]['seconds']:.2f} s)" if m in row else "-"
                  for m in ("stretched", "detail")]
        cells += [f"{n}: {v['sharpness']:.2f} ({v['seconds']:.0f} s)" for n, v in row.items()
                  if n.startswith("refine")]
        print(f"{row['photo']} {row['layer'][1]}x{row['layer'][0]} | " + " | ".join(cells))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
