"""Batches: many images through one machinery, on local worker processes or on Ray.

    from stylefu.core import BatchItem, Config, stylize_many
    items = [BatchItem("a.jpg", ("starry.jpg",), "out/a.png"),
             BatchItem("b.jpg", ("starry.jpg",), "out/b.png")]
    for result in stylize_many(items, Config(size=512)):
        print(result.item.output, result.status, result.error)

`stylize_many` yields one `ItemResult` per item in completion order, after writing its output
(atomically: a temporary name, then a rename). A bad item is a failed result with its message;
the others go on. Work done once: the style targets of every style and working size are computed
before the workers start (into the on-disk target cache, core/io/cache.py, which every local worker
reads; Ray gets the entries through its object store), and each worker loads the model once.
The `stylefu batch` command is this iterator plus the manifest (`Manifest`), `--resume`
(`pending`) and a progress display.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import notes
from ..engines.steps import check_hooks, check_workers, is_cancelled
from ..errors import Cancelled, UserError
from ..io.files import check_input_file, check_name_length
from ..io.images import OUTPUT_SUFFIXES, check_bits, one_or_many
from ..io.inputs import expand_inputs, file_id
from ..method import tiling
from ..method.config import Config, given_config
from ..method.fullres import check_upscale
from ..method.guides import check_mask_count
from ..method.targets import blend_weights
from .items import (
    RETRIES,
    BatchItem,
    ItemResult,
    OncePerBatch,
    RunOptions,
    default_workers,
    finish,
    frame_chain,
    run_item,
    set_threads,
    worker_threads,
)

MANIFEST_NAME = "manifest.jsonl"
DEFAULT_PATTERN = "{stem}.png"
EACH_PATTERN = "{stem}-{style}.png"  # --styles-each: one output per input x style pair
STOP_GRACE_S = 20.0  # after a cancel, how long workers get to stop before they are terminated

# ----------------------------------------------------------------------------- output names

def output_name(pattern: str, index: int, source: Path, styles: Sequence[str],
                style_index: int = 0) -> str:
    """The output file name: `pattern` with {stem}, {name}, {ext}, {index}, {style},
    {style_index} filled in ({style}: the style file stems, joined by '+' when several blend;
    {style_index}: the style's place among the styles with --styles-each, else 0)."""
    values = {"stem": source.stem, "name": source.name, "ext": source.suffix.lstrip("."),
              "index": index, "style": "+".join(Path(s).stem for s in styles),
              "style_index": style_index}
    try:
        name = pattern.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--name {pattern!r} is not a usable pattern ({exc}); use fields "
                        "{stem}, {name}, {ext}, {index}, {style}, {style_index}.") from None
    if "/" in name or "\\" in name or Path(name).drive:  # else written outside -o (../x, /x, C:x)
        raise UserError(f"--name {pattern!r} makes {name!r}, a path; give a file name (no / or "
                        "\\): outputs go into the -o folder.")
    if not Path(name).suffix:
        name += ".png"
    return name


def _file_key(path: Path) -> str:
    """What names one file: macOS's APFS ignores case and Unicode normalisation (Cat.png and
    cat.png are one file, so are é composed and decomposed), Windows' NTFS case."""
    text = unicodedata.normalize("NFC", str(path)) if sys.platform == "darwin" else str(path)
    return text.casefold() if sys.platform in ("darwin", "win32") else text


def make_items(inputs: Sequence[Path], styles: Sequence[str], outdir: Path,
               pattern: str | None = None, styles_each: bool = False) -> list[BatchItem]:
    """Every input with all styles blended, or (`styles_each`) every input x style pair; each
    output named by `pattern` inside `outdir`. Two items with one output name are an error."""
    pattern = pattern or (EACH_PATTERN if styles_each else DEFAULT_PATTERN)
    groups = [(s,) for s in styles] if styles_each else [tuple(styles)]
    items, seen = [], {}
    for i, source in enumerate(inputs):
        for k, group in enumerate(groups):
            output = outdir / output_name(pattern, i, source, group, k)
            key = _file_key(output)
            painting = f"{source} with {' + '.join(map(str, group))}"
            if key in seen:
                raise UserError(f"{seen[key]} and {painting} would both be written to {output}; "
                                "give --name a pattern with {index}, {style} or {style_index} "
                                "to tell them apart.")
            seen[key] = painting
            items.append(BatchItem(str(source), tuple(str(s) for s in group), str(output)))
    return items


