"""The progress bars' one line (`run`'s and `batch`'s), fitted to the terminal's width."""

from __future__ import annotations

import os
import sys

CELLS = 30  # the bar's cells where the terminal is wide enough
MIN_CELLS = 5


def columns() -> int:
    """The terminal's width: $COLUMNS, else stderr's terminal (where the bar goes; stdout may be a
    pipe), else 80."""
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        width = 0
    if width <= 0:
        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError, AttributeError):  # not a terminal, or no descriptor
            width = 0
    return width if width > 0 else 80


def bar_line(before: str, fraction: float, after: str, width: int | None = None) -> str:
    """`before[####....]after` in fewer characters than `width`: a line reaching the last column
    wraps, and each `\\r` redraw would then leave a row behind (the bar scrolls instead of
    moving). Narrow terminals get fewer cells first, then the line's end is cut."""
    width = width or columns()
    cells = max(MIN_CELLS, min(CELLS, width - 1 - len(before) - len(after) - 2))
    filled = int(cells * min(max(fraction, 0.0), 1.0))
    line = f"{before}[{'#' * filled}{'.' * (cells - filled)}]{after}"
    return line[:max(1, width - 1)]


def clear_line(width: int) -> None:
    """Blank a bar drawn `width` characters wide (the cursor left at its start), so that a line
    of text written next does not run on from the bar's."""
    if width:
        sys.stderr.write("\r" + " " * min(width, columns() - 1) + "\r")
        sys.stderr.flush()
