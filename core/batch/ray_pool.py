"""The Ray engine of `stylize_many` (`stylefu batch --ray [ADDRESS]`); imported only when asked for.

Each item is one Ray task asking for its share of cores (`num_cpus` = the threads it runs with) or
one GPU. What the tasks need travels through Ray's object store, put there once by the driver:
the model file (~80 MB), the style images, the precomputed style-target cache entries and each
input's bytes. Why the object store and not a shared path: a Ray cluster promises no shared file
system, and the object store moves each object to a node once, where every task on that node reads
it; a task writes the model and the target entries into its node's cache folder only when they are
not there already (keyed by content hash), so a worker process loads the model once and the style
targets are never recomputed. Results come back as arrays and the driver writes the outputs and
the manifest, exactly as with local workers: the same files from both engines.

A task that raises (an unexpected error) or is lost (its worker or node died) is retried once by
Ray (`max_retries`, `retry_exceptions`), then recorded as failed; a user's error (a bad input) is a
failed result at once. Stylefu and Ray must be installed on every node.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import Cancelled, UserError
from ..io.files import cache_write
from ..method import tiling
from ..method.config import Config
from .items import (
    RETRIES,
    ItemResult,
    RunOptions,
    default_workers,
    finish,
    frame_chain,
    worker_threads,
)

REACH_S = 10.0  # how long a cluster's address may take to answer a connection
WAIT_S = 0.2  # how often the driver looks at the cancel token (and progress) while tasks run
PROGRESS_EVERY_S = 0.25  # a task sends at most this often a progress record (and each level's last)


def check_reachable(address) -> None:
    """A cluster's address (HOST:PORT, ray://HOST:PORT) takes a TCP connection within REACH_S:
    Ray itself tries an unreachable one for minutes, printing its C++ log's lines meanwhile."""
    ray = sys.modules.get("ray")
    if not isinstance(address, str) or (ray is not None and ray.is_initialized()):
        return  # a local cluster, or the script's own connection (which the address would not change)
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        return  # Ray's client is missing: run_ray says so, whatever the address
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        return  # "auto", a bare host: Ray's own words for what it makes of them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_S).close()
    except OSError as exc:
        raise UserError(f"Cannot reach the Ray cluster at {address} "
                        f"({exc.strerror or 'no answer'}); start it with `ray start --head` "
                        "there, check the address, or give --ray without an address.") from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed; run `pip install ray` (on "
                        "every node) or leave out --ray.") from None
    return ray


class _QuietTokenNotice(logging.Filter):
    """Drops Ray's notice that a local cluster it starts uses token authentication: its safe
    default, with nothing for our user to do, printed in front of our own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this")


def _send_token_if_any() -> None:
    """Ray 2.59+ clusters (`ray start --head`) check a token, which Ray's driver sends to a given
    address only in token mode (else "Authentication token is missing", retried for a minute),
    though it takes that mode itself for a cluster it starts when a token exists: so does this,
    with Ray's own step (a cluster without the check takes a driver that sends one)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available as enable,
        )
    except ImportError:  # another Ray: its own rules
        return
    enable(warn_if_disabled=False)


def _start_ray(ray, **options) -> None:
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    quiet = _QuietTokenNotice()
    notices.addFilter(quiet)
    try:
        if options["address"] != "local":
            _send_token_if_any()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **options)
    finally:
        notices.removeFilter(quiet)


def _remote(ray, function, threads: int, gpus: int):
    """`function` as the Ray task stylefu runs an item with: its share of cores or one GPU, retried
    once, and its worker's environment with oneDNN's primitive cache bounded as for local workers
    (tiling.primitive_cache_env), unless the user chose a capacity in the driver's environment or
    in the Ray job's own runtime_env (whose env_vars a task's are merged into)."""
    job = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    env = {"env_vars": tiling.primitive_cache_env({**os.environ, **job})}
    return ray.remote(function).options(num_cpus=threads, num_gpus=gpus, max_retries=RETRIES,
                                        retry_exceptions=True, runtime_env=env)


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None  # the task opens the path itself and fails with the usual message


