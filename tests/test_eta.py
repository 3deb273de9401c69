"""Time left and estimates (core/run/eta.py): the cost model on a known clock, the estimate's accuracy
on a real run, `stylefu estimate` with its calibration kept in the cache, and compiled speeds kept
apart from eager ones (no compiling here: the speeds are faked, the compile decision forced)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from stylefu.core import Config, load_model, stylize
from stylefu.core.cli.main import main
from stylefu.core.engines.torch import compiled
from stylefu.core.network.vgg import read_artifact_info
from stylefu.core.run import eta, pipeline


def record(level, levels, evaluation, evaluations, size, compiled=False):
    return SimpleNamespace(level=level, levels=levels, evaluation=evaluation,
                           evaluations=evaluations, size=size, compiled=compiled)


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
    assert [p for p, _, _ in timer.measured()] == [32 * 48, 64 * 96, 128 * 192]
    assert [s for _, s, _ in timer.measured()] == pytest.approx([rate * h * w for h, w in sizes])


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
    assert [p for p, _ in kept] == [256 * 192, 384 * 288]  # the calibration's two sizes
    assert eta.compiled_key(figures["speed"]) not in eta.load_speeds()  # calibrations are eager
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


def test_speeds_kept_from_small_runs_alone_price_nothing_larger(model_path, monkeypatch):
    """After many 64-128 px runs (an evaluation's fixed part is most of its time there: the
    light install 0.1 s at 64 px, 0.17 s at 128, 0.34 s at 256, 0.87 s at 512, idle), their
    speed priced a 512 px run 2.7-4 times over. Now an estimate from them calibrates first, and
    where larger levels are kept the small ones price nothing."""
    fixed = 0.08  # seconds per evaluation whatever the size, under FIT_MIN_PIXELS
    small = [(p, fixed + 2e-6 * p, False) for p in (43 * 64, 85 * 128, 96 * 128)]
    eta.record_speed(KEY, small)
    assert not eta.sized_speed_kept(KEY)
    large = [(p, 0.03 + 4e-6 * p, False) for p in (192 * 256, 384 * 512)]
    eta.record_speed(KEY, large)
    assert eta.sized_speed_kept(KEY)
    rate, exponent, _ = eta.kept_speed(KEY)
    assert (rate, exponent) == eta.fit_speed([(p, s) for p, s, _ in large])
    seconds = eta.speed_at((rate, exponent), 512 * 683)
    assert seconds == pytest.approx(0.03 + 4e-6 * 512 * 683, rel=0.1)
    # The command: kept small levels alone, it measures first.
    monkeypatch.setattr(eta, "run_key", lambda config, architecture: KEY + "-small")
    eta.record_speed(KEY + "-small", small)
    from stylefu.core.cli.main import main

    assert main(["estimate", "--layer", "640x480", "--size", "64", "--preset", "draft",
                 "--model", str(model_path), "--json"]) == 0
    assert eta.sized_speed_kept(KEY + "-small")


def test_an_estimate_at_strength_zero_calibrates_on_evaluations_that_run(model_path, capsys):
    """--strength 0 runs no evaluation, so a calibration with the user's strength measured
    nothing and the estimate failed (TypeError) on a machine without kept speeds."""
    from stylefu.core.cli.main import main

    command = ["estimate", "--layer", "640x480", "--size", "64", "--preset", "draft",
               "--model", str(model_path), "--json"]
    assert main(command + ["--strength", "0"]) == 0
    nothing = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert nothing["measured_by"] == "a calibration now" and len(nothing["levels"]) == 1
    assert main(command) == 0
    painting = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert painting["seconds"] > 3 * nothing["seconds"]


# --- compiled and eager speeds kept apart ----------------------------------------------------------

KEY = "vgg16/torch/cpu/bfloat16/threads=1"  # any speed_key: the entries are what is tested


def test_run_keeps_compiled_levels_and_compile_seconds_apart():
    """A run whose first level runs eager and the next two compiled (a fifth cheaper, and 30 s of
    compiling in the first compiled evaluation): the eager key (its string as before) gets the
    eager level, the compiled key the compiled ones, and the start-up kept leaves the compiling
    out, which the compiled entry keeps instead."""
    config = Config(preset="normal")
    rate, cheaper, start_up, compiling, now = 1e-5, 0.8, 5.0, 30.0, [5.0]
    timer = eta.TimeLeft(config, clock=lambda: now[0])
    sizes, budgets, kinds = [(96, 128), (192, 256), (384, 512)], [40, 40, 110], [False, True, True]
    for number, (size, budget, kind) in enumerate(zip(sizes, budgets, kinds), start=1):
        for evaluation in range(1, budget + 1):
            now[0] += rate * size[0] * size[1] * (cheaper if kind else 1.0)
            now[0] += compiling if number == 2 and evaluation == 1 else 0.0
            timer(record(number, 3, evaluation, budget, size, kind))
    points = timer.measured()
    assert [kind for _, _, kind in points] == kinds
    eta.record_speed(KEY, points, now[0] - timer.busy, compile_seconds=compiling, cold=True)
    speeds = eta.load_speeds()
    assert set(speeds) == {KEY, KEY + "/compiled"} and eta.compiled_key(KEY) == KEY + "/compiled"
    assert [p for p, _ in speeds[KEY]["points"]] == [96 * 128]
    assert [p for p, _ in speeds[KEY + "/compiled"]["points"]] == [192 * 256, 384 * 512]
    assert speeds[KEY]["fixed_seconds"] == [pytest.approx(start_up)]
    assert speeds[KEY + "/compiled"]["cold_compile_seconds"] == [compiling]
    assert "warm_compile_seconds" not in speeds[KEY + "/compiled"]
    compiled_rate, compiled_exponent, _ = eta.kept_speed(eta.compiled_key(KEY))
    assert compiled_exponent == pytest.approx(1.0) and compiled_rate == pytest.approx(cheaper * rate)
    # An eager run after it: its points and start-up join the eager entry only.
    eta.record_speed(KEY, [(96 * 128, rate * 96 * 128, False)], 6.0)
    speeds = eta.load_speeds()
    assert len(speeds[KEY]["points"]) == 2 and len(speeds[KEY + "/compiled"]["points"]) == 2
    assert eta.kept_speed(KEY)[0] == pytest.approx(rate)
    assert eta.load_speeds()[KEY]["fixed_seconds"] == [pytest.approx(start_up), 6.0]


def fake_speeds(rate=1e-5, compiled_rate=None, fixed=4.0, compile_seconds=3.0, cold=False):
    """speed.json as earlier runs would leave it: exponent 1 on both kinds."""
    eta.record_speed(KEY, [(p, rate * p, False) for p in (10_000, 40_000, 160_000)], fixed)
    if compiled_rate:
        eta.record_speed(KEY, [(p, compiled_rate * p, True) for p in (40_000, 160_000)],
                         fixed + compile_seconds, compile_seconds, cold)


def test_planned_compiled_follows_the_runs_rule(monkeypatch):
    """Which levels an estimate prices compiled: the run's rule, forced here (`min_work`) so it
    holds on any CPU class. Levels under COMPILE_MIN_PIXELS and tiled ones stay eager; `off`, the
    torch-free engine and work under the threshold compile nothing."""
    base = dict(size=512, preset="normal", device="cpu", engine="torch")
    monkeypatch.setattr(compiled, "min_work", lambda dtype: 0.0)
    assert eta.planned_compiled(Config(**base, compile="auto"), 341, 512) == [False, True, True]
    assert eta.planned_compiled(Config(**base, compile="on"), 341, 512) == [True, True, True]
    assert eta.planned_compiled(Config(**base, compile="on", crop_side=256), 341, 512) == \
        [True, True, False]  # the 512 px level is tiled
    assert eta.planned_compiled(Config(**base, compile="off"), 341, 512) == [False] * 3
    assert eta.planned_compiled(Config(**{**base, "engine": "onnx"}, compile="on"), 341, 512) \
        == [False] * 3
    monkeypatch.setattr(compiled, "min_work", lambda dtype: float("inf"))
    assert eta.planned_compiled(Config(**base, compile="auto"), 341, 512) == [False] * 3
    # The Progress records carry the runner's answer per level (the same rule).
    from stylefu.core.engines.onnx.runner import OnnxRunner
    from stylefu.core.engines.torch.runner import TorchRunner

    seen, report = [], (1, 1.0, dict(content=0, style=0, tv=0), None)
    runner = TorchRunner(None, Config(compile="auto", device="cpu"), print)
    for compiling, level, expected in ((True, pipeline.Level(2, (192, 256), 40, 0), True),
                                       (False, pipeline.Level(2, (192, 256), 40, 0), False),
                                       (True, pipeline.Level(2, (192, 256), 40, 128), False),
                                       (True, pipeline.Level(1, (96, 128), 40, 0), False)):
        runner.compiled = compiling  # tiled, or under COMPILE_MIN_PIXELS: eager
        pipeline._reporter(runner, level, 3, lambda p: seen.append(p.compiled))(*report)
        assert seen[-1] is expected, level
    onnx = OnnxRunner(None, Config(compile="on", engine="onnx"), print)
    pipeline._reporter(onnx, pipeline.Level(2, (192, 256), 40, 0), 3,
                       lambda p: seen.append(p.compiled))(*report)
    assert seen[-1] is False


def test_estimate_prices_compiled_levels_with_the_compiled_speed(monkeypatch):
    monkeypatch.setattr(compiled, "min_work", lambda dtype: 0.0)
    monkeypatch.setattr(compiled, "cache_is_cold", lambda: False)  # cold and warm: the next test
    config = Config(size=512, preset="normal", device="cpu", engine="torch", compile="auto")
    sizes = [(85, 128), (170, 256), (341, 512)]  # the compiled ones: 170x256 and 341x512
    assert [s for s in pipeline.level_sizes(341, 512, config)] == sizes
    evaluations, pixels = [40, 40, 110], [h * w for h, w in sizes]

    def truth(compiled_rate, extra):
        rates = [1e-5, compiled_rate, compiled_rate]
        return 4.0 + extra + sum(n * r * p + 1e-5 * p for n, r, p in
                                 zip(evaluations, rates, pixels)) + 1e-5 * pixels[-1]

    warm = compiled.WARM_COMPILE_SECONDS
    fake_speeds()  # no compiled run kept yet: the eager speed prices every level
    figures = eta.estimate(341, 512, config, KEY)
    assert figures["seconds"] == pytest.approx(truth(1e-5, warm), abs=0.06)
    assert figures["compiled"]["levels"] == [[256, 170], [512, 341]]
    assert figures["compiled"]["speed"] == KEY and "eager" in figures["compiled"]["measured_by"]
    fake_speeds(compiled_rate=0.75e-5, compile_seconds=2.0)  # a compiled run, loading the code
    figures = eta.estimate(341, 512, config, KEY)
    assert figures["seconds"] == pytest.approx(truth(0.75e-5, 2.0), abs=0.06)
    assert figures["compiled"]["speed"] == eta.compiled_key(KEY)
    assert figures["compiled"]["measured_by"] == "2 compiled level(s) of earlier runs"
    assert figures["compiled"]["compile_seconds"] == 2.0 and figures["fixed_seconds"] == 4.0
    eager = eta.estimate(341, 512, config.with_(compile="off"), KEY)
    assert "compiled" not in eager and eager["seconds"] == pytest.approx(truth(1e-5, 0.0), abs=0.06)


def test_estimates_count_a_cold_compile_only_before_the_run_that_pays_it(monkeypatch):
    """The compile seconds an estimate adds are the next run's: from an empty compile cache the
    cold compile (a first guess before any was kept: the very first estimate counted none), from
    a filled one the warm load, each from the runs of its kind. Recorded fake timings: after a
    60 s cold compile the next estimate adds the 3 s warm loads, not 60 s (the runs before kept
    both in one list, so one cold compile priced the next runs)."""
    monkeypatch.setattr(compiled, "min_work", lambda dtype: 0.0)
    cache = {"cold": True}
    monkeypatch.setattr(compiled, "cache_is_cold", lambda: cache["cold"])
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    config = Config(size=512, preset="normal", device="cpu", engine="torch", compile="auto")

    def added():
        figures = eta.estimate(341, 512, config, KEY)["compiled"]
        return figures["compile_seconds"], figures["compile"]

    fake_speeds()  # eager runs only
    assert added() == (compiled.COLD_COMPILE_SECONDS, "cold: a first guess, none kept yet")
    fake_speeds(compiled_rate=0.75e-5, compile_seconds=60.0, cold=True)  # the first compiled run
    cache["cold"] = False  # ... filled the cache
    assert added() == (compiled.WARM_COMPILE_SECONDS, "warm: a first guess, none kept yet")
    fake_speeds(compiled_rate=0.75e-5, compile_seconds=4.0)
    fake_speeds(compiled_rate=0.75e-5, compile_seconds=3.0)
    assert added() == (3.0, "warm: 2 earlier run(s)")
    cache["cold"] = True  # the cache emptied (pruned, a new torch): the cold compile kept
    assert added() == (60.0, "cold: 1 earlier run(s)")
    speeds = eta.load_speeds()[eta.compiled_key(KEY)]
    assert speeds["cold_compile_seconds"] == [60.0] and speeds["warm_compile_seconds"] == [4.0, 3.0]
    # Nothing kept and no compiler: the run will be eager, so nothing is added.
    eta._speed_path().unlink()
    fake_speeds()
    monkeypatch.setattr(compiled, "compile_problem", lambda device: "no C++ compiler was found")
    assert added() == (0.0, "none: no C++ compiler was found")


def test_time_left_starts_from_the_speed_of_the_right_kind():
    """Before the run has measured its own rate, a compiled first level starts from the compiled
    speed earlier runs kept, an eager one from the eager speed; then the run's own rate rules."""
    fake_speeds(rate=1e-5, compiled_rate=0.5e-5)
    config, now = Config(preset="normal", levels=1, evaluations=10), [0.0]
    for kind, rate in ((True, 0.5e-5), (False, 1e-5)):
        timer = eta.TimeLeft.kept(KEY, config)
        # 9 evaluations left and the finish, at 200 x 200 px
        assert timer(record(1, 1, 1, 10, (200, 200), kind)) == pytest.approx(rate * 40_000 * 10)
    timer = eta.TimeLeft(config, rate=1e-5, compiled_speed=(0.5e-5, 1.0), clock=lambda: now[0])
    for evaluation in range(1, 4):
        now[0] += 2e-5 * 40_000
        left = timer(record(1, 1, evaluation, 10, (200, 200), True))
    assert left == pytest.approx(2e-5 * 40_000 * 8)  # its own rate, measured


