"""`python -m stylefu.core ...` is the `stylefu` command (the GIMP plug-ins' worker uses it), and
`main` here is the `stylefu` program's entry point."""

import signal


def main() -> int:
    """The `stylefu` program. A Ctrl-C while the command's modules import (numpy, Pillow: a few
    tenths of a second) is held until the command can report it as any other: no traceback."""
    early: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: early.append(number))
    try:
        from .cli.main import main as command
    finally:
        signal.signal(signal.SIGINT, previous)
    return command(interrupted_at_start=bool(early))


if __name__ == "__main__":
    raise SystemExit(main())