# ----------------------------------------------------------------------------- manifest and resume

def config_hash(config: Config, model_path: str | Path, options: RunOptions = RunOptions()) -> str:
    """A short hash of everything that changes an output besides its input and styles: the config,
    the model file and the run options. --resume redoes items whose hash differs."""
    from ..io.cache import model_hash

    # The --init and mask files as the files they name (listed_file): the same batch run again
    # from another folder is the same config.
    if config.init not in ("content", "noise"):
        config = replace(config, init=listed_file(config.init))
    masks = [[type(m).__name__, listed_file(os.fsdecode(getattr(m, "source", m)))]
             for m in options.masks]
    text = json.dumps({"config": asdict(config), "model": model_hash(model_path),
                       "options": {**asdict(options), "masks": masks}}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def listed_file(path: str, entry: dict | None = None) -> str:
    """The file a path names, as one spelling: a manifest entry's relative paths from the folder
    its batch ran in (its `cwd`; an older entry's from this one), this batch's from this one."""
    cwd = (entry or {}).get("cwd")
    return os.path.realpath(os.path.join(cwd if isinstance(cwd, str) else os.getcwd(), path))


def read_manifest(path: Path) -> dict[str, dict]:
    """The last entry per output file of a manifest (listed_file: a batch run again from another
    folder, or with the paths spelled otherwise, finds its entries); a line cut short by a kill,
    or damaged (not UTF-8, not an entry), is ignored: its item runs again."""
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("output"), str) and entry["output"]:
            entries.pop(key := listed_file(entry["output"], entry), None)  # the last one last
            entries[key] = entry
    return entries


def earlier_outputs(path: Path) -> set[tuple[int, int]]:
    """The files a manifest records as outputs that are still there, by identity (device, inode:
    a link to one is the same file)."""
    return {found for found in map(file_id, read_manifest(path)) if found is not None}


class Manifest:
    """OUTDIR/manifest.jsonl, one JSON line per finished item, appended and synced to disk as each
    finishes: a killed batch leaves a true record up to its last finished item."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def append(self, entry: dict) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "a+b")
                self._file.seek(0, os.SEEK_END)
                if self._file.tell():  # a line cut short by an earlier kill must not swallow ours
                    self._file.seek(-1, os.SEEK_END)
                    if self._file.read(1) != b"\n":
                        self._file.write(b"\n")
            self._file.write((json.dumps(entry) + "\n").encode())
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:  # a full disk's flush names no file: the batch stops naming it
            self.close()
            raise UserError(f"Cannot write the manifest {self.path} ({exc.strerror or exc}), so "
                            "the batch stopped; fix that or choose another -o, then run again "
                            "with --resume.") from None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # the data a failed flush kept is flushed again
                self._file.close()
            self._file = None


def pending(items: Sequence[BatchItem], manifest: Path, chash: str) -> tuple[list[int], list[int]]:
    """(indices to run, indices skipped): an item is skipped when its output exists and the
    manifest's last entry for it succeeded with the same config hash, input and styles."""
    entries = read_manifest(manifest)
    todo, done = [], []
    for i, item in enumerate(items):
        entry = entries.get(listed_file(item.output)) if item.output else None
        same = (entry is not None and entry.get("status") == "ok" and entry.get("config_hash") == chash
                and _same_files(entry.get("input"), item.input, entry)
                and isinstance(styles := entry.get("styles"), list) and len(styles) == len(item.styles)
                and all(_same_files(a, b, entry) for a, b in zip(styles, item.styles)))
        (done if same and Path(item.output).is_file() else todo).append(i)
    return todo, done


def _same_files(listed, given: str, entry: dict) -> bool:
    return isinstance(listed, str) and listed_file(listed, entry) == listed_file(given)


def remove_stale_temporaries(items: Iterable[BatchItem]) -> None:
    """Delete temporary files a killed batch left beside its outputs; those of a writer still
    alive (another batch into the same folder) stay (files.remove_stale_temporaries)."""
    from ..io.files import remove_stale_temporaries as remove

    remove(item.output for item in items if item.output)


