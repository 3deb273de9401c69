"""The images a command is given: folders (their images), globs, `@list.txt` files and plain
paths, as `stylefu batch` takes its inputs and `stylefu preview` its styles."""

from __future__ import annotations

import codecs
import glob
import locale
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import notes
from ..errors import UserError
from .files import check_input_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".avif", ".npy")
HEIF_SUFFIXES = (".heic", ".heif")  # an iPhone's photos: a folder's are counted, never read


def natural_key(path: Path) -> list:
    """frame2 before frame10: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def list_text(path: Path) -> str:
    """A list file's text as editors and shells write it: UTF-8 (with the BOM Notepad may put
    first, or without), UTF-16 with its BOM (Windows PowerShell 5's `dir -Name > list.txt`),
    else the system's code page (an ANSI list on Windows, where that is not UTF-8)."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        encoding = locale.getpreferredencoding(False)
        if os.name == "posix" and codecs.lookup(encoding).name == "utf-8" and \
                not re.search(rb"[\x00-\x08\x0e-\x1f\x7f]", data):  # text, not an image's bytes
            return os.fsdecode(data)  # names there are bytes: `ls > list` in a Latin-1 folder
        return data.decode(encoding)


def set_kind(spec: str) -> str | None:
    """The set of images `spec` names, in words: "a list file" (`@list.txt`), "a folder", "a
    pattern" (a glob that is no file's name); None for one file."""
    if spec.startswith("@"):
        return "a list file"
    if Path(spec).is_dir():
        return "a folder"
    if glob.has_magic(spec) and not Path(spec).exists():
        return "a pattern"
    return None


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """A file's identity (device, inode: a link to it is the same file); None where it is not."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def listed_outputs(specs: Sequence[str], paths: Sequence[Path],
                   outputs: set[tuple[int, int] | None]) -> set[Path]:
    """Those of `paths` (expand_inputs' of `specs`) that a folder, pattern or list brought in and
    that are one of `outputs` (file_id's): a command's own outputs found again by listing the
    folder it writes to, left out rather than read as inputs. A path named alone stays."""
    named = {Path(spec) for spec in specs if set_kind(spec) is None}
    outputs = outputs - {None}  # (an output not there yet)
    return {path for path in paths if path not in named and file_id(path) in outputs}


def _without_sheets(paths: list[Path], spec: str, log: Callable[[str], None]) -> list[Path]:
    """`paths` less stylefu's preview sheets (one written beside its styles is no style)."""
    from .images import is_preview_sheet

    sheets = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.suffix != ".npy"
              and p.is_file() and is_preview_sheet(p)]  # (opening a FIFO would block)
    if not sheets:
        return paths
    named = f"{', '.join(p.name for p in sheets[:3])}{', ...' if len(sheets) > 3 else ''}"
    if len(sheets) == len(paths):
        raise UserError(f"{spec} brings in only stylefu preview sheets ({named}); name one alone "
                        "to use it.")
    log(notes.act(f"{len(sheets)} stylefu preview sheet(s) in {spec} left out ({named}); name "
                  "one alone to use it."))
    return [p for p in paths if p not in sheets]


def expand_inputs(specs: Sequence[str], log: Callable[[str], None] = notes.to_logger) -> list[Path]:
    """Folders (their images), globs, `@list.txt` (one path a line, relative to the list's folder,
    `#` comments) and plain paths, in natural order within each spec, duplicates dropped.

    A plain path is kept even when it does not exist (that item fails alone); a folder without
    images, a glob without matches or a missing list file is the user's error. HEIC photos in a
    folder beside images, and stylefu's preview sheets a folder or pattern brings in, are left
    out with a note to `log`, to act on.
    """
    found: list[Path] = []
    for spec in specs:
        kind = set_kind(spec)
        if kind == "a list file":
            listing = check_input_file(spec[1:], "List file")  # a FIFO would block the read
            try:
                lines = [line.strip() for line in list_text(listing).splitlines()]
            except (OSError, UnicodeDecodeError):
                raise UserError(f"List file {listing} is not readable text; give @PATH to a text "
                                "file with one image path a line.") from None
            named = [Path(line) for line in lines if line and not line.startswith("#")]
            if not named:  # else a batch of nothing, with exit 0
                raise UserError(f"List file {listing} names no image (only blank lines and # "
                                "comments); give one image path a line.")
            found += [p if p.is_absolute() else listing.parent / p for p in named]
        elif kind == "a folder":
            entries = list(Path(spec).iterdir())
            images = sorted((p for p in entries
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
            heic = sum(p.suffix.lower() in HEIF_SUFFIXES for p in entries)
            if not images:
                raise UserError(f"The folder {spec} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                + (f"; its {heic} HEIC photo(s) stylefu cannot read: save them as "
                                   "JPEG first." if heic else "."))
            if heic:
                log(notes.act(f"{heic} HEIC photo(s) in {spec} left out: stylefu cannot read "
                              "HEIC; save them as JPEG to include them."))
            found += _without_sheets(images, spec, log)
        elif kind == "a pattern":
            matches = sorted((Path(p) for p in glob.glob(spec, recursive=True)), key=natural_key)
            if not matches:
                raise UserError(f"No file matches {spec!r}; check the pattern (quote it so the shell "
                                "does not expand it).")
            found += _without_sheets(matches, spec, log)
        else:
            found.append(Path(spec))
    return list(dict.fromkeys(found))
