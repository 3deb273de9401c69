"""Hostile inputs against the real `stylefu` command line, the Python API and the GIMP installer.

Every case ends as the README's "What is guaranteed" table promises: the exit code (0 ok, 1
internal error, 2 user error, 130 SIGINT, 143 SIGTERM); for an error, one sentence on stderr
that names the culprit and no traceback; no partial or temporary file; the inputs unchanged; with
`--progress json`, every stdout line valid under a strict parser and a final result, error or
cancelled event. Cases that need no optimisation call `main([...])` in-process and fail before any
torch work; subprocesses (the installed `stylefu` script) are used where the real process matters:
signals, tracebacks, another user's permissions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stylefu.core import Config, UserError, stylize
from stylefu.core.cli.main import build_parser, main
from stylefu.core.io.demo import demo_content, demo_style
from stylefu.core.io.images import load_image, save_image
from stylefu.core.method.config import config_fields

STYLEFU = Path(sys.executable).with_name("stylefu")
RUN = ["--size", "64", "--iterations", "3", "--scales", "1"]
QUICK = ["--iterations", "1"]  # cases that run: one evaluation shows the option was accepted
FUZZ = ("nan", "inf", "-inf", "0", "-1", "huge")
NAME_MAX = 255  # Linux, macOS and Windows file systems


def _reject(constant: str):
    raise ValueError(f"non-standard JSON constant {constant}")


def strict_records(stdout: str) -> list[dict]:
    """Every stdout line parsed by a strict JSON parser (NaN, Infinity: an error)."""
    return [json.loads(line, parse_constant=_reject) for line in stdout.splitlines() if line]


@dataclass
class World:
    """A scratch folder with inputs, a model, and a record of what was there before a case."""

    root: Path
    model: Path
    content: Path
    style: Path
    mask: Path

    def inputs(self) -> list[Path]:
        return [self.content, self.style, self.mask]

    def snapshot(self) -> dict[str, tuple]:
        """Every entry under the folder: kind, size and content hash (inputs unchanged, nothing
        added); the model is compared by size and mtime (50 MB)."""
        seen = {}
        for path in sorted(self.root.rglob("*")):
            st = path.lstat()
            digest = None
            if path.is_file() and not path.is_symlink() and st.st_size < 1 << 20:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path.relative_to(self.root))] = (st.st_mode, st.st_size, digest)
        seen["<model>"] = (self.model.stat().st_size, self.model.stat().st_mtime_ns)
        return seen


@pytest.fixture
def world(tmp_path, model_path) -> World:
    root = tmp_path / "w"
    root.mkdir()
    content = save_image(root / "content.png", demo_content(48, 64))
    style = save_image(root / "style.png", demo_style(64))
    mask_array = np.zeros((48, 64, 3), np.float32)
    mask_array[:, 32:] = 1.0
    mask = save_image(root / "mask.png", mask_array)
    return World(root, Path(model_path), content, style, mask)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def cli(capsys, *args: str) -> Outcome:
    """`stylefu ARGS` in this process (argument errors included)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_args(w: World, output: Path | str | None = None, extra=(), json_progress=True) -> list[str]:
    return ["run", str(w.content), str(w.style), "-o", str(output or w.root / "out.png"),
            "--model", str(w.model), *RUN, "--progress", "json" if json_progress else "none",
            *extra]


def option_spellings(option: str) -> list[str]:
    """All spellings of `option` (an option renamed later keeps its old spelling as an alias):
    its Config field's, each one a spelling `run` takes (its Parser's public option_words)."""
    words = build_parser().commands["run"].option_words
    for f in config_fields():
        names = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        if option in names:
            assert set(names) <= words, names
            return names
    return [option]


def assert_refused(outcome: Outcome, culprits, before: dict, w: World, code: int = 2,
                   json_progress: bool = True) -> str:
    """Exit `code`, one sentence naming one of `culprits`, no traceback, nothing written or
    left behind, inputs unchanged, strict JSON ending in an error event (`json_progress`)."""
    assert outcome.code == code, outcome.err
    assert "Traceback" not in outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("stylefu: error:")]
    assert len(errors) == 1, outcome.err
    message = errors[0].removeprefix("stylefu: error: ")
    assert any(str(c) in message for c in culprits), (culprits, message)
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message), message  # one sentence
    if json_progress:
        records = strict_records(outcome.out)
        assert records and records[-1]["event"] == "error" and records[-1]["message"] == message
    assert w.snapshot() == before
    return message


