"""What a C library prints on stderr (file descriptor 2) while it decodes, kept for our message.

libtiff reports a damaged strip with its own line on stderr ("ZIPDecode: Decoding error at
scanline 54, ..."), beside the one sentence stylefu prints: `captured_stderr` takes that text
so it can go into the sentence, in parentheses, as its detail. Pillow logs some refusals
(logging's last resort prints them on stderr where nothing is configured): `captured_log`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

DETAIL_CHARS = 200  # at most this much of a library's text goes into a message


# fd 2 and Python's warning filters are the process's: threads that change them for a block
# take turns (two at once left fd 2 pointing at a removed file, every later line lost).
PROCESS_STREAMS = threading.RLock()


@contextlib.contextmanager
def captured_stderr(into: list[str], library: re.Pattern[str]) -> Iterator[None]:
    """File descriptor 2 sent to a temporary file for the block; the lines `library` matches
    appended to `into` when the block ends (also by an exception), the others (another thread's,
    written meanwhile) written on to stderr. With no fd 2 (stderr closed) nothing is done."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()  # our own pending text is not the library's
    with PROCESS_STREAMS:
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        try:
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    others = []
                    for line in sink.read().splitlines(keepends=True):
                        text = line.decode("utf-8", "replace")
                        if library.match(text):
                            into.append(text.rstrip())
                        else:
                            others.append(line)  # as it came (a bar's \r included)
                    with contextlib.suppress(OSError):
                        os.write(2, b"".join(others))
        finally:
            os.close(saved)


@contextlib.contextmanager
def captured_log(into: list[str], name: str = "PIL") -> Iterator[None]:
    """The warnings and errors logger `name` records in the block appended to `into`, not printed
    by logging's last resort (handlers the program set up still get them)."""
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            into.append(record.getMessage())

    logger, handler = logging.getLogger(name), Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def detail(lines: list[str]) -> str:
    """`lines` as one clause for a sentence: " (what they said)", or "" without lines."""
    text = "; ".join(line.strip().removeprefix("tempfile.tif: ").rstrip(" .") for line in lines)
    text = re.sub(r"\.\s+", "; ", text)  # inside one sentence
    if len(text) > DETAIL_CHARS:
        text = text[:DETAIL_CHARS - 3] + "..."
    return f" ({text})" if text else ""
