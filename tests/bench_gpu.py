"""GPU benchmark, sized for one call on a lent GPU (issue 26): every figure as one JSON line,
printed and appended to OUT/gpu.jsonl as soon as it is measured (a timeout keeps what was done).

Setting: trained VGG16, coffee + `ihc` square at each size, the plain objective (the mean over
the five style layers), judged by bench_speed's independent float32 reference on the delivered
image. Steps, each under its own time budget:
1. machine and start-up: `import torch`, CUDA's first use, `import stylefu.core`, the model load
   (new processes), and a whole `stylefu run` command;
2. per size: `normal` in-process (warm), in-run seconds split into targets, optimiser and final
   figures, the judged loss and full-size-equivalent evaluations;
3. per size: ms per evaluation back to back, ours (bf16 and fp32, cuDNN autotuning off and on)
   against the reference (float32, torch.optim.LBFGS, history 100), each an L-BFGS run from the
   content, so the optimiser's own cost is in both;
4. host syncs per evaluation (CUDA's sync debug mode) for ours and the reference;
5. a torch.profiler table of ten of our evaluations at the middle size (OUT/profile-*.txt);
6. batch throughput: `stylefu batch`, 8 items `draft` at the first size;
7. per size: the objective's forward and backward eager against one CUDA graph replayed.
Runs on a CPU too (`--device cpu --sizes 64 96`, a few minutes): how it is checked before
device time is spent.

    python tests/bench_gpu.py --model vgg16.onnx --out OUT [--sizes 512 1024 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import (  # noqa: E402
    MEAN_LAYER_WEIGHTS,
    Reference,
    full_size_equivalents,
    images_for,
)

OUT: Path = Path(".")


def emit(record: dict) -> None:
    line = json.dumps(record, default=lambda v: round(v, 4) if isinstance(v, float) else str(v))
    print(line, flush=True)
    with open(OUT / "gpu.jsonl", "a") as f:
        f.write(line + "\n")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pixels(image: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


def config(size: int, **changes):
    from stylefu.core import Config

    return Config(size=size, preset=changes.pop("preset", "normal"),
                  style_layer_weights=MEAN_LAYER_WEIGHTS, **changes)


def machine(device) -> None:
    record = {"what": "machine", "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": sys.version.split()[0]}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cudnn"] = torch.backends.cudnn.version()
    try:
        import onnxruntime
        record["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    emit(record)


STARTUP = r"""
import json, sys, time
w0, t = time.perf_counter(), {}
def mark(k): t[k] = round(time.perf_counter() - w0, 3)
import torch; mark("import torch")
if sys.argv[2] == "cuda":
    torch.zeros(1, device="cuda"); torch.cuda.synchronize(); mark("CUDA first use")
import stylefu.core; mark("import stylefu.core")
from stylefu.core.engines.torch.model import load_model
model = load_model(sys.argv[1], sys.argv[2]); mark("model load (torch net + ONNX Runtime)")
model.net_in(torch.bfloat16); mark("bf16 weights")
print(json.dumps(t))
"""


def startup(model: Path, device, env: dict) -> None:
    out = subprocess.run([sys.executable, "-c", STARTUP, str(model), device.type], env=env,
                         capture_output=True, text=True, timeout=120)
    emit({"what": "start-up, cumulative s", **json.loads(out.stdout.strip().splitlines()[-1])})


def command(model: Path, device, size: int, env: dict, folder: Path) -> None:
    content, style = images_for("trained", size)
    from stylefu.core.io.images import save_image

    save_image(folder / "c.png", content)
    save_image(folder / "s.png", style)
    argv = [sys.executable, "-m", "stylefu.core", "run", str(folder / "c.png"),
            str(folder / "s.png"), "-o", str(folder / "out.png"), "--size", str(size),
            "--model", str(model), "--device", device.type, "--style-layer-weights",
            ",".join(map(str, MEAN_LAYER_WEIGHTS))]
    for label in ("first", "second"):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        emit({"what": f"whole command, normal {size} px, {label} run",
              "seconds": time.perf_counter() - start, "exit": done.returncode,
              "stderr_tail": done.stderr.strip()[-300:] if done.returncode else ""})


class Phases:
    """Wall seconds spent in the torch runner's targets, optimiser and final figures."""

    def __init__(self, device):
        from stylefu.core.engines.torch import runner

        self.runner, self.device, self.seconds = runner, device, {}
        self.originals = {n: getattr(runner, n) for n in ("region_targets", "optimise",
                                                          "optimise_tiled", "evaluate")}
        for name, fn in self.originals.items():
            setattr(runner, name, self._timed(name, fn))

    def _timed(self, name, fn):
        def timed(*a, **k):
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync(self.device)
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed

    def close(self):
        for name, fn in self.originals.items():
            setattr(self.runner, name, fn)


