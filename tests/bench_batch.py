"""Batch benchmark: images per minute for 1 local worker, N local workers and Ray (local), and the
flicker of a frame sequence stylized independently, chained (`--frames`) and chained with warping
(`--frames --warp`).

    python tests/bench_batch.py            # 8 images at 128 px, 12 frames at 96 px
    python tests/bench_batch.py --quick    # 4 images at 64 px, 5 frames at 64 px

Throughput is the whole `stylize_many` call (worker start-up, model load and style targets
included) over the images; each worker gets its share of the cores. Flicker is the mean absolute
difference between consecutive outputs divided by that of the inputs (frames.flicker; 1: the
stylization adds no change of its own), and `warped` the mean absolute difference between each
output and the previous output moved along the motion (0: perfectly steady). The frames are a
slow pan over the demo image with a little sensor noise per frame, as a camera gives.
Run it on a quiet machine: other work slows every row, but not alike (more workers suffer more).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _save(path: Path, array: np.ndarray) -> str:
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return str(path)


def throughput(model: Path, folder: Path, args) -> list[dict]:
    from stylefu.core import Config, stylize_many
    from stylefu.core.batch.driver import make_items
    from stylefu.core.io.demo import demo_content, demo_style
    from stylefu.core.network.forward import usable_cores

    size = args.size
    inputs = [Path(_save(folder / f"photo{i}.png", np.roll(demo_content(size * 3 // 4, size), 7 * i, 1)))
              for i in range(args.images)]
    style = _save(folder / "style.png", demo_style(size))
    config = Config(size=size, preset=args.preset, seed=0)
    engines = [("local", w) for w in args.workers]  # in the order given
    if args.ray:
        try:
            import ray  # noqa: F401
            engines += [("ray local", w) for w in args.workers if w > 1]
        except ImportError:
            print("(Ray is not installed: no Ray row)")
    rows = []
    for engine, workers in engines:
        out = folder / f"out-{engine.replace(' ', '-')}-{workers}"
        out.mkdir()
        os.environ["STYLEFU_CACHE"] = str(folder / f"cache-{engine.replace(' ', '-')}-{workers}")
        items = make_items(inputs, [style], out)
        started = time.perf_counter()
        results = list(stylize_many(items, config, model=model, workers=workers,
                                    ray=True if engine == "ray local" else None))
        wall = time.perf_counter() - started
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        rows.append({"engine": engine, "workers": workers,
                     "threads_each": max(1, usable_cores() // workers), "images": len(items),
                     "seconds": round(wall, 1), "images_per_min": round(60 * len(items) / wall, 2),
                     "item_seconds": round(float(np.mean([r.seconds for r in results])), 2)})
        print(f"  {engine:>9} {workers} worker(s): {wall:6.1f} s, "
              f"{rows[-1]['images_per_min']:.2f} images/min", flush=True)
    return rows


def pan(count: int, size: int, step: int = 2, noise: float = 0.02) -> list[np.ndarray]:
    """`count` frames of a camera panning `step` px per frame over the demo image with fine grain
    of its own (a scene has texture that moves with it), each frame with its own sensor noise."""
    from stylefu.core.io.demo import demo_content

    height, width = size * 3 // 4, size
    rng = np.random.default_rng(0)
    scene = demo_content(height, width + step * count)
    scene = scene + rng.normal(0, 0.08, scene.shape).astype(np.float32)
    return [np.clip(scene[:, step * k:step * k + width] + rng.normal(0, noise, (height, width, 3)),
                    0, 1).astype(np.float32) for k in range(count)]


def flicker_rows(model: Path, folder: Path, args) -> list[dict]:
    from stylefu.core import BatchItem, Config, RunOptions, stylize_many
    from stylefu.core.batch.frames import flicker, warp_previous
    from stylefu.core.io.demo import demo_style

    frames = pan(args.frames, args.frame_size)
    paths = [_save(folder / f"frame{k:03d}.png", f) for k, f in enumerate(frames)]
    inputs = [np.asarray(Image.open(p), np.float32) / 255 for p in paths]
    style = _save(folder / "frame-style.png", demo_style(args.frame_size))
    config = Config(size=args.frame_size, preset=args.preset, seed=0)
    base = flicker(inputs)
    rows = []
    for name, options in (("independent", RunOptions()), ("previous result", RunOptions(frames=True)),
                          ("previous result, warped", RunOptions(frames=True, warp=True))):
        items = [BatchItem(p, (style,)) for p in paths]
        started = time.perf_counter()
        results = sorted(stylize_many(items, config, model=model, workers=1, options=options,
                                      keep_images=True), key=lambda r: r.index)
        seconds = time.perf_counter() - started
        outputs = [r.image for r in results]
        moved = [np.abs(b - warp_previous(a, fb, fa)).mean()
                 for a, b, fa, fb in zip(outputs, outputs[1:], inputs, inputs[1:])]
        rows.append({"start": name, "flicker": round(flicker(outputs), 4),
                     "flicker_vs_input": round(flicker(outputs) / base, 2),
                     "warped_difference": round(float(np.mean(moved)), 4),
                     "mean_total_loss": float(np.mean([r.metrics["total_loss"] for r in results])),
                     "seconds": round(seconds, 1)})
        print(f"  {name:>24}: flicker {rows[-1]['flicker']:.4f} ({rows[-1]['flicker_vs_input']}x "
              f"the input's {base:.4f}), warped difference {rows[-1]['warped_difference']:.4f}",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 images at 64 px, 5 frames")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="local worker counts, run in this order (default: 1, 2, the cores)")
    parser.add_argument("--preset", default="draft")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--frame-size", type=int, default=None)
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    parser.add_argument("--no-flicker", dest="flicker", action="store_false")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact (default: random weights, seed 0, made in a temp folder)")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench-batch.json"))
    args = parser.parse_args(argv)

    from stylefu.core.network.forward import usable_cores
    from stylefu.export import export

    cores = usable_cores()
    args.images = args.images or (4 if args.quick else 8)
    args.size = args.size or (64 if args.quick else 128)
    args.frames = args.frames or (5 if args.quick else 12)
    args.frame_size = args.frame_size or (64 if args.quick else 96)
    args.workers = args.workers or sorted({1, 2, cores})
    out = {"cores": cores, "load_average_start": os.getloadavg(), "command": " ".join(sys.argv)}
    print(f"{cores} cores, load average {os.getloadavg()}; {args.images} images at {args.size} px, "
          f"preset {args.preset}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or export("random", tmp / "random.onnx", seed=0, progress=False)[0]
        out["throughput"] = throughput(model, tmp, args) if args.throughput else []
        if args.flicker:
            print(f"frames: {args.frames} at {args.frame_size} px (pan 2 px/frame, grain 0.08, noise 0.02)")
            out["flicker"] = flicker_rows(model, tmp, args)
    out["load_average_end"] = os.getloadavg()
    print("\n| engine | workers x threads | images/min | seconds (whole batch) | per item (s) |")
    print("|---|---|---|---|---|")
    for r in out["throughput"]:
        print(f"| {r['engine']} | {r['workers']} x {r['threads_each']} | {r['images_per_min']:.2f} | "
              f"{r['seconds']} | {r['item_seconds']} |")
    if args.flicker:
        print("\n| frames start from | flicker (vs input) | warped difference | mean loss |")
        print("|---|---|---|---|")
        for r in out["flicker"]:
            print(f"| {r['start']} | {r['flicker']:.4f} ({r['flicker_vs_input']}x) | "
                  f"{r['warped_difference']:.4f} | {r['mean_total_loss']:.4g} |")
    print(f"\nload average at the end {os.getloadavg()}")
    args.output.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