def test_estimate_command_says_what_priced_the_compiled_levels(model_path, monkeypatch, capsys):
    """`stylefu estimate --json` for a run that would compile: the compiled levels and the speed
    that priced them, in the record the plug-ins read; nothing compiled, nothing calibrated."""
    monkeypatch.setattr(compiled, "min_work", lambda dtype: 0.0)
    options = ["--layer", "512x341", "--size", "512", "--preset", "normal", "--device", "cpu",
               "--engine", "torch", "--model", str(model_path), "--json"]
    config = Config(size=512, preset="normal", device="cpu", engine="torch")
    key = eta.run_key(config, read_artifact_info(model_path).architecture)
    monkeypatch.setattr(compiled, "cache_is_cold", lambda: False)
    eta.record_speed(key, [(p, 1e-5 * p, False) for p in (10_000, 40_000)], 4.0)
    eta.record_speed(key, [(40_000, 0.4, True)], 34.0, 30.0, cold=True)
    eta.record_speed(key, [(40_000, 0.4, True)], 7.0, 3.0)
    assert main(["estimate", *options]) == 0
    figures = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert figures["speed"] == key and figures["measured_by"] == "2 level(s) of earlier runs"
    assert figures["compiled"] == {"levels": [[256, 170], [512, 341]], "speed": key + "/compiled",
                                   "measured_by": "2 compiled level(s) of earlier runs",
                                   "exponent": 1.0, "compile_seconds": 3.0,
                                   "compile": "warm: 1 earlier run(s)"}
    assert main(["estimate", *options, "--compile", "off"]) == 0
    assert "compiled" not in json.loads(capsys.readouterr().out.splitlines()[-1])