def check_shared_inputs(items: Sequence[BatchItem], config: Config, options: RunOptions) -> None:
    """Every style, mask and `--init` file a regular, readable file, every output's suffix an
    image type and no output one of the files read, before any work (one UserError naming it); an
    input image is checked in its own item, which alone fails."""
    if options.warp and not options.frames:  # else ignored without a word: unrelated items
        raise UserError("--warp moves the previous frame's result along the motion: give it with "
                        "--frames (RunOptions(frames=True, warp=True)).")
    for count in sorted({len(item.styles) for item in items}):
        blend_weights(count, config)  # else a --style-blend that does not fit failed every item
        if options.masks:
            check_mask_count(len(options.masks), count)  # and a --mask count that does not
    masks = [getattr(m, "source", m) for m in options.masks]  # guides.Inverse: its file
    for mask in masks:
        if not isinstance(mask, (str, bytes, os.PathLike)):
            raise UserError("A batch's masks must be paths (every worker reads them), not "
                            f"{type(mask).__name__}; save the mask as an image first.")
    shared = {s for item in items for s in item.styles} | set(map(os.fsdecode, masks))
    if config.init not in ("content", "noise"):
        shared.add(config.init)
    for path in sorted(shared):
        check_input_file(path)
    read = {}  # every file the batch reads, by identity (a link or hard link is the same file)
    for path in [*(item.input for item in items), *shared]:
        read.setdefault(file_id(path), path)
    read.pop(None, None)  # (missing files)
    written = {}  # each output by its file's name (make_items names its own; the API's may meet)
    for index, item in enumerate(items):
        if item.output is not None:
            first = written.setdefault(_file_key(Path(listed_file(item.output))), index)
            if first != index:
                raise UserError(f"Items {first} and {index} would both be written to "
                                f"{item.output}: give each item its own output.")
            # else every item is painted, then fails to be written ("File name too long")
            check_name_length(item.output, f"Output of {item.input} (--name)")
            source = read.get(file_id(item.output))
            if source is not None:  # run refuses this too
                raise UserError(f"Output {item.output} is also an input ({source}); stylefu "
                                "never overwrites its inputs: choose another -o folder or --name.")
            suffix = Path(item.output).suffix.lower()
            if suffix not in OUTPUT_SUFFIXES:  # else every item is painted, then not written
                raise UserError(f"Output {item.output}: unknown image type {suffix!r} (--name); "
                                f"end the name with one of {', '.join(OUTPUT_SUFFIXES)}.")
            check_bits(item.output, options.bits)


def make_output_folders(items: Sequence[BatchItem]) -> None:
    """The items' output folders, made before any work (as `stylefu batch` makes its -o): else
    each item would be painted and then fail to be written."""
    for folder in sorted({Path(item.output).parent for item in items if item.output is not None}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the output folder {folder} ({exc.strerror}); choose "
                            "other output paths.") from None


# ----------------------------------------------------------------------------- one item (any worker)











# ----------------------------------------------------------------------------- style targets once

def _working_sizes(items: Sequence[BatchItem], config: Config) -> dict[tuple[str, ...], set]:
    """Per style group, every canvas its items will paint (working sizes with their margins, from
    the inputs' headers)."""
    from PIL import Image

    from ..run.pipeline import canvas_sizes

    sizes: dict[tuple[str, ...], set] = {}
    for item in items:
        try:
            check_input_file(item.input)  # a FIFO or device would block the read: its item fails
            if item.input.lower().endswith(".npy"):
                h, w = np.load(item.input, mmap_mode="r", allow_pickle=False).shape[:2]
            else:
                with Image.open(item.input) as image:
                    w, h = image.size
        except Exception:  # noqa: BLE001 - a bad input fails in its own item, with its message
            continue
        sizes.setdefault(item.styles, set()).update(canvas_sizes(h, w, config))
    return sizes


