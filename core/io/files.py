"""Files written and checked the one way: atomic writes, writable folders, file hashes, and what
an input or output path really is (a folder, a link loop, a device...) for one-sentence errors."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import UserError

T = TypeVar("T")


def check_writable_folder(folder: str | Path, fix: str = "choose another output path") -> None:
    """UserError (naming `fix`) unless `folder` exists and this process may write into it."""
    folder = Path(folder)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"Cannot write to the folder {folder}; {fix}.")


def _short_name(path: Path) -> str:
    # At most 200 bytes of the name: a name near the file system's 255-byte limit must still fit.
    return os.fsdecode(os.fsencode(path.name)[:200])


def temporary_sibling(path: Path) -> Path:
    """A hidden sibling of `path`, unique per process and call: two writers never share it. Its
    name carries the writer's PID, so `remove_stale_temporaries` can tell a dead writer's file."""
    return path.with_name(f".{_short_name(path)}.{os.getpid()}.{uuid.uuid4().hex[:16]}.tmp")


_WINDOWS = os.name == "nt"


def _alive(pid: int) -> bool:
    if _WINDOWS:  # there os.kill(pid, 0) is TerminateProcess: it would kill the writer
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's live process (or a platform without it)
        return True
    return True


def _windows_alive(pid: int) -> bool:
    """Whether process `pid` runs, asked without touching it (OpenProcess, GetExitCodeProcess)."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p  # a HANDLE: pointer-sized
    kernel32.OpenProcess.argtypes = (ctypes.c_ulong, ctypes.c_int, ctypes.c_ulong)
    kernel32.GetExitCodeProcess.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong))
    kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: another user's, running
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259
    finally:  # 259: STILL_ACTIVE
        kernel32.CloseHandle(handle)


def remove_stale_temporaries(paths: Iterable[str | Path], max_age_s: float = 86400.0) -> None:
    """Delete the temporary siblings of `paths` that a killed writer left: those whose writer PID
    is no longer alive, or older than `max_age_s` (a PID reused since); a live writer's stay.
    Each folder is listed once, however many of `paths` it holds."""
    names: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        names.setdefault(path.parent, set()).add(_short_name(path))
    pattern = re.compile(r"\.(.+)\.(\d+)\.[0-9a-f]{16}\.tmp")
    for folder, wanted in names.items():
        try:
            found = [(p, pattern.fullmatch(p.name)) for p in folder.iterdir()]
        except OSError:  # a folder we may not list: nothing of ours to remove there
            continue
        for tmp, match in found:
            if not match or match[1] not in wanted:
                continue
            try:
                if not _alive(int(match[2])) or time.time() - tmp.lstat().st_mtime > max_age_s:
                    tmp.unlink()
            except OSError:  # removed meanwhile by its writer, or not ours to remove
                continue


def cache_write(path: str | Path, write: Callable[[Path], object]) -> bool:
    """`atomic_write` for caches: False, and nothing left behind, when it fails (a full disk, a
    read-only or over-quota folder, a file where a folder should be): a cache only costs speed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        return True
    except (OSError, RuntimeError, UserError):  # RuntimeError: torch.save's writer on a full disk
        return False


def atomic_write(path: str | Path, write: Callable[[Path], object],
                 fix: str = "choose another output path") -> Path:
    """Call `write(tmp)` on a temporary sibling of `path`, then rename it onto `path`.

    A crash or error never leaves a half-written file at `path`; problems are UserErrors. A
    symbolic link at `path` gets its target replaced; a folder or special file is refused.
    """
    path = check_output_path(path, "output")  # a link: its target; a special file: refused
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


def identity(path: str | Path) -> tuple[int, int, int, int]:
    """What tells one file at `path` from a file renamed onto it later: device, inode, size, mtime."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def stamp(path: str | Path) -> tuple[int, int, int, int] | None:
    """identity(path), None where it cannot be read: a cache key that changes with the file."""
    try:
        return identity(path)
    except OSError:
        return None


def load_unchanged(path: str | Path, load: Callable[[], T], tries: int = 5) -> T:
    """`load()`, done again when the file at `path` was replaced meanwhile (an export renamed a
    new file onto it): everything `load` opened by that path then comes from one file."""
    for _ in range(tries):
        before = identity(path)
        value = load()
        if identity(path) == before:
            return value
    raise UserError(f"{path} was replaced {tries} times while it was being read; try again "
                    "once nothing writes to it.")


