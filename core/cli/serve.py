"""`stylefu serve`: one worker kept alive for many runs and estimates (the GIMP 3 dialog's), so
a refreshed preview pays neither Python's start, nor torch's import, nor the model's load.

Requests come as JSON lines on stdin, answered in order:
  {"id": 3, "run": ["content.png", "style.png", "-o", "out.png", "--size", "160", ...]}
      the arguments of `stylefu run`; its JSON records follow `{"event": "started", "id": 3}` on
      stdout and end with its `result`, `error` or `cancelled` record, as `run --progress json`.
  {"id": 4, "estimate": ["--layer", "1500x1000", ...]}  the same for `stylefu estimate --json`.
  {"cancel": 3}  stops run 3 at its next evaluation (or before it starts).
stdin closed: the running request is cancelled and the worker exits 0 (a run stuck in one
evaluation for 15 s ends it with 130, as `run --watch-stdin`). A line that is no request is
answered by an `error` record, as is one that asks for both a run and an estimate. SIGINT ends
the worker with 130, SIGTERM with 143, whatever stdin does meanwhile (the stuck timer's end
too), within 15 s even while a run is stuck in one evaluation and stdin stays open (`run
--watch-stdin` too); one that comes once the worker has chosen to end on stdin's end (every
request answered, Python exiting) leaves its exit code as it was, as `main` ignores SIGINT then.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable

from .. import jsontext
from .exits import (
    EXIT_CANCELLED,
    ended_if_stuck,
    signals_arrived,
    signals_noted,
    stuck_exit_code,
)

# Seconds after stdin closes (here and in `run --watch-stdin`), or here after SIGINT or SIGTERM
# with stdin open, after which a run stuck in one evaluation ends the process anyway: 143 if
# SIGTERM arrived, else 130 (exits.stuck_exit_code).
STOP_AFTER_STDIN_CLOSES = 15.0
# The commands a request may ask for, with the options that make them answer in JSON lines.
SERVED = {"run": ("--progress", "json"), "estimate": ("--json",)}


def asks_for_help(argv: list[str], parser=None) -> bool:
    """Whether argparse would print help to stdout (-h, or --help as the command's `parser`
    reads it, abbreviations included: Parser.spelling, and -h in a short-option cluster such as
    -qh: Parser.short_options; without one, -h or --help alone): stdout carries only the
    worker's JSON records. `run` and `estimate` have no --version: `--v` is theirs to refuse, in
    the usual words."""
    if parser is None:
        return any(a == "-h" or a.split("=", 1)[0] == "--help" for a in argv)
    return any(a == "-h" or parser.spelling(a) == "--help" or "-h" in parser.short_options(a)
               for a in argv)


class Requests:
    """Reads stdin in a thread: requests into a queue, cancels applied at once."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.current, self.cancel = None, threading.Event()
        self.waiting: list = []  # the ids of requests queued, not yet started
        self.started: set = set()  # ids whose runs started: a cancel then is for the current only
        self.cancelled: set = set()  # ids cancelled before they started, each cancel used once
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # os.read on the raw descriptor, as run's --watch-stdin: a daemon thread blocked in
        # sys.stdin's buffered reader makes the interpreter abort at exit.
        pending = b""
        while chunk := os.read(sys.stdin.fileno(), 1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    self._take(line)
        if pending.strip():  # a last line without its newline is a request too
            self._take(pending)
        with self.lock:
            self.closed = True
            self.cancel.set()
        self.queue.put(None)
        stuck = threading.Timer(STOP_AFTER_STDIN_CLOSES, lambda: os._exit(stuck_exit_code()))
        stuck.daemon = True  # a worker that ends in time is not held back by it
        stuck.start()

    def _take(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            request = {}  # answered as no request (None is stdin's end)
        if isinstance(request, dict) and "cancel" in request:
            ident = _ident(request["cancel"])
            if ident is None:
                self._queue({})  # answered as no request
                return
            with self.lock:
                if ident == self.current:
                    self.cancel.set()
                elif ident in self.waiting or ident not in self.started:  # (even ahead of it)
                    self.cancelled.add(ident)
            return
        self._queue(request)

    def _queue(self, request) -> None:
        with self.lock:
            self.waiting.append(_ident(request.get("id")) if isinstance(request, dict) else None)
        self.queue.put(request)

    def next(self):
        """The next request (None once stdin has closed) and the cancel of its run."""
        request = self.queue.get()
        with self.lock:
            ident = _ident(request.get("id")) if isinstance(request, dict) else None
            if request is not None and self.waiting:
                self.waiting.pop(0)
            self.current, self.cancel = ident, threading.Event()
            self.started.add(ident)
            # queued runs behind a closed stdin, or cancelled before they started
            if self.closed or ident in self.cancelled:
                self.cancelled.discard(ident)
                self.cancel.set()
            return request, self.cancel


def _ident(value):
    """A request's id: a number or a string (JSON's true is no id, though Python takes it for 1)."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def _warm(model: str | None, started: float) -> None:
    """Load the model the runs will ask for (torch's import with it) before any request comes:
    the dialog starts its worker early. The worker's start so far is kept as a run's start-up
    (served runs keep none: the filter's own runs start a new process). A model that cannot
    load fails its run instead, there in the usual words."""
    from ..engines import load_engine_model
    from ..method.config import Config
    from ..run import eta

    config = Config()
    try:
        loaded = load_engine_model(model, config)
    except Exception:  # the run says it
        return
    eta.record_speed(eta.run_key(config, loaded.info.architecture), [],
                     time.perf_counter() - started)


def serve(run: Callable[[list[str], threading.Event], int], stop_codes: tuple[int, ...],
          model: str | None = None, started: float | None = None,
          parsers: dict | None = None) -> int:
    """Answer requests until stdin closes; `run(argv, cancel)` is the `stylefu` command itself
    (its exit code: one of `stop_codes` not from a request's cancel, i.e. SIGTERM or Ctrl-C,
    ends the worker with it). `model` (the runs' --model) is loaded at once; models stay
    loaded between runs (the engines keep them per process and file). `started`: the process's
    start (perf_counter). `parsers`: each served command's Parser, which reads its options'
    abbreviations."""
    requests = Requests()
    # (signals_noted: already, where serve runs as `stylefu serve`)
    with signals_noted(), ended_if_stuck(lambda: STOP_AFTER_STDIN_CLOSES):
        _warm(model, time.perf_counter() if started is None else started)
        while (taken := requests.next())[0] is not None:
            request, cancel = taken
            jsontext.print_line({"event": "started", "id": requests.current})
            asked = [c for c in SERVED if isinstance(request, dict) and c in request]
            if len(asked) > 1:  # which one was meant is a guess: neither runs
                jsontext.print_line({"event": "error", "message": "a request asks for one "
                                     f"command: {' or '.join(map(repr, asked))}, not both"})
                continue
            command = asked[0] if asked else None
            argv = request[command] if command else None
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                jsontext.print_line({"event": "error", "message": "not a request: "
                                     '{"id": N, "run" or "estimate": [the command\'s arguments]}'})
                continue
            if asks_for_help(argv, (parsers or {}).get(command)):
                jsontext.print_line({"event": "error", "message": "a request cannot ask for help "
                                     f"(run `stylefu {command} --help` in a terminal)"})
                continue
            if cancel.is_set():
                jsontext.print_line({"event": "cancelled", "reason": "cancelled"})
                continue
            try:
                code = run([command, *argv, *SERVED[command]], cancel)
            except SystemExit:  # argparse's --help or --version: nothing to run
                jsontext.print_line({"event": "error", "message": "a request cannot ask for help"})
                continue
            # Ctrl-C, though stdin's end may have set the run's cancel too (both give 130)
            if signal.SIGINT in signals_arrived():
                return EXIT_CANCELLED
            if code in stop_codes and (code != EXIT_CANCELLED or not cancel.is_set()):
                return code  # a cancel gives EXIT_CANCELLED only: SIGTERM's code stops even then
        return 0