def assert_done(outcome: Outcome, output: Path, w: World, before: dict) -> None:
    """Exit 0, the output written completely, inputs unchanged, no temporary file, strict JSON."""
    assert outcome.code == 0, outcome.err
    assert "Traceback" not in outcome.err
    records = strict_records(outcome.out)
    assert records[-1]["event"] == "result"
    assert load_image(output).rgb.shape == (48, 64, 3)
    after = w.snapshot()
    for name, entry in before.items():
        assert after[name] == entry, name  # inputs (and everything else) unchanged
    assert not [p for p in w.root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


# --- numeric options: nan, inf, -inf, 0, -1 and a huge value each ------------------------------

HUGE = {int: "1" + "0" * 30, float: "1e300", "size": "1000000"}
NUMERIC = {
    "--size": int, "--iterations": int, "--scales": int, "--coarse-iterations": int,
    "--tolerance": float, "--content-weight": float, "--style-weight": float,
    "--tv-weight": float, "--learning-rate": float, "--style-scale": float, "--seed": int,
    "--tile-size": int, "--save-every": int, "--style-layer-weights": "layers",
    "--style-blend": "blend", "--bits": "choice",
}
# (option, value) pairs a run accepts; every other pair is refused before the optimisation.
VALID = {("--coarse-iterations", "0"), ("--tolerance", "0"), ("--content-weight", "0"),
         ("--style-weight", "0"), ("--tv-weight", "0"), ("--seed", "0"), ("--tile-size", "0"),
         ("--save-every", "0"), ("--style-layer-weights", "0")}


def fuzz_value(option: str, value: str) -> str:
    kind = NUMERIC[option]
    if value == "huge":
        value = HUGE["size"] if option == "--size" else HUGE[int if kind in (int, "choice") else float]
    if kind == "layers":
        return f"{value},1,1,1,1"
    return value


@pytest.mark.parametrize("value", FUZZ)
@pytest.mark.parametrize("option", list(NUMERIC))
def test_numeric_option(option, value, world, capsys):
    before = world.snapshot()
    out = world.root / "out.png"
    args = run_args(world, out, [f"{option}={fuzz_value(option, value)}"])
    # One run's options: RUN's own value of this option is replaced by the fuzzed one.
    if option in RUN:
        i = args.index(option)
        del args[i:i + 2]
    outcome = None if (option, value) in VALID else cli(capsys, *args)
    if (option, value) in VALID:
        assert_done(cli(capsys, *args, *QUICK), out, world, before)
        return
    message = assert_refused(outcome, option_spellings(option), before, world)
    if option == "--size" and value == "huge":
        assert "GB" in message and re.search(r"--size \d+ at most", message)  # says what fits


@pytest.mark.parametrize("option, value", [("--style-layer-weights", "nan,1,1,1,1"),
                                           ("--content-weight", "inf"), ("--size", "1000000"),
                                           ("--style-scale", "1000"), ("--learning-rate", "-inf"),
                                           ("--workers", "0"), ("--workers", "-1")])
def test_numeric_option_preview(option, value, world, capsys):
    before = world.snapshot()
    outcome = cli(capsys, "preview", world.content, world.style, "-o", world.root / "sheet.png",
                  "--model", world.model, "--size", "64", "--iterations", "3", f"{option}={value}")
    assert_refused(outcome, option_spellings(option), before, world, json_progress=False)


# --- path options: missing, folder, link loop, empty, wrong kind, name too long ----------------

def bad_path(w: World, kind: str, name: str, wrong: bytes = b"this is text, not an image\n") -> Path:
    """A path of `kind` in the world's folder, made before the snapshot."""
    path = w.root / name
    if kind == "folder":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong":
        path.write_bytes(wrong)
    elif kind == "too long":
        path = w.root / (Path(name).stem * 60)[:NAME_MAX + 20]
    elif kind == "dangling":
        path.symlink_to("nowhere.png")
    return path


INPUT_KINDS = ("missing", "folder", "loop", "empty", "wrong", "too long", "dangling")
INPUTS = ("content", "style", "--mask", "--init", "--model")


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("which", INPUTS)
def test_input_path(which, kind, world, capsys):
    wrong = world.content.read_bytes() if which == "--model" else b"this is text, not an image\n"
    path = bad_path(world, kind, f"bad-{which.strip('-')}.{'onnx' if which == '--model' else 'png'}",
                    wrong)
    before = world.snapshot()
    args = run_args(world)
    if which == "content":
        args[1] = str(path)
    elif which == "style":
        args[2] = str(path)
    elif which == "--model":
        args[args.index("--model") + 1] = str(path)
    else:
        args += [which, str(path)]
    outcome = cli(capsys, *args)
    message = assert_refused(outcome, [path.name[:32]], before, world)
    expected = {"missing": "does not exist|No model", "folder": "is a folder",
                "loop": "symbolic link loop", "empty": "empty|not a readable ONNX",
                "wrong": "not an image|not a readable ONNX", "too long": "too long",
                "dangling": "which does not exist|does not exist"}[kind]
    assert re.search(expected, message), message


def test_input_with_a_name_at_the_length_limit_works(world, capsys):
    content = world.root / ("c" * (NAME_MAX - 4) + ".png")
    shutil.copy(world.content, content)
    before = world.snapshot()
    out = world.root / "out.png"
    args = run_args(world, out)
    args[1] = str(content)
    assert_done(cli(capsys, *args, *QUICK), out, world, before)


def test_integer_npy_is_refused_with_the_fix(world, capsys):
    array = (demo_content(48, 64) * 255).astype(np.int64)
    np.save(world.root / "ints.npy", array)
    before = world.snapshot()
    args = run_args(world)
    args[1] = str(world.root / "ints.npy")
    message = assert_refused(cli(capsys, *args), ["int64"], before, world)
    assert "uint8" in message
    np.save(world.root / "floats255.npy", array.astype(np.float32))
    with pytest.raises(UserError, match="divide by 255"):
        load_image(world.root / "floats255.npy")
    with pytest.raises(UserError, match=r"span -1\.\.1; bring them into 0\.\.1"):  # not "/ 255"
        load_image(np.linspace(-1, 1, 48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3))
    assert np.array_equal(load_image(array.astype(np.uint8)).rgb * 255,
                          array.astype(np.float32))  # uint8 0..255 is read as 8-bit


# --- outputs: special files are refused, links mean their targets ------------------------------

def special(w: World, kind: str, name: str) -> Path:
    path = w.root / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "char device":
        try:
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 7))  # a copy of /dev/full
        except PermissionError:
            pytest.skip("mknod needs root here")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError as exc:  # a path longer than sun_path
            pytest.skip(f"cannot bind a socket here: {exc}")
        finally:
            sock.close()
    elif kind == "link to stdout":
        path.symlink_to("/dev/stdout")
    elif kind == "link to a fifo":
        os.mkfifo(w.root / "fifo")
        path.symlink_to("fifo")
    elif kind in ("folder", "loop", "too long"):
        path = bad_path(w, kind, name)
    elif kind == "missing folder":
        path = w.root / "no-such-folder" / name
    elif kind == "under a file":
        path = w.content / name
    elif kind == "the content":
        path = w.content
    elif kind == "link to the style":
        path.symlink_to(w.style.name)
    elif kind == "unknown suffix":
        path = w.root / "out.xyz"
    elif kind == "no suffix":
        path = w.root / "out"
    return path