def precompute_targets(model, items: Sequence[BatchItem], config: Config) -> list[Path]:
    """Compute every style's Gram targets at every working size of the batch once, into the
    on-disk target cache that all workers read; returns the cache entries used (for Ray).

    Skipped with colour preservation (each style is first fitted to its content's colours, so no
    two items share a target). A style that cannot be read is the user's error, for the batch.
    """
    from ..io.cache import target_cache
    from ..method.targets import load_style, style_array, target_arrays

    styles = {s: load_style(s, f"style {Path(s).name}") for item in items for s in item.styles}
    if config.preserve_colors != "none":
        return []
    cache = target_cache(model)
    since = time.time() - 1.0  # entries fetched (their time is refreshed) or written from now on
    for group, sizes in _working_sizes(items, config).items():
        for size in sorted(sizes):
            try:
                target_arrays(model, None, [style_array(styles[s]) for s in group], size, config,
                              content_features=False)
            except UserError:
                pass  # e.g. a blend weight count that does not match: every item says so
    return [p for p in cache.root.glob("*/*.npz") if p.stat().st_mtime >= since]


# ----------------------------------------------------------------------------- local worker processes

@dataclass(frozen=True)
class WorkerSetup:
    model: str
    device: str
    threads: int
    config: Config
    options: RunOptions
    progress: bool


def _worker_main(wid: int, setup: WorkerSetup, tasks, results, cancel) -> None:
    """A worker process: load the model once, then run the items it is given until told to stop.
    `tasks` and `results`: this worker's own pipes from and to the driver (a worker killed
    mid-write can then break only its own channel, never a lock the others share; the tasks' end
    closed is the driver's word to stop); `cancel`: a lock-free shared flag."""
    parent = os.getppid()
    # A killed driver stops the item too, at its next evaluation: nobody wants its result.
    cancelled = lambda: bool(cancel.value) or _driver_gone(parent)  # noqa: E731
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    set_threads(setup.threads)
    from ..engines import load_engine_model

    with contextlib.suppress(BrokenPipeError, ConnectionError):  # the driver killed: just end
        try:
            model = load_engine_model(setup.model, setup.config)
        except Exception as exc:  # noqa: BLE001
            results.send(("broken", wid, f"{type(exc).__name__}: {exc}"))
            return
        results.send(("ready", wid, None))
        _serve_items(wid, setup, model, tasks, results, cancelled, parent)


def _serve_items(wid: int, setup: WorkerSetup, model, tasks, results, cancelled, parent: int):
    """A worker's loop: run each item the driver sends, until it closes the pipe or is gone."""
    while True:
        try:
            if not tasks.poll(1.0):
                if _driver_gone(parent):  # the driver was killed: nobody wants our results
                    return
                continue
            task = tasks.recv()
        except (EOFError, OSError):  # the driver closed our tasks' pipe: stop
            return
        index, item, init, previous = task

        def progress(record: dict, index=index) -> None:
            results.send(("progress", wid, (index, record)))
        try:
            payload = run_item(model, item, setup.config, setup.options, init, previous,
                               progress if setup.progress else None, cancelled,
                               lambda text: results.send(("note", wid, text)))
        except Cancelled:
            results.send(("cancelled", wid, index))
            continue
        payload.pop("trace", None)
        results.send(("done", wid, (index, payload)))


def _driver_gone(parent_pid: int) -> bool:
    """Whether the driver that spawned this worker has ended. Its process handle (Windows) or
    pipe (POSIX) says so; os.getppid alone does not on Windows, where it keeps the dead
    parent's PID (the worker would wait for tasks forever, its model loaded)."""
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        return True
    return os.getppid() != parent_pid


