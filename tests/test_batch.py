"""`stylefu batch` and `stylize_many`: real worker processes, a real local Ray cluster, real kills.

Small images (48-64 px), the random-weights artifact and a few evaluations keep each batch to
seconds; what is asserted is bookkeeping (manifest, outputs, exit codes) and that results are real
(pixels changed, losses recorded), never one machine's digits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylefu.core import BatchItem, Config, RunOptions, stylize_many
from stylefu.core.batch.driver import make_items, read_manifest
from stylefu.core.errors import UserError
from stylefu.core.io.inputs import expand_inputs

FAST = ["--size", "64", "--levels", "1", "--evaluations", "4", "--coarse-evaluations", "0",
        "--tolerance", "0"]
FAST_CONFIG = Config(size=64, levels=1, evaluations=4, coarse_evaluations=0, tolerance=0.0)


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path, images):
    """Six small content images (shifted copies of the demo content) and two styles."""
    content, style = images
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [_save(folder / f"frame{i}.png", np.roll(content, 3 * i, axis=1)) for i in range(6)]
    styles = [_save(tmp_path / "stripes.png", style),
              _save(tmp_path / "turned.png", np.ascontiguousarray(np.rot90(style)))]
    return paths, styles


def _batch(args: list[str], model: Path, wait: bool = True, **kw):
    command = [sys.executable, "-m", "stylefu.core", "batch", "--progress", "none", *FAST,
               *map(str, args), "--model", str(model)]  # the test's own options come last and win
    if not wait:
        return subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **kw)
    return subprocess.run(command, capture_output=True, text=True, **{"timeout": 300, **kw})


def _lines(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def _outputs(folder: Path) -> set[str]:
    """Every file in the output folder but the manifest (temporaries included: there must be none)."""
    return {p.name for p in folder.iterdir() if p.name != "manifest.jsonl"}


def test_inputs_folders_globs_lists_and_names(tmp_path, photos):
    paths, styles = photos
    folder = paths[0].parent
    (folder / "notes.txt").write_text("not an image")
    assert expand_inputs([str(folder)]) == paths  # images only, natural order
    assert expand_inputs([str(folder / "frame[12].png")]) == paths[1:3]
    listing = tmp_path / "list.txt"
    listing.write_text("# chosen\nin/frame5.png\n\nin/frame0.png\n")
    assert expand_inputs(["@" + str(listing)]) == [paths[5], paths[0]]
    if hasattr(os, "mkfifo"):  # a pattern's FIFO is kept (its item fails alone), never opened
        os.mkfifo(folder / "pipe.png")
        found = []
        reader = threading.Thread(target=lambda: found.append(expand_inputs([str(folder / "*")])),
                                  daemon=True)
        reader.start()
        reader.join(10)
        assert found and folder / "pipe.png" in found[0]
        (folder / "pipe.png").unlink()
    with pytest.raises(UserError, match="matches"):
        expand_inputs([str(folder / "*.jpg")])
    with pytest.raises(UserError, match="no images"):
        expand_inputs([str(_empty(tmp_path))])
    listing.write_text("# nothing chosen yet\n\n")  # was a batch of nothing, exit 0
    with pytest.raises(UserError, match=r"names no image \(only blank lines and # comments\)"):
        expand_inputs(["@" + str(listing)])
    items = make_items(paths[:2], [str(s) for s in styles], tmp_path / "out", styles_each=True)
    assert [Path(i.output).name for i in items] == ["frame0-stripes.png", "frame0-turned.png",
                                                    "frame1-stripes.png", "frame1-turned.png"]
    with pytest.raises(UserError, match="both be written"):
        make_items(paths[:2], [str(styles[0])], tmp_path / "out", pattern="same.png")
    # two styles of one stem (a.jpg, a.png; d1/x.png, d2/x.png): said as the input twice, and no
    # field told them apart
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
    twins = [str(_save(tmp_path / d / "x.png", np.zeros((20, 20, 3), np.float32)))
             for d in ("d1", "d2")]
    with pytest.raises(UserError, match=re.escape(f"{paths[0]} with {twins[0]} and {paths[0]} "
                                                  f"with {twins[1]} would both be written")):
        make_items(paths[:1], twins, tmp_path / "out", styles_each=True)
    items = make_items(paths[:1], twins, tmp_path / "out", "{stem}-{style}{style_index}.png", True)
    assert [Path(i.output).name for i in items] == ["frame0-x0.png", "frame0-x1.png"]


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_corrupt_input_fails_alone(tmp_path, photos, model_path):
    paths, styles = photos
    (paths[1]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a broken file in the middle
    out = tmp_path / "out"
    done = _batch([paths[0], paths[1], paths[2], "--style", styles[0], "-o", out, "--workers", "2",
                   "--progress", "json"], model_path)
    assert done.returncode == 3, done.stderr  # some items failed
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["item"] for e in events if e["event"] == "progress"} == {0, 2}  # per-item progress
    assert sorted(e["index"] for e in events if e["event"] == "item") == [0, 1, 2]
    assert events[-1]["event"] == "batch" and events[-1]["failed"] == 1
    entries = {Path(e["input"]).name: e for e in _lines(out / "manifest.jsonl")}
    assert entries["frame1.png"]["status"] == "failed"
    assert "frame1.png" in entries["frame1.png"]["error"] and "Traceback" not in done.stderr
    for name in ("frame0.png", "frame2.png"):
        assert entries[name]["status"] == "ok" and entries[name]["losses"]["total_loss"] > 0
    assert _outputs(out) == {"frame0.png", "frame2.png"}
    result = np.asarray(Image.open(out / "frame0.png"), np.float32) / 255
    assert np.abs(result - np.asarray(Image.open(paths[0]), np.float32) / 255).mean() > 1e-3


def test_styles_each_makes_every_pair(tmp_path, photos, model_path, capsys):
    """Each style of --styles-each named alone or by a set (here a glob: a folder or @list too);
    a set without --styles-each is refused (it would blend them all)."""
    from stylefu.core.cli.main import main

    paths, styles = photos
    out = tmp_path / "out"
    every = str(tmp_path / "*.png")  # stripes.png and turned.png
    assert main(["batch", str(paths[0]), "--style", every, "-o", str(out)]) == 2
    assert f"--style {every} names several styles (a pattern): add --styles-each" in \
        capsys.readouterr().err
    assert not out.exists()
    done = _batch([*paths[:3], "--style", every, "--styles-each", "-o", out], model_path)
    assert done.returncode == 0, done.stderr
    expected = {f"frame{i}-{s}.png" for i in range(3) for s in ("stripes", "turned")}
    assert _outputs(out) == expected
    entries = _lines(out / "manifest.jsonl")
    assert len(entries) == 6 and all(e["status"] == "ok" for e in entries)
    assert {(Path(e["input"]).name, Path(e["styles"][0]).stem) for e in entries} == \
        {(f"frame{i}.png", s) for i in range(3) for s in ("stripes", "turned")}
    a, b = (np.asarray(Image.open(out / f"frame0-{s}.png"), np.float32) for s in ("stripes", "turned"))
    assert np.abs(a - b).mean() > 0.1  # each style made its own result


def test_a_batch_into_its_own_folder_runs_again(tmp_path, photos, model_path, capsys):
    """Results written beside the photos (-o their folder) came back as inputs the next time,
    and the run was refused (a photo's output was one of them): they are left out, with a note,
    so the same command runs again and --resume skips what is done; inputs that are all results
    are refused (it was a batch of nothing, exit 0). Named alone, a result is still an input,
    and refused as the output it would overwrite."""
    from stylefu.core.cli.main import main

    paths, styles = photos
    folder = paths[0].parent
    for path in paths[2:]:
        path.unlink()
    run = ["batch", str(folder), "--style", str(styles[0]), "-o", str(folder), "--name",
           "{stem}-styled.png", "--progress", "none", "--workers", "1", *FAST,
           "--model", str(model_path)]
    assert main(run) == 0, capsys.readouterr().err
    made = {"frame0.png", "frame1.png", "frame0-styled.png", "frame1-styled.png", "manifest.jsonl"}
    assert {p.name for p in folder.iterdir()} == made
    assert main(run) == 0
    err = capsys.readouterr().err
    assert f"2 result(s) of earlier batches left out of the inputs (the manifest " \
        f"{folder / 'manifest.jsonl'} lists them)" in err, err
    assert {p.name for p in folder.iterdir()} == made  # no frame0-styled-styled.png
    assert main([*run, "--resume"]) == 0
    assert "0 written, 0 failed, 2 skipped" in capsys.readouterr().err
    results = str(folder / "*-styled.png")  # only results: a batch of nothing, refused
    assert main([*run[:1], results, *run[2:]]) == 2
    assert f"Every input is a result of an earlier batch into {folder} (its manifest.jsonl " \
        "lists them); to paint them again, give another -o." in capsys.readouterr().err
    assert main([*run[:1], str(paths[0]), str(folder / "frame0-styled.png"), *run[2:]]) == 2
    assert f"Output {folder / 'frame0-styled.png'} is also an input" in capsys.readouterr().err


def test_a_batch_run_again_from_another_folder_finds_its_manifest(tmp_path, photos, model_path,
                                                                  capsys, monkeypatch):
    """The manifest's paths were compared as typed: the same batch run again from another folder
    (or with absolute paths) painted every item again under --resume, and one into its photos'
    own folder was refused there ("is also an input")."""
    from stylefu.core.cli.main import main

    paths, styles = photos
    for path in paths[2:]:
        path.unlink()
    common = ["--name", "{stem}-styled.png", "--progress", "none", "--workers", "1", *FAST,
              "--model", str(model_path)]
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "in", "--style", "stripes.png", "-o", "in", *common]) == 0
    assert "2 written" in capsys.readouterr().err
    for where, folder, style in [("in", ".", "../stripes.png"),
                                 ("/", str(tmp_path / "in"), str(tmp_path / "stripes.png"))]:
        monkeypatch.chdir(where)
        for resume in ([], ["--resume"]):
            assert main(["batch", folder, "--style", style, "-o", folder, *common, *resume]) == 0
            err = capsys.readouterr().err
            assert "2 result(s) of earlier batches left out of the inputs" in err, (where, err)
        assert "0 written, 0 failed, 2 skipped" in err, (where, err)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "frame0-styled.png", "frame0.png", "frame1-styled.png", "frame1.png", "manifest.jsonl"]


def test_the_config_hash_names_init_and_mask_files_however_spelled(tmp_path, model_path,
                                                                   monkeypatch):
    # an --init or --mask spelled otherwise (another folder, absolute) was another config, and
    # --resume painted every item again
    from stylefu.core.batch.driver import config_hash
    from stylefu.core.method.guides import Inverse

    (tmp_path / "in").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = config_hash(FAST_CONFIG.with_(init="in/start.png"), model_path,
                           RunOptions(masks=("in/m.png", Inverse("in/n.png"))))
    monkeypatch.chdir(tmp_path / "in")
    assert relative == config_hash(FAST_CONFIG.with_(init=str(tmp_path / "in" / "start.png")),
                                   model_path, RunOptions(masks=("m.png", Inverse("n.png"))))
    assert relative != config_hash(FAST_CONFIG.with_(init="start.png"), model_path,
                                   RunOptions(masks=("n.png", Inverse("m.png"))))


def _wait_for_entries(manifest: Path, count: int, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the batch made no progress")


def test_resume_after_sigkill_writes_each_output_once(tmp_path, photos, model_path):
    paths, styles = photos
    out = tmp_path / "out"
    args = [paths[0].parent, "--style", styles[0], "-o", out, "--workers", "1"]
    proc = _batch(args, model_path, wait=False)
    _wait_for_entries(out / "manifest.jsonl", 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-batch
    proc.wait()
    first = read_manifest(out / "manifest.jsonl")
    assert 2 <= len(first) < 6
    done = _batch([*args, "--resume"], model_path)
    assert done.returncode == 0, done.stderr
    lines = [e for e in _lines(out / "manifest.jsonl") if e["status"] == "ok"]
    names = [Path(e["output"]).name for e in lines]
    assert sorted(names) == sorted(p.name for p in paths)  # each output exactly once
    assert _outputs(out) == {p.name for p in paths}  # no temporaries, nothing extra
    hashes = {e["config_hash"] for e in lines}
    assert len(hashes) == 1
    # Another seed is another config: --resume would redo every item.
    from stylefu.core.batch.driver import config_hash, pending
    items = make_items(paths, [str(styles[0])], out)
    other = config_hash(FAST_CONFIG.with_(seed=1), model_path)
    assert pending(items, out / "manifest.jsonl", other) == (list(range(6)), [])


def test_workers_of_a_killed_driver_stop_mid_item_quietly(tmp_path, photos, model_path):
    """The driver SIGKILLed (the OOM killer, `kill -9`) while its workers paint: they painted on
    to the end of their items, whose results nobody could take, then printed a BrokenPipeError
    traceback each. Now each stops at its next evaluation, without a word."""
    paths, styles = photos
    proc = _batch([*paths[:2], "--style", styles[0], "-o", tmp_path / "out", "--workers", "2",
                   "--progress", "json", "--evaluations", "5000"], model_path, wait=False)
    for line in proc.stdout:  # both workers painting
        if '"event": "progress"' in line and '"evaluation": 2,' in line:
            break
    proc.kill()  # the driver alone
    proc.wait()
    killed = time.monotonic()
    while time.monotonic() - killed < 60:
        try:
            os.killpg(proc.pid, 0)  # a worker is left in the driver's session
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the workers painted on after their driver was killed")
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly(tmp_path, photos, model_path, sig):
    paths, styles = photos
    out = tmp_path / "out"
    proc = _batch([paths[0].parent, "--style", styles[0], "-o", out, "--workers", "1"],
                  model_path, wait=False)
    _wait_for_entries(out / "manifest.jsonl", 1, proc)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal sends the whole group on Ctrl-C
    else:
        proc.send_signal(sig)  # `kill PID`, a job scheduler's stop
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    # both say how far it got and how to go on (SIGTERM said only "stylefu: terminated.")
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert f"{word} after" in err and "--resume goes on" in err and "Traceback" not in err
    entries = read_manifest(out / "manifest.jsonl")
    assert all(e["status"] == "ok" for e in entries.values())
    assert _outputs(out) == {Path(o).name for o in entries}  # the manifest matches the files


def test_a_batch_stopped_before_its_first_item_leaves_no_folder(tmp_path, photos, model_path):
    # it left its empty -o folder and said "the manifest lists them" of a manifest never written
    paths, styles = photos
    out = tmp_path / "new" / "out"
    proc = _batch([paths[0], "--style", styles[0], "-o", out, "--workers", "1", "--progress",
                   "json", "--evaluations", "5000"], model_path, wait=False)
    for line in proc.stdout:  # the first item painting
        if '"event": "progress"' in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated after 0 item(s); run it again to start." in err
    assert not (tmp_path / "new").exists()


class NoProcess:
    """A worker process that never runs: the driver's side of the pool alone. It holds its pipes'
    ends as a started worker does, so that what the driver sends is written."""

    exitcode = None

    def __init__(self, args=(), **kwargs):
        self.ends = [os.dup(end.fileno()) for end in args[2:4] if hasattr(end, "fileno")]

    def close_ends(self):
        for end in self.ends:
            os.close(end)

    def start(self):
        pass

    def is_alive(self):
        return False

    def terminate(self):
        pass

    def join(self, timeout=None):
        pass


def test_an_interrupt_anywhere_in_sending_a_task_leaves_the_pool_able_to_stop(monkeypatch,
                                                                            model_path):
    """Ctrl-C or SIGTERM raised in the driver at any point of handing a worker its task (a
    signal's handler runs between any two steps) leaves the pool's stop working: the stop that
    follows returns. With multiprocessing queues, one such point (just after the queue took its
    lock) left the lock held, and the stop's own put hung the batch for good (seen in CI)."""
    import multiprocessing
    import threading
    import types

    from stylefu.core.batch import driver

    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(driver.multiprocessing, "get_context", lambda _: types.SimpleNamespace(
        Process=NoProcess, Pipe=spawn.Pipe, Queue=spawn.Queue, RawValue=spawn.RawValue))
    setup = driver.WorkerSetup(str(model_path), "cpu", 1, FAST_CONFIG, RunOptions(), False)
    task = (0, BatchItem("in.png", ("style.png",), "out.png"), None, None)
    step = 0
    while True:
        step += 1
        pool = driver.LocalPool(setup, 1)
        seen = 0

        def interrupt(frame, event, arg, at=step):
            nonlocal seen
            seen += 1
            if seen == at:
                raise KeyboardInterrupt
            return interrupt
        sys.settrace(interrupt)
        try:
            pool.send(0, task)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        stop = threading.Thread(target=pool.close, kwargs={"cancel": True}, daemon=True)
        stop.start()
        stop.join(10)
        assert not stop.is_alive(), f"the stop hung after an interrupt at step {step} of the send"
        proc = next(iter(pool.procs.values()))[0]
        proc.close_ends()
        if not interrupted:  # the send ran to its end: every step of it was tried
            break
    assert step > 10


def test_lost_worker_is_retried_once(tmp_path, photos, model_path, monkeypatch):
    """A worker process killed mid-item: its item runs again on a new worker and succeeds, and
    leaves nothing in the temporary folder (it left an empty folder per killed item)."""
    import multiprocessing
    import tempfile

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    paths, styles = photos
    items = [BatchItem(str(p), (str(styles[0]),), str(tmp_path / p.name)) for p in paths[:2]]
    killed = []

    def progress(index, record):
        if not killed:
            workers = multiprocessing.active_children()
            killed.extend(w.pid for w in workers)
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)

    results = list(stylize_many(items, FAST_CONFIG, model=model_path, workers=1, progress=progress))
    assert killed
    assert sorted(r.index for r in results) == [0, 1] and all(r.ok for r in results)
    assert max(r.attempts for r in results) == 2
    assert not list(temporary.iterdir())


def test_frames_start_from_the_previous_result(tmp_path, photos, images, model_path):
    from stylefu.core.batch.frames import estimate_flow

    paths, styles = photos
    items = [BatchItem(str(p), (str(styles[0]),), str(tmp_path / p.name)) for p in paths[:3]]
    first: dict[tuple[str, int], float] = {}

    def progress(name):
        return lambda index, record: first.setdefault((name, index), record["loss"])
    results = list(stylize_many(items, FAST_CONFIG, model=model_path, progress=progress("chain"),
                                options=RunOptions(frames=True, warp=True)))
    assert [r.index for r in results] == [0, 1, 2] and all(r.ok for r in results)
    assert all(Path(i.output).is_file() for i in items)
    # Frames 1 and 2 started from their predecessor's result, moved along the motion: their first
    # evaluation's loss is already far below that of the same frames started from the content.
    alone = list(stylize_many(items[1:], FAST_CONFIG, model=model_path, progress=progress("alone")))
    assert len(alone) == 2
    for k in (1, 2):
        assert first[("chain", k)] < 0.9 * first[("alone", k - 1)], first
    # The flow between two frames of a textured scene shifted 3 px right is the shift.
    a = np.clip(images[0] + np.random.default_rng(0).normal(0, 0.1, images[0].shape), 0, 1)
    b = np.roll(a, 3, axis=1).astype(np.float32)
    flow = estimate_flow(b, a.astype(np.float32))[:, 8:-8, 8:-8]
    assert abs(float(np.median(flow[0])) + 3) < 0.75 and abs(float(np.median(flow[1]))) < 0.75


def test_ray_batch_command_prints_only_ours(tmp_path, photos, model_path):
    """`stylefu batch --ray` starting its own local cluster: the outputs, and no Ray notice (its
    token-authentication line) on stderr in front of our own lines."""
    paths, styles = photos  # before the module's own cluster starts: this command starts one
    out = tmp_path / "out"
    done = _batch([paths[0], "--style", styles[0], "-o", out, "--ray"], model_path)
    assert done.returncode == 0, done.stderr
    assert _outputs(out) == {"frame0.png"}
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("stylefu batch: ") for line in lines), done.stderr


