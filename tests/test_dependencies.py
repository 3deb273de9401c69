"""`pip install stylefu` must resolve on every platform GIMP users have: the dependency set is
resolved from the package index for each one, as uv resolves for another platform (its markers
evaluated for that platform, wheels only, metadata only: nothing is downloaded or installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (uv's platform name, the ONNX Runtime package it must take): onnxruntime-gpu has wheels for
# Linux and Windows on x86-64 only.
PLATFORMS = [("x86_64-manylinux_2_28", "onnxruntime-gpu"), ("aarch64-manylinux_2_28", "onnxruntime"),
             ("x86_64-pc-windows-msvc", "onnxruntime-gpu"), ("aarch64-apple-darwin", "onnxruntime")]
UNREACHABLE = ("Failed to fetch", "error sending request", "dns error", "Could not connect")


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed (the test extra has it)")
    return found


def resolve(pyproject: Path, platform: str, python: str) -> subprocess.CompletedProcess:
    return subprocess.run([uv(), "pip", "compile", str(pyproject), "--python-platform", platform,
                           "--python-version", python, "--only-binary", ":all:", "--no-header",
                           "--no-annotate", "--quiet", "--no-python-downloads", "--python",
                           sys.executable], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, UV_NO_PROGRESS="1"))


PYTHONS = ["3.10", "3.12"]


@pytest.fixture(scope="module")
def resolved():
    """Every (platform, Python) resolution, at once: each waits mostly on the index."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [(platform, python) for platform, _ in PLATFORMS for python in PYTHONS]
    with ThreadPoolExecutor(len(cases)) as pool:
        done = pool.map(lambda case: resolve(ROOT / "pyproject.toml", *case), cases)
        return dict(zip(cases, done))


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform, runtime", PLATFORMS)
def test_dependencies_resolve_on_every_platform(resolved, platform, runtime, python):
    done = resolved[platform, python]
    if done.returncode and any(text in done.stderr for text in UNREACHABLE):
        pytest.skip(f"the package index is unreachable: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    names = {line.split("==")[0] for line in done.stdout.splitlines() if "==" in line}
    assert {"torch", "onnx", "numpy", "pillow", runtime} <= names
    assert ({"onnxruntime", "onnxruntime-gpu"} - {runtime}).isdisjoint(names)


def test_resolving_fails_for_a_package_without_wheels_there(tmp_path):
    """The check can fail: onnxruntime-gpu asked for everywhere (as it once was) has no macOS wheel."""
    text = (ROOT / "pyproject.toml").read_text()
    start, end = text.index("dependencies = ["), text.index("]", text.index("dependencies = ["))
    (tmp_path / "pyproject.toml").write_text(
        text[:start] + 'dependencies = ["onnxruntime-gpu>=1.17"' + text[end:])
    done = resolve(tmp_path / "pyproject.toml", "aarch64-apple-darwin", "3.12")
    if done.returncode and any(text in done.stderr for text in UNREACHABLE):
        pytest.skip(f"the package index is unreachable: {done.stderr.strip()[:200]}")
    assert done.returncode != 0 and "onnxruntime-gpu" in done.stderr