class LocalPool:
    """`workers` spawned processes, each with its own task pipe, so the driver always knows which
    item a worker holds: a worker that dies has its item tried again once, on a new worker.

    Pipes, not multiprocessing queues: a Ctrl-C or SIGTERM raised in the driver while it was in a
    queue's put left the queue's lock held, and the put that tells the workers to stop then hung
    the batch for good. A pipe holds no lock; closing it tells the worker to stop."""

    def __init__(self, setup: WorkerSetup, workers: int, gpus: int = 0):
        self.ctx = multiprocessing.get_context("spawn")
        self.setup, self.gpus = setup, gpus
        self.cancel = self.ctx.RawValue("b", 0)  # no lock: a killed worker cannot hold it
        self.procs: dict[int, tuple] = {}
        self.next_id = 0
        try:
            for _ in range(workers):
                self.start_worker()
        except BaseException:  # Ctrl-C while starting: no worker left waiting for tasks
            self.close(cancel=True)
            raise

    def start_worker(self) -> int:
        wid, self.next_id = self.next_id, self.next_id + 1
        task_reader, tasks = self.ctx.Pipe(duplex=False)
        reader, writer = self.ctx.Pipe(duplex=False)
        env = {"OMP_NUM_THREADS": str(self.setup.threads), **tiling.primitive_cache_env()}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(wid % self.gpus)  # one GPU per worker
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned child copies the environment when it starts
        try:
            proc = self.ctx.Process(target=_worker_main, daemon=True, name=f"stylefu-worker-{wid}",
                                    args=(wid, self.setup, task_reader, writer, self.cancel))
            with _main_without_file():
                proc.start()
            writer.close()  # the worker holds the only writing end: its death reads as EOF
            task_reader.close()  # and the only reading end of its tasks
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.procs[wid] = (proc, tasks, reader)
        return wid

    def send(self, wid: int, task) -> None:
        """`task` to worker `wid`; one that has died meanwhile is found by dead(), its item
        tried again."""
        with contextlib.suppress(OSError):
            self.procs[wid][1].send(task)

    def get(self, timeout: float):
        """The next message from any worker, or None after `timeout` seconds."""
        from multiprocessing.connection import wait

        readers = {entry[2]: wid for wid, entry in self.procs.items()}
        for reader in wait(list(readers), timeout):
            try:
                return reader.recv()
            except (EOFError, OSError):
                self.procs[readers[reader]][1].close()  # gone: dead() reports it
        return None

    def dead(self) -> list[tuple[int, int | None]]:
        """(worker id, exit code) of workers that have ended; they are forgotten."""
        gone = [(wid, proc.exitcode) for wid, (proc, *_) in self.procs.items() if not proc.is_alive()]
        for wid, _ in gone:
            del self.procs[wid]
        return gone

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.cancel.value = 1
        for _, tasks, _ in self.procs.values():
            tasks.close()  # the worker reads the end of its tasks and stops
        deadline = time.monotonic() + (STOP_GRACE_S if cancel else 60.0)
        while time.monotonic() < deadline and any(p.is_alive() for p, *_ in self.procs.values()):
            for _, _, reader in self.procs.values():
                with contextlib.suppress(OSError, EOFError):
                    while reader.poll():  # a worker cannot exit while its last message fills the pipe
                        reader.recv()
            time.sleep(0.05)
        for proc, *_ in self.procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


@contextlib.contextmanager
def _main_without_file():
    """A script read from standard input (`python - < script.py`) has the `__file__` '<stdin>':
    a spawned worker, which imports the parent's script again, died looking for that file. The
    workers need nothing from it, so while one starts such a name is hidden from spawn."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _script_hint() -> str:
    """Why workers die at once when stylize_many is called from a script's top level: each
    spawned worker imports the script again, which calls stylize_many again, which
    multiprocessing forbids. Empty for stylefu's own command and for interactive use."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)  # none when interactive; a module's has a __spec__
    if not script or getattr(main, "__spec__", None) is not None or Path(script).stem == "stylefu":
        return ""
    return (f"; a script that calls stylize_many with workers ({Path(script).name}) must do so "
            'under `if __name__ == "__main__":`, as the workers import it again')


