"""The `stylefu` command's exit codes (core/cli/main.py's docstring says when each is given)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # `stylefu batch`: some items failed, each in the manifest
EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for coreutils' `yes | head -1`


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (temporary files are removed on the way)."""


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