# "link to stdout" only in a subprocess: under pytest, fd 1 may be a capture file.
OUTPUT_KINDS = ("fifo", "char device", "socket", "link to a fifo", "folder", "loop", "too long",
                "missing folder", "under a file", "the content", "link to the style",
                "unknown suffix", "no suffix")


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_output_path(kind, world, capsys):
    path = special(world, kind, "out.png")
    before = world.snapshot()
    outcome = cli(capsys, *run_args(world, path))
    assert outcome.code == 2 and "device cpu" not in outcome.err  # refused before the model loads
    assert_refused(outcome, ["-o"], before, world)


@pytest.mark.parametrize("kind", ("fifo", "char device", "folder", "loop", "missing folder",
                                  "the content", "too long"))
def test_metrics_path(kind, world, capsys):
    path = special(world, kind, "metrics.json")
    before = world.snapshot()
    outcome = cli(capsys, *run_args(world, extra=["--metrics", str(path)]))
    assert "device cpu" not in outcome.err
    assert_refused(outcome, ["--metrics"], before, world)


@pytest.mark.parametrize("kind", ("folder", "fifo"))
def test_save_every_paths_checked_before_the_run(kind, world, capsys):
    special(world, kind, "out.scale1-0002.png")
    before = world.snapshot()
    outcome = cli(capsys, *run_args(world, extra=["--save-every", "2"]))
    assert "device cpu" not in outcome.err
    assert_refused(outcome, ["--save-every"], before, world)