def test_a_ray_client_address_without_rays_client_is_one_sentence(tmp_path, photos, model_path):
    # Ray's ValueError ("requires pip package ray[client]") was an internal error, exit 1
    import importlib.util

    if importlib.util.find_spec("grpc") is not None:
        pytest.skip("Ray's client is installed here")
    paths, styles = photos
    done = _batch([paths[0], "--style", styles[0], "-o", tmp_path / "out", "--ray",
                   "ray://127.0.0.1:1"], model_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "is a Ray Client address, which needs Ray's client" in done.stderr
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_nothing_answers_is_one_sentence_at_once(tmp_path, photos, model_path):
    # Ray tried it for minutes, printing its C++ log's lines, then "Cannot reach"
    import importlib.util

    paths, styles = photos
    client = importlib.util.find_spec("grpc") is not None  # else a ray:// address says it needs it
    for address in [f"127.0.0.1:{_free_port()}"] + [f"ray://localhost:{_free_port()}"] * client:
        done = _batch([paths[0], "--style", styles[0], "-o", tmp_path / "out", "--ray", address],
                      model_path, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1] == (
            f"stylefu: error: Cannot reach the Ray cluster at {address} (Connection refused); "
            "start it with `ray start --head` there, check the address, or give --ray without an "
            "address.")
        assert not (tmp_path / "out").exists()


ray = pytest.importorskip("ray", reason="Ray is not installed (pip install ray)")


def test_batches_beside_a_cluster_started_with_ray_start(tmp_path, photos, model_path):
    """`ray start --head` (Ray 2.59+: a cluster that checks a token): --ray at its address (Ray
    sent no token to an address: "Cannot reach" after a minute of retries), and --ray alone
    beside it (Ray joined that cluster, or a stale record of one, then refused the local
    cluster's num_cpus: an internal error)."""
    import shutil
    import socket
    import tempfile

    paths, styles = photos
    ray_dir = tempfile.mkdtemp(prefix="sf-ray-", dir="/tmp")  # short: Ray's sockets live in it
    env = dict(os.environ, RAY_TMPDIR=ray_dir)
    port = _free_port()
    head = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "no Ray head"
                time.sleep(0.2)
        for name, address in (("at", [f"127.0.0.1:{port}"]), ("beside", [])):
            done = _batch([paths[0], "--style", styles[0], "-o", tmp_path / name, "--ray",
                           *address], model_path, env=env)
            assert done.returncode == 0, done.stderr
            assert _outputs(tmp_path / name) == {paths[0].name}
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head and its cluster's processes
        head.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_ray_and_local_engines_agree(tmp_path, photos, model_path, ray_cluster):
    paths, styles = photos
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        out.mkdir()
        items = make_items(paths, [str(styles[0])], out)
        results[engine] = {r.index: r for r in stylize_many(
            items, FAST_CONFIG, model=model_path, workers=2, ray=True if engine == "ray" else None)}
        assert _outputs(out) == {p.name for p in paths}
    for index, local in results["local"].items():
        remote = results["ray"][index]
        assert local.ok and remote.ok
        # Same seed, same thread count per worker: the same painting, to the last bits' noise
        # (an AMD EPYC's float32 path: a few pixels 3/255 apart, 0.05/255 on average).
        a, b = (np.asarray(Image.open(r.item.output), np.float32) / 255 for r in (local, remote))
        assert np.abs(a - b).max() <= 5 / 255 and np.abs(a - b).mean() <= 0.25 / 255
        assert local.metrics["total_loss"] == pytest.approx(remote.metrics["total_loss"], rel=1e-3)
        keys = set(local.record("h")) - {"seconds", "output"}
        assert {k: local.record("h")[k] for k in keys if k != "losses"} == \
            {k: remote.record("h")[k] for k in keys if k != "losses"}


def test_ray_tasks_bound_onednn_primitive_cache(monkeypatch, ray_cluster):
    """The workers of stylefu's Ray tasks get oneDNN's primitive cache bounded as local workers do
    (a long-lived bf16 worker grew by hundreds of MB without), unless the user chose a capacity."""
    from stylefu.core.batch import ray_pool
    from stylefu.core.method import tiling

    name = tiling.ONEDNN_CACHE_VARIABLES[0]

    def report():  # local: Ray pickles it by value, the tests folder is not on the workers' path
        import os
        return {k: os.environ.get(k) for k in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                                                "DNNL_PRIMITIVE_CACHE_CAPACITY")}

    plain = ray.get(ray.remote(report).remote())  # what the cluster's workers inherit
    for variable in tiling.ONEDNN_CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    seen = ray.get(ray_pool._remote(ray, report, 1, 0).remote())
    assert seen[name] == str(tiling.ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "0")  # the user's, in the other spelling
    assert ray.get(ray_pool._remote(ray, report, 1, 0).remote()) == plain  # nothing of ours


