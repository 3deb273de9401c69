"""Windows and macOS behaviour, checked on Linux: each test gives the code what the other system
would (os.getppid's answer, a list file's encoding, its memory call...) and fails without the fix."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from stylefu.core.errors import UserError

# A driver that spawns one child and dies without a goodbye (as Task Manager's End task kills
# it); the child answers os.getppid as Windows does, the dead parent's PID, and waits for
# driver._driver_gone to notice.
ORPHAN_DRIVER = '''
import multiprocessing, os, sys, time

def child(folder):
    from stylefu.core.batch import driver
    first = os.getppid()
    os.getppid = lambda: first  # Windows: the dead parent's PID stays
    open(os.path.join(folder, "ready"), "w").close()
    while not driver._driver_gone(first):
        time.sleep(0.05)
    open(os.path.join(folder, "noticed"), "w").close()

if __name__ == "__main__":
    proc = multiprocessing.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    proc.start()
    print(proc.pid, flush=True)
    while not os.path.exists(os.path.join(sys.argv[1], "ready")):
        time.sleep(0.05)
    os._exit(9)
'''


def test_a_batch_worker_notices_its_killed_driver_though_getppid_keeps_its_pid(tmp_path):
    """Windows' os.getppid keeps a dead parent's PID: a worker that only compared it would wait
    for tasks forever with its model loaded. The parent's own handle (pipe) says it has ended."""
    script = tmp_path / "driver.py"
    script.write_text(ORPHAN_DRIVER, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    child = int(done.stdout.split()[0])
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "noticed").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "noticed").exists(), "the orphaned worker never noticed"
    finally:
        try:
            os.kill(child, signal.SIGKILL)  # our own child, if it is still waiting
        except ProcessLookupError:
            pass


def test_a_batch_worker_keeps_going_while_its_driver_lives(monkeypatch):
    from stylefu.core.batch import driver

    class Parent:
        def __init__(self, alive):
            self.alive = alive

        def is_alive(self):
            return self.alive

    monkeypatch.setattr(driver.os, "getppid", lambda: 4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: Parent(True))
    assert not driver._driver_gone(4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: Parent(False))
    assert driver._driver_gone(4321)
    monkeypatch.setattr(driver.multiprocessing, "parent_process", lambda: None)  # not spawned
    assert driver._driver_gone(1) and not driver._driver_gone(4321)


def _list_of(names: list[str]) -> str:
    return "# chosen\r\n" + "".join(f"{name}\r\n" for name in names)  # Windows line ends