@pytest.mark.parametrize("kind", ("folder", "fifo", "unknown suffix", "missing folder"))
def test_preview_output_path(kind, world, capsys):
    path = special(world, kind, "sheet.png")
    before = world.snapshot()
    outcome = cli(capsys, "preview", world.content, world.style, "-o", path, "--model",
                  world.model, "--size", "64")
    assert_refused(outcome, ["-o"], before, world, json_progress=False)
    outcome = cli(capsys, "preview", world.content, world.style, "-o", world.root / "s.png",
                  "--json", world.root / "nowhere" / "f.json", "--model", world.model)
    assert outcome.code == 2 and "--json" in outcome.err and w_unchanged(world, before)


def w_unchanged(w: World, before: dict) -> bool:
    return w.snapshot() == before


def test_outputs_that_may_be_replaced(world, capsys):
    """A regular file is replaced; a link keeps pointing at its target, which gets the image; a
    dangling link creates its target; a name at the length limit works (its temporary name is
    shortened)."""
    (world.root / "old.png").write_bytes(b"old")
    (world.root / "target.png").write_bytes(b"old")
    (world.root / "link.png").symlink_to("target.png")
    (world.root / "dangling.png").symlink_to("created.png")
    long_name = world.root / ("o" * (NAME_MAX - 4) + ".png")
    for output in ("old.png", "link.png", "dangling.png", long_name.name):
        before = {k: v for k, v in world.snapshot().items() if k not in (output, "target.png")}
        assert_done(cli(capsys, *run_args(world, world.root / output), *QUICK),
                    world.root / output, world, before)
    assert (world.root / "link.png").is_symlink() and (world.root / "dangling.png").is_symlink()
    assert load_image(world.root / "target.png").width == 64
    assert load_image(world.root / "created.png").width == 64


# --- the target cache: damaged and adversarial entries heal; an unusable folder costs speed ----

def damage(entry: Path, how: str) -> None:
    with np.load(entry) as data:
        arrays = {k: data[k] for k in data.files}
    entry.unlink()
    if how == "truncated":
        np.savez(entry, **arrays)
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif how == "garbage":
        entry.write_bytes(os.urandom(4096))
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "wrong shapes":
        np.savez(entry, **{k: np.ones((1, 3, 3), np.float32) for k in arrays})
    elif how == "transposed":
        np.savez(entry, **{k: np.ascontiguousarray(v.swapaxes(-1, -2)) if v.ndim == 4 and
                           v.shape[-1] != v.shape[-2] else v[..., :-1] for k, v in arrays.items()})
    elif how == "float64":
        np.savez(entry, **{k: v.astype(np.float64) for k, v in arrays.items()})
    elif how == "int":
        np.savez(entry, **{k: v.astype(np.int32) for k, v in arrays.items()})
    elif how == "nan":
        np.savez(entry, **{k: np.full_like(v, np.nan) for k, v in arrays.items()})
    elif how == "pickled":
        np.savez(entry, **{k: np.array([{"x": 1}], dtype=object) for k in arrays})
    elif how == "other names":
        np.savez(entry, **{f"x{i}": v for i, v in enumerate(arrays.values())})
    elif how == "folder":
        entry.mkdir()
    elif how == "fifo":
        os.mkfifo(entry)
    elif how == "loop":
        entry.symlink_to(entry.name)


CACHE_DAMAGE = ("truncated", "garbage", "empty", "wrong shapes", "transposed", "float64", "int",
                "nan", "pickled", "other names", "folder", "fifo", "loop")


