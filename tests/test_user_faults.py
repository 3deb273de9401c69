"""Faults a user meets, found by exploratory fault testing (session 38), each case failing
without its fix: file names that are not UTF-8, a batch whose manifest cannot be written.

The wider fault suite is tests/test_faults.py; the helpers here are its.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import test_fuzz
from test_faults import mount_small_filesystem
from test_fuzz import RUN, assert_refused, cli, strict_records

from stylefu.core.batch.driver import Manifest
from stylefu.core.errors import UserError

world = test_fuzz.world  # the fixture: a scratch folder with inputs, a model and a snapshot


def not_utf8(folder: Path, name: bytes) -> Path:
    """`folder`/`name`, a name that is not valid UTF-8 (any bytes on Linux); skips where the file
    system refuses such names (macOS, Windows)."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        path.touch()
        path.unlink()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    return path


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_model_named_in_latin1_runs(world, capsys, monkeypatch, engine):
    """ONNX Runtime takes only UTF-8 paths, so a model at `mod\\xe9l.onnx` (a Latin-1 name) was
    "not readable, re-create it" (onnx engine, `info`) or an internal error (torch's weights copy
    named from the path): it is an ordinary model and must run, its cache in such a folder too."""
    model = not_utf8(world.root, b"mod\xe9l.onnx")
    os.link(world.model, model)
    monkeypatch.setenv("STYLEFU_CACHE", str(not_utf8(world.root, b"cach\xe9")))  # the graph's
    out = world.root / "out.png"
    done = cli(capsys, "run", world.content, world.style, "-o", out, "--model", model, *RUN,
               "--engine", engine, "--progress", "json")
    assert done.code == 0, done.err
    assert strict_records(done.out)[-1]["event"] == "result" and out.is_file()
    assert cli(capsys, "info", "--model", model).code == 0


def test_a_batch_stops_naming_its_manifest_when_it_cannot_be_written():
    """A full disk fails the manifest's flush, whose OSError names no file: the batch said only
    "No space left on device; check the path..." (which path?). /dev/full fails every write
    with ENOSPC, as a full disk does."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    manifest = Manifest(Path("/dev/full"))
    with pytest.raises(UserError, match=r"manifest /dev/full \(No space left on device\).*--resume"):
        manifest.append({"index": 0, "status": "ok"})
    manifest.close()  # once failed, closing raises nothing more


def test_a_batch_into_a_read_only_folder_is_refused_before_any_work(world, capsys, tmp_path):
    """A read-only -o folder was found only when the first finished item's manifest line could
    not be written, after the targets and that item's run; it is refused first, named."""
    with contextlib.ExitStack() as stack:
        folder = mount_small_filesystem(tmp_path / "ro", "read-only", stack)
        if folder is None:  # not root: a folder without write permission does the same
            folder = tmp_path / "ro"
            folder.chmod(0o555)
            stack.callback(folder.chmod, 0o755)
        before = world.snapshot()
        done = cli(capsys, "batch", world.content, "--style", world.style, "-o", folder,
                   "--model", world.model, *RUN, "--progress", "json")
        assert_refused(done, [f"Cannot write to the folder {folder}; choose another -o."],
                       before, world)
        assert [r["event"] for r in strict_records(done.out)] == ["error"]  # no item ran
        assert not list(folder.iterdir())