@pytest.mark.parametrize("written", ["utf-8 with BOM", "utf-16 (PowerShell 5)", "cp1252 (ANSI)"])
def test_a_batch_list_file_from_a_windows_editor_or_shell_names_its_files(tmp_path, monkeypatch,
                                                                         written):
    """`stylefu batch @list.txt`: Notepad may start UTF-8 with a BOM, PowerShell 5's `>` writes
    UTF-16, an older editor the ANSI code page; open()'s default (cp1252 on Windows, UTF-8 here)
    would read a non-ASCII name wrong, or the first line with the BOM in it, or refuse the file."""
    from stylefu.core.io import inputs

    names = ["café.png", "über.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"not read here")
    text = _list_of(names)
    data = {"utf-8 with BOM": b"\xef\xbb\xbf" + text.encode("utf-8"),
            "utf-16 (PowerShell 5)": text.encode("utf-16"),  # BOM first
            "cp1252 (ANSI)": text.encode("cp1252")}[written]
    listing = tmp_path / "list.txt"
    listing.write_bytes(data)
    monkeypatch.setattr(inputs.locale, "getpreferredencoding", lambda do_setlocale=True: "cp1252")
    assert inputs.expand_inputs(["@" + str(listing)]) == [tmp_path / n for n in names]


def test_windows_plans_with_its_available_memory_not_a_guess(monkeypatch):
    """Windows has no /proc/meminfo and no os.sysconf: runs and batch workers were planned for
    8 GB whatever the machine had. GlobalMemoryStatusEx says what is available."""
    import ctypes

    from stylefu.core.method import tiling

    asked = []

    class Kernel32:
        @staticmethod
        def GlobalMemoryStatusEx(ref):  # noqa: N802 (the Windows name)
            status = ref._obj
            assert status.dwLength == ctypes.sizeof(status) == 64  # MEMORYSTATUSEX's size
            status.ullTotalPhys, status.ullAvailPhys = 16 << 30, 3 << 30
            asked.append(status)
            return 1

    monkeypatch.setattr(tiling, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(ctypes, "windll", type("WinDLL", (), {"kernel32": Kernel32}),
                        raising=False)
    assert tiling.available_bytes("cpu") == 3 << 30 and len(asked) == 1


def test_purge_on_windows_lists_the_shared_stylefu_folder_once(tmp_path, monkeypatch):
    """On Windows install.py's folder and the cache are both %LOCALAPPDATA%\\stylefu: the purge
    listed it twice (as the environment and as models and caches) and added its size twice."""
    from stylefu.core.io import paths
    from stylefu.plugin import purge

    local = tmp_path / "AppData" / "Local"
    root = local / "stylefu"
    python = root / "venv" / "Scripts" / "python.exe"
    python.parent.mkdir(parents=True)
    python.write_bytes(b"x" * 1000)
    (root / "install.json").write_text('{"venv": "venv"}', encoding="utf-8")
    (root / "vgg19-features.onnx").write_bytes(b"m" * 5000)
    monkeypatch.delenv("STYLEFU_CACHE")
    monkeypatch.delenv("STYLEFU_WEIGHTS_CACHE", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(local))
    monkeypatch.setattr(paths, "sys", SimpleNamespace(platform="win32"))
    items = purge.plan([], [str(python)])
    removed = [i for i in items if not i.keep]
    assert [i.path for i in removed] == [root] and "caches" in removed[0].what
    assert removed[0].size == purge.tree_size(root) >= 6000


def test_a_torch_without_onednn_runs_float32_instead_of_failing(monkeypatch):
    """PyTorch's macOS arm64 wheels are built without oneDNN (USE_MKLDNN=OFF): there
    torch.ops.mkldnn has no _is_mkldnn_bf16_supported, and `--precision auto` failed every run
    on an Apple Silicon Mac with an internal error."""
    import torch

    from stylefu.core.engines.torch.model import cpu_has_fast_bf16, resolve_precision

    def absent():
        raise RuntimeError("No such operator mkldnn::_is_mkldnn_bf16_supported")

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", absent)
    assert not cpu_has_fast_bf16()
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32


def test_a_download_python_cannot_verify_is_tried_with_certifis_bundle(tmp_path, monkeypatch):
    """python.org's macOS Python has no CA certificates until its Install Certificates.command
    runs: the official weights' download failed there (pip, with its own bundle, worked), and
    `--weights auto` quietly fell back to the other model."""
    import hashlib
    import ssl
    import urllib.error

    from stylefu.export import weights

    data = b"weights" * 1000
    contexts = []

    class Response:
        status, headers = 200, {"Content-Length": str(len(data))}

        def __init__(self):
            self.left = [data]

        def read(self, size=-1):
            return self.left.pop() if self.left else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout=None, context=None):
        contexts.append(context)
        if context is None:  # the system's (missing) CA store
            raise urllib.error.URLError(ssl.SSLCertVerificationError(
                1, "certificate verify failed: unable to get local issuer certificate"))
        return Response()

    monkeypatch.setattr(weights.urllib.request, "urlopen", urlopen)
    dest = weights.download("https://example.org/w.pth", tmp_path / "w.pth",
                            hashlib.sha256(data).hexdigest()[:8], progress=False)
    assert dest.read_bytes() == data
    assert contexts[0] is None and isinstance(contexts[1], ssl.SSLContext)


def test_stdout_in_a_windows_code_page_escapes_a_path_it_cannot_write(tmp_path, monkeypatch):
    """On Windows stdout to a pipe or file is the ANSI code page (cp1252 in the West): `stylefu
    cache status > status.txt` with a folder named in other letters was an internal error."""
    import io

    from stylefu.core.cli.main import main

    cache = tmp_path / "キャッシュ"
    cache.mkdir()
    monkeypatch.setenv("STYLEFU_CACHE", str(cache))
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252"))
    assert main(["cache", "status"]) == 0
    sys.stdout.flush()
    assert "\\u30ad\\u30e3" in raw.getvalue().decode("cp1252")


def _install_py():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "stylefu_install", Path(__file__).resolve().parents[1] / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STORE_PYTHON = (r"C:\Users\me\AppData\Local\Microsoft\WindowsApps"
                r"\PythonSoftwareFoundation.Python.3.12_qbz5n2kfra8p0\python.exe",
                r"C:\Program Files\WindowsApps"
                r"\PythonSoftwareFoundation.Python.3.12_3.12.2800.0_x64__qbz5n2kfra8p0")


def test_install_py_refuses_the_microsoft_store_python(monkeypatch, capsys):
    """The Store's Python writes new files under AppData into its private copy: the environment
    install.py made, and the plug-in `stylefu gimp install` wrote to %APPDATA%\\GIMP, were there
    for it alone, and GIMP found no filter (or a worker it could not start)."""
    install = _install_py()
    assert install.store_python("win32", STORE_PYTHON[:1])
    assert install.store_python("win32", STORE_PYTHON[1:])
    assert not install.store_python("win32", (r"C:\Users\me\AppData\Local\Programs\Python"
                                              r"\Python312\python.exe",))
    assert not install.store_python("darwin", STORE_PYTHON)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "base_prefix", STORE_PYTHON[1])
    made = []
    monkeypatch.setattr(install, "make_environment", lambda *a: made.append(a))
    assert install.main(["--light"]) == 2 and not made
    assert "Microsoft Store's Python" in capsys.readouterr().err


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_batch_outputs_differing_in_case_only_are_one_file_on_macos_and_windows(tmp_path,
                                                                                  monkeypatch,
                                                                                  platform):
    """Cat.jpg and cat.jpg (two folders) both became {stem}.png: distinct names here, one file
    on APFS and NTFS, where the second item silently replaced the first's output. On macOS also
    é written composed and decomposed (APFS ignores the difference, NTFS does not)."""
    from stylefu.core.batch import driver

    monkeypatch.setattr(driver, "sys", SimpleNamespace(platform=platform))
    composed = [tmp_path / "a" / "caf\u00e9.jpg", tmp_path / "b" / "cafe\u0301.jpg"]
    with pytest.raises(UserError, match="would both be written"):
        driver.make_items([tmp_path / "a" / "Cat.jpg", tmp_path / "b" / "cat.jpg"], ["s.jpg"],
                          tmp_path / "out")
    if platform == "darwin":
        with pytest.raises(UserError, match="would both be written"):
            driver.make_items(composed, ["s.jpg"], tmp_path / "out")
    else:
        assert len(driver.make_items(composed, ["s.jpg"], tmp_path / "out")) == 2
    assert len(driver.make_items([tmp_path / "a" / "cat.jpg", tmp_path / "b" / "dog.jpg"],
                                 ["s.jpg"], tmp_path / "out")) == 2