def test_damaged_cache_entries_heal(world, capsys, tmp_path, monkeypatch):
    """Each kind of damage, to the content features' entry and (another kind at once) to the
    style Grams' entry: the run gives the same bytes as with a clean cache, and every damaged
    entry (but a folder, which is not the cache's to remove) is rewritten with the clean arrays."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEFU_CACHE", str(cache))
    clean = world.root / "clean.png"
    assert cli(capsys, *run_args(world, clean), *QUICK).code == 0
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 2  # content features and one style's Grams
    reference = {e: {k: v.copy() for k, v in np.load(e).items()} for e in entries}
    for first, second in zip(CACHE_DAMAGE[:7], CACHE_DAMAGE[6:]):  # 13 kinds in 7 runs
        for entry, how in zip(entries, (first, second)):
            damage(entry, how)
        out = world.root / f"after-{first.replace(' ', '-')}.png"
        outcome = cli(capsys, *run_args(world, out), *QUICK)
        assert outcome.code == 0 and "Traceback" not in outcome.err, (first, second, outcome.err)
        strict_records(outcome.out)
        assert out.read_bytes() == clean.read_bytes(), (first, second)
        for entry, how in zip(entries, (first, second)):
            if how == "folder":  # not ours to replace: the run went on without it
                entry.rmdir()
                np.savez(entry, **reference[entry])
                continue
            with np.load(entry) as data:  # healed: the clean arrays again
                assert all(np.array_equal(data[k], v) for k, v in reference[entry].items()), how
        assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_cache_folder_that_is_a_file_costs_only_speed(world, capsys, monkeypatch):
    blocker = world.root.parent / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STYLEFU_CACHE", str(blocker))
    before = world.snapshot()
    out = world.root / "out.png"
    assert_done(cli(capsys, *run_args(world, out), *QUICK), out, world, before)


def test_cache_folder_mode_000_costs_only_speed(model_path, tmp_path):
    """As another user (root reads everything, so a root test runs as `nobody` via setpriv)."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"stylefu-fuzz-{os.getpid()}"
    root.mkdir(mode=0o777)
    try:
        root.chmod(0o777)
        save_image(root / "c.png", demo_content(48, 64))
        save_image(root / "s.png", demo_style(64))
        shutil.copy(model_path, root / "m.onnx")
        (root / "cache" / "targets").mkdir(parents=True)
        (root / "cache").chmod(0)
        command = [str(STYLEFU), "run", "c.png", "s.png", "-o", "o.png", "--model", "m.onnx",
                   *RUN, *QUICK, "--progress", "json"]
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot drop the permission")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env = dict(os.environ, STYLEFU_CACHE=str(root / "cache"), HOME=str(root))
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        if "Permission denied" in proc.stderr and "python" in proc.stderr.lower():
            pytest.skip("the virtual environment is not readable by the other user")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert strict_records(proc.stdout)[-1]["event"] == "result"
        assert load_image(root / "o.png").width == 64
    finally:
        (root / "cache").chmod(0o700)
        shutil.rmtree(root)


# --- the real process: signals, argument errors and tracebacks ---------------------------------

