"""What a run tells its user besides progress, and at which level: a note is information (INFO:
tiles, compiling) or, made by `act`, something the user should act on (WARNING: bf16 emulated,
about 20x slower). Without a `log` callable, notes go to the `stylefu` logger at their level:
Python shows WARNING records with no logging set up (its last-resort handler, stderr), INFO ones
once the user turns them on (`logging.basicConfig(level=logging.INFO)`). A library never sets up
logging itself. The command line writes a note as `line` (stderr) or `event` (`--progress json`).
"""

from __future__ import annotations

import logging

LOGGER = "stylefu"


class ActionNote(str):
    """A note the user should act on; a str, so that a `log` callable gets it as any note."""


def act(text: str) -> ActionNote:
    return ActionNote(text)


def to_logger(note: str) -> None:
    """The default `log`: the note to the `stylefu` logger, WARNING if it asks for action."""
    logging.getLogger(LOGGER).log(logging.WARNING if isinstance(note, ActionNote)
                                  else logging.INFO, note)


def level(note: str) -> str:
    """The note's level as the command line names it: "warning" (to act on) or "info"."""
    return "warning" if isinstance(note, ActionNote) else "info"


def line(note: str) -> str:
    """The note as a line of text: one to act on behind the conventional "warning: "."""
    return f"warning: {note}" if isinstance(note, ActionNote) else str(note)


def event(note: str) -> dict:
    """The note as a `--progress json` record (`level` added to the `notice` records that the
    plug-ins read: they take `message`)."""
    return {"event": "notice", "level": level(note), "message": str(note)}
