"""`stylefu gimp install|uninstall|status`: put the plug-ins where GIMP looks for them.

GIMP's Python cannot import stylefu, so the installer writes, beside each plug-in, a settings
file (`<plug-in>.json`) with the worker interpreter (this environment's Python), the model path
and the dialog's defaults, choices and ranges, taken from `stylefu.core.Config` and the bridge.
GIMP 3 runs `plug-ins/stylefu/stylefu.py` (it requires NAME/NAME.py with the run bit set) and
imports the shared bridge, `stylefu_bridge.py`, installed beside it. GIMP 2.10 runs
`plug-ins/stylefu_gimp2.py`, with the bridge pasted into it: 2.10 on Windows would also run any
other .py file there, so that plug-in is one self-contained file.

User plug-in folders (GIMP 3 shown; 2.10 uses `2.10` instead of `3.0`):
  Linux    $XDG_CONFIG_HOME/GIMP/3.0/plug-ins (default ~/.config/GIMP/3.0/plug-ins)
  Flatpak  ~/.var/app/org.gimp.GIMP/config/GIMP/3.0/plug-ins
  Windows  %APPDATA%\\GIMP\\3.0\\plug-ins
  macOS    ~/Library/Application Support/GIMP/3.0/plug-ins
$GIMP3_DIRECTORY / $GIMP2_DIRECTORY replace the version folder, as in GIMP itself. Every existing
3.x folder is used (3.0, 3.2, ...); on Linux both native and Flatpak GIMP when both are there.
None is made: GIMP makes its folder on its first start (bringing over 2.10's settings only then).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stylefu.core.errors import UserError
from stylefu.core.io.files import atomic_write
from stylefu.core.io.paths import cache_dir, default_model_path
from stylefu.core.method.config import PRESETS, STRENGTH_NEUTRAL, STRENGTH_RANGE, Config, config_fields
from stylefu.core.method.fullres import UPSCALE_MODES
from stylefu.core.network.vgg import MIN_SIDE

PLUGIN_ROOT = Path(__file__).resolve().parent
BRIDGE = PLUGIN_ROOT / "common" / "stylefu_bridge.py"
FLATPAK_APP = "org.gimp.GIMP"
VERSIONS = ("3", "2.10")
FOUND = "found"  # `install --gimp found`: GIMP 3, and 2.10 where its config folder exists
# Evaluations between two looks at the painting in GIMP (the layer updates during a run).
PREVIEW_EVERY = 10
# The dialog's settings keys (the plug-ins' names, kept for installed plug-ins) -> Config fields.
DIALOG_FIELDS = {"preset": "preset", "iterations": "evaluations", "size": "size",
                 "preserve_colors": "preserve_colors", "style_scale": "style_scale", "seed": "seed",
                 "device": "device", "strength": "strength", "tile_size": "crop_side"}


@dataclass(frozen=True)
class Target:
    """One plug-in as GIMP `version` will load it from `plug_ins` ('native', 'flatpak', ...)."""

    version: str
    plug_ins: Path
    kind: str

    @property
    def plugin_file(self) -> Path:
        if self.version == "3":
            return self.plug_ins / "stylefu" / "stylefu.py"
        return self.plug_ins / "stylefu_gimp2.py"

    @property
    def settings_file(self) -> Path:
        return self.plugin_file.with_suffix(".json")

    @property
    def bridge_file(self) -> Path | None:
        """The bridge module beside the GIMP 3 plug-in; None for 2.10 (pasted into the plug-in)."""
        return self.plugin_file.with_name(BRIDGE.name) if self.version == "3" else None

    @property
    def files(self) -> list[Path]:
        """Everything `install` writes for this target."""
        return [p for p in (self.plugin_file, self.bridge_file, self.settings_file) if p]

    @property
    def source(self) -> Path:
        if self.version == "3":
            return PLUGIN_ROOT / "gimp3" / "stylefu.py"
        return PLUGIN_ROOT / "gimp2" / "stylefu_gimp2.py"


# --- where GIMP looks -------------------------------------------------------------------------

def _series(base: Path, version: str) -> list[Path]:
    """GIMP's per-series config folders under `base`: every existing 3.x, else 3.0; or 2.10."""
    if version == "2.10":
        return [base / "2.10"]
    found = sorted((p for p in base.glob("3.*") if p.is_dir() and re.fullmatch(r"3\.\d+", p.name)),
                   key=lambda p: int(p.name.split(".")[1]))
    return found or [base / "3.0"]