def in_run(model, reference: Reference, device, size: int, label: str = "in-run") -> None:
    from stylefu.core import stylize

    content, style = images_for("trained", size)
    counts: dict = {}

    def callback(p):
        counts[tuple(p.size)] = max(counts.get(tuple(p.size), 0), p.evaluation)
    phases = Phases(device)
    try:
        sync(device)
        start = time.perf_counter()
        result = stylize(content, style, config=config(size, device=device.type), model=model,
                         callback=callback)
        sync(device)
        seconds = time.perf_counter() - start
    finally:
        phases.close()
    targets = reference.targets(content, style)
    judged = reference.judge(pixels(result.image, device), targets, clip=True)
    emit({"what": f"{label}, normal {size} px", "seconds": seconds, "judged_loss": judged,
          "evaluations": sum(counts.values()), "full_size_equivalents":
          full_size_equivalents(counts), "phases_s": phases.seconds,
          "precision": result.metrics.get("precision"), "compiled": result.metrics.get("compiled")})


def per_evaluation(model, reference: Reference, device, size: int, evaluations: int) -> None:
    """ms per evaluation over an L-BFGS run of `evaluations` from the content, back to back."""
    from stylefu.core.engines.torch.compiled import Evaluation
    from stylefu.core.engines.torch.optimise import minimise
    from stylefu.core.method.objective import Objective
    from stylefu.core.method.targets import compute_targets

    content, style = images_for("trained", size)
    x0 = pixels(content, device)
    ref_targets = reference.targets(content, style)

    def reference_run():
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100, tolerance_grad=-1.0,
                                tolerance_change=-1.0)

        def closure():
            opt.zero_grad()
            total = reference.loss(x, ref_targets)
            total.backward()
            return total
        for _ in range(evaluations):
            opt.step(closure)

    def ours(dtype):
        cfg = config(size)
        objective = Objective(model, compute_targets(model, content, [style], (size, size), cfg),
                              cfg, dtype)
        return lambda: minimise(Evaluation(objective, False), x0, evaluations, cfg,
                                lambda *a: None, None)

    runs = {"reference fp32": reference_run, "ours bf16": ours(torch.bfloat16),
            "ours fp32": ours(torch.float32)}
    record = {"what": f"ms per evaluation, {size} px, {evaluations} back to back"}
    for benchmark in (False, True) if device.type == "cuda" else (False,):
        torch.backends.cudnn.benchmark = benchmark
        for name, run in runs.items():
            run()  # warm: cuDNN's choice, the allocator
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            key = name + (", cudnn.benchmark" if benchmark else "")
            record[key] = 1000 * (time.perf_counter() - start) / evaluations
    torch.backends.cudnn.benchmark = False
    record["reference / ours bf16"] = record["reference fp32"] / record["ours bf16"]
    emit(record)
    if device.type == "cuda":
        emit({"what": f"host syncs per evaluation, {size} px",
              **{name: syncs_per_evaluation(run, evaluations) for name, run in runs.items()}})


def cuda_graph(model, device, size: int, repeats: int = 20) -> None:
    """ms of the objective's forward and backward (bf16, no optimiser) eager, against the same
    captured once as a CUDA graph and replayed: the launch overhead a graphed evaluation would
    save (issue 26), and whether capture works at all (a sync inside fails it, named here)."""
    from stylefu.core.method.objective import Objective
    from stylefu.core.method.targets import compute_targets

    if device.type != "cuda":
        emit({"what": f"CUDA graph, {size} px", "skipped": "needs CUDA"})
        return
    content, style = images_for("trained", size)
    cfg = config(size)
    objective = Objective(model, compute_targets(model, content, [style], (size, size), cfg),
                          cfg, torch.bfloat16)
    x0 = pixels(content, device)

    def eager(x):
        x.grad = None
        total, _ = objective(x)
        total.backward()
        return total

    x = x0.clone().requires_grad_(True)
    for _ in range(3):
        eager(x)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        total = eager(x)
    sync(device)
    record = {"what": f"CUDA graph, {size} px, objective forward+backward bf16, {repeats} times",
              "eager ms": 1000 * (time.perf_counter() - start) / repeats}
    reference_total, reference_grad = total.detach().float(), x.grad.detach().float().clone()
    static = x0.clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture asks
        for _ in range(3):
            eager(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    static.grad = None
    with torch.cuda.graph(graph):
        static_total, _ = objective(static)
        static_total.backward()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        static.data.copy_(x0)
        graph.replay()
    sync(device)
    record["graph ms"] = 1000 * (time.perf_counter() - start) / repeats
    record["eager / graph"] = record["eager ms"] / record["graph ms"]
    record["loss difference"] = float((static_total.float() - reference_total).abs()
                                      / reference_total.abs())
    record["gradient difference"] = float((static.grad.float() - reference_grad).norm()
                                          / reference_grad.norm())
    emit(record)


def syncs_per_evaluation(run, evaluations: int) -> float:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen) / evaluations


