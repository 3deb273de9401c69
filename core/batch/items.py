"""One batch item, whichever engine runs it: what an item is, its result and the run's shared
options, the worker's share of the machine, `run_item` (stylize one item in a worker) and
`finish` (the driver writes its output), and `OncePerBatch` (the items' notes to act on, each
told once). The local pool (driver.py) and Ray (ray_pool.py) both use these; neither imports the
other's module at load time."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import notes
from ..errors import Cancelled, UserError
from ..method.config import Config

# One single-threaded worker per core by default: workers scale better than threads within one
# (docs/speed.md, "Throughput").
THREADS_PER_WORKER = 1


RETRIES = 1  # a failed or lost task is tried once more, then recorded as failed


@dataclass(frozen=True)
class BatchItem:
    """One stylization: `input` (content path), its style path(s) (several blend, as in `run`),
    and where the result goes (None: the result keeps the image and nothing is written)."""

    input: str
    styles: tuple[str, ...]
    output: str | None = None


@dataclass
class ItemResult:
    """What became of one item: status ok or failed, seconds, final metrics or the error text.

    `image`/`alpha` hold the result for API callers (None once written, when `keep_images` is
    False); `attempts` counts tries (a lost worker's item is tried again once); `notes`: the
    texts of what its user should act on (its run's notes to act on, and its .jpg output that
    dropped the content's transparency); stylize_many tells each once per batch.
    """

    index: int
    item: BatchItem
    status: str
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    image: np.ndarray | None = field(default=None, repr=False)
    alpha: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def record(self, config_hash: str) -> dict:
        """The manifest line of this result (the same from every engine); `cwd`, the folder its
        relative paths are from."""
        losses = {k: self.metrics[k] for k in ("total_loss", "content_loss", "style_loss", "tv_loss")
                  if k in self.metrics}
        return {"index": self.index, "input": self.item.input, "styles": list(self.item.styles),
                "output": self.item.output, "status": self.status, "seconds": round(self.seconds, 3),
                "losses": losses, "evaluations": self.metrics.get("evaluations"),
                "error": self.error, "notes": list(self.notes), "attempts": self.attempts,
                "config_hash": config_hash, "cwd": os.getcwd()}


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings beyond Config that every item shares (the `run` command's other options)."""

    bits: int = 8
    keep_size: bool = False
    upscale: str = "detail"  # with keep_size: fullres.UPSCALE_MODES
    masks: tuple[str, ...] = ()
    frames: bool = False
    warp: bool = False


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Each worker's share of the cores (at least 1)."""
    from ..network.forward import usable_cores

    return max(1, (cores or usable_cores()) // max(1, workers))


def default_workers(cores: int | None = None, gpus: int = 0, config: Config | None = None) -> int:
    """One worker per GPU; on CPUs one per THREADS_PER_WORKER cores, no more than the memory
    holds (each worker plans its run on the whole budget: tiling.torch_bytes at `config.size`,
    plus ONNX Runtime's share)."""
    from ..network.forward import usable_cores

    if gpus:
        return gpus
    workers = max(1, (cores or usable_cores()) // THREADS_PER_WORKER)
    if config is not None:
        from ..method import tiling

        workers = min(workers, tiling.runs_in_memory(config))
    return workers


def set_threads(threads: int) -> None:
    """Give this process `threads` threads for ONNX Runtime and, where it runs, torch (before the
    model loads)."""
    from ..engines import torch_installed
    from ..network.forward import THREADS_ENV

    os.environ[THREADS_ENV] = str(threads)
    if torch_installed():
        import torch

        torch.set_num_threads(threads)


def run_item(model, item: BatchItem, config: Config, options: RunOptions,
             init: np.ndarray | None = None, previous_input: str | None = None,
             progress: Callable[[dict], None] | None = None, cancel=None,
             note: Callable[[str], None] | None = None) -> dict:
    """Stylize one item in this process; the payload every engine sends back to the driver.

    `init` (frames): the previous frame's result, moved along the motion from `previous_input`
    to this input when `options.warp`. A user's error (bad file, wrong mask) is a failed payload
    with its message; Cancelled propagates. Other exceptions are failed payloads too, with their
    type (the engines try such items once more). The run's notes to act on are the payload's
    `notes` (their texts), each also given to `note` as it comes (a local worker sends it on at
    once); information notes (tiles, compiling) are dropped: many items' would drown the batch.
    """
    from ..run.pipeline import stylize

    started = time.perf_counter()
    acted: list[str] = []

    def log(message: str) -> None:
        if isinstance(message, notes.ActionNote):
            acted.append(str(message))
            if note is not None:
                note(str(message))
    try:
        # A folder only for a frame's start: one made for every item is left by a killed worker.
        with (tempfile.TemporaryDirectory(prefix="stylefu-item-") if init is not None
              else contextlib.nullcontext()) as tmp:
            run_config = config
            if init is not None:
                if options.warp and previous_input:
                    from ..io.images import load_image
                    from .frames import warp_previous

                    init = warp_previous(init, load_image(item.input, "frame").rgb,
                                         load_image(previous_input, "previous frame").rgb)
                np.save(Path(tmp) / "init.npy", np.asarray(init, np.float32))
                run_config = config.with_(init=str(Path(tmp) / "init.npy"))

            def callback(p) -> None:
                if progress is not None:
                    progress({"level": p.level, "levels": p.levels, "evaluation": p.evaluation,
                              "evaluations": p.evaluations, "fraction": round(p.fraction, 4),
                              "loss": p.loss})
            result = stylize(item.input, list(item.styles), config=run_config, model=model,
                             callback=callback, cancel=cancel, masks=list(options.masks) or None,
                             log=log, keep_size=options.keep_size, upscale=options.upscale)
            image, alpha = result.image, result.alpha
        return {"status": "ok", "image": image, "alpha": alpha, "metrics": result.metrics,
                "seconds": time.perf_counter() - started, "notes": acted}
    except Cancelled:
        raise
    except UserError as exc:
        return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - started,
                "retry": False, "notes": acted}
    except Exception as exc:  # noqa: BLE001 - one item's crash must not end the batch
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "retry": True,
                "seconds": time.perf_counter() - started, "trace": traceback.format_exc(),
                "notes": acted}


def finish(index: int, item: BatchItem, payload: dict, options: RunOptions, attempts: int,
           keep_images: bool) -> ItemResult:
    """Write an item's output (driver side, atomically) and make its ItemResult."""
    from ..io.images import save_image

    result = ItemResult(index, item, payload["status"], payload.get("seconds", 0.0),
                        payload.get("metrics") or {}, payload.get("error"), attempts,
                        notes=list(payload.get("notes") or []))
    if result.ok and item.output:
        try:
            save_image(item.output, payload["image"], payload.get("alpha"), bits=options.bits,
                       log=result.notes.append)
        except UserError as exc:
            result.status, result.error = "failed", str(exc)
    if result.ok and (keep_images or not item.output):
        result.image, result.alpha = payload["image"], payload.get("alpha")
    return result


class OncePerBatch:
    """The notes to act on that a batch's items give, each told once to `log` (the API's path:
    a callable taking the note, default the `stylefu` logger at WARNING), not once per item: a
    batch at bf16 on a CPU that emulates it says so once."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.log, self.told = log or notes.to_logger, set()

    def __call__(self, text: str) -> None:
        if text not in self.told:
            self.told.add(text)
            self.log(notes.act(text))


def frame_chain(work, seed, run_one: Callable, keep_images: bool):
    """Frames one after another, each started from its predecessor's result (run_item moves it
    along the motion): `run_one(index, item, previous)` -> ItemResult, `previous` being (result
    image, its input) or None. Used by the local pool and by Ray alike."""
    previous = seed
    for index, item in work:
        result = run_one(index, item, previous)
        previous = (result.image, item.input) if result.ok else None
        if not keep_images and item.output:
            result.image = result.alpha = None
        yield result