def gimp_config_dirs(version: str = "3", platform: str | None = None, env=None,
                     home: Path | None = None) -> list[tuple[str, Path]]:
    """(kind, GIMP config folder) pairs the plug-in goes into, by the rules in the module doc."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path(home or Path.home())
    override = env.get("GIMP3_DIRECTORY" if version == "3" else "GIMP2_DIRECTORY")
    if override:
        return [(f"GIMP{version[0]}_DIRECTORY", Path(override).expanduser())]
    if platform == "win32":
        base = Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP"
        return [("windows", p) for p in _series(base, version)]
    if platform == "darwin":
        base = home / "Library" / "Application Support" / "GIMP"
        return [("macos", p) for p in _series(base, version)]
    native_base = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "GIMP"
    flatpak_app = home / ".var" / "app" / FLATPAK_APP
    native = _series(native_base, version)
    dirs = []
    if any(p.is_dir() for p in native) or not flatpak_app.is_dir():
        dirs += [("native", p) for p in native]
    if flatpak_app.is_dir():
        dirs += [("flatpak", p) for p in _series(flatpak_app / "config" / "GIMP", version)]
    return dirs


def targets(version: str = "3", plug_ins_dir: str | Path | None = None, **where) -> list[Target]:
    if plug_ins_dir:
        try:
            folder = Path(plug_ins_dir).expanduser().resolve()
        except (OSError, RuntimeError):  # a symbolic link loop
            raise UserError(f"--plug-ins-dir {plug_ins_dir} cannot be resolved (a symbolic link "
                            "loop?); give a real folder.") from None
        return [Target(version, folder, "given")]
    return [Target(version, folder / "plug-ins", kind)
            for kind, folder in gimp_config_dirs(version, **where)]


def user_command(args: list[str]) -> str:
    """`stylefu ARGS` as this environment's user can type it (its own script: install.py's
    environment is not on PATH); the bridge's rule, which the plug-ins' messages follow."""
    return load_bridge().user_command({"python": sys.executable}, args)


def load_bridge():
    """plugin/common/stylefu_bridge.py as a module (it is not part of the stylefu package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stylefu_bridge", BRIDGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- what gets written ------------------------------------------------------------------------

def inline_bridge(plugin_text: str, bridge_text: str) -> str:
    """The plug-in with its `# <stylefu-bridge>` block replaced by the bridge's source (GIMP
    2.10 only: see the module docstring)."""
    start, end = "# <stylefu-bridge>", "# </stylefu-bridge>"
    head, _, rest = plugin_text.partition(start)
    _, found, tail = rest.partition(end)
    if not found:
        raise RuntimeError("plug-in source without a stylefu-bridge block")
    head = head.rstrip(" ")
    # A __future__ import is only legal at the top: the plug-ins carry their own.
    body = "".join(line for line in bridge_text.splitlines(True)
                   if not line.startswith(("from __future__", "# -*- coding")))
    return (head + "# --- stylefu_bridge.py, pasted by `stylefu gimp install` ---\n" + body
            + "# --- end of stylefu_bridge.py ---" + tail)


def second_style_weight(blend) -> float:
    """The dialog's one blend number (the second style's share, 0..1) for Config.style_blend's
    default: None (equal weights) gives 0.5."""
    return 0.5 if blend is None else float(blend[1]) / float(blend[0] + blend[1])


def plugin_settings(version: str, python: str, model: Path) -> dict:
    """The settings file's content: worker, model, what the filter offers to download when the
    model is missing, and the dialog's defaults from Config, its choices and its ranges (the
    bridge's, the working size from the network's minimum side)."""
    from stylefu.export.fetch import MODEL_SOURCES, describe_source

    fields = {f.name: f for f in config_fields()}
    # "Second style goes" and the Custom quality are the plug-ins' own choices (the CLI says
    # them with one --mask per style and --iterations): they live in the bridge.
    bridge = load_bridge()
    places = bridge.SECOND_STYLE_PLACES
    defaults = {key: fields[name].default for key, name in DIALOG_FIELDS.items()}
    defaults.update(strength=STRENGTH_NEUTRAL,
                    iterations=Config().schedule_value("evaluations"),
                    second_style_weight=second_style_weight(fields["style_blend"].default),
                    second_style_goes=places[0])

    limits = {name: list(values) for name, values in bridge.LIMITS.items()}
    limits["size"][0] = MIN_SIDE
    limits["strength"][:2] = STRENGTH_RANGE
    return {
        "version": bridge.SETTINGS_VERSION,
        "gimp": version,
        "python": python,
        "model": str(model),
        "model_sources": [describe_source(name).describe() for name in MODEL_SOURCES],
        "preview_every": PREVIEW_EVERY,
        # The run logs (the plug-in's lines and the worker's stderr) beside stylefu's own cache.
        "log_dir": str(cache_dir() / "gimp-logs"),
        "upscale": UPSCALE_MODES[0],  # `stylefu run --upscale`: "stretch" turns the detail off
        "defaults": defaults,
        "choices": dict({name: list(fields[name].metadata["choices"])
                         for name in ("preserve_colors", "device")},
                        preset=list(PRESETS) + [bridge.CUSTOM_QUALITY],
                        second_style_goes=list(places)),
        "help": dict({key: fields[name].metadata["help"] for key, name in DIALOG_FIELDS.items()},
                     **bridge.DIALOG_HELP),
        "limits": limits,
        "config_class": f"{Config.__module__}.{Config.__qualname__}",
    }


def found_versions(plug_ins_dir=None, **where) -> list[str]:
    """GIMP 3 (the one-command install's premise), and 2.10 where GIMP 2.10 has its config
    folder (it makes it on its first start)."""
    if plug_ins_dir:
        return ["3"]
    return ["3"] + (["2.10"] if any(p.is_dir() for _, p in gimp_config_dirs("2.10", **where))
                    else [])


def install(version: str = "3", plug_ins_dir=None, model=None, python: str | None = None,
            **where) -> list[Target]:
    """Copy the plug-in (run bit set), the bridge (beside it for GIMP 3, pasted into it for
    2.10) and its settings into every target."""
    if version == FOUND:
        return [t for v in found_versions(plug_ins_dir, **where)
                for t in install(v, plug_ins_dir, model, python, **where)]
    model_path = Path(model).expanduser().resolve() if model else default_model_path()
    settings = plugin_settings(version, python or sys.executable, model_path)
    bridge = BRIDGE.read_text(encoding="utf-8")
    done = []
    for target in gimps_that_have_run(targets(version, plug_ins_dir, **where)):
        text = target.source.read_text(encoding="utf-8")
        target.plugin_file.parent.mkdir(parents=True, exist_ok=True)
        if target.bridge_file:
            _write(target.bridge_file, bridge)
        else:
            text = inline_bridge(text, bridge)
        _write(target.plugin_file, text)
        mode = target.plugin_file.stat().st_mode
        target.plugin_file.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        _write(target.settings_file, json.dumps(settings, indent=2) + "\n")
        done.append(target)
    return done


def gimps_that_have_run(found: list[Target]) -> list[Target]:
    """The targets whose GIMP config folder exists (or a --plug-ins-dir): GIMP makes it on its
    first start, moving GIMP 2.10's settings over, and skips that when the folder is already
    there. Refused in one sentence when none exists."""
    ready = [t for t in found if t.kind == "given" or t.plug_ins.parent.is_dir()]
    if not ready:
        folder = found[0].plug_ins.parent
        raise UserError(f"GIMP {found[0].version} has not run yet for this user (no {folder}): "
                        "start GIMP once and close it (it makes that folder, bringing over GIMP "
                        f"2.10's settings, which it would skip were the folder made now), then "
                        f"run `{user_command(['gimp', 'install'])}`.")
    return ready


def _write(path: Path, text: str) -> None:
    """Write `text` atomically (core's helper: a unique temporary sibling, then a rename)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"),
                 "choose another --plug-ins-dir")


def uninstall(versions=VERSIONS, plug_ins_dir=None, **where) -> list[Path]:
    """Remove what `install` wrote (and nothing else); returns the removed paths."""
    removed = []
    for version in versions:
        for target in targets(version, plug_ins_dir, **where):
            for path in target.files:
                if path.exists():
                    path.unlink()
                    removed.append(path)
            if version == "3" and target.plugin_file.parent.is_dir() and \
                    not any(target.plugin_file.parent.iterdir()):
                target.plugin_file.parent.rmdir()
    return removed


def check_worker(settings: dict, timeout: float = 180) -> tuple[bool, str]:
    """Start the recorded worker once (`stylefu info`): (it works, what it said)."""
    command = [settings["python"], "-m", "stylefu.core", "info", "--json"]
    if settings.get("model"):
        command += ["--model", settings["model"]]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot start {settings['python']}: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return False, lines[-1] if lines else f"exit code {proc.returncode}"
    info = json.loads(proc.stdout)
    return True, (f"starts (engine {info.get('engine', 'torch')}, torch {info.get('torch')}, "
                  f"model weights: {info.get('weights')})")


def status(plug_ins_dir=None, check: bool = True, **where) -> list[dict]:
    """One record per place a plug-in could be: installed?, settings, does the worker start."""
    records = []
    for version in VERSIONS:
        for target in targets(version, plug_ins_dir, **where):
            record = {"gimp": version, "kind": target.kind, "plugin": str(target.plugin_file),
                      "installed": target.plugin_file.is_file()}
            if record["installed"]:
                record["executable"] = os.access(target.plugin_file, os.X_OK)
                try:
                    settings = json.loads(target.settings_file.read_text(encoding="utf-8"))
                    record.update(python=str(settings["python"]), model=str(settings["model"]),
                                  model_exists=Path(settings["model"]).is_file())
                except (OSError, ValueError, KeyError, TypeError):
                    record["problem"] = f"{target.settings_file} is missing or damaged"
                    records.append(record)
                    continue
                if check:
                    record["worker_ok"], record["worker"] = check_worker(settings)
            records.append(record)
    return records


# --- the `stylefu gimp` command -----------------------------------------------------------------

def _flatpak_hint(done: list[Target]) -> None:
    if any(t.kind == "flatpak" for t in done):
        print("Flatpak GIMP: allow it to start the stylefu worker on the host, once:\n"
              f"  flatpak override --user --talk-name=org.freedesktop.Flatpak {FLATPAK_APP}")


def cmd_gimp(args) -> int:
    if args.gimp_command == "install":
        done = install(args.gimp, args.plug_ins_dir, args.model)
        for target in done:
            print(f"installed the GIMP {target.version} plug-in ({target.kind}): {target.plugin_file}")
        settings = json.loads(done[0].settings_file.read_text(encoding="utf-8"))
        print(f"worker: {settings['python']} -m stylefu.core")
        if not Path(settings["model"]).is_file():
            print(f"note: no model at {settings['model']} yet; the filter offers to download "
                  f"one, or run `{load_bridge().export_command(settings)}`.")
        _flatpak_hint(done)
        print("Restart GIMP, then use Filters > Artistic > Neural Style Transfer...")
        return 0
    if args.gimp_command == "uninstall":
        versions = VERSIONS if args.gimp == "all" else (args.gimp,)
        if args.purge:
            return _purge(versions, args)
        removed = uninstall(versions, args.plug_ins_dir)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print("nothing to remove: no stylefu plug-in found.")
        return 0
    records = status(args.plug_ins_dir, check=not args.no_check)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    installed = [r for r in records if r["installed"]]
    for r in records:
        if not r["installed"]:
            print(f"GIMP {r['gimp']} ({r['kind']}): not installed ({r['plugin']})")
            continue
        print(f"GIMP {r['gimp']} ({r['kind']}): installed at {r['plugin']}"
              + ("" if r.get("executable") else " (NOT executable: GIMP will ignore it)"))
        if "problem" in r:
            print(f"  problem: {r['problem']}")
            continue
        print(f"  worker: {r['python']} -m stylefu.core"
              + (f": {r['worker']}" if "worker" in r else ""))
        print(f"  model: {r['model']}" + ("" if r["model_exists"] else " (missing: the filter "
              f"offers to download one, or run `{load_bridge().export_command(r)}`)"))
    if not installed:
        raise UserError("No stylefu plug-in is installed; run "
                        f"`{user_command(['gimp', 'install'])}`.")
    return 0 if all(r.get("worker_ok", True) and "problem" not in r for r in installed) else 1


def _purge(versions, args) -> int:
    """uninstall --purge: list what goes (with sizes), ask unless --yes, then remove it."""
    from . import purge

    installed = [t for v in versions for t in targets(v, args.plug_ins_dir)]
    pythons = []
    for target in installed:
        try:
            pythons.append(json.loads(target.settings_file.read_text(encoding="utf-8"))["python"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    items = purge.plan([p for t in installed for p in t.files if p.exists()], pythons)
    if not [i for i in items if not i.keep]:
        print("nothing to remove: no stylefu plug-in, environment, model or cache found.")
        return 0
    print("stylefu gimp uninstall --purge:")
    print("\n".join(purge.describe(items)))
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("--purge removes the files above; add --yes to confirm without a "
                            "terminal.")
        if input("Remove them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed.")
            return 0
    for path in purge.remove(items):
        print(f"removed {path}")
    return 0


def add_gimp_parser(sub) -> None:
    """Add `stylefu gimp install|uninstall|status` to the `stylefu` command's subparsers."""
    gimp = sub.add_parser("gimp", help="install, remove or check the GIMP plug-ins (alone: status)")
    gsub = gimp.add_subparsers(dest="gimp_command")
    inst = gsub.add_parser("install", help="install the plug-in for this environment's stylefu",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inst.add_argument("--gimp", choices=VERSIONS + (FOUND,), default="3",
                      help=f"GIMP version; {FOUND}: 3, and 2.10 where its config folder exists")
    inst.add_argument("--plug-ins-dir", help="install here instead of GIMP's user plug-ins folder")
    inst.add_argument("--model", help="model the filter uses (default: $STYLEFU_MODEL or the cache's)")
    uninst = gsub.add_parser("uninstall", help="remove the plug-ins")
    uninst.add_argument("--gimp", choices=VERSIONS + ("all",), default="all")
    uninst.add_argument("--plug-ins-dir")
    uninst.add_argument("--purge", action="store_true",
                        help="also remove the private environment install.py made, the models "
                        "and the caches (listed with their sizes first)")
    uninst.add_argument("--yes", action="store_true", help="--purge without asking")
    stat_ = gsub.add_parser("status", help="say what is installed, where, and if the worker starts")
    stat_.add_argument("--plug-ins-dir")
    stat_.add_argument("--no-check", action="store_true", help="do not start the worker")
    stat_.add_argument("--json", action="store_true")
    # `stylefu gimp` alone is `stylefu gimp status`: what is installed, and what to run next.
    gimp.set_defaults(func=cmd_gimp, **vars(stat_.parse_args([])))