def _write_once(path: Path, data: bytes) -> bool:
    """`data` at `path` unless a file is there, atomically; False when it can be neither written
    nor found. Two workers of a node may write one file at once: on Windows the second rename
    fails while the first's copy is open, and that copy holds the same bytes."""
    if path.is_file():
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    return cache_write(path, lambda tmp: tmp.write_bytes(data)) or path.is_file()


def _materialize(folder: Path, name: str, data: bytes) -> Path:
    """`data` as folder/<its hash>/name on this node (written once, atomically)."""
    path = folder / hashlib.sha256(data).hexdigest()[:24] / name
    if not _write_once(path, data):
        raise UserError(f"Cannot write {path} on this Ray node; check its free space.")
    return path


def _sender(queue, index: int):
    """A run_item progress callback that puts (index, record) on the driver's Ray queue, at most
    every PROGRESS_EVERY_S and at each level's last evaluation (a put is a remote call)."""
    import time

    last = [0.0]

    def send(record: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or record["evaluation"] == record["evaluations"]:
            last[0] = now
            queue.put((index, record))
    return send


def _task(index: int, item, input_bytes: bytes | None, shared: list, config: Config,
          options: RunOptions, threads: int, init, previous: tuple[str, bytes | None] | None,
          queue=None) -> dict:
    """One item on a Ray worker. `shared` holds (not resolved by Ray) the one reference to the
    model, styles and target entries, fetched only when this node lacks them. `queue`: where
    progress records go (None: no progress asked for)."""
    import ray

    from ..engines import load_engine_model
    from ..io.cache import model_hash
    from ..io.paths import cache_dir
    from .items import BatchItem, run_item, set_threads

    set_threads(threads)
    info = ray.get(shared[0])  # small: names, hashes and the references to the big parts
    root = cache_dir() / "ray"
    model_path = Path(info["model_path"])
    if not (model_path.is_file() and model_hash(model_path) == info["model_sha"]):
        model_path = root / "models" / info["model_sha"][:24] / "model.onnx"  # as _materialize names it
        if not model_path.is_file():
            model_path = _materialize(root / "models", "model.onnx", ray.get(info["model"]))
    for relative, data in ray.get(info["targets"]).items():
        _write_once(cache_dir() / "targets" / relative, data)  # a miss is computed again
    styles = ray.get(info["styles"])
    renames: dict[str, str] = {}
    local = []
    for style in item.styles:
        data = styles.get(style)
        local.append(str(_materialize(root / "inputs", Path(style).name, data)) if data else style)
    with tempfile.TemporaryDirectory(prefix="stylefu-ray-") as tmp:
        source = item.input
        if input_bytes is not None:
            source = str(Path(tmp) / Path(item.input).name)
            Path(source).write_bytes(input_bytes)
            renames[source] = item.input
        before = None
        if previous is not None:
            before = previous[0]
            if previous[1] is not None:
                before = str(Path(tmp) / ("previous-" + Path(previous[0]).name))
                Path(before).write_bytes(previous[1])
        model = load_engine_model(model_path, config)
        payload = run_item(model, BatchItem(source, tuple(local), item.output), config, options,
                           init, before, None if queue is None else _sender(queue, index))
    if payload.get("error"):
        for temporary, original in renames.items():
            payload["error"] = payload["error"].replace(temporary, original)
    if payload["status"] != "ok" and payload.get("retry"):
        raise RuntimeError(payload["error"])  # Ray retries it once, then the driver records it
    payload.pop("trace", None)
    return payload


def run_ray(work, config: Config, model_path, device: str, options: RunOptions,
            workers: int | None, address, progress, cancel, keep_images: bool, seed=None,
            entries=()) -> Iterator[ItemResult]:
    """Run `work` [(index, item)] as Ray tasks of the model at `model_path`, each with a GPU
    where `device` is "cuda"; yield results as they finish. `seed` (frames): (previous result,
    its input) for the first item; frames run one task at a time, in order."""
    ray = _import_ray()
    from ..engines.steps import is_cancelled
    from ..io.cache import model_hash
    from ..io.paths import cache_dir
    from ..network.forward import usable_cores

    started_here = not ray.is_initialized()
    if started_here:
        local = address in (True, "local", "")
        try:
            # "local": a new cluster, even where `ray start` ran (Ray would join its cluster, or
            # a stale record of one, and refuse num_cpus there)
            _start_ray(ray, **({"address": "local", "num_cpus": usable_cores()} if local
                               else {"address": address}))
        except ConnectionError as exc:
            raise UserError(f"Cannot reach the Ray cluster at {address} ({exc}); start it with "
                            "`ray start --head` or give --ray without an address.") from None
        except ValueError as exc:  # ray:// without Ray's client ("requires pip package ...")
            if "ray[client]" not in str(exc):
                raise
            raise UserError(f"--ray {address} is a Ray Client address, which needs Ray's client; "
                            "run `pip install 'ray[client]'`, or give the cluster's own "
                            "address (HOST:6379).") from None
    gpus = 1 if device == "cuda" else 0
    threads = 1 if gpus else worker_threads(workers or default_workers(config=config))
    targets_root = cache_dir() / "targets"
    info = {"model_path": str(model_path), "model_sha": model_hash(model_path),
            "model": ray.put(Path(model_path).read_bytes()),
            "styles": ray.put({s: _read(s) for _, item in work for s in item.styles}),
            "targets": ray.put({str(p.relative_to(targets_root)): p.read_bytes() for p in entries})}
    shared = [ray.put(info)]
    remote = _remote(ray, _task, threads, gpus)
    queue = None
    if progress is not None:
        from ray.util.queue import Queue

        queue = Queue(actor_options={"num_cpus": 0})

    def submit(index, item, init=None, previous=None):
        before = None if previous is None else (previous, _read(previous))
        return remote.remote(index, item, _read(item.input), shared, config, options, threads,
                             init, before, queue)

    def relay() -> None:
        """Hand the tasks' progress records to `progress` (called while waiting)."""
        waiting = 0 if queue is None else queue.qsize()
        if waiting:  # each look is a call to the queue's actor: none for an empty one
            for index, record in queue.get_nowait_batch(waiting):
                progress(index, record)

    pending: dict = {}
    try:
        if options.frames:
            def run_one(index, item, previous):
                ref = submit(index, item, *(previous or (None, None)))
                pending[ref] = (index, item)
                return _collect(ray, ref, pending, options, keep_images=True, cancel=cancel,
                                relay=relay)
            yield from frame_chain(work, seed, run_one, keep_images)
        else:
            for index, item in work:
                pending[submit(index, item)] = (index, item)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                relay()
                if is_cancelled(cancel):
                    raise Cancelled("Cancelled.")
                for ref in done:
                    yield _collect(ray, ref, pending, options, keep_images, cancel, relay)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if queue is not None:
            queue.shutdown()
        if started_here:
            ray.shutdown()


def _collect(ray, ref, pending: dict, options: RunOptions, keep_images: bool, cancel,
             relay=lambda: None) -> ItemResult:
    """Wait for `ref` (looking at `cancel`, relaying progress) and turn it into an ItemResult,
    written by the driver."""
    from ..engines.steps import is_cancelled

    while not ray.wait([ref], timeout=WAIT_S)[0]:
        relay()
        if is_cancelled(cancel):
            raise Cancelled("Cancelled.")
    relay()
    index, item = pending.pop(ref)
    try:
        payload, attempts = ray.get(ref), 1
    except Exception as exc:  # noqa: BLE001 - the task failed twice or was lost twice
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        payload, attempts = {"status": "failed", "error": text}, 1 + RETRIES
    return finish(index, item, payload, options, attempts, keep_images)