def _run_local(items: list[tuple[int, BatchItem]], config: Config, model_path: str, device: str,
               options: RunOptions, workers: int, gpus: int, on_progress, cancel,
               keep_images: bool, on_note: Callable[[str], None]) -> Iterator[ItemResult]:
    workers = min(workers, len(items))
    setup = WorkerSetup(model_path, device, worker_threads(workers) if not gpus else 1, config,
                        options, on_progress is not None)
    todo = list(items)
    by_index = dict(items)
    attempts: dict[int, int] = {}
    held: dict[int, int] = {}  # worker id -> item index
    idle: list[int] = []
    pool = LocalPool(setup, workers, gpus)
    finished = False
    try:
        while todo or held:
            if is_cancelled(cancel):
                raise Cancelled("Cancelled.")
            while idle and todo:
                index, item = todo.pop(0)
                wid = idle.pop(0)
                attempts[index] = attempts.get(index, 0) + 1
                held[wid] = index
                pool.send(wid, (index, item, None, None))
            message = pool.get(0.2)
            if message is None:
                for wid, code in pool.dead():
                    if wid in idle:
                        idle.remove(wid)
                    index = held.pop(wid, None)
                    if index is None:
                        continue
                    payload = {"status": "failed", "retry": True,
                               "error": f"the worker process died (exit code {code})"}
                    result = _settle(index, by_index[index], payload, attempts, todo, options,
                                     keep_images)
                    if result is not None:
                        yield result
                    if todo:
                        pool.start_worker()
                if not pool.procs and todo:
                    raise UserError("Every worker process ended before the batch could run"
                                    + _script_hint() + ".")
                continue
            kind, wid, body = message
            if kind == "ready":
                idle.append(wid)
            elif kind == "broken":
                raise UserError(f"A worker could not load the model: {body}")
            elif kind == "progress":
                on_progress(*body)
            elif kind == "note":  # told as it comes: a batch's first item may take long
                on_note(body)
            elif kind == "done":
                index, payload = body
                held.pop(wid, None)
                idle.append(wid)
                result = _settle(index, by_index[index], payload, attempts, todo, options, keep_images)
                if result is not None:
                    yield result
        finished = True
    finally:
        pool.close(cancel=not finished)


def _settle(index, item, payload, attempts, todo, options, keep_images) -> ItemResult | None:
    """The item's result, or None when it goes back in the queue for its one retry."""
    if payload["status"] != "ok" and payload.get("retry") and attempts[index] <= RETRIES:
        todo.insert(0, (index, item))
        return None
    return finish(index, item, payload, options, attempts[index], keep_images)




# ----------------------------------------------------------------------------- the API

def as_item(given: BatchItem | tuple, index: int) -> BatchItem:
    """An (input, style or styles[, output]) tuple or a BatchItem as a BatchItem: paths only, one
    style alone is that style (not its characters), several a tuple."""
    if isinstance(given, BatchItem):
        given = (given.input, given.styles, given.output)
    source, styles, output = (*given, None)[:3]
    styles = [styles] if isinstance(styles, (str, bytes, os.PathLike)) else list(styles)
    for what, path in [("input", source), ("output", output), *(("style", s) for s in styles)]:
        if not isinstance(path, (str, bytes, os.PathLike)) and not (what == "output" and path is None):
            raise UserError(f"Item {index}: its {what} must be a path (stylize_many reads and "
                            f"writes files; stylize takes arrays), not {type(path).__name__}.")
    return BatchItem(os.fsdecode(source), tuple(map(os.fsdecode, styles)),
                     None if output is None else os.fsdecode(output))


def stylize_many(items: Iterable[BatchItem | tuple], config: Config | None = None, *,
                 model=None, workers: int | None = None,
                 ray: str | bool | None = None, options: RunOptions = RunOptions(),
                 skip: Iterable[int] = (), progress: Callable[[int, dict], None] | None = None,
                 cancel=None, keep_images: bool = False,
                 log: Callable[[str], None] | None = None) -> Iterator[ItemResult]:
    """Stylize many items; yield an ItemResult per item as each finishes (completion order).

    `items`: BatchItem or (input, styles, output) tuples; results' `index` is the item's position.
    `model`: the artifact's path (default: the default model), or a model `load_model` gave
    (the workers load its file for its engine and device).
    `workers`: local worker processes (default `default_workers()`: one per GPU, else one per
    THREADS_PER_WORKER cores), each with its share of the cores. `ray`: run the items as Ray
    tasks instead, on the cluster at this address (True or "local": a local cluster). `options`:
    bits, keep_size, masks, and `frames` (one item at a time, each starting from the previous
    result; `warp` moves it along the motion first). `skip`: indices not to run (--resume; with
    frames the skipped outputs still seed the next frame). `progress(index, record)` gets each
    evaluation's figures. `cancel` (threading.Event or callable) stops the batch: items in flight
    are dropped, nothing half-written stays. Raises UserError before any work for a bad style,
    model or option; a bad input is only a failed result. Missing output folders are made.
    The items' notes to act on (bf16 emulated, about 20x slower) go to `log` as `stylize`'s do
    (default: the `stylefu` logger, at WARNING), each once per batch, not once per item
    (each result's `notes` has its own); their information notes (tiles) are dropped.
    """
    tell = OncePerBatch(log)
    results = _stylize_many(items, config, model, workers, ray, options, skip, progress, cancel,
                            keep_images, tell)
    try:
        for result in results:
            for text in result.notes:  # Ray's and frames' too; a local worker's came already
                tell(text)
            yield result
    finally:
        results.close()  # a caller that stops early ends the workers now


