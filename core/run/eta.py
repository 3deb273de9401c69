"""Time: what a run will cost before it starts (`estimate_seconds`, `stylefu estimate`) and the
time left while it runs (`TimeLeft`, in the CLI's bar and its JSON progress records), both from
this machine's measured speed. See docs/speed.md, "Time left and estimates".

One evaluation at p pixels costs about `rate * p ** exponent` seconds. While a run goes, `rate`
comes from the evaluations of the current level (load and precision included); levels still to
come are weighted by their pixels. Before a run, the speeds recorded by earlier runs on this
machine (`speed.json` in the cache folder, per model architecture, engine, device, precision and
thread count, compiled evaluations apart from eager ones) give both figures, or a short
calibration measures them. No torch here (both engines use it) but what the torch engine's
compile decision needs, imported only for torch runs.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from .. import jsontext
from ..method.config import Config

# A level's targets (ONNX Runtime forward passes of content and styles) cost about one evaluation.
TARGET_EVALUATIONS = 1.0
# After the last evaluation: the final figures (one forward pass) and writing the result.
FINISH_EVALUATIONS = 1.0
# The current level's own rate is used once it has this many evaluations (the first includes
# setting the level up).
LEVEL_RATE_AFTER = 3
# ... over its last RATE_WINDOW evaluations at most, so that a change of load shows soon.
RATE_WINDOW = 20
DEFAULT_EXPONENT = 1.0
EXPONENT_RANGE = (0.8, 1.3)  # beyond these two noisy points are not believed
# Kept levels under this many pixels price nothing where larger ones are kept, and an estimate
# from them alone calibrates first: there an evaluation costs mostly its fixed part (calls, the
# optimiser's step), so their speed carried up to 512 px priced a run 2-4 times over.
FIT_MIN_PIXELS = 128 * 256
SPEED_FILE = "speed.json"
KEPT_POINTS = 24
KEPT_RUNS = 8  # fixed (and compile) seconds: the lower median of the last runs'
# A compiled evaluation costs less than an eager one (docs/speed.md, "Compiling"): its speed is
# kept under the eager key plus this (the eager key is the one speed.json always had).
COMPILED = "/compiled"


def level_pixels(size: tuple[int, int]) -> int:
    return int(size[0]) * int(size[1])


class TimeLeft:
    """Seconds left of a run, from its Progress records: call it with each one (None until a
    rate is known: `rate` from earlier runs, or this run's third evaluation). `finish_seconds`:
    work after the last evaluation that evaluations do not count (bringing the result to the
    layer's size). `compiled_speed`: (rate, exponent) earlier runs measured compiled, the start
    where the first level runs compiled. Also records each level's measured speed (`points`:
    (pixels, seconds per evaluation, compiled)) for `record_speed`."""

    def __init__(self, config: Config, exponent: float = DEFAULT_EXPONENT,
                 finish_seconds: float = 0.0, rate: float | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 compiled_speed: tuple[float, float] | None = None):
        self.config, self.exponent, self.finish_seconds, self.clock = \
            config, exponent, finish_seconds, clock
        self.level = None
        self.first = (0.0, 0)  # (time, evaluation) of the current level's first record
        self.recent: collections.deque = collections.deque(maxlen=RATE_WINDOW + 1)
        # Seconds per cost unit: earlier runs' (fit_speed), until this run has measured its own.
        self.rate, self.compiled_speed, self.own = rate, compiled_speed, False
        self.points: list[tuple[int, float, bool]] = []
        self.busy = 0.0  # seconds spent in the measured levels' evaluations

    @classmethod
    def kept(cls, key: str, config: Config, finish_seconds: float = 0.0) -> TimeLeft:
        """A TimeLeft starting from the speeds earlier runs kept under `key`, eager and compiled."""
        speeds = load_speeds()
        rate, exponent, _ = kept_speed(key, speeds)
        compiled_rate, compiled_exponent, _ = kept_speed(compiled_key(key), speeds)
        return cls(config, exponent, finish_seconds, rate, compiled_speed=None
                   if compiled_rate is None else (compiled_rate, compiled_exponent))

    def cost(self, size: tuple[int, int]) -> float:
        return level_pixels(size) ** self.exponent

    def remaining_units(self, p) -> float:
        """The plan's work left after record `p`, in cost units: the current level's evaluations,
        the coarser-to-finer levels still to come (each twice the previous side) with their
        targets, and the finish at the final size."""
        units = (p.evaluations - p.evaluation) * self.cost(p.size)
        h, w = p.size
        for number in range(p.level + 1, p.levels + 1):
            h, w = 2 * h, 2 * w
            evaluations = self.config.level_evaluations(final=number == p.levels)
            units += (evaluations + TARGET_EVALUATIONS) * self.cost((h, w))
        return units + FINISH_EVALUATIONS * self.cost((h, w))

    def __call__(self, p) -> float | None:
        now = self.clock()
        if p.level != self.level:
            self._close_level()
            self.level, self.size, self.first = p.level, p.size, (now, p.evaluation)
            self.compiled = p.compiled
            self.recent.clear()
        self.last = (now, p.evaluation)
        self.recent.append(self.last)
        start, done = self.recent[0], p.evaluation - self.recent[0][1]
        if len(self.recent) >= LEVEL_RATE_AFTER and done > 0:
            self.rate, self.own = (now - start[0]) / done / self.cost(p.size), True
        rate = self.rate
        if not self.own and p.compiled and self.compiled_speed:  # earlier runs' compiled speed
            rate = speed_at(self.compiled_speed, level_pixels(p.size)) / self.cost(p.size)
        if rate is None:
            return None
        return rate * self.remaining_units(p) + self.finish_seconds

    def _close_level(self) -> None:
        if self.level is not None and self.last[1] > self.first[1]:
            per_evaluation = (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])
            self.points.append((level_pixels(self.size), per_evaluation, self.compiled))
            self.busy += per_evaluation * self.last[1]

    def measured(self) -> list[tuple[int, float, bool]]:
        """(pixels, seconds per evaluation, compiled) of every level so far."""
        self._close_level()
        self.level = None
        return self.points


# --- the machine's speed, kept between runs ------------------------------------------------------

def speed_key(architecture: str, engine: str, device: str, precision: str) -> str:
    """What a speed is measured for: the model's architecture (a VGG19 evaluation costs about
    1.3 times a VGG16 one), engine, device, precision and the threads allowed."""
    threads = os.environ.get("OMP_NUM_THREADS") or f"{os.cpu_count()}cpu"
    return f"{architecture}/{engine}/{device}/{precision}/threads={threads}"


def compiled_key(key: str) -> str:
    """Where the speed of compiled evaluations for `key` (a speed_key: the eager one) is kept."""
    return key + COMPILED


def _speed_path() -> Path:
    from ..io.paths import cache_dir

    return cache_dir() / SPEED_FILE


def load_speeds() -> dict:
    """speed.json's entries, each as record_speed writes it: what a damaged file (another
    program's, a disk fault's) holds otherwise is left out, so it costs only the estimate."""
    try:
        import json

        data = json.loads(_speed_path().read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: _sound_entry(entry) for key, entry in data.items() if isinstance(entry, dict)}


SECONDS_LISTS = ("fixed_seconds", "cold_compile_seconds", "warm_compile_seconds")
# What a measured point or kept time can be (pixels, seconds); beyond: damage, not a measurement.
PLAUSIBLE_PIXELS, PLAUSIBLE_SECONDS = (1, 1e12), (1e-9, 1e5)


def _sound_entry(entry: dict) -> dict:
    def within(value, low: float, high: float) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high

    sound = {}
    if isinstance(entry.get("points"), list):
        sound["points"] = [[p, s] for p, s in (point for point in entry["points"]
                                               if isinstance(point, list) and len(point) == 2)
                           if within(p, *PLAUSIBLE_PIXELS) and within(s, *PLAUSIBLE_SECONDS)]
    if within(entry.get("when"), 0, math.inf):
        sound["when"] = entry["when"]
    for name in SECONDS_LISTS:
        if isinstance(entry.get(name), list):
            sound[name] = [v for v in entry[name] if within(v, 0, PLAUSIBLE_SECONDS[1])]
    return sound


def record_speed(key: str, points: list[tuple[int, float, bool]],
                 fixed_seconds: float | None = None, compile_seconds: float = 0.0,
                 cold: bool = False) -> None:
    """Keep a run's measured (pixels, s/evaluation, compiled) points, the eager ones under `key`
    and the compiled ones under `compiled_key(key)` (the last KEPT_POINTS of each), and its fixed
    seconds (start-up, loading: the run's time not spent in evaluations) under `key`, less its
    `compile_seconds`, which the compiled entry keeps apart: as `cold_compile_seconds` when the
    run started from an empty compile cache (`cold`: compiled from scratch), else as
    `warm_compile_seconds` (loading the compiled code). Never fails a run."""
    from ..errors import UserError
    from ..io.files import atomic_write

    try:
        speeds, now = load_speeds(), time.time()
        for where, compiled in ((key, False), (compiled_key(key), True)):
            measured = [[int(p), float(s)] for p, s, kind in points if kind == compiled and s > 0]
            if measured or where == key:
                entry = speeds.setdefault(where, {})
                entry["points"] = (entry.get("points", []) + measured)[-KEPT_POINTS:]
                entry["when"] = now
        if fixed_seconds is not None and fixed_seconds >= 0:
            _keep(speeds[key], "fixed_seconds", max(0.0, fixed_seconds - compile_seconds))
        if compile_seconds > 0:
            _keep(speeds.setdefault(compiled_key(key), {}), _compile_entry(cold), compile_seconds)
        text = jsontext.dumps(speeds, indent=1)
        atomic_write(_speed_path(), lambda tmp: tmp.write_text(text))
    except (OSError, ValueError, UserError):  # an unusable cache only costs the estimate
        pass


def _compile_entry(cold: bool) -> str:
    """Where the compiled entry keeps compile seconds: a cold compile costs ten times a warm load,
    so one list for both priced the run after a first compile with it (the lists of earlier
    versions, `compile_seconds`, mixed both and are no longer read)."""
    return "cold_compile_seconds" if cold else "warm_compile_seconds"


def _keep(entry: dict, name: str, seconds: float) -> None:
    entry[name] = (entry.get(name, []) + [round(seconds, 3)])[-KEPT_RUNS:]


def _median(entry: dict, name: str) -> float:
    """The lower median of the kept seconds: one first compile beside one warm load is left out."""
    values = sorted(entry.get(name) or [0.0])
    return values[(len(values) - 1) // 2]


def kept_speed(key: str, speeds: dict | None = None) -> tuple[float | None, float, float]:
    """(rate, exponent, fixed seconds) earlier runs measured for `key` (in `speeds`, else
    speed.json): rate None when none did; from levels of FIT_MIN_PIXELS or more where any are
    kept; the fixed seconds are the (lower) median of the last runs'."""
    speed = (load_speeds() if speeds is None else speeds).get(key, {})
    points = speed.get("points") or []
    points = [(p, s) for p, s in points if p >= FIT_MIN_PIXELS] or points
    rate, exponent = fit_speed(points) if points else (None, DEFAULT_EXPONENT)
    return rate, exponent, _median(speed, "fixed_seconds")


def sized_speed_kept(key: str) -> bool:
    """Whether earlier runs kept a level of FIT_MIN_PIXELS or more for `key` (else an estimate
    calibrates first)."""
    return any(p >= FIT_MIN_PIXELS for p, _ in load_speeds().get(key, {}).get("points") or [])


def speed_at(speed: tuple[float, float], pixels: int) -> float:
    """Seconds per evaluation at `pixels` of a (rate, exponent) speed."""
    return speed[0] * pixels ** speed[1]


def fit_speed(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(rate, exponent) of seconds = rate * pixels ** exponent, least squares in logs; one size
    alone (or a wild slope) keeps DEFAULT_EXPONENT."""
    logs = [(math.log(p), math.log(s)) for p, s in points if p > 0 and s > 0]
    if not logs:
        raise ValueError("no speed points")
    mean_x = sum(x for x, _ in logs) / len(logs)
    mean_y = sum(y for _, y in logs) / len(logs)
    spread = sum((x - mean_x) ** 2 for x, _ in logs)
    exponent = DEFAULT_EXPONENT
    if spread > 0.1:
        exponent = sum((x - mean_x) * (y - mean_y) for x, y in logs) / spread
        exponent = min(max(exponent, EXPONENT_RANGE[0]), EXPONENT_RANGE[1])
    return math.exp(mean_y - exponent * mean_x), exponent


def estimate_seconds(height: int, width: int, config: Config, rate: float, exponent: float,
                     fixed_seconds: float = 0.0, finish_seconds: float = 0.0,
                     level_speeds: list[tuple[float, float]] | None = None) -> float:
    """A whole run's seconds for a `height` x `width` content: every planned evaluation (full
    budgets: early stopping only shortens it), each level's targets, the finish and
    `fixed_seconds` (start-up). `level_speeds`: per level, the (rate, exponent) of its
    evaluations where they are not (`rate`, `exponent`): compiled levels; targets and finish are
    eager forward passes."""
    from .pipeline import level_sizes

    sizes = level_sizes(height, width, config)
    seconds = 0.0
    for number, size in enumerate(sizes, start=1):
        evaluations = config.level_evaluations(final=number == len(sizes))
        speed = level_speeds[number - 1] if level_speeds else (rate, exponent)
        seconds += (evaluations * speed_at(speed, level_pixels(size)) +
                    TARGET_EVALUATIONS * speed_at((rate, exponent), level_pixels(size)))
    seconds += FINISH_EVALUATIONS * speed_at((rate, exponent), level_pixels(sizes[-1]))
    return fixed_seconds + finish_seconds + seconds


def planned_compiled(config: Config, height: int, width: int) -> list[bool]:
    """Per level of the run `config` plans for a `height` x `width` content, whether its
    evaluations would run compiled here: the run's own rule (`wants_compile` on its whole-image
    levels, then `level_runs_compiled`), without compiling, logging or looking for a compiler
    (where none is, no compiled speed is ever kept, so the eager one prices them)."""
    from ..engines import resolve_engine
    from .pipeline import level_sizes, plan_levels

    if resolve_engine(config.engine) == "onnx" or config.compile == "off":
        return [False] * len(level_sizes(height, width, config))
    from ..engines.torch.compiled import level_runs_compiled, wants_compile, whole_image_levels
    from ..engines.torch.model import resolve_device, resolve_precision

    device = resolve_device(config.device)
    plan = plan_levels(height, width, config, device)
    compiling = wants_compile(config.compile, device, resolve_precision(config.precision, device),
                              whole_image_levels(plan))
    return [level_runs_compiled(compiling, config.compile, lv) for lv in plan]


def compile_start(config: Config, kept: dict) -> tuple[float, str]:
    """(seconds, what they are) that compiling adds to the start of the next run of `config`,
    which compiles: from scratch where the compile cache is empty (`cache_is_cold`, as the run
    will find it), else loading the code; each the lower median of the kept seconds of its kind
    (`kept`: the compiled entry), else the first guess (COLD_ / WARM_COMPILE_SECONDS). Where no
    compile was ever kept and the cache is empty, the run's own check for a compiler decides
    (once per process; without one the run is eager and compiles nothing)."""
    from ..engines.torch import compiled
    from ..engines.torch.model import resolve_device

    cold = compiled.cache_is_cold()
    name = _compile_entry(cold)
    if kept.get(name):
        return _median(kept, name), f"{'cold' if cold else 'warm'}: {len(kept[name])} earlier run(s)"
    if cold and not kept.get(_compile_entry(False)):
        problem = compiled.compile_problem(resolve_device(config.device))
        if problem:
            return 0.0, f"none: {problem}"
    if cold:
        return compiled.COLD_COMPILE_SECONDS, "cold: a first guess, none kept yet"
    return compiled.WARM_COMPILE_SECONDS, "warm: a first guess, none kept yet"


def estimate(height: int, width: int, config: Config, key: str,
             finish_seconds: float = 0.0) -> dict:
    """`stylefu estimate`'s figures from the speeds kept under `key` (a rate must be kept):
    "seconds", "exponent", "fixed_seconds" and, for a run that would compile
    (`planned_compiled`), "compiled": its compiled levels ([w, h]), the speed that priced them
    (the compiled one where kept, else the eager one), where it came from, and the compile
    seconds added to the start-up (`compile_start`: from scratch or loading the code) and how
    they were found ("compile")."""
    from .pipeline import level_sizes

    kept_speeds = load_speeds()
    rate, exponent, fixed = kept_speed(key, kept_speeds)
    figures: dict = {"exponent": round(exponent, 3), "fixed_seconds": round(fixed, 1)}
    kinds, speeds = planned_compiled(config, height, width), None
    if any(kinds):
        where = compiled_key(key)
        kept = kept_speeds.get(where, {})
        compiled_rate, compiled_exponent, _ = kept_speed(where, kept_speeds)
        if compiled_rate is not None:
            speeds = [(compiled_rate, compiled_exponent) if kind else (rate, exponent)
                      for kind in kinds]
        compiling, found = compile_start(config, kept)
        fixed += compiling
        figures["compiled"] = {
            "levels": [[w, h] for (h, w), kind in zip(level_sizes(height, width, config), kinds)
                       if kind],
            "speed": where if speeds else key,
            "measured_by": f"{len(kept.get('points', []))} compiled level(s) of earlier runs"
            if speeds else "no compiled run kept yet: the eager speed",
            "exponent": round(compiled_exponent if speeds else exponent, 3),
            "compile_seconds": round(compiling, 1), "compile": found}
    figures["seconds"] = round(estimate_seconds(height, width, config, rate, exponent, fixed,
                                                finish_seconds, speeds), 1)
    return figures


def run_key(config: Config, architecture: str) -> str:
    """speed_key of the run `config` asks for with a model of `architecture` (engine, device,
    precision resolved as the run will), without loading the model."""
    from ..engines import resolve_engine

    if resolve_engine(config.engine) == "onnx":
        return speed_key(architecture, "onnx", "cpu", "float32")
    from ..engines.torch.model import resolve_device, resolve_precision

    device = resolve_device(config.device)
    precision = str(resolve_precision(config.precision, device)).replace("torch.", "")
    return speed_key(architecture, "torch", str(device), precision)


CALIBRATION_SIDES = (256, 384)  # both over FIT_MIN_PIXELS (on a 3:4 picture)
CALIBRATION_EVALUATIONS = 5


def calibrate(model, config: Config) -> list[tuple[int, float, bool]]:
    """(pixels, seconds per evaluation, compiled: False) measured now: a few evaluations at
    CALIBRATION_SIDES on a generated picture (a few seconds; eager: a compiled speed comes from
    compiled runs only)."""
    import numpy as np

    from .pipeline import stylize

    if config.paints_nothing:  # measured on the default balance: evaluations cost the same
        config = config.with_(strength=None, content_weight=None, style_weight=None,
                              style_layer_weights=None)
    rng = np.random.default_rng(0)
    content = rng.random((96, 128, 3), dtype=np.float32)
    style = rng.random((128, 128, 3), dtype=np.float32)
    points = []
    for side in CALIBRATION_SIDES:
        timer = TimeLeft(config)
        stylize(content, style, model=model, callback=timer,
                config=config.with_(size=side, levels=1, evaluations=CALIBRATION_EVALUATIONS,
                                    tolerance=0.0, compile="off", save_every=0))
        points += timer.measured()
    return points


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min': a time left or an estimate for people."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
