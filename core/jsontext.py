"""Strict JSON for everything stylefu writes (progress lines, metrics, preview figures).

Python's json writes NaN and Infinity as bare words that most parsers reject; here a non-finite
number becomes null, so every line parses under a strict parser.
"""

from __future__ import annotations

import json
import math
import sys


def finite(value):
    """`value` with every non-finite float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


_cut = [False]  # True while a line is being written: a signal may have cut it there


def print_line(record) -> None:
    """One JSON line on stdout, written and flushed in one call. A signal that interrupted the
    previous line (its handler then prints a final event) gets that event on a line of its own."""
    text = dumps(record) + "\n"
    if _cut[0]:
        text = "\n" + text
    _cut[0] = True
    sys.stdout.write(text)
    sys.stdout.flush()
    _cut[0] = False


def dumps(value, indent: int | None = None) -> str:
    """json.dumps that never writes NaN or Infinity (they become null)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)
