"""Faults a user meets, found by exploratory fault testing (session 38), each case failing
without its fix: file names that are not UTF-8, a batch whose manifest cannot be written.

The wider fault suite is tests/test_faults.py; the helpers here are its.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_fuzz
from test_fuzz import RUN, cli, strict_records

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
