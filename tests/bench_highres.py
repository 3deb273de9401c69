"""High-resolution benchmark: a 4096 px run completes within this machine's memory, without seams.

    .venv/bin/python tests/bench_highres.py [--size 4096] [--iterations 4] [--model PATH]
        [--photo coffee] [--style PATH]

Coarse-to-fine keeps it short: most evaluations happen at the coarse levels; the levels too large
for memory are optimised in moving, overlapping tiles (chosen automatically from the free
memory). Prints, from ONE run: the free memory, each level's size, tile and seconds, the peak
resident memory of this process, and the seam ratio (gradient energy across the final level's tile
borders vs just beside them; about 1 = no seam), and the mean change of the sky (top band) in the left,
middle and right thirds (tiles that drifted apart change one part of the sky and not another).
Uses the random-weights model unless --model, the generated demo scene unless --photo names a
scikit-image sample photo (cropped to 4:3 and enlarged; its top sixth stands in for the sky), and
the demo's swirl style unless --style.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def save_figure(content: np.ndarray, result: np.ndarray, path: str, shrink: int = 8) -> None:
    """Content, result and 4x the per-pixel change side by side, each `shrink` times smaller."""
    from stylefu.core.io.images import resize_array, save_image

    height, width = (s // shrink for s in content.shape[:2])
    change = np.clip(4 * np.abs(result - content), 0, 1)
    gap = np.ones((height, 8, 3), np.float32)
    panels = [resize_array(a, height, width) for a in (content, result, change)]
    save_image(path, np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))


def photo_content(name: str, height: int, width: int) -> np.ndarray:
    """scikit-image's sample photo `name`, centre-cropped to width:height and resized to it."""
    import skimage.data

    from stylefu.core.io.images import resize_array

    rgb = np.asarray(getattr(skimage.data, name)(), np.float32)[..., :3] / 255.0
    h, w = rgb.shape[:2]
    crop_h, crop_w = min(h, w * height // width), min(w, h * width // height)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return resize_array(rgb[top:top + crop_h, left:left + crop_w], height, width)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--scales", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4, help="evaluations at full size")
    parser.add_argument("--coarse-iterations", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="model artifact (default: random weights, made now)")
    parser.add_argument("--output", help="save the result here (PNG)")
    parser.add_argument("--figure", help="save content | result | 4x the change here (PNG, 1/8 size)")
    parser.add_argument("--photo", help="a scikit-image sample photo as content (coffee, rocket, ...)")
    parser.add_argument("--style", help="style image (default: the demo's swirl)")
    args = parser.parse_args()

    from stylefu.core import Config, load_model, stylize, tiling
    from stylefu.core.io.demo import demo_content, demo_style

    model_path = args.model
    if not model_path:
        from stylefu.export import export
        model_path = Path(tempfile.mkdtemp()) / "random.onnx"
        export("random", model_path, seed=0, progress=False)
    model = load_model(model_path, args.device)
    height = args.size * 3 // 4
    content = photo_content(args.photo, height, args.size) if args.photo else \
        demo_content(height, args.size)
    style = args.style or demo_style(1024)  # stylize() reads a path itself
    free = tiling.available_bytes(model.device)
    print(f"device {model.device}; free memory {free / 1e9:.1f} GB, run budget "
          f"{tiling.budget_bytes(model.device) / 1e9:.1f} GB (optimiser "
          f"{tiling.torch_budget(model.device) / 1e9:.1f} GB, ONNX Runtime "
          f"{tiling.ort_budget(model.device) / 1e9:.1f} GB); content {args.size}x{height}")

    config = Config(size=args.size, levels=args.scales, evaluations=args.iterations,
                    coarse_evaluations=args.coarse_iterations, device=args.device)
    last_report: dict[int, float] = {}  # per level: time of its last progress report

    def progress(p):
        if p.level not in last_report:
            print(f"level {p.level}/{p.levels}: {p.size[1]}x{p.size[0]} px, first evaluation done",
                  flush=True)
        last_report[p.level] = time.perf_counter()

    started = time.perf_counter()
    result = stylize(content, style, config=config, model=model, callback=progress,
                     log=lambda text: print("stylefu:", text, flush=True))
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    m = result.metrics
    ends = [started] + [last_report.get(k, started) for k in range(1, len(m["sizes"]) + 1)]
    level_seconds = {k: ends[k] - ends[k - 1] for k in range(1, len(ends))}
    for k, (h, w) in enumerate(m["sizes"], start=1):
        tile = m["tiles"].get(f"{w}x{h}", 0)
        est = tiling.torch_bytes(h, w, config.optimizer) / 1e9
        print(f"level {k}: {w}x{h} px, estimated {est:.1f} GB at once -> "
              f"{f'{tile} px tiles' if tile else 'whole image'}, {level_seconds.get(k, 0):.0f} s")
    print(f"total {seconds:.0f} s, {m['iterations']} evaluations (full-image equivalents)")
    print(f"peak RSS {peak_gb:.2f} GB of {free / 1e9:.1f} GB free at start")
    print(f"result {result.image.shape[1]}x{result.image.shape[0]}, mean change "
          f"{float(np.abs(result.image - content).mean()):.4f}")
    print(f"seam ratio {m.get('seam_ratio', float('nan')):.3f} (about 1 = no seam)")
    # Tiles must not drift apart: the demo's sky (its top sixth) changes alike across the image.
    band = np.abs(result.image - content)[: height // 6]
    thirds = [float(band[:, i * args.size // 3:(i + 1) * args.size // 3].mean()) for i in range(3)]
    print("sky band mean change, left/middle/right third: " + " / ".join(f"{v:.4f}" for v in thirds))
    if args.output:
        result.save(args.output)
        print(f"wrote {args.output}")
    if args.figure:
        save_figure(content, result.image, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