def _stylize_many(items, config, model, workers, ray, options, skip, progress, cancel,
                  keep_images, tell: OncePerBatch) -> Iterator[ItemResult]:
    from ..engines import load_driver_model, model_kind, resolve_engine

    config = given_config(config)
    check_hooks(progress, cancel, "progress")
    check_hooks(None if tell.log is notes.to_logger else tell.log, None, "log")
    items = [as_item(i, n) for n, i in enumerate(items)]
    options = replace(options, masks=tuple(one_or_many(options.masks)))  # one mask alone too
    check_upscale(options.upscale, options.keep_size, "RunOptions.upscale")
    check_workers(workers)
    skip = set(skip)
    check_shared_inputs(items, config, options)
    in_ray = ray is not None and ray is not False
    if in_ray:
        from .ray_pool import check_reachable

        check_reachable(ray)
    loaded, device = load_driver_model(model, config, options.frames, in_ray)
    if model_kind(model):  # load_model's: the workers load its file for its engine and device
        config = replace(config, engine=resolve_engine(config.engine, loaded), device=device)
    remove_stale_temporaries(items)
    entries = precompute_targets(loaded, [it for i, it in enumerate(items) if i not in skip], config)
    make_output_folders(items)  # once the model and styles have loaded: none for a damaged one
    work = [(i, it) for i, it in enumerate(items)]
    if options.frames:
        yield from _frames(work, skip, config, loaded, device, options, workers, ray, progress,
                           cancel, keep_images, entries, tell)
        return
    work = [(i, it) for i, it in work if i not in skip]
    if not work:
        return
    if in_ray:
        from .ray_pool import run_ray

        yield from run_ray(work, config, loaded.path, device, options, workers, ray, progress,
                           cancel, keep_images, entries=entries)
        return
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    yield from _run_local(work, config, str(loaded.path), config.device, options,
                          workers or default_workers(gpus=gpus, config=config), gpus, progress, cancel,
                          keep_images, tell)


def _frames(work, skip, config, loaded, device, options, workers, ray, progress, cancel, keep_images,
            entries, tell):
    """Frames in order: runs of frames to do, each run seeded by the frame before it (done now or
    skipped by --resume: its output is read back)."""
    previous: tuple[np.ndarray, str] | None = None
    k = 0
    while k < len(work):
        if work[k][0] in skip:
            from ..io.images import load_image
            index, item = work[k]
            previous = (load_image(item.output).rgb, item.input) if item.output else None
            k += 1
            continue
        run = []
        while k < len(work) and work[k][0] not in skip:
            run.append(work[k])
            k += 1
        seeded = previous
        if ray is not None and ray is not False:
            from .ray_pool import run_ray
            yield from run_ray(run, config, loaded.path, device, options, workers, ray, progress,
                               cancel, keep_images, seed=seeded, entries=entries)
        else:
            yield from _run_local_seeded(run, config, loaded, options, progress, cancel,
                                         keep_images, seeded, tell)
        previous = None


def _run_local_seeded(run, config, loaded, options, progress, cancel, keep_images, seeded, tell):
    """Frames run in this process, one after another with the process's own threads (a chain
    cannot be split over workers without breaking it; the caller's thread settings are kept)."""
    def run_one(index, item, previous):
        if is_cancelled(cancel):
            raise Cancelled("Cancelled.")
        init, before = previous if previous else (None, None)

        def report(record: dict) -> None:
            if progress is not None:
                progress(index, record)
        attempts = 0
        while True:
            attempts += 1
            payload = run_item(loaded, item, config, options, init, before, report, cancel, tell)
            if payload["status"] == "ok" or not payload.get("retry") or attempts > RETRIES:
                break
        return finish(index, item, payload, options, attempts, True)
    return frame_chain(run, seeded, run_one, keep_images)


__all__ = ["BatchItem", "ItemResult", "RunOptions", "stylize_many", "expand_inputs", "make_items",
           "config_hash", "read_manifest", "Manifest", "pending", "default_workers", "run_item"]
