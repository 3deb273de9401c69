"""Speed benchmark: stylefu's default schedule against the reference procedure, in one process.

The reference procedure (Gatys et al. 2016 as usually implemented) is re-implemented here on its
own, sharing no code with stylefu.core: VGG19 to relu5_1 as a plain torch Sequential built from
the artifact's weights, float32, NCHW, initialised with the content image, torch L-BFGS
(history 100, lr 1) for 500 loss evaluations at a single scale. Loss: content weight 1 x MSE of
relu4_2, style weight 1e6 x sum over relu1_1..relu5_1 of MSE between Gram matrices F F^T/(C H W).

Both runs use the same images, the same seeded random weights and the same loss. The judge of
quality is the reference's loss function at full size in float32, applied to the pixels each
run optimised (both unbounded; the loss of the image clipped to 0..1, as saved, is printed too):
losses that a coarse-to-fine run reports at smaller scales are not comparable and are never used.

Printed per size (256 px, and 512 px unless --quick): seconds per evaluation of each, the
reference's final loss, the time our presets need to reach it (else their own final loss), the
speed-up at equal loss (the reference's time to the goal over ours; the goal is the reference's
final loss, or our own final loss where we do not reach it), peak RSS per phase, and bf16's
final loss against fp32. Writes bench.json.

    python tests/bench_speed.py            # 256 and 512 px (the 512 px reference takes ~12 min)
    python tests/bench_speed.py --quick    # 256 px only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------- memory (peak RSS per phase)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5), so each phase reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # fallback: the process-wide peak, not per phase
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the reference procedure

# torchvision's vgg19().features up to relu5_1 (index 29): 'C' conv+relu, 'P' 2x2 pool.
REFERENCE_PLAN = ["C", "C", "P", "C", "C", "P", "C", "C", "C", "C", "P",
                  "C", "C", "C", "C", "P", "C"]
CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv3_4", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1"]
REF_STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
REF_CONTENT = "relu4_2"
REF_CONTENT_WEIGHT = 1.0
REF_STYLE_WEIGHT = 1e6


class Reference:
    """The plain reference: an nn.Sequential VGG19 to relu5_1 in float32, NCHW."""

    def __init__(self, artifact: Path):
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(artifact))
        meta = {p.key: p.value for p in graph.metadata_props}
        weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        pre = json.loads(meta["stylefu.preprocessing"])
        self.order = list(pre["channel_order"])
        self.scale = float(pre["scale"])
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1)
        pool = nn.AvgPool2d if meta["stylefu.pooling"] == "avg" else nn.MaxPool2d
        layers: list[nn.Module] = []
        self.taps: dict[int, str] = {}
        convs = iter(CONV_NAMES)
        for step in REFERENCE_PLAN:
            if step == "P":
                layers.append(pool(2, 2))
                continue
            name = next(convs)
            conv = nn.Conv2d(weights[f"{name}.weight"].shape[1], weights[f"{name}.weight"].shape[0],
                             3, padding=1)
            conv.weight.data = torch.from_numpy(weights[f"{name}.weight"].copy())
            conv.bias.data = torch.from_numpy(weights[f"{name}.bias"].copy())
            layers += [conv, nn.ReLU()]
            self.taps[len(layers) - 1] = "relu" + name[4:]
        self.net = nn.Sequential(*layers).eval().requires_grad_(False)

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image[:, self.order] * self.scale - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out

    @staticmethod
    def gram(f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        flat = f.reshape(n, c, h * w)
        return flat @ flat.transpose(1, 2) / (c * h * w)

    def targets(self, content: np.ndarray, style: np.ndarray):
        with torch.no_grad():
            content_feat = self.features(to_nchw(content))[REF_CONTENT]
            style_feats = self.features(to_nchw(style))
        return content_feat, {n: self.gram(style_feats[n]) for n in REF_STYLE}

    def loss(self, image: torch.Tensor, targets) -> torch.Tensor:
        content_target, grams = targets
        feats = self.features(image)
        content = torch.mean((feats[REF_CONTENT] - content_target) ** 2)
        style = sum(torch.mean((self.gram(feats[n]) - grams[n]) ** 2) for n in REF_STYLE)
        return REF_CONTENT_WEIGHT * content + REF_STYLE_WEIGHT * style

    def judge(self, pixels: torch.Tensor, targets, clip: bool = False) -> float:
        """The reference loss of [1,3,H,W] pixels as optimised, or clipped to 0..1 as saved."""
        with torch.no_grad():
            return float(self.loss(pixels.clamp(0, 1) if clip else pixels, targets))

    def run(self, content: np.ndarray, targets, evaluations: int):
        """L-BFGS from the content image; one evaluation per step. -> (pixels, [(t, loss)]).

        torch's stopping thresholds are switched off so that all `evaluations` really improve
        the image: with the defaults (gradient 1e-7) it stops stepping after ~200 evaluations
        on this loss's scale, which would make the baseline weaker than the procedure.
        """
        x = to_nchw(content).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100, tolerance_grad=-1.0,
                                tolerance_change=-1.0)
        curve: list[tuple[float, float]] = []
        start = time.perf_counter()

        def closure():
            opt.zero_grad()
            total = self.loss(x, targets)
            total.backward()
            curve.append((time.perf_counter() - start, float(total.detach())))
            return total

        for i in range(evaluations):
            opt.step(closure)
            if (i + 1) % 100 == 0:
                print(f"  reference: {i + 1} evaluations, {curve[-1][0]:.0f} s, "
                      f"loss {curve[-1][1]:.6g}", flush=True)
        return x.detach(), curve


def to_nchw(image: np.ndarray) -> torch.Tensor:
    # NCHW-contiguous: torch.optim.LBFGS cannot view a permuted (channels-last) parameter.
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None] \
        .contiguous()


# ---------------------------------------------------------------- our runs


def run_ours(content, style, config, model, snapshot_every: int = 5):
    """stylize() timed end to end; snapshots of the full-size image with their times.

    The callback's own cost (copying snapshots) is subtracted from the recorded times.
    Returns (result, snapshots [(t, image)], final-scale evaluation times, total seconds).
    """
    from stylefu.core import stylize

    snaps: list[tuple[float, torch.Tensor]] = []
    stamps: list[float] = []
    state = {"overhead": 0.0, "last": None}
    start = time.perf_counter()

    def callback(p):
        entered = time.perf_counter()
        if p.level == p.levels:
            t = entered - start - state["overhead"]
            stamps.append(t)
            state["last"] = (t, p.pixels())
            if p.evaluation % snapshot_every == 0:
                snaps.append(state["last"])
        state["overhead"] += time.perf_counter() - entered

    with tempfile.TemporaryDirectory() as cache:  # a cold target cache: no free work
        os.environ["STYLEFU_CACHE"] = cache
        result = stylize(content, style, config=config, model=model, callback=callback)
    total = time.perf_counter() - start - state["overhead"]
    if state["last"] is not None and (not snaps or snaps[-1] is not state["last"]):
        snaps.append(state["last"])
    return result, snaps, stamps, total


def time_to_reach(reference: Reference, targets, snaps, goal: float, clip: bool = False):
    """(time of the first snapshot whose judged loss <= goal or None, final judged loss)."""
    final = reference.judge(snaps[-1][1], targets, clip)
    if final > goal:
        return None, final
    for t, pixels in snaps[:-1]:  # in order: robust to L-BFGS's occasional uphill evaluation
        if reference.judge(pixels, targets, clip) <= goal:
            return t, final
    return snaps[-1][0], final


def per_eval(stamps: list[float]) -> float:
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(deltas) if deltas else float("nan")


def images_for(size: int):
    """The benchmark's content (a landscape) and style (brush strokes), square, long side `size`."""
    from stylefu.core.demo import demo_content, demo_style
    from stylefu.core.images import resize_array

    content = resize_array(demo_content(512, 512), size, size)
    style = resize_array(demo_style(512), size, size)
    return content, style