def test_install_py_prints_a_purge_command_that_pastes_on_macos(tmp_path, monkeypatch, capsys):
    """The environment's Python on macOS is under "Application Support": the last line's purge
    command, printed unquoted, ran /Users/.../Library/Application when pasted."""
    import shlex

    install = _install_py()
    root = tmp_path / "Library" / "Application Support" / "stylefu"
    root.mkdir(parents=True)
    python = root / "venv" / "bin" / "python"
    monkeypatch.setattr(install, "make_environment", lambda root, engine: python)
    monkeypatch.setattr(install, "install_packages", lambda *a: "light")
    monkeypatch.setattr(install, "run", lambda *a, **k: 0)
    assert install.main(["--light", "--no-model", "--prefix", str(root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "To remove everything" in x)
    words = shlex.split(line.split("To remove everything: ")[1])
    assert words == [str(python), "-m", "stylefu.core", "gimp", "uninstall", "--purge"]
    # With the environment's own stylefu there (as pip puts it), that one: PATH lacks it.
    python.parent.mkdir(parents=True)
    (python.parent / "stylefu").write_text("")
    assert install.main(["--light", "--no-model", "--prefix", str(root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "To remove everything" in x)
    command = line.split("To remove everything: ")[1]
    assert shlex.split(command) == [str(python.parent / "stylefu"), "gimp", "uninstall", "--purge"]
    from stylefu.plugin import installer  # the plug-ins' rule says the same

    assert command == installer.load_bridge().user_command(
        {"python": str(python)}, ["gimp", "uninstall", "--purge"], windows=False)
    assert install.shell_word(Path(r"C:\Users\Ann Lee\python.exe"), "win32") == \
        r'"C:\Users\Ann Lee\python.exe"'


def test_install_py_says_what_to_close_when_windows_keeps_the_old_environment(tmp_path,
                                                                            monkeypatch):
    """Switching engines makes the environment afresh; on Windows a python.exe or DLL of it in
    use (GIMP's dialog keeps a worker running) cannot be deleted: that was a traceback."""
    install = _install_py()
    (tmp_path / "venv").mkdir()
    (tmp_path / "install.json").write_text('{"venv": "venv", "engine": "torch"}', "utf-8")

    def in_use(path, *args, **kwargs):
        raise PermissionError(13, "Access is denied", str(path / "Scripts" / "python.exe"))

    monkeypatch.setattr(install, "works", lambda python: True)
    monkeypatch.setattr(install.shutil, "rmtree", in_use)
    with pytest.raises(install.InstallError, match="close GIMP"):
        install.make_environment(tmp_path, "light")


def test_a_ray_node_file_another_worker_just_wrote_is_used_not_a_failed_item(tmp_path,
                                                                               monkeypatch):
    """Two Ray workers of one node materialise one model or target entry at once: on Windows
    the second rename onto it fails (PermissionError) while the first's copy is open, which
    failed the item; that copy holds the same bytes."""
    import os

    from stylefu.core.batch import ray_pool

    data = b"model bytes"

    def windows_replace(src, dst):
        Path(dst).write_bytes(data)  # the other worker's copy, open there meanwhile
        raise PermissionError(13, "Access is denied", str(src), None, str(dst))

    monkeypatch.setattr(os, "replace", windows_replace)
    path = ray_pool._materialize(tmp_path, "model.onnx", data)
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary left


def test_the_windows_purge_of_the_running_environment_works_from_outside_it(tmp_path,
                                                                              monkeypatch):
    """The detached cmd that removes the running environment after the purge inherited the
    purge's current folder: run from inside the environment (its Scripts folder), cmd held that
    folder, which Windows then cannot remove."""
    from stylefu.plugin import purge

    started = []
    monkeypatch.setattr(purge.subprocess, "Popen", lambda command, **kw: started.append(kw))
    env = tmp_path / "stylefu"
    (env / "venv" / "Scripts").mkdir(parents=True)
    monkeypatch.chdir(env / "venv" / "Scripts")
    purge._remove_after_exit(env)
    cwd = Path(started[0].get("cwd") or Path.cwd()).resolve()
    assert not cwd.is_relative_to(env.resolve())


VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               12000.
Pages active:                            183622.
Pages inactive:                          100000.
Pages speculative:                         8000.
Pages throttled:                              0.
Pages wired down:                        105435.
Pages purgeable:                           8532.
"Translation faults":                 912345678.
Pages copy-on-write:                   12345678.
Pages zero filled:                    512345678.
Pages reactivated:                      1234567.
Pages purged:                            234567.
File-backed pages:                       150000.
Anonymous pages:                         140000.
Pages stored in compressor:              300000.
Pages occupied by compressor:            100000.
Decompressions:                         2345678.
Compressions:                           3456789.
Pageins:                                 456789.
Pageouts:                                  5678.
Swapins:                                      0.
Swapouts:                                     0.
"""


def test_macos_plans_with_what_vm_stat_says_is_free_not_a_guess(monkeypatch):
    """macOS has no /proc/meminfo and no SC_AVPHYS_PAGES (os.sysconf raises ValueError): every
    Mac was planned as 8 GB. vm_stat's free, inactive and speculative pages are what it can
    hand out."""
    from stylefu.core.method import tiling

    ran = []

    def vm_stat(command, **kwargs):
        ran.append(command)
        return subprocess.CompletedProcess(command, 0, VM_STAT, "")

    monkeypatch.setattr(tiling, "sys", SimpleNamespace(platform="darwin"))
    monkeypatch.setattr(tiling.subprocess, "run", vm_stat)
    assert tiling.available_bytes("cpu") == 16384 * (12000 + 100000 + 8000)
    assert ran == [["/usr/bin/vm_stat"]]
    monkeypatch.setattr(tiling.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 0, "nothing it knows", ""))
    assert tiling.available_bytes("cpu") > 0  # an odd answer: the usual guess, no error


def test_an_intel_mac_gets_the_numpy_its_torch_was_built_for():
    """torch 2.2.2 is the last torch with Intel-Mac wheels, built against numpy 1; `pip install
    stylefu` (and install.py) took numpy 2 with it, where torch.from_numpy raises "Numpy is not
    available": every torch-engine run failed. Resolved as test_dependencies.py resolves."""
    from test_dependencies import ROOT, UNREACHABLE, resolve

    done = resolve(ROOT / "pyproject.toml", "x86_64-apple-darwin", "3.12")
    if done.returncode and any(text in done.stderr for text in UNREACHABLE):
        pytest.skip(f"the package index is unreachable: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    pins = dict(line.strip().split("==") for line in done.stdout.splitlines() if "==" in line)
    if tuple(int(p) for p in pins["torch"].split(".")[:2]) < (2, 3):
        assert int(pins["numpy"].split(".")[0]) < 2, pins


def _core_record(relationship: int, size: int = 48) -> bytes:
    return struct.pack("<II", relationship, size) + bytes(size - 8)


def test_windows_cores_count_processor_core_records_only():
    """GetLogicalProcessorInformationEx lists one record per physical core (hyperthread twins
    share it): 4 cores of 8 threads give 4 threads, not os.cpu_count's 8."""
    from stylefu.core.network.forward import count_core_records
    records = b"".join(_core_record(0) for _ in range(4)) + _core_record(2, 80)
    assert count_core_records(records) == 4
    assert count_core_records(records + struct.pack("<II", 0, 0)) == 4  # a broken tail ends it
    assert count_core_records(b"") == 0


def test_mac_cores_prefer_performance_cores(monkeypatch):
    """Apple Silicon: performance cores (an even split waits for efficiency cores); an Intel Mac
    has no perflevel: its physical cores. Unknown falls back to the logical CPUs."""
    from stylefu.core.network import forward
    m1 = {"hw.perflevel0.physicalcpu": 4, "hw.physicalcpu": 8}.get
    assert forward._mac_cores(m1) == 4
    assert forward._mac_cores({"hw.physicalcpu": 6}.get) == 6
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(forward, "_sysctl_int", m1)
    assert forward.usable_cores() == 4
    monkeypatch.setattr(forward, "_sysctl_int", lambda name: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 10)
    assert forward.usable_cores() == 10
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(forward, "_windows_cores", lambda: 6)
    assert forward.usable_cores() == 6
