"""Strict JSON for everything stylefu writes (progress lines, metrics, preview figures).

Python's json writes NaN and Infinity as bare words that most parsers reject; here a non-finite
number becomes null, so every line parses under a strict parser.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading


def finite(value):
    """`value` with every non-finite float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# SIGINT/SIGTERM are held back while a line is written: their handlers print the final event, and
# an exception raised inside the write would leave half a line before it (pthread_sigmask: Unix).
_HELD = {signal.SIGINT, signal.SIGTERM} if hasattr(signal, "pthread_sigmask") else set()


def print_line(record) -> None:
    """One JSON line on stdout, written whole: a signal arriving meanwhile acts after it."""
    text = dumps(record) + "\n"
    held = _HELD if threading.current_thread() is threading.main_thread() else set()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if held else None
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def dumps(value, indent: int | None = None) -> str:
    """json.dumps that never writes NaN or Infinity (they become null)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)