def profile(model, device, size: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    from stylefu.core.engines.torch.compiled import Evaluation
    from stylefu.core.engines.torch.optimise import minimise
    from stylefu.core.method.objective import Objective
    from stylefu.core.method.targets import compute_targets

    content, style = images_for("trained", size)
    cfg = config(size)
    objective = Objective(model, compute_targets(model, content, [style], (size, size), cfg),
                          cfg, torch.bfloat16 if device.type == "cuda" else torch.float32)
    x0 = pixels(content, device)
    minimise(Evaluation(objective, False), x0, 3, cfg, lambda *a: None, None)  # warm
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profiler(activities=activities) as prof:
        minimise(Evaluation(objective, False), x0, 10, cfg, lambda *a: None, None)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    (OUT / f"profile-{size}.txt").write_text(table)
    emit({"what": f"profile, 10 evaluations at {size} px", "file": f"profile-{size}.txt"})


def batch(model: Path, device, env: dict, folder: Path, size: int, items: int = 8) -> None:
    content, style = images_for("trained", size)
    from stylefu.core.io.images import save_image

    inputs = []
    for k in range(items):
        inputs.append(folder / f"in{k}.png")
        save_image(inputs[-1], np.roll(content, 37 * k, axis=1))
    save_image(folder / "style.png", style)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stylefu.core", "batch", *map(str, inputs),
                           "--style", str(folder / "style.png"), "-o", str(folder / "batch"),
                           "--size", str(size), "--preset", "draft", "--model", str(model),
                           "--device", device.type], env=env, capture_output=True, text=True,
                          timeout=300)
    seconds = time.perf_counter() - start
    emit({"what": f"batch, {items} items at {size} px draft", "seconds": seconds,
          "items_per_minute": 60 * items / seconds, "exit": done.returncode,
          "stderr_tail": done.stderr.strip()[-300:] if done.returncode else ""})


def step(name: str, fn, *a) -> None:
    start = time.perf_counter()
    try:
        fn(*a)
    except Exception as exc:  # one step's failure must not cost the others' figures
        emit({"what": name, "failed": f"{exc.__class__.__name__}: {exc}"[:500],
              "seconds": time.perf_counter() - start})


def main(argv=None) -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--evaluations", type=int, default=30)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["startup", "command", "in-run", "per-eval", "graph", "profile",
                                 "batch"])
    args = parser.parse_args(argv)
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    reference = Reference(args.model).to(device)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    env = {**os.environ, "STYLEFU_CACHE": str(work / "cache")}
    os.environ["STYLEFU_CACHE"] = env["STYLEFU_CACHE"]
    machine(device)
    if "startup" not in args.skip:
        step("start-up", startup, args.model, device, env)
    if "command" not in args.skip:
        step("whole command", command, args.model, device, args.sizes[0], env, work)
    from stylefu.core.engines.torch.model import load_model

    model = load_model(args.model, device.type)
    step("warm-up", in_run, model, reference, device, min(args.sizes), "warm-up (cold)")
    for size in args.sizes:
        if "in-run" not in args.skip:
            step(f"in-run {size}", in_run, model, reference, device, size)
        if "per-eval" not in args.skip:
            step(f"per-eval {size}", per_evaluation, model, reference, device, size,
                 args.evaluations)
    if "profile" not in args.skip:
        step("profile", profile, model, device, args.sizes[len(args.sizes) // 2])
    if "batch" not in args.skip:
        step("batch", batch, args.model, device, env, work, args.sizes[0])
    for size in args.sizes if "graph" not in args.skip else ():  # last: a failed capture may
        step(f"CUDA graph {size}", cuda_graph, model, device, size)  # leave CUDA unusable
    return 0


if __name__ == "__main__":
    sys.exit(main())