def test_a_run_keeps_its_compile_seconds_as_cold_or_warm(model_path, images, tmp_path,
                                                        monkeypatch):
    """`stylefu run` tells the speed file whether its compile started from an empty compile cache
    (the runner asks before compiling fills it). The compile is faked (an eager function counted
    as one compiled graph, 0.2 s): no compiler runs."""
    from stylefu.core.io.images import save_image

    def fake_compile(fn):
        graphs = []

        def run(x):
            if not graphs:  # the first call compiles, as _backend counts a graph
                graphs.append(fn)
                compiled._state["compiles"] += 1
                time.sleep(0.2)
            return fn(x)
        return run

    monkeypatch.setattr(compiled, "_state", dict(compiled._state))  # this process's counts kept
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    monkeypatch.setattr(compiled, "_compile", fake_compile)
    content, style = (save_image(tmp_path / f"{n}.png", a) for n, a in zip("cs", images))
    command = ["run", str(content), str(style), "--model", str(model_path), "--compile", "on",
               "--device", "cpu", "--engine", "torch", "--size", "64", "--levels", "1",
               "--evaluations", "3", "--progress", "none"]
    assert compiled.cache_is_cold()  # this test's own cache folder
    assert main([*command, "-o", str(tmp_path / "cold.png")]) == 0
    compiled.inductor_cache().mkdir(parents=True, exist_ok=True)
    (compiled.inductor_cache() / "entry").write_bytes(b"x")  # what the compile left there
    assert main([*command, "-o", str(tmp_path / "warm.png")]) == 0
    (entry,) = [v for k, v in eta.load_speeds().items() if k.endswith(eta.COMPILED)]
    assert [len(entry.get(k, [])) for k in ("cold_compile_seconds", "warm_compile_seconds")] == [1, 1]
    assert min(entry["cold_compile_seconds"] + entry["warm_compile_seconds"]) >= 0.2