def test_ray_bad_input_fails_alone(tmp_path, photos, model_path, ray_cluster):
    paths, styles = photos
    paths[2].write_bytes(b"GIF89a broken")
    items = make_items(paths[1:4], [str(styles[0])], tmp_path / "out")
    (tmp_path / "out").mkdir()
    results = {r.index: r for r in stylize_many(items, FAST_CONFIG, model=model_path, ray=True)}
    assert [results[i].ok for i in range(3)] == [True, False, True]
    assert "frame2.png" in results[1].error and results[1].attempts == 1


def test_ray_tasks_stream_their_progress(tmp_path, photos, model_path, ray_cluster):
    """Each Ray task's evaluations reach the driver's progress callback while the batch runs (a
    record at least every PROGRESS_EVERY_S and at each level's end), each item's before its
    result, as local workers' do."""
    paths, styles = photos
    events = []
    results = stylize_many(make_items(paths[:2], [str(styles[0])], tmp_path), FAST_CONFIG,
                           model=model_path, ray=True,
                           progress=lambda index, record: events.append(("progress", index, record)))
    for result in results:
        events.append(("result", result.index, None))
    for index in (0, 1):
        mine = [e for e in events if e[1] == index]
        assert mine[-1][0] == "result" and len(mine) >= 2
        last = mine[-2][2]
        assert last["level"] == last["levels"] and last["evaluation"] == last["evaluations"]


