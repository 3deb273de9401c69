"""The `stylefu` command's exit codes (core/cli/main.py's docstring says when each is given)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading

EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # `stylefu batch`: some items failed, each in the manifest
EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for coreutils' `yes | head -1`


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt (temporary files are removed on the way)."""


_arrived: dict = {"socket": None, "signals": set()}  # what signals_noted() saw arrive


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


def stuck_exit_code() -> int:
    """The exit code of a process that its stuck timer ends (a run that did not stop within
    STOP_AFTER_STDIN_CLOSES s of stdin's end): 143 once SIGTERM arrived, else 130 (SIGINT, or
    stdin's end alone), as the process would have ended by itself."""
    return EXIT_TERMINATED if signal.SIGTERM in signals_arrived() else EXIT_CANCELLED