def start(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(STYLEFU), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def first_line(proc: subprocess.Popen) -> str:
    """The first line of `proc`'s stdout, read byte by byte: communicate() reads the pipe itself
    afterwards and would lose whatever a buffered readline() had taken beyond this line."""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(proc.stdout.fileno(), 1)
        if not byte:
            break
        data += byte
    return data.decode()


def test_signals_during_a_run(world):
    """SIGINT and SIGTERM (two processes at once) while the optimisation runs: exit 130 and 143,
    a final `cancelled` event, no output and no temporary file."""
    before = world.snapshot()
    procs = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        args = run_args(world, world.root / f"out-{signum}.png")
        args[args.index("--iterations") + 1] = "5000"
        procs[signum] = start(args, world.root)
    for signum, proc in procs.items():
        first = first_line(proc)  # the first progress event: the optimisation is running
        assert json.loads(first, parse_constant=_reject)["event"] == "progress", proc.stderr.read()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        records = strict_records(first + out)
        assert records[-1]["event"] == "cancelled"
    assert w_unchanged(world, before)  # no output, no temporary file, inputs as they were


def test_real_process_argument_errors_have_no_traceback(world):
    """The installed script (not only main()): argument and option errors in one line, exit 2,
    and a JSON error event; several at once (each process imports torch: a few seconds each)."""
    before = world.snapshot()
    cases = {"--size": ["--size", "nan"], "--style-layer-weights": ["--style-layer-weights",
                                                                     "nan,1,1,1,1"],
             "--metrics": ["--metrics", world.root / "missing" / "m.json"],
             "--nonsense": ["--nonsense"]}
    stdout_link = special(world, "link to stdout", "stdout.png")
    before = world.snapshot()
    procs = {name: start(run_args(world, extra=extra), world.root) for name, extra in cases.items()}
    procs["-o"] = start(run_args(world, stdout_link), world.root)  # stdout is a pipe: a FIFO
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert_refused(Outcome(proc.returncode, out, err), [name], before, world)


@pytest.mark.parametrize("value", [v for v in FUZZ if v != "0"])  # seed 0: conftest's model
def test_export_seed(value, world, capsys):
    before = world.snapshot()
    outcome = cli(capsys, "export", "--weights", "random", f"--seed={fuzz_value('--seed', value)}",
                  "-o", world.root / "model.onnx")
    assert_refused(outcome, ["--seed"], before, world, json_progress=False)


def test_internal_error_exit_1_with_json_event(world, capsys, monkeypatch):
    """A bug (here: an exception no user can cause) exits 1 with a traceback for the report and
    still ends the JSON stream with an error event."""
    import importlib

    module = importlib.import_module("stylefu.core.run.pipeline")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(module, "stylize", broken)
    outcome = cli(capsys, *run_args(world))
    assert outcome.code == 1 and "Traceback" in outcome.err and "internal error" in outcome.err
    record = strict_records(outcome.out)[-1]
    assert record["event"] == "error" and record.get("internal") is True


# --- the Python API: clear exception types, no half-written files ------------------------------

@pytest.mark.parametrize("change, message", [
    ({"size": "big"}, "--size must be a whole number"), ({"size": 64.5}, "whole number"),
    ({"style_weight": float("nan")}, "--style-weight must be a finite"),
    ({"content_weight": float("inf")}, "--content-weight"),
    ({"style_layer_weights": (float("nan"), 1, 1, 1, 1)}, "--style-layer-weights"),
    ({"style_blend": (float("inf"),)}, "--style-blend"), ({"seed": -1}, "--seed"),
    ({"evaluations": True}, "--evaluations"), ({"style_scale": 1000.0}, "--style-scale"),
    ({"size": 10**6}, "fits|at most"), ({"init": "/"}, "--init"),
])
def test_api_config_errors_are_user_errors(change, message, world):
    with pytest.raises(UserError, match=message):
        stylize(world.content, world.style, config=Config(**{"size": 64, "evaluations": 3, **change}),
                model=world.model)


def test_api_bad_images_and_outputs(world):
    before = world.snapshot()
    for source, message in [(np.full((48, 64, 3), np.nan, np.float32), "NaN"),
                            (np.zeros((48, 64, 3), np.int32), "int32"),
                            (np.zeros((0, 64, 3), np.float32), "empty"),
                            (np.zeros((48, 64, 3), object), "not numbers"),
                            (world.root, "is a folder")]:
        with pytest.raises(UserError, match=message):
            stylize(source, world.style, config=Config(size=64, evaluations=1), model=world.model)
    result = stylize(world.content, world.style, config=Config(size=64, evaluations=1, levels=1),
                     model=world.model)
    os.mkfifo(world.root / "fifo.png")
    before = world.snapshot()
    for output, message in [(world.root / "x.xyz", "unknown image type"),
                            (world.root, "is a folder"), (world.root / "fifo.png", "FIFO"),
                            (world.root / "no" / "x.png", "does not exist")]:
        with pytest.raises(UserError, match=message):
            result.save(output)
    assert w_unchanged(world, before)


# --- `stylefu gimp install|status|uninstall` ---------------------------------------------------

def test_gimp_installer_hostile_folders(world, capsys, tmp_path):
    before = world.snapshot()
    for kind in ("under a file", "loop"):
        target = special(world, kind, "plug-ins")
        if kind == "loop":
            before = world.snapshot()
        outcome = cli(capsys, "gimp", "install", "--plug-ins-dir", target, "--model", world.model)
        assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err
        assert outcome.err.count("\n") == 1 and "plug-ins" in outcome.err
        assert w_unchanged(world, before)
    plug_ins = tmp_path / "plug-ins"
    assert cli(capsys, "gimp", "install", "--plug-ins-dir", plug_ins, "--model",
               world.model).code == 0
    settings = plug_ins / "stylefu" / "stylefu.json"
    for damaged in ("{}", "[]", "{not json", '{"python": 3, "model": null}'):
        settings.write_text(damaged)
        outcome = cli(capsys, "gimp", "status", "--plug-ins-dir", plug_ins, "--no-check")
        assert outcome.code == 1 and "Traceback" not in outcome.err  # 1: installed but broken
        assert "damaged" in outcome.out
    plugin = plug_ins / "stylefu" / "stylefu.py"
    plugin.unlink()
    plugin.mkdir()  # something else where the plug-in file was: not ours to remove
    outcome = cli(capsys, "gimp", "uninstall", "--plug-ins-dir", plug_ins)
    assert outcome.code == 2 and "Traceback" not in outcome.err and plugin.is_dir()
    assert not [p for p in plug_ins.rglob("*") if p.name.endswith(".tmp")]