DAMAGED_SPEEDS = {  # speed.json as another program or a disk fault might leave it
    "not UTF-8": b"\xff\xfe\x00{garbage",
    "an entry that is a list": b'{"KEY": []}',
    "points of the wrong kinds": b'{"KEY": {"points": [[1], ["a", null], "x", [2, NaN]], "when": "x"}}',
    "kept seconds of the wrong kinds": b'{"KEY": {"points": "x", "fixed_seconds": [NaN, "x", -1]}}',
    "absurd magnitudes": b'{"KEY": {"points": [[1, 1e308]], "fixed_seconds": [1e308]}}',
}


@pytest.mark.parametrize("damage", DAMAGED_SPEEDS)
def test_a_damaged_speed_record_costs_only_the_estimate(damage):
    """speed.json in the cache, damaged, made every `stylefu run` an internal error at its start
    (the time left read it: AttributeError, TypeError) or after its output was written (the
    speed kept), and `estimate` one (OverflowError on absurd figures). Now what a damaged record
    holds beyond what runs write is left out: both go on and the next run writes it sound."""
    from stylefu.core.io.paths import cache_dir

    record = cache_dir() / eta.SPEED_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(DAMAGED_SPEEDS[damage].replace(b"KEY", KEY.encode()))
    config = Config(preset="normal", compile="off")
    eta.TimeLeft.kept(KEY, config)  # what a run reads at its start
    if eta.kept_speed(KEY)[0] is not None:  # else `stylefu estimate` calibrates
        eta.format_duration(eta.estimate(512, 512, config, KEY)["seconds"])
    eta.record_speed(KEY, [(10_000, 0.1, False)], 2.0)  # what a run keeps at its end
    kept = json.loads(record.read_text())[KEY]
    assert kept["points"][-1] == [10_000, 0.1] and kept["fixed_seconds"][-1] == 2.0


def test_a_run_goes_on_past_a_damaged_speed_record(model_path, images, tmp_path):
    """`stylefu run` itself: the damage that stopped it at its start; it ends 0 and keeps its
    speed in a sound record."""
    from stylefu.core.io.images import save_image
    from stylefu.core.io.paths import cache_dir

    config = Config(size=48, preset="draft", device="cpu", engine="torch", compile="off")
    key = eta.run_key(config, read_artifact_info(model_path).architecture)
    record = cache_dir() / eta.SPEED_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(DAMAGED_SPEEDS["an entry that is a list"].replace(b"KEY", key.encode()))
    content, style = (save_image(tmp_path / f"{n}.png", a) for n, a in zip("cs", images))
    assert main(["run", str(content), str(style), "-o", str(tmp_path / "o.png"), "--size", "48",
                 "--preset", "draft", "--device", "cpu", "--engine", "torch", "--compile", "off",
                 "--model", str(model_path), "--progress", "none"]) == 0
    assert json.loads(record.read_text())[key]["points"]  # written sound again