def bench_size(size: int, args, model, reference: Reference, out: dict):
    from stylefu.core import Config

    content, style = images_for(size)
    targets = reference.targets(content, style)
    x = to_nchw(content).requires_grad_(True)

    print(f"\n=== {size} px ===", flush=True)
    # Warm-up: oneDNN builds its kernels on first use at each shape; neither side pays for it.
    for _ in range(2):
        reference.loss(x, targets).backward()
    from stylefu.core import stylize
    for preset in args.presets:
        stylize(content, style, model=model, config=Config(size=size, preset=preset).with_(
            evaluations=2, coarse_evaluations=2))

    # Ours first (short), then the long reference, then our fp32 run for the bf16 check.
    rows = {}
    for preset in args.presets:
        reset_peak_rss()
        config = Config(size=size, preset=preset)
        result, snaps, stamps, total = run_ours(content, style, config, model)
        rows[preset] = dict(config=config, snaps=snaps, stamps=stamps, total=total,
                            rss=peak_rss_mb(), evals=result.metrics["iterations"],
                            sizes=result.metrics["sizes"], precision=result.metrics["precision"])
        print(f"ours {preset:6s}: {total:7.1f} s, {result.metrics['iterations']} evaluations over "
              f"{result.metrics['sizes']}, {per_eval(stamps):.3f} s/eval at full size, "
              f"peak RSS {rows[preset]['rss']:.0f} MB", flush=True)

    reset_peak_rss()
    ref_pixels, curve = reference.run(content, targets, args.ref_evals)
    ref_rss = peak_rss_mb()
    ref_time = curve[-1][0]
    # The judge: the reference's loss at full size in float32 of the pixels each run optimised
    # (both optimise unbounded pixels). Clipped to 0..1, as saved, is printed alongside.
    ref_final = reference.judge(ref_pixels, targets)
    ref_final_clipped = reference.judge(ref_pixels, targets, clip=True)
    ref_spe = per_eval([t for t, _ in curve])
    print(f"reference: {ref_time:7.1f} s, {args.ref_evals} evaluations, {ref_spe:.3f} s/eval, "
          f"final loss {ref_final:.6g} ({ref_final_clipped:.6g} clipped to 0..1), "
          f"peak RSS {ref_rss:.0f} MB", flush=True)

    for preset in args.presets:
        row = rows[preset]
        reached, final = time_to_reach(reference, targets, row["snaps"], ref_final)
        _, final_clipped = time_to_reach(reference, targets, row["snaps"][-1:], 0, clip=True)
        # Evaluations (and seconds) the reference needed to reach our final loss.
        ref_equiv = next((i + 1 for i, (_, v) in enumerate(curve) if v <= final), None)
        # Speed-up at equal loss: the reference's time to our goal over ours. When we reach the
        # reference's final loss, the goal is that loss; else it is our own final loss (never
        # the reference's full time over ours: that would reward stopping early).
        if reached is not None:
            speedup = ref_time / reached
        elif ref_equiv is not None:
            speedup = curve[ref_equiv - 1][0] / row["total"]
        else:
            speedup = float("nan")
        row.update(reached=reached, final=final, final_clipped=final_clipped,
                   speedup=speedup, ref_equiv=ref_equiv)
        what = (f"reaches the reference's final loss at {reached:.1f} s" if reached is not None
                else f"does NOT reach it ({100 * (final / ref_final - 1):+.2f} %) in "
                     f"{row['total']:.1f} s")
        equiv = (f"{ref_equiv} evaluations, {curve[ref_equiv - 1][0]:.1f} s" if ref_equiv
                 else f"more than {args.ref_evals} evaluations")
        print(f"ours {preset:6s}: final loss {final:.6g} ({final_clipped:.6g} clipped); {what}; "
              f"the reference needs {equiv} for our final loss; speed-up at equal loss "
              f"{speedup:.2f}x", flush=True)

    # The same moments, back to back: a per-evaluation ratio less exposed to shared-CPU drift.
    from stylefu.core.model import resolve_precision
    from stylefu.core.objective import Objective
    from stylefu.core.targets import compute_targets
    ours_targets = compute_targets(model, content, [style], (size, size), Config(size=size))
    objective = Objective(model, ours_targets, Config(size=size),
                          resolve_precision("auto", model.device))
    paired = {"reference": [], "ours": []}
    for _ in range(args.paired):
        for name, fn in (("reference", lambda: reference.loss(x, targets)),
                         ("ours", lambda: objective(x)[0])):
            t = time.perf_counter()
            fn().backward()
            paired[name].append(time.perf_counter() - t)
    paired_ratio = statistics.median(paired["reference"]) / statistics.median(paired["ours"])
    print(f"paired per-evaluation times: reference {statistics.median(paired['reference']):.3f} s,"
          f" ours {statistics.median(paired['ours']):.3f} s ({paired_ratio:.2f}x)", flush=True)

    bf16_check = None
    if args.precision_check and rows and rows[args.presets[0]]["precision"] != "float32":
        preset = args.presets[0]
        _, snaps, _, total = run_ours(content, style,
                                      Config(size=size, preset=preset, precision="fp32"), model)
        fp32_final = reference.judge(snaps[-1][1], targets)
        bf16_final = rows[preset]["final"]
        bf16_check = dict(preset=preset, fp32_final_loss=fp32_final, bf16_final_loss=bf16_final,
                          fp32_seconds=total, relative=bf16_final / fp32_final - 1)
        print(f"precision ({preset}): bf16 final loss {bf16_final:.6g} in "
              f"{rows[preset]['total']:.1f} s, fp32 {fp32_final:.6g} in {total:.1f} s: bf16 is "
              f"{100 * bf16_check['relative']:+.2f} % (limit +2 %)", flush=True)

    default = rows[args.presets[0]]
    out.update({
        f"reference_s_per_eval_{size}": ref_spe,
        f"reference_seconds_{size}": ref_time,
        f"reference_final_loss_{size}": ref_final,
        f"reference_final_loss_clipped_{size}": ref_final_clipped,
        f"reference_peak_rss_mb_{size}": ref_rss,
        f"ours_s_per_eval_{size}": per_eval(default["stamps"]),
        f"ours_time_to_reference_loss_s_{size}": default["reached"],
        f"ours_final_loss_{size}": default["final"],
        f"ours_final_loss_clipped_{size}": default["final_clipped"],
        f"ours_seconds_{size}": default["total"],
        f"ours_peak_rss_mb_{size}": default["rss"],
        f"speedup_{size}": default["speedup"],
        f"paired_per_eval_ratio_{size}": paired_ratio,
        f"bf16_vs_fp32_{size}": bf16_check,
        f"reference_loss_curve_{size}": [curve[i - 1][1] for i in (1, 50, 100, 200, 300, 500)
                                         if i <= len(curve)],
        f"presets_{size}": {p: {"seconds": r["total"], "evaluations": r["evals"],
                                "sizes": r["sizes"], "s_per_eval": per_eval(r["stamps"]),
                                "final_loss": r["final"], "final_loss_clipped": r["final_clipped"],
                                "time_to_reference_loss_s": r["reached"],
                                "speedup": r["speedup"], "peak_rss_mb": r["rss"],
                                "reference_evaluations_to_match": r["ref_equiv"],
                                "schedule": {k: r["config"].schedule_value(k) for k in
                                             ("levels", "evaluations", "coarse_evaluations")},
                                "tolerance": r["config"].schedule_value("tolerance")}
                            for p, r in rows.items()},
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 px only")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--presets", nargs="+", default=None,
                        help="presets to time; the first is the judged default (default: "
                             "the default preset, then draft)")
    parser.add_argument("--ref-evals", type=int, default=500)
    parser.add_argument("--paired", type=int, default=5, help="back-to-back timing pairs")
    parser.add_argument("--no-precision-check", dest="precision_check", action="store_false")
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact (default: random weights, seed 0, made in a temp folder)")
    parser.add_argument("-o", "--output", type=Path, default=Path("bench.json"))
    args = parser.parse_args(argv)

    from stylefu.core.config import DEFAULT_PRESET
    from stylefu.core.engine import usable_cores
    from stylefu.core.model import load_model
    from stylefu.export import export

    args.sizes = args.sizes or ([256] if args.quick else [256, 512])
    args.presets = args.presets or [DEFAULT_PRESET, "draft"]
    torch.set_num_threads(usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or export("random", Path(tmp) / "random.onnx", seed=0, progress=False)[0]
        model = load_model(path, "cpu")
        reference = Reference(path)
        out = {"machine": f"{platform.processor() or platform.machine()}, {usable_cores()} cores",
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average_start": os.getloadavg(), "command": " ".join(sys.argv),
               "reference_evaluations": args.ref_evals, "default_preset": args.presets[0]}
        print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
        for size in args.sizes:
            bench_size(size, args, model, reference, out)
        out["load_average_end"] = os.getloadavg()
    args.output.write_text(json.dumps(out, indent=1))
    print(f"\nload average at the end {os.getloadavg()} (other work on this machine slows both "
          "sides alike; compare ratios within one run)")
    print(f"wrote {args.output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