def test_a_script_without_a_main_guard_is_told_how_to_fix_it(tmp_path, photos, model_path):
    """docs/batches.md's snippet as a script without `if __name__ == "__main__":`: the spawned
    workers import it again and stop at once; the error names the script and the guard. Read
    from standard input the same script runs."""
    (content, *_), (style, _) = photos
    script = tmp_path / "my_batch.py"
    script.write_text(
        "from stylefu.core import BatchItem, Config, stylize_many\n"
        f"items = [BatchItem({str(content)!r}, ({str(style)!r},), {str(tmp_path / 'a.png')!r}),\n"
        f"         BatchItem({str(content)!r}, ({str(style)!r},), {str(tmp_path / 'b.png')!r})]\n"
        "for r in stylize_many(items, Config(size=64, levels=1, evaluations=2), workers=2,\n"
        f"                      model={str(model_path)!r}):\n"
        "    print(r.status)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "my_batch.py" in last and 'if __name__ == "__main__":' in last
    # The same script read from standard input (`python - < my_batch.py`, `ssh host python -`):
    # the workers looked for a file "<stdin>" and died, and the error advised the guard, which
    # could not help. They need nothing from the script: it runs, guard or none.
    with open(script) as stdin:
        done = subprocess.run([sys.executable, "-"], stdin=stdin, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split() == ["ok", "ok"], done.stderr


def test_stylize_many_makes_missing_output_folders_first(tmp_path, photos, model_path):
    """docs/batches.md's snippet writes to out/ that does not exist yet: the folders are made
    before any work (as `stylefu batch` makes -o), not each item painted and then failed."""
    (content, *_), (style, _) = photos
    outputs = [tmp_path / "out" / "a.png", tmp_path / "out" / "deeper" / "b.png"]
    results = list(stylize_many([(str(content), [str(style)], str(o)) for o in outputs],
                                FAST_CONFIG, model=model_path, workers=1))
    assert [r.status for r in results] == ["ok", "ok"] and all(o.exists() for o in outputs)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="Cannot create the output folder"):
        list(stylize_many([(str(content), [str(style)], str(tmp_path / "file" / "c.png"))],
                          FAST_CONFIG, model=model_path, workers=1))


def test_a_driver_whose_workers_run_the_items_loads_no_torch_network(tmp_path, photos, model_path,
                                                                      monkeypatch):
    """The driver only checks the model and computes the style targets (ONNX Runtime's passes),
    but it loaded torch's network too (on a GPU, onto it) and kept it for the whole batch while
    only the workers used theirs: about 130 MB more in the driver. A frames batch, whose items
    the driver runs itself, still loads it; with --device cpu the driver imports no torch."""
    from stylefu.core.engines.torch import model as torch_model

    loads = []
    load = torch_model.load_model
    monkeypatch.setattr(torch_model, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    (content, *_), (style, _) = photos
    item = [(str(content), [str(style)], str(tmp_path / "a.png"))]
    results = list(stylize_many(item, FAST_CONFIG, model=model_path, workers=1))
    assert [r.status for r in results] == ["ok"] and loads == []
    results = list(stylize_many(item, FAST_CONFIG, model=model_path,
                                options=RunOptions(frames=True)))
    assert [r.status for r in results] == ["ok"] and len(loads) == 1
    # With --device cpu the driver does not even import torch (about 1 s and 140 MB).
    other = [(str(content), [str(style)], str(tmp_path / "b.png"))]
    script = ("import sys\nif __name__ == '__main__':\n"
              "    from stylefu.core import Config, stylize_many\n"
              f"    done = list(stylize_many({other!r}, Config(size=64, levels=1, evaluations=2, "
              f"device='cpu'), model={str(model_path)!r}, workers=1))\n"
              "    print(done[0].status, 'torch' in sys.modules)\n")
    (tmp_path / "driver.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "driver.py")], capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.split() == ["ok", "False"], done.stderr


def test_first_line_mentions_resume_only_when_asked(tmp_path, photos, model_path):
    """Without --resume the first line does not say "0 already done (--resume)" (which reads
    as if the batch were resuming); with it, it says how many are skipped."""
    (content, *_), (style, _) = photos
    for resume in ([], ["--resume"]):
        done = _batch([content, "--style", style, "-o", tmp_path / "out", *resume], model_path)
        assert done.returncode == 0, done.stderr
        first = done.stderr.splitlines()[0]
        assert ("(--resume)" in first) == bool(resume)
    assert "1 already done (--resume)" in first


def test_quiet_batch_says_only_which_items_failed(tmp_path, photos, model_path):
    """-q: no first line, bar or summary (with --progress none too), one line per failed item."""
    paths, styles = photos
    paths[1].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = _batch([paths[0], paths[1], "--style", styles[0], "-o", tmp_path / "out", "-q",
                   "--workers", "1"], model_path)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.splitlines() == [line for line in done.stderr.splitlines()
                                        if line.startswith(f"stylefu batch: {paths[1]} failed: ")]
    assert len(done.stderr.splitlines()) == 1


def test_first_line_names_the_workers_that_run(tmp_path, photos, model_path):
    """The first line names what runs the items: never more local workers than items, and
    --frames (one frame after another in the batch's own process) no workers at all."""
    paths, (style, _) = photos
    one = _batch([paths[0], "--style", style, "-o", tmp_path / "one", "--workers", "2"], model_path)
    assert one.returncode == 0 and "1 local worker(s)" in one.stderr.splitlines()[0]
    film = _batch([*paths[:2], "--style", style, "-o", tmp_path / "film", "--frames"], model_path)
    first = film.stderr.splitlines()[0]
    assert film.returncode == 0 and "frames in order" in first and "worker" not in first


def test_batch_bar_says_time_left_in_the_run_bars_words(monkeypatch, capsys):
    """The items bar gives the time left as the run bar does ("about 1 min 30 s left", not
    "about 1.5 min left") and none once every item is done (it said "about 0.0 min left")."""
    from stylefu.core.cli import batch as batch_cli

    clock = iter([0.0, 30.0, 60.0])
    monkeypatch.setattr(batch_cli.time, "monotonic", lambda: next(clock))
    bar = batch_cli.BatchProgress("bar", total=2, skipped=0)
    bar.item({"status": "ok"})
    bar.item({"status": "ok"})
    first, last = capsys.readouterr().err.splitlines()
    assert first.endswith("about 30 s left") and "left" not in last and last.startswith("[####")


def test_stylize_many_tuples_take_one_style_alone_and_only_paths(tmp_path, photos, model_path):
    # ("a.jpg", "starry.jpg", out): the style's path, not its characters ("Image file . is a
    # folder"); an array as input is one sentence, not a UserError quoting the array's digits
    (content, *_), (style, _) = photos
    results = list(stylize_many([(content, style, tmp_path / "a.png")], FAST_CONFIG,
                                model=model_path, workers=1))
    assert [r.status for r in results] == ["ok"] and results[0].item.styles == (str(style),)
    with pytest.raises(UserError, match=r"^Item 0: its input must be a path .* not ndarray\.$"):
        list(stylize_many([(np.zeros((64, 64, 3), np.float32), [style], None)], FAST_CONFIG,
                          model=model_path, workers=1))


def test_an_output_pattern_of_no_image_type_is_refused_before_any_work(tmp_path, photos,
                                                                        model_path):
    # --name '{stem}.xyz' painted every item, then failed each (exit 3): an option's mistake
    paths, styles = photos
    out = tmp_path / "out"
    done = _batch([paths[0], paths[1], "--style", styles[0], "-o", out, "--name", "{stem}.xyz"],
                  model_path)
    assert done.returncode == 2, done.stderr
    assert "unknown image type '.xyz'" in done.stderr and not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("name", ["../{stem}.png", "{root}/{stem}.png", "sub/{stem}.png",
                                  "..\\{stem}.png"])
def test_an_output_name_with_a_folder_is_refused_before_any_work(tmp_path, photos, capsys, name):
    # --name '../{stem}.png' (or an absolute path) wrote the outputs outside the -o folder
    from stylefu.core.cli.main import main

    paths, styles = photos
    out, pattern = tmp_path / "out", name.replace("{root}", str(tmp_path))
    assert main(["batch", str(paths[0]), "--style", str(styles[0]), "-o", str(out), "--name",
                 pattern, "--model", str(tmp_path / "no-model.onnx"), *FAST]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--name {pattern!r} makes" in line and "give a file name" in line
    assert not out.exists() and not (tmp_path / "frame0.png").exists()
    with pytest.raises(UserError, match="a path; give a file name"):
        make_items(paths[:1], [str(styles[0])], out, pattern)
    assert make_items(paths[:1], [str(styles[0])], out, "..{stem}..png")[0].output == \
        str(out / "..frame0..png")  # dots are no folder


def test_warp_without_frames_is_refused_before_any_work(tmp_path, photos, model_path):
    # --warp alone ran the frames as unrelated items, the option ignored without a word
    paths, styles = photos
    out = tmp_path / "out"
    done = _batch([paths[0].parent, "--style", styles[0], "-o", out, "--warp"], model_path)
    assert done.returncode == 2 and "give it with --frames" in done.stderr, done.stderr
    assert not (out / "manifest.jsonl").exists()
    with pytest.raises(UserError, match="give it with --frames"):
        list(stylize_many([(paths[0], styles[0], None)], FAST_CONFIG, model=model_path,
                          options=RunOptions(warp=True)))


def test_batch_workers_out_of_range_is_its_one_line(tmp_path, photos, model_path):
    # "stylefu batch: 3 item(s); 0 local worker(s); manifest ..." came before the refusal
    paths, styles = photos
    done = _batch([paths[0], "--style", styles[0], "-o", tmp_path / "out", "--workers", "0"],
                  model_path)
    assert done.returncode == 2 and done.stderr.startswith("stylefu: error: --workers must be")
    assert len(done.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_stylize_many_checks_workers_upscale_and_takes_one_mask_alone(tmp_path, photos,
                                                                      model_path):
    # workers=-1 ended in the message for a script without a main guard, 0 ran the default;
    # an unknown upscale was taken for one; masks="m.png" was read character by character
    (content, *_), (style, _) = photos
    items = [(content, style, None)]
    for workers in (0, -1, 1.5):
        with pytest.raises(UserError, match=r"^--workers must be a whole number from 1, not "):
            list(stylize_many(items, FAST_CONFIG, model=model_path, workers=workers))
    with pytest.raises(UserError, match=r"^RunOptions.upscale must be one of detail, stretch, "
                       "not 'x'"):
        list(stylize_many(items, FAST_CONFIG, model=model_path, workers=1,
                          options=RunOptions(keep_size=True, upscale="x")))
    with pytest.raises(UserError, match=r"^RunOptions.upscale='stretch' .* keep_size=True"):
        list(stylize_many(items, FAST_CONFIG, model=model_path, workers=1,
                          options=RunOptions(upscale="stretch")))  # ignored without a word
    mask = _save(tmp_path / "mask.png", np.ones((48, 64, 3), np.float32))
    results = list(stylize_many(items, FAST_CONFIG, model=model_path, workers=1,
                                options=RunOptions(masks=str(mask))))
    assert [r.status for r in results] == ["ok"], results[0].error


def test_items_a_script_builds_are_taken_or_refused_before_any_work(tmp_path, photos, model_path):
    # a BatchItem with a list of styles failed with a bare TypeError after the model loaded, one
    # with a style string was read character by character ("Image file . is a folder"); two
    # items with one output both said ok and one result was lost; array masks made a sentence
    # of the array's digits
    (content, other, *_), (style, _) = photos
    out = tmp_path / "out"
    items = [BatchItem(str(content), [str(style)], str(out / "list.png")),
             BatchItem(str(content), str(style), str(out / "str.png")),
             BatchItem(content, (style,), out / "path.png")]
    results = list(stylize_many(items, FAST_CONFIG, model=model_path, workers=1))
    assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == \
        ["list.png", "path.png", "str.png"]
    same = [(content, style, out / "same.png"), (other, style, out / "same.png")]
    with pytest.raises(UserError, match=r"^Items 0 and 1 would both be written to .*same\.png"):
        list(stylize_many(same, FAST_CONFIG, model=model_path, workers=1))
    for masks in ([np.ones((48, 64), np.float32)], np.ones((48, 64), np.float32)):
        with pytest.raises(UserError, match=r"^A batch's masks must be paths .*, not ndarray;"):
            list(stylize_many([(content, style)], FAST_CONFIG, model=model_path, workers=1,
                              options=RunOptions(masks=masks)))
    assert not (out / "same.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--style-blend", "0.7,0.2,0.1"], "has 3 weights for 2 styles"),
    (["--styles-each", "--style-blend", "0.7,0.3"], "--styles-each paints each style alone"),
    (["--mask", "{mask}"] * 3, "3 masks for 2 styles")])
def test_a_blend_or_mask_count_that_does_not_fit_is_refused_before_any_work(tmp_path, photos,
                                                                     model_path, extra, message):
    # it failed every item after its model and targets (exit 3), as a bad input would
    paths, styles = photos
    out = tmp_path / "out"
    extra = [str(paths[1]) if arg == "{mask}" else arg for arg in extra]
    done = _batch([paths[0], "--style", styles[0], "--style", styles[1], "-o", out, *extra],
                  model_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("name", ["{stem}.png", "stripes.png"])
def test_an_output_that_is_an_input_is_refused_and_the_inputs_stay(tmp_path, photos, model_path,
                                                                   name):
    # -o the inputs' own folder with --name '{stem}.png' replaced every photo (and 'stripes.png'
    # the style) with its painting, exit 0: `run` refuses that, README's "inputs never modified"
    paths, styles = photos
    shutil.copy(styles[0], paths[0].parent / "stripes.png")
    style = paths[0].parent / "stripes.png"
    before = {p: p.read_bytes() for p in paths[0].parent.iterdir()}
    done = _batch([paths[0], "--style", style, "-o", paths[0].parent, "--name", name], model_path)
    assert done.returncode == 2 and "is also an input" in done.stderr, done.stderr
    assert {p: p.read_bytes() for p in paths[0].parent.iterdir()} == before


def test_ctrl_c_while_the_workers_start_leaves_no_worker(tmp_path, photos, model_path,
                                                         monkeypatch):
    """A KeyboardInterrupt (a notebook's stop button) while stylize_many starts its workers:
    those already started ended too (they were left loading the model and waiting for tasks as
    long as the notebook's process lived), and a later batch runs."""
    import multiprocessing

    from stylefu.core.batch import driver

    paths, styles = photos
    items = [(p, styles[0], tmp_path / "out" / p.name) for p in paths[:3]]
    start = driver.LocalPool.start_worker
    started = []

    def start_then_interrupt(pool):
        if started:
            raise KeyboardInterrupt
        started.append(start(pool))
        return started[-1]
    monkeypatch.setattr(driver.LocalPool, "start_worker", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        list(stylize_many(items, Config(size=48, evaluations=2, levels=1), model=model_path,
                          workers=3))
    assert started and not multiprocessing.active_children()
    monkeypatch.setattr(driver.LocalPool, "start_worker", start)
    results = list(stylize_many(items[:1], Config(size=48, evaluations=2, levels=1),
                                model=model_path, workers=1))
    assert [r.status for r in results] == ["ok"]


def test_leaving_the_loop_early_ends_the_workers(tmp_path, photos, model_path):
    """A script's `break` after the first result (and a notebook's iterator dropped half-way):
    the worker processes end with it, the items in flight leave no file, and the items done stay."""
    import gc
    import multiprocessing

    paths, styles = photos
    out = tmp_path / "out"
    items = [(p, styles[0], out / p.name) for p in paths]
    config = Config(size=48, evaluations=30, levels=1)
    for r in stylize_many(items, config, model=model_path, workers=2):
        first = r
        break
    assert not multiprocessing.active_children()
    results = stylize_many(items, config, model=model_path, workers=2)
    assert next(results).status == first.status == "ok"
    del results
    gc.collect()
    assert not multiprocessing.active_children()
    assert all(p.suffix == ".png" for p in out.iterdir()) and len(list(out.iterdir())) < len(items)


@pytest.mark.parametrize("progress", ["bar", "json"])
def test_a_jpeg_output_that_drops_transparency_is_said_per_item(tmp_path, photos, images,
                                                                model_path, progress):
    """`--name "{stem}.jpg"` turned a content's transparent parts opaque without a word (`run`
    says so). Now the item's manifest entry (and its JSON record) holds the note, and the bar
    says it once on a line of its own (a note to act on); an opaque content has none."""
    from stylefu.core.io.images import save_image

    paths, (style, _) = photos
    content, _ = images
    alpha = np.ones(content.shape[:2], np.float32)
    alpha[:, :20] = 0
    clear = save_image(tmp_path / "clear.png", content, alpha)
    out = tmp_path / "out"
    done = _batch([clear, paths[0], "--style", style, "-o", out, "--workers", "1",
                   "--name", "{stem}.jpg", "--progress", progress], model_path)
    assert done.returncode == 0, done.stderr
    entries = {Path(e["input"]).name: e for e in _lines(out / "manifest.jsonl")}
    [note] = entries["clear.png"]["notes"]
    assert note.startswith("clear.jpg has no alpha channel: the content's transparent parts")
    assert entries["frame0.png"]["notes"] == []
    if progress == "json":
        items = [json.loads(line) for line in done.stdout.splitlines()]
        assert [e["notes"] for e in items if e["event"] == "item" and e["input"] == str(clear)] \
            == [[note]]
        assert "alpha" not in done.stderr
    else:
        lines = done.stderr.splitlines()
        assert lines.count(f"stylefu batch: warning: {note}") == 1, done.stderr
        assert not [line for line in lines if line.startswith("[") and "alpha" in line]


BF16_EMULATED = "this CPU has no AVX512-BF16 or AMX: bf16 is emulated"


def test_a_batchs_notes_to_act_on_are_told_once(tmp_path, photos, model_path, monkeypatch,
                                               caplog):
    """stylize_many dropped every note of its items: a batch at bf16 on a CPU that emulates it
    (about 20x slower) said nothing. Each note to act on is told once per batch (not per item)
    to `log`, as `stylize`'s notes are, from local workers (oneDNN held to AVX2 in their
    environment, as an AVX2-only CPU answers) and from frames run in this process; without
    `log`, to the `stylefu` logger at WARNING. Each result keeps its own."""
    from stylefu.core.engines.torch import model
    from stylefu.core.notes import ActionNote

    paths, styles = photos
    # (one evaluation at 32 px: bf16 is emulated here, and the note is about the engine)
    bf16 = FAST_CONFIG.with_(precision="bf16", engine="torch", compile="off", size=32,
                             evaluations=1)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the spawned workers' environment
    told = []
    results = list(stylize_many(make_items(paths[:3], [str(styles[0])], tmp_path / "local"),
                                bf16, model=model_path, workers=2, log=told.append))
    assert len(results) == 3 and all(r.ok for r in results)
    assert len(told) == 1 and isinstance(told[0], ActionNote), told
    assert told[0].startswith(BF16_EMULATED)
    assert all(r.notes == [str(told[0])] for r in results)
    monkeypatch.setattr(model, "cpu_has_fast_bf16", lambda: False)  # this process's answer
    caplog.set_level("WARNING", logger="stylefu")
    frames = list(stylize_many(make_items(paths[:2], [str(styles[0])], tmp_path / "frames"),
                               bf16, model=model_path, options=RunOptions(frames=True)))
    assert all(r.ok for r in frames)
    assert [(r.name, r.levelname) for r in caplog.records] == [("stylefu", "WARNING")]
    assert caplog.records[0].getMessage().startswith(BF16_EMULATED)


@pytest.mark.parametrize("progress", ["bar", "json"])
def test_batch_says_a_note_to_act_on_once_on_its_own_line(tmp_path, photos, model_path,
                                                          progress):
    """`stylefu batch --precision bf16` where bf16 is emulated: one "stylefu batch: warning:"
    line (not one per item, not inside the bar's), or one `notice` record with its level."""
    paths, styles = photos
    done = _batch([*paths[:2], "--style", styles[0], "-o", tmp_path / "out", "--workers", "2",
                   "--precision", "bf16", "--engine", "torch", "--progress", progress,
                   "--size", "32", "--evaluations", "1"],
                  model_path, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert done.returncode == 0, done.stderr
    if progress == "json":
        records = [json.loads(line) for line in done.stdout.splitlines()]
        notices = [r for r in records if r["event"] == "notice"]
        assert len(notices) == 1 and notices[0]["level"] == "warning", notices
        assert notices[0]["message"].startswith(BF16_EMULATED)
        assert records[-1]["event"] == "batch"
    else:
        warned = [line for line in done.stderr.splitlines() if "warning" in line]
        assert warned == [line for line in warned
                          if line.startswith(f"stylefu batch: warning: {BF16_EMULATED}")]
        assert len(warned) == 1, done.stderr


def test_notes_that_come_with_the_results_are_told_once(monkeypatch):
    """A Ray task's notes reach the driver with its result only (no message on the way): they
    are told from the results as they come, once each, before the result is handed on."""
    from stylefu.core.batch import driver
    from stylefu.core.batch.items import ItemResult

    item = BatchItem("a.png", ("s.png",))
    given = [ItemResult(i, item, "ok", notes=n) for i, n in enumerate([["x"], ["x", "y"], []])]
    seen = []

    def run(*args):
        for result in given:
            yield result
            seen.append(list(told))  # what was told before this result was handed on
    monkeypatch.setattr(driver, "_stylize_many", run)
    told: list = []
    assert list(stylize_many([item] * 3, log=told.append)) == given
    assert told == ["x", "y"] and seen == [["x"], ["x", "y"], ["x", "y"]]
