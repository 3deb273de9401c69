"""Time left and estimates (core/run/eta.py): the cost model on a known clock, the estimate's accuracy
on a real run, and `stylefu estimate` with its calibration kept in the cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from stylefu.core import Config, load_model, stylize
from stylefu.core.run import eta


def record(level, levels, evaluation, evaluations, size):
    return SimpleNamespace(level=level, levels=levels, evaluation=evaluation,
                           evaluations=evaluations, size=size)


def test_time_left_weights_levels_by_pixels():
    """On a clock where an evaluation costs exactly rate * pixels, the estimate is the truth from
    the third evaluation on, across levels of different sizes."""
    config = Config(preset="normal")  # 40 coarse evaluations, 110 at full size
    rate, now = 1e-5, [0.0]
    timer = eta.TimeLeft(config, clock=lambda: now[0])
    sizes, budgets = [(32, 48), (64, 96), (128, 192)], [40, 40, 110]
    schedule = []  # (time, record) of every evaluation, targets costing one evaluation per level
    for number, (size, budget) in enumerate(zip(sizes, budgets), start=1):
        now[0] += eta.TARGET_EVALUATIONS * rate * size[0] * size[1] * (number > 1)
        for evaluation in range(1, budget + 1):
            now[0] += rate * size[0] * size[1]
            schedule.append((now[0], record(number, 3, evaluation, budget, size)))
    end = now[0] + eta.FINISH_EVALUATIONS * rate * 128 * 192
    for when, progress in schedule:
        now[0] = when
        left = timer(progress)
        if progress.evaluation >= eta.LEVEL_RATE_AFTER:
            assert left == pytest.approx(end - when, rel=1e-6)
    assert [p for p, _ in timer.measured()] == [32 * 48, 64 * 96, 128 * 192]
    assert [s for _, s in timer.measured()] == pytest.approx([rate * h * w for h, w in sizes])


def test_fit_speed_and_estimate():
    points = [(p, 2e-6 * p ** 1.1) for p in (10_000, 40_000, 160_000)]
    rate, exponent = eta.fit_speed(points)
    assert exponent == pytest.approx(1.1, abs=1e-6) and rate == pytest.approx(2e-6, rel=1e-6)
    assert eta.fit_speed([(10_000, 1.0)])[1] == eta.DEFAULT_EXPONENT  # one size: no slope
    config = Config(size=256, preset="draft")
    seconds = eta.estimate_seconds(192, 256, config, 1e-5, 1.0, fixed_seconds=3.0)
    # draft: 60 evaluations at 96x128 (48x64 is under the coarsest level's 64 px), 30 at 192x256,
    # one target pass per level, the finish
    work = (61 * 96 * 128 + 31 * 192 * 256 + 192 * 256) * 1e-5
    assert seconds == pytest.approx(3.0 + work)


def test_time_left_is_near_the_truth_on_a_real_run(model_path):
    """A real two-level run: after its first 10 % the estimates stay within 25 % of the time
    that was really left (median), none beyond 50 %. Times are this process's CPU seconds, so
    other jobs' load (which no estimate can foresee) does not decide it; wall-clock figures under
    load: docs/speed.md. Measured here (load 8-17): median 5-10 %, largest 11-14 %."""
    model = load_model(model_path, "cpu")
    rng = np.random.default_rng(0)
    content, style = rng.random((192, 256, 3), np.float32), rng.random((128, 128, 3), np.float32)
    config = Config(size=256, levels=2, evaluations=30, coarse_evaluations=40, tolerance=0.0,
                    compile="off")
    timer, seen = eta.TimeLeft(config, clock=time.process_time), []

    def callback(p):
        seen.append((time.process_time(), timer(p)))

    started = time.process_time()
    stylize(content, style, config=config, model=model, callback=callback)
    end = time.process_time()
    run = end - started
    # From 10 % of the run on, while 5 % of it is left (below, single steps' jitter is the error).
    errors = np.abs([left / (end - when) - 1 for when, left in seen
                     if left is not None and 0.1 * run <= when - started <= 0.95 * run])
    assert len(errors) > 20
    print(f"time left: median error {np.median(errors):.3f}, largest {errors.max():.3f}")
    assert np.median(errors) <= 0.25 and errors.max() <= 0.5


def test_estimate_calibrates_once_then_uses_measured_speed(model_path, random16_model_path,
                                                           tmp_path):
    command = [sys.executable, "-m", "stylefu.core", "estimate", "--layer", "640x480",
               "--size", "256", "--preset", "draft", "--model", str(model_path), "--json"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    figures = json.loads(first.stdout.splitlines()[-1])
    assert figures["event"] == "result" and figures["measured_by"] == "a calibration now"
    assert figures["seconds"] > 0 and figures["levels"][-1] == [256, 192]
    kept = eta.load_speeds()[figures["speed"]]["points"]
    assert [p for p, _ in kept] == [128 * 96, 256 * 192]  # the calibration's two sizes
    # Another architecture is another speed: the VGG16 model does not get the VGG19 one's.
    other = command[:-2] + [str(random16_model_path), "--json"]
    vgg16 = json.loads(subprocess.run(other, capture_output=True, text=True, timeout=300,
                                      check=True).stdout.splitlines()[-1])
    assert figures["speed"].startswith("vgg19/") and vgg16["speed"].startswith("vgg16/")
    assert vgg16["measured_by"] == "a calibration now"
    assert vgg16["speed"].split("/", 1)[1] == figures["speed"].split("/", 1)[1]
    again = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=300,
                                      check=True).stdout.splitlines()[-1])
    assert again["measured_by"].endswith("earlier runs") and again["seconds"] == figures["seconds"]
    bigger = subprocess.run(command[:5] + ["1280x960"] + command[6:], capture_output=True,
                            text=True, timeout=300, check=True)
    assert json.loads(bigger.stdout.splitlines()[-1])["seconds"] == figures["seconds"]  # same plan
    bad = subprocess.run(command[:5] + ["640by480"] + command[6:], capture_output=True, text=True)
    assert bad.returncode == 2 and "--layer must be WIDTHxHEIGHT" in bad.stderr
