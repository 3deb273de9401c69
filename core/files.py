"""Files written and checked the one way: atomic writes, writable folders, file hashes."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import UserError


def check_writable_folder(folder: str | Path, fix: str = "choose another output path") -> None:
    """UserError (naming `fix`) unless `folder` exists and this process may write into it."""
    folder = Path(folder)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"Cannot write to the folder {folder}; {fix}.")


def temporary_sibling(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and call: two writers never share it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object],
                 fix: str = "choose another output path") -> Path:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it onto `path`.

    A crash or error never leaves a half-written file at `path`; problems are UserErrors.
    """
    path = Path(path)
    check_writable_folder(path.parent, fix)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"Cannot write {path} ({exc.strerror or exc}); {fix}.") from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return path


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