_WEB_ADDRESS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # https://, s3://: not a drive's C:/


def path_kind(path: str | Path) -> str:
    """What is at `path`, in words for a message: "file" (a regular file, links followed),
    "missing", or e.g. "a folder", "a symbolic link loop", "a character device", "a web
    address"."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a link to {os.readlink(path)}, which does not exist"
        if _WEB_ADDRESS.match(str(path)):
            return "a web address (stylefu reads files: download it first)"
        return "missing"
    except OSError as exc:
        return {errno.ELOOP: "a symbolic link loop", errno.ENAMETOOLONG: "a name too long for the "
                "file system", errno.EACCES: "inside a folder you may not read",
                errno.ENOTDIR: "a path through a file (not a folder)"}.get(
                    exc.errno, f"unusable ({exc.strerror})")
    for test, kind in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first: what making it
    makes (for remove_empty when the command that made them fails)."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Each of `folders` (deepest first) while it is empty: nothing else is removed."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def check_input_file(path: str | Path, what: str = "Image file") -> Path:
    """`path` as a Path when it is a readable, non-empty regular file; else a UserError saying
    what is there instead (a folder, a link loop, a device...), never just "does not exist"."""
    typed = os.fsdecode(path)  # a bytes path too, as os's functions take
    path = Path(typed)
    kind = path_kind(path)
    if kind == "missing":
        raise UserError(f"{what} {path} does not exist.")
    if kind.startswith(("a link to", "a web address")):
        raise UserError(f"{what} {typed} is {kind}.")
    if kind != "file":
        raise UserError(f"{what} {path} is {kind}, not a file; give the path of a file.")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} cannot be read (permission denied).")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes).")
    return path


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_length(path: str | Path, option: str = "-o") -> None:
    """UserError naming `option` when `path`'s file name is longer than its file system takes
    (NAME_MAX bytes, 255 on most), asked of its nearest folder that exists (it may be made later)."""
    path = Path(path)
    folder = next((p for p in path.parents if p.is_dir()), Path("."))
    limit, size = _name_max(folder), len(os.fsencode(path.name))
    if size > limit:
        raise UserError(f"{option}: the file name {path.name[:32]}... is too long for the file "
                        f"system ({size} bytes, {limit} at most).")


def check_output_path(path: str | Path, option: str = "-o", suffixes: Sequence[str] | None = None,
                      inputs: Sequence = (), example: str | None = None) -> Path:
    """The file an output named `path` will really be written to, checked before any work.

    A regular file there is replaced (atomically); a symbolic link means its target; a folder,
    device, FIFO, socket or link loop is refused, as are an unknown suffix (when `suffixes` is
    given), a missing or read-only folder, a name too long and any of the `inputs` (paths): the
    inputs are never modified. Raises UserError naming `option`.
    """
    path = Path(os.fsdecode(path))  # a bytes path too, as os's functions take
    check_name_length(path, option)
    kind = path_kind(path)
    target = path  # a link means its target: a file is replaced there, a dangling link creates it
    if os.path.islink(path) and (kind == "file" or kind.startswith("a link to")):
        target = Path(os.path.realpath(path))
        kind = path_kind(target)
    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"Cannot write {option} {path}: {folder} "
                        f"{'is not a folder' if folder.exists() else 'does not exist'}; "
                        "choose another path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"Cannot write to the folder {folder} ({option}); choose another path.")
    if kind == "a folder":  # `example`: a file name inside it, to suggest
        example = example or "out" + (suffixes[0] if suffixes else ".json")
        raise UserError(f"{option} {path} is a folder; name a file inside it, e.g. "
                        f"{path / example}.")
    if kind not in ("file", "missing"):
        raise UserError(f"{option} {path} is {kind}; stylefu only replaces regular files, so "
                        "name a new file or an existing one.")
    suffix = path.suffix.lower()
    if suffixes and suffix not in suffixes:
        raise UserError(f"{option} {path}: unknown image type {suffix or '(no suffix)'!r}; "
                        f"end the name with one of {', '.join(suffixes)}.")
    for source in inputs:
        if kind == "file" and isinstance(source, (str, os.PathLike)) and \
                path_kind(source) == "file" and os.path.samefile(target, source):
            raise UserError(f"{option} {path} is also an input ({source}); stylefu never "
                            "overwrites its inputs: choose another output name.")
    return target


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
