"""The `stylefu` command's exit codes (core/cli/main.py's docstring says when each is given)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable

from ..io.files import stamp

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # `stylefu batch`: some items failed, each in the manifest
EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for coreutils' `yes | head -1`


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (temporary files are removed on the way)."""


_command: dict = {"done": None}  # the running command's test: is its output in place?


def cancel_until_done(signum, frame) -> None:
    """SIGINT's and SIGTERM's handler while a command runs: cancel it (KeyboardInterrupt,
    Terminated), unless its output is already in place (finished_once), where a signal comes too
    late: a cancelled command must leave no output, and one in place cannot be taken back."""
    done = _command["done"]
    if done is not None and done():
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def signals_cancel_until_done(then_ignore_sigint: bool = False):
    """While inside (the main thread only), SIGINT and SIGTERM are handled by cancel_until_done;
    on leaving their handlers are given back, or SIGINT ignored (`then_ignore_sigint`: the
    program's exit code is chosen, and a Ctrl-C would only break Python's exit with a traceback)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_done = _command["done"]  # `serve`'s, around each run it is asked for
    previous = {s: signal.signal(s, cancel_until_done) for s in (signal.SIGINT, signal.SIGTERM)}
    if then_ignore_sigint:
        previous[signal.SIGINT] = signal.SIG_IGN
    try:
        yield
    finally:
        for s, handler in previous.items():  # first: no handler of ours runs past this
            signal.signal(s, handler)
        _command["done"] = outer_done


def finished_once(path) -> None:
    """From the moment a file replaces (or creates) `path`, the running command is done: a later
    SIGINT or SIGTERM no longer cancels it (it reports its result). Called before the write."""
    before = stamp(path)
    _command["done"] = lambda: stamp(path) != before


_arrived: dict = {"socket": None, "signals": set()}  # what signals_noted() saw arrive
WATCH_SECONDS = 0.25  # how often ended_if_stuck looks at the signals noted


@contextlib.contextmanager
def signals_noted():
    """While inside, each signal with a Python handler (SIGINT, main's SIGTERM) is noted as it
    arrives (signal.set_wakeup_fd: its number written by the C handler), even while the main
    thread is stuck in C code, where its Python handler runs only once the call returns. The main
    thread only, the outermost only, and not over a caller's own wakeup fd; the notes stay."""
    ours = None
    if threading.current_thread() is threading.main_thread() and _arrived["socket"] is None:
        read, write = socket.socketpair()
        read.setblocking(False)
        write.setblocking(False)
        previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        if previous == -1:
            ours, _arrived["socket"], _arrived["signals"] = (read, write), read, set()
        else:  # a caller's: given back
            signal.set_wakeup_fd(previous)
            read.close()
            write.close()
    try:
        yield
    finally:
        if ours:
            signal.set_wakeup_fd(-1)
            signals_arrived()
            _arrived["socket"] = None
            for end in ours:
                end.close()


def signals_arrived() -> set:
    """The signals noted so far."""
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more; a closed socket
        while _arrived["socket"] is not None and (data := _arrived["socket"].recv(256)):
            _arrived["signals"].update(data)
    return _arrived["signals"]


@contextlib.contextmanager
def ended_if_stuck(seconds: Callable[[], float]):
    """While inside (and signals_noted() outside it), a SIGINT or SIGTERM that arrives starts a
    timer that ends the process `seconds()` s later with stuck_exit_code(), unless the context
    has been left by then: the main thread stuck in C code (a long evaluation) runs the signal's
    Python handler only once the call returns. Noted from a thread, as the main one may be stuck."""
    left, timer = threading.Event(), []

    def watch():
        while not left.wait(WATCH_SECONDS):
            if {signal.SIGINT, signal.SIGTERM} & signals_arrived():
                timer.append(threading.Timer(seconds(), lambda: os._exit(stuck_exit_code())))
                timer[0].daemon = True
                timer[0].start()
                return
    watcher = threading.Thread(target=watch, daemon=True)
    if _arrived["socket"] is not None:  # else no signal is noted (not the main thread's)
        watcher.start()
    try:
        yield
    finally:
        left.set()
        if watcher.is_alive():
            watcher.join()
        for each in timer:  # the signal's Python handler ran: the caller ends as it chooses
            each.cancel()


def stuck_exit_code() -> int:
    """The exit code of a process that its stuck timer ends (a run that did not stop within
    STOP_AFTER_STDIN_CLOSES s of stdin's end): 143 once SIGTERM arrived, else 130 (SIGINT, or
    stdin's end alone), as the process would have ended by itself."""
    return EXIT_TERMINATED if signal.SIGTERM in signals_arrived() else EXIT_CANCELLED
