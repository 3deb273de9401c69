"""`stylefu gimp uninstall --purge`: the plug-ins, and also the private environment that the
one-command install (install.py) made, the models and the caches; listed with sizes first.

The private environment is recognised by the file install.py writes beside it (`install.json`
in its parent folder, naming it): only a folder that says it was made for stylefu is removed,
never an environment someone made by hand. Folders that variables point elsewhere
($STYLEFU_WEIGHTS_CACHE, $STYLEFU_MODEL: shared on purpose, e.g. CI's weights cache) are kept,
and the listing says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stylefu.core.io.paths import cache_dir, default_model_path, weights_dir

# What install.py writes in the private environment's parent folder (keep the two in step:
# tests/test_bootstrap.py installs with install.py and purges with this module).
MARKER = "install.json"


@dataclass(frozen=True)
class Item:
    path: Path
    what: str
    size: int
    keep: str = ""  # why it stays, when it does


def tree_size(path: Path) -> int:
    """Bytes under `path` (links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def private_root(prefix: Path) -> Path | None:
    """The folder install.py made around the environment at `prefix`, or None if it did not."""
    marker = prefix.parent / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8")).get("venv")
    except (OSError, ValueError, AttributeError):
        return None
    return prefix.parent if recorded == prefix.name else None


def environment_of(python: str) -> Path:
    """The environment a recorded interpreter belongs to (bin/python or Scripts\\python.exe)."""
    return Path(python).absolute().parent.parent


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def plan(plugin_files: list[Path], pythons: list[str]) -> list[Item]:
    """What the purge removes (and what it keeps, with why): `plugin_files` as installed,
    `pythons` the worker interpreters the installed plug-ins recorded."""
    items = [Item(p, "plug-in file", tree_size(p)) for p in plugin_files]
    roots = []
    for prefix in [Path(sys.prefix), *(environment_of(p) for p in pythons)]:
        root = private_root(prefix)
        if root is not None and root not in roots:
            roots.append(root)
    cache = cache_dir()
    # On Windows both are %LOCALAPPDATA%\stylefu: one item, its size counted once.
    holders = [root for root in roots if _inside(cache, root)]
    items += [Item(root, "private environment" + (", models and caches" if root in holders else ""),
                   tree_size(root)) for root in roots]
    if cache.exists() and not holders:
        items.append(Item(cache, "models and caches", tree_size(cache)))
    for path, what, variable in ((weights_dir(), "downloaded weights", "STYLEFU_WEIGHTS_CACHE"),
                                 (default_model_path(), "the model", "STYLEFU_MODEL")):
        if path.exists() and not _inside(path, cache):
            items.append(Item(path, what, tree_size(path), keep=f"${variable} points there"))
    return items


def describe(items: list[Item]) -> list[str]:
    lines = []
    for item in items:
        size = f"{item.size / 1e6:.1f} MB"
        if item.keep:
            lines.append(f"  keeps   {item.path} ({item.what}, {size}: {item.keep})")
        else:
            lines.append(f"  removes {item.path} ({item.what}, {size})")
    removed = sum(i.size for i in items if not i.keep)
    lines.append(f"  in all {removed / 1e6:.1f} MB")
    return lines


def remove(items: list[Item]) -> list[Path]:
    """Remove every item not kept; the running environment last (on Windows its python.exe is
    in use, so a process that outlives this one removes it)."""
    running = Path(sys.prefix)
    removed, last = [], []
    for item in items:
        if item.keep:
            continue
        if _inside(running, item.path):
            last.append(item.path)
            continue
        _remove_path(item.path)
        removed.append(item.path)
    for path in last:
        if os.name == "nt":
            _remove_after_exit(path)
        else:  # POSIX removes files in use; nothing is imported after this
            _remove_path(path)
        removed.append(path)
    return removed


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
        parent = path.parent  # the GIMP 3 plug-in's own folder, once empty
        if parent.name == "stylefu" and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def _remove_after_exit(path: Path) -> None:
    """Windows: a detached cmd waits for this process to end, then removes `path`."""
    command = (f'cmd /c "for /l %i in (1,1,30) do (ping -n 2 127.0.0.1 >nul & '
               f'rmdir /s /q "{path}" 2>nul & if not exist "{path}" exit)"')
    # Its working folder outside `path`: a process's current folder cannot be removed there (the
    # purge may well be run from inside the environment, e.g. from its Scripts folder).
    subprocess.Popen(command, creationflags=0x00000008 | 0x00000200,  # DETACHED, NEW_GROUP
                     cwd=str(path.parent), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
