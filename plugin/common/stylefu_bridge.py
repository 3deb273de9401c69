# -*- coding: utf-8 -*-
"""The GIMP side of stylefu, shared by the GIMP 3 and the GIMP 2.10 plug-ins: the filter's steps.

GIMP's own Python cannot import torch, so the plug-ins hand the work to `python -m stylefu.core run`
in the environment that `stylefu gimp install` recorded, and follow its JSON lines. Everything both
plug-ins do alike lives here: the dialog's ranges and choices, the style-file rules, the worker and
preview commands, the progress, and the order of the steps (`stylize_layer`, `preview_sheet`); a
plug-in supplies only its GIMP's calls (a `PluginHost`). This file runs under GIMP 2.10's Python 2.7
as well as GIMP 3's Python 3, needs nothing beyond the standard library (no numpy: GIMP's bundled
Python may lack it), and never imports stylefu. The installer puts it beside the GIMP 3 plug-in as
a module, and pastes it into the GIMP 2.10 plug-in (2.10 on Windows runs every .py file there).
"""
from __future__ import division, print_function

import ast
import atexit
import functools
import io
import json
import ntpath
import os
import posixpath
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

try:
    import queue
except ImportError:  # Python 2.7 (GIMP 2.10)
    import Queue as queue  # noqa: N813

# Raised whenever the settings gain a key the plug-ins need (3: "limits" for every range and the
# "custom" quality), so an old file gives load_settings' sentence instead of a failure at run time.
SETTINGS_VERSION = 3
FLATPAK_INFO = "/.flatpak-info"
TITLE = "Neural style"
# The dialogs' ranges (low, high, step for GIMP 2.10's sliders): the one place both plug-ins read
# them from, through the installer's settings ("limits"), which raise the working size's low end
# to the network's minimum side.
LIMITS = {"strength": (0.0, 100.0, 1.0), "iterations": (1, 10000, 10), "size": (16, 8192, 16),
          "tile_size": (0, 8192, 64), "style_scale": (0.1, 8.0, 0.1), "seed": (0, 2 ** 31 - 1, 1),
          "second_style_weight": (0.0, 1.0, 0.05), "preview_size": (0, 2048, 16)}
# The quality choice beyond the core's presets: the default preset's schedule with the dialog's
# evaluation count at full size (`--evaluations`); every other quality ignores that count.
CUSTOM_QUALITY = "custom"
PREVIEW_STYLE_SLOTS = 4  # single style files in the preview's dialog, besides a folder
# The GIMP 3 dialog's preview: its long side in pixels (small: a few seconds on 2 cores), its
# preset (the fastest), how often it shows the painting as it forms, and the dialog entries that
# do not change it (it has its own size and quality, and never tiles).
DIALOG_PREVIEW_SIDE = 160
DIALOG_PREVIEW_PRESET = "draft"
DIALOG_PREVIEW_EVERY = 10
DIALOG_PREVIEW_IGNORES = ("size", "preset", "iterations", "tile_size")
# The preview column's width in characters: its one-line texts (dialog_preview_text) fit in it,
# as "Preview: waiting for the settings to settle" and "Preview: level 1 of 3, evaluation 10 of
# 30" did not (cut to "Preview: level 1 of 3, ev...").
DIALOG_TEXT_CHARS = 26
DIALOG_PREVIEW_WAITING = "Preview: about to start"
# The dialog entries the estimate of the filter's time follows (how much work, and where;
# strength 0 runs no evaluation).
DIALOG_ESTIMATE_FOLLOWS = ("size", "preset", "iterations", "tile_size", "device", "strength")
# "Second style goes": where the optional second style is painted, the first choice being the
# default (the one place it is set; the installer's settings take it from here). "everywhere":
# blended with the first style over the whole layer (a selection limits both); "outside": the
# first style inside the selection and the second outside it (one mask per style, m and 1 - m).
SECOND_STYLE_PLACES = ("everywhere", "outside")
SECOND_STYLE_LABELS = {"everywhere": "Everywhere, blended", "outside": "Outside the selection"}
# The dialogs' help where the CLI's (Config's) says something else in GIMP: the new layer has
# the layer's own size ("long side of the result" said the working size was the result's), and
# the "content" is the layer.
DIALOG_HELP = {
    "size": "long side in pixels the painting is made at; the new layer comes back at the "
            "layer's own size, with the layer's fine detail",
    "preserve_colors": "keep the layer's own colours: none, luminance, histogram",
}


class BridgeError(Exception):
    """Anything that stops a run, as the one sentence GIMP shows to the user."""


class InputError(BridgeError):
    """Wrong input from the caller (no style, no layer, a choice that cannot be carried out):
    GIMP 3's CALLING_ERROR, as GIMP's own plug-ins report it."""


class CancelledError(BridgeError):
    """The user cancelled the filter (its progress bar's Cancel ended the follower): the image is
    as it was, and GIMP 3's procedure returns CANCEL."""


def settings_path(plugin_file):
    """The settings file the installer writes beside the plug-in: same name, `.json`."""
    return os.path.splitext(os.path.abspath(plugin_file))[0] + ".json"


def native_text(value):
    """JSON's texts as the plug-in's own: on Python 2.7 (GIMP 2.10) UTF-8 bytes, as GIMP hands
    file names and layer names over, since joining unicode with a non-ASCII byte string (or str()
    of a non-ASCII unicode) raises; on Python 3 `value` itself."""
    if sys.version_info[0] >= 3:
        return value
    if isinstance(value, type(u"")):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return dict((native_text(k), native_text(v)) for k, v in value.items())
    if isinstance(value, list):
        return [native_text(item) for item in value]
    return value


def load_settings(plugin_file):
    """The installer's settings (worker interpreter, model, dialog defaults, choices, limits)."""
    path = settings_path(plugin_file)
    try:
        with io.open(path, encoding="utf-8") as f:
            settings = native_text(json.load(f))
    except (IOError, OSError, ValueError):
        settings = None
    damaged = BridgeError("stylefu is not set up for this GIMP (%s is missing or damaged); %s."
                          % (path, REINSTALL))
    if not isinstance(settings, dict):  # (valid JSON of another shape: `[]`)
        raise damaged
    if settings.get("version") != SETTINGS_VERSION:
        again = ("run `%s` again" % user_command(settings, ["gimp", "install"])
                 if isinstance(settings.get("python"), str) else REINSTALL)
        raise BridgeError("%s was written by another stylefu version; %s." % (path, again))
    if not isinstance(settings.get("python"), str) or not all(
            isinstance(settings.get(key), dict) for key in ("defaults", "choices", "limits")):
        raise damaged  # (what the dialog and a run read: a raw KeyError naming none of it)
    return settings


# What a plug-in registers its dialog with when the installer's settings are missing; running
# then fails with load_settings' sentence that says to run `stylefu gimp install`.
UNSET_SETTINGS = {
    "defaults": {"strength": LIMITS["strength"][0], "preset": CUSTOM_QUALITY,
                 "iterations": LIMITS["iterations"][0], "size": LIMITS["size"][0],
                 "preserve_colors": "", "style_scale": 1.0, "seed": 0, "device": "",
                 "second_style_weight": 0.5, "second_style_goes": SECOND_STYLE_PLACES[0],
                 "tile_size": 0},
    "choices": {"preset": [CUSTOM_QUALITY], "preserve_colors": [""], "device": [""],
                "second_style_goes": list(SECOND_STYLE_PLACES)},
    "limits": dict((name, list(limits)) for name, limits in LIMITS.items()), "help": {}}


# --- the run log: what a user attaches to a bug report --------------------------------------

LOG_KEEP = 5  # run logs kept in the log folder; older ones are deleted when a run starts
LOG_PREFIX = "gimp-run-"
_log = {"path": None, "settings": None}


def log_dir(settings=None):
    """The run logs' folder: the one the installer recorded (stylefu's cache folder + gimp-logs),
    else the exchange folder's base (the app's cache in Flatpak, else the temporary folder)."""
    recorded = (settings or {}).get("log_dir")
    return recorded or os.path.join(_exchange_base() or tempfile.gettempdir(), "stylefu-logs")


def start_log(settings=None, what="run"):
    """Open a new run log (the plug-in's lines and its workers' stderr) and delete all but the
    newest LOG_KEEP; return its path, or None when no folder is writable (logging then only
    goes to GIMP's console: a log must never stop a run)."""
    for folder in (log_dir(settings), log_dir()):
        path = None
        try:
            if not os.path.isdir(folder):
                os.makedirs(folder)
            handle, path = tempfile.mkstemp(
                prefix=LOG_PREFIX + time.strftime("%Y%m%d-%H%M%S-"), suffix=".log", dir=folder)
            with io.open(handle, "w", encoding="utf-8") as f:
                f.write(u"stylefu GIMP plug-in, %s, %s, Python %s\n" % (
                    what, time.strftime("%Y-%m-%d %H:%M:%S"), sys.version.split()[0]))
        except (IOError, OSError):
            if path:  # created, but a full disk or quota refused its first line: not left empty
                try:
                    os.remove(path)
                except OSError:
                    pass
            continue
        _log["path"] = path
        _prune_logs(folder)
        return path
    _log["path"] = None
    return None


def _prune_logs(folder):
    """Delete all but the newest LOG_KEEP run logs (by time written, then name)."""
    logs = []
    for name in os.listdir(folder):
        if name.startswith(LOG_PREFIX) and name.endswith(".log"):
            path = os.path.join(folder, name)
            try:
                logs.append((os.path.getmtime(path), name, path))
            except OSError:
                pass
    for _, _, path in sorted(logs)[:-LOG_KEEP]:
        try:
            os.remove(path)
        except OSError:
            pass


def begin_run(plugin_file, what):
    """Start a procedure's run log, in the installer's log folder when its settings load."""
    try:
        settings = load_settings(plugin_file)
    except BridgeError:
        settings = None
    path = start_log(settings, what)
    _log["settings"] = settings
    log("%s: plug-in %s, worker %s" % (what, os.path.abspath(plugin_file),
                                      (settings or {}).get("python", "(not set up)")))
    return path


def log_path():
    """The current run log, or None."""
    return _log["path"]


def with_log(message):
    """An error message for GIMP's error box, naming the run log (one line), its stylefu
    commands (the worker's words) as this GIMP's user can type them."""
    message = typeable(message, _log["settings"])
    path = log_path()
    return "%s (see %s)" % (message.rstrip(), path) if path else message


def typeable(message, settings):
    """`message` with each "`stylefu ..." (a worker's words, for a shell where stylefu is on
    PATH) naming the recorded environment's own stylefu, which a GIMP user's shell lacks."""
    if not settings or not isinstance(settings.get("python"), str):
        return message
    return message.replace("`stylefu ", "`%s " % user_command(settings, []))


def _append_log(text):
    if not _log["path"]:
        return
    if isinstance(text, bytes):  # Python 2.7's str
        text = text.decode("utf-8", "replace")
    try:
        with io.open(_log["path"], "a", encoding="utf-8", errors="replace") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except (IOError, OSError):
        pass


def log(*parts):
    """A line on GIMP's console (stderr), flushed at once (GIMP may kill the plug-in), and in the
    run log."""
    line = "[stylefu] " + " ".join(str(p) for p in parts)
    print(line, file=sys.stderr)
    sys.stderr.flush()
    _append_log(time.strftime("%H:%M:%S ") + line)


def notice_text(record):
    """A worker's `notice` record's message, behind "warning: " where its `level` (stylefu's
    newer workers) says the user should act on it (bf16 emulated, about 20x slower)."""
    prefix = "warning: " if record.get("level") == "warning" else ""
    return prefix + record.get("message", "")


def log_notice(record):
    """A worker's `notice` record in the run log."""
    log("warning:" if record.get("level") == "warning" else "notice:",
        record.get("message", ""))


def _keep_worker_stderr(stderr_path, code):
    """Copy a finished worker's stderr into the run log."""
    try:
        with io.open(stderr_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (IOError, OSError):
        text = ""
    _append_log("--- worker stderr (%s) ---\n%s--- end of worker stderr ---" % (
        _describe_exit(code), text if not text or text.endswith("\n") else text + "\n"))


def settings_or_unset(plugin_file):
    """The installer's settings, or UNSET_SETTINGS (logged) so the dialog still registers."""
    try:
        return load_settings(plugin_file)
    except BridgeError as exc:
        log(exc)
        return UNSET_SETTINGS


def in_flatpak():
    """True inside GIMP's Flatpak sandbox, where host programs need `flatpak-spawn --host`."""
    return os.path.exists(FLATPAK_INFO)


def worker_command(settings, args, flatpak=None):
    """The command line that runs `stylefu ARGS` with the recorded interpreter."""
    command = [settings["python"], "-m", "stylefu.core"] + list(args)
    if in_flatpak() if flatpak is None else flatpak:
        # --watch-bus: the host process is ended when the sandboxed plug-in goes away.
        # --env: the host process gets the host session's environment, not worker_env().
        command = ["flatpak-spawn", "--host", "--watch-bus",
                   "--env=ORT_DISABLE_TELEMETRY=1"] + command
    return command


def _host_file_exists(path):
    """Whether `path` is a file where the worker runs (inside Flatpak: on the host, which the
    sandbox may not see)."""
    if in_flatpak():
        return subprocess.call(["flatpak-spawn", "--host", "test", "-f", path]) == 0
    return os.path.isfile(path)


def _shell_word(word, windows):
    """`word` quoted where the platform's shell needs it (a space, a quote): cmd's "..." on
    Windows, POSIX '...' elsewhere, so that a printed command can be pasted as it is."""
    if windows:
        return subprocess.list2cmdline([word])
    if word and all(c.isalnum() or c in "@%+=:,./-_" for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


# What to run when the recorded environment itself is gone or unknown: install.py makes it afresh.
REINSTALL = ("run install.py again (docs/gimp.md), or `stylefu gimp install` from the "
             "environment that has stylefu")


def user_command(settings, args, windows=None, exists=None):
    """`stylefu ARGS` as this GIMP's user can type it in a terminal: the recorded environment's
    own `stylefu` script (install.py's environment is not on PATH; venv/bin/stylefu, Windows
    venv\\Scripts\\stylefu.exe, or a conda environment's Scripts\\), else `"PYTHON" -m
    stylefu.core ARGS`; each word quoted for the platform's shell."""
    windows = _WINDOWS if windows is None else windows
    exists = exists or _host_file_exists
    python = settings["python"]
    path = ntpath if windows else posixpath
    folder = path.dirname(python)
    scripts = ([path.join(folder, "stylefu.exe"), path.join(folder, "Scripts", "stylefu.exe")]
               if windows else [path.join(folder, "stylefu")])
    found = [script for script in scripts if folder and exists(script)]
    head = found[:1] or [python, "-m", "stylefu.core"]
    return " ".join(_shell_word(word, windows) for word in head + list(args))


def worker_env():
    """GIMP's environment without the variables that point Python at GIMP's own Python, and
    with ONNX Runtime's telemetry off (its PyPI builds otherwise write a device id under
    ~/.cache/Microsoft and try to upload events: files a purge could not tell from others')."""
    env = dict((k, v) for k, v in os.environ.items()
               if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                            "PYTHONUSERBASE", "PYTHONNOUSERSITE", "VIRTUAL_ENV"))
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return env




def second_style_blend(weight):
    """--style-blend's (first, second) weights for the dialog's weight of the second style (0..1).

    One number is enough for two styles (the core normalises the weights): 0.5 blends them
    equally, 1 uses the second style alone.
    """
    weight = min(1.0, max(0.0, float(weight)))
    return (1.0 - weight, weight)


def run_options(values, settings, styles=1, keep_size=True):
    """`stylefu run` options for the dialog's values (a dict keyed by the Config field names, plus
    second_style_weight, used when `styles` is 2); `keep_size` False: the result at the working
    size (no --keep-size, so no --upscale, which `run` refuses without it)."""
    keep = ["--keep-size"] if keep_size else []
    options = ["--progress", "json", "--watch-stdin"] + keep + [
               # The dialog's 0..100 slider is the core's --strength (balanced at 50 on any model).
               "--strength", repr(float(values["strength"])),
               "--size", str(int(values["size"])),
               "--preserve-colors", str(values["preserve_colors"]),
               "--style-scale", repr(float(values["style_scale"])),
               "--seed", str(int(values["seed"])), "--device", str(values["device"])]
    if values["preset"] == CUSTOM_QUALITY:
        options += ["--evaluations", str(int(values["iterations"]))]
    else:
        options += ["--preset", str(values["preset"])]
    if values.get("tile_size") is not None:
        options += ["--crop-side", str(int(values["tile_size"]))]
    if styles == 2:
        blend = second_style_blend(values["second_style_weight"])
        options += ["--style-blend", ",".join(repr(w) for w in blend)]
    if int(settings.get("preview_every") or 0) > 0:
        options += ["--save-every", str(int(settings["preview_every"]))]
    if keep_size and settings.get("upscale"):  # detail (the default) or stretch: docs/gimp.md
        options += ["--upscale", str(settings["upscale"])]
    if settings.get("model"):
        options += ["--model", settings["model"]]
    return options


def stylize_args(settings, content, styles, output, values, masks=()):
    """The `run` arguments of the filter: `styles` as [(path, name)], `masks` as mask options."""
    return ([content] + [path for path, _ in styles] + ["-o", output]
            + run_options(values, settings, len(styles)) + list(masks))


def stylize_command(settings, content, styles, output, values, masks=()):
    """The worker command for the filter (stylize_args)."""
    return worker_command(settings, ["run"] + stylize_args(settings, content, styles, output,
                                                           values, masks))


def preview_side(settings):
    """The dialog preview's long side: the settings' "dialog_preview_side" (a slow machine, the
    tests), else DIALOG_PREVIEW_SIDE."""
    return int((settings or {}).get("dialog_preview_side") or DIALOG_PREVIEW_SIDE)


def dialog_preview_args(settings, content, styles, output, values, masks=()):
    """The `run` arguments of the GIMP 3 dialog's preview, for its kept worker (KeptWorker): the
    dialog's values at the preview's own size and preset (no tiles), the painting saved every
    DIALOG_PREVIEW_EVERY evaluations."""
    values = dict(values, size=preview_side(settings), preset=DIALOG_PREVIEW_PRESET,
                  tile_size=None)
    # The preview is shown at the working size: no --keep-size.
    options = run_options(values, dict(settings, preview_every=DIALOG_PREVIEW_EVERY), len(styles),
                          keep_size=False)
    options.remove("--watch-stdin")  # the kept worker's stdin carries its requests
    return [content] + [path for path, _ in styles] + ["-o", output] + options + list(masks)


def estimate_args(settings, width, height, values, styles=1):
    """The `stylefu estimate` arguments whose final JSON record says what the filter with the
    dialog's `values` would take on a `width` x `height` layer on this machine ("seconds", "text";
    the first on a machine calibrates, a few seconds; later ones read the speed earlier runs
    measured)."""
    options = run_options(values, settings, styles)
    options = [o for i, o in enumerate(options) if o not in ("--progress", "--watch-stdin")
               and options[i - 1:i] != ["--progress"]]
    return ["--layer", "%dx%d" % (width, height), "--json"] + options


def start_estimate(worker, settings, width, height, values):
    """The dialog's estimate, asked of its kept `worker` (a KeptWorker) in the background: a
    KeptRun whose final record is estimate's. Asked after a preview, it waits for it (so a
    first calibration never measures a machine busy with a preview)."""
    check_layer_size(settings, width, height, values["size"])
    _check_model_for_dialog(settings)
    folder = worker.run_folder()
    try:
        args = estimate_args(settings, width, height, values)
        log("dialog estimate:", " ".join(args))
        return worker.submit(args, folder, command="estimate")
    except BaseException:
        remove_dir(folder)
        raise


def estimate_text(record, width, height):
    """The dialog's line for an estimate record: what the filter would take on the layer."""
    return "The filter: about %s for this %d x %d px layer on this machine%s" % (
        record["text"], width, height,
        " (its speed measured now)" if record.get("measured_by") == "a calibration now" else "")


def preview_command(settings, content, styles, sheet, figures, size=0):
    """The worker command for the preview contact sheet and its figures (JSON: the notes it told
    too), a progress record per style on stdout; `size` 0: stylefu preview's own."""
    args = ["preview", content] + list(styles) + ["-o", sheet, "--json", figures,
                                                  "--progress", "json", "--watch-stdin"]
    if int(size) > 0:
        args += ["--size", str(int(size))]
    if settings.get("model"):
        args += ["--model", settings["model"]]
    return worker_command(settings, args)


# --- the style files and the selection ----------------------------------------------------------

def style_file(path, which="style"):
    """A chosen style file's path; InputError when it is not there."""
    if not os.path.isfile(path):
        raise InputError("The %s file %s does not exist; choose another." % (which, path))
    return path


def style_name(path):
    """A style file's name in the new layer's name: the file name without its suffix."""
    return os.path.splitext(os.path.basename(path))[0]


def preview_styles(files, folder=None):
    """The preview's styles: the chosen files, then `folder` (the worker takes its images, in
    natural order, as `stylefu preview` takes a folder, and says what it leaves out)."""
    paths = [style_file(path) for path in files if path]
    if folder and os.path.isdir(folder):
        paths.append(folder)
    if not paths:
        raise InputError("Choose style images for the preview: files or a folder of images.")
    return paths


def second_style_outside(place, styles, selected):
    """True when the dialog's "Second style goes" asks for the second style outside the selection
    (then the worker gets the selection and its inverse as one mask per style, and the new layer
    no layer mask); False for "everywhere". InputError when that choice cannot be carried out.
    """
    if place not in SECOND_STYLE_PLACES:
        raise InputError("'Second style goes' must be one of %s, not %r."
                         % (", ".join(SECOND_STYLE_PLACES), place))
    if place == "everywhere":
        return False
    if styles != 2:
        raise InputError("'Second style goes: outside the selection' needs a second style; "
                         "choose one, or set 'Second style goes' to 'everywhere, blended'.")
    if not selected:
        raise InputError("'Second style goes: outside the selection' needs a selection for the "
                         "first style; select part of the layer, or set 'Second style goes' to "
                         "'everywhere, blended'.")
    return True


# A mask's raw value for "nothing selected" and "all selected", by pixel kind.
_EMPTY = {"float": struct.pack("=f", 0.0), "u8": b"\x00"}
_FULL = {"float": struct.pack("=f", 1.0), "u8": b"\xff"}


def _all(data, value):
    """True when the raw pixels `data` are `value` everywhere (a C-speed comparison)."""
    return bytes(data) == value * (len(data) // len(value))


def selection_masks(folder, selection, outside=False):
    """Write the selection (raw pixels, HxWx1 shape, kind "float" or "u8") for the worker and
    return its mask options: `--mask` for every style; with `outside`, the selection for the first
    style and its inverse for the second (`--mask-inverse`: 1 - m, soft edges kept, by the worker).
    """
    if selection is None:
        return []
    data, shape, kind = selection
    if _all(data, _EMPTY[kind]):
        raise InputError("The selection does not touch the layer; select part of the layer, or "
                         "Select > None to stylize all of it.")
    if outside and _all(data, _FULL[kind]):
        raise InputError("The selection covers the whole layer, so the second style would go "
                         "nowhere; select less, or set 'Second style goes' to 'everywhere, "
                         "blended'.")
    path = os.path.join(folder, "selection.npy")
    write_npy(path, data, shape, kind)
    return ["--mask", path, "--mask-inverse", path] if outside else ["--mask", path]


def check_layer_size(settings, width, height, size=None):
    """InputError, with the fix, when the worker could not paint a `width` x `height` layer:
    a side under the network's minimum (the settings' least working size), or a short side
    under it at the working size `size` (a long, thin layer; the worker paints at most at the
    layer's own size: core's fullres.working_config)."""
    least = int(settings["limits"]["size"][0])
    short, long_ = min(width, height), max(width, height)
    size = None if size is None else min(int(size), long_)
    if short < least:
        raise InputError("The layer is %d x %d px, and the filter needs at least %d px on each "
                         "side; scale the layer up first (Layer > Scale Layer)."
                         % (width, height, least))
    if size is not None and max(1, int(round(short * float(size) / long_))) < least:
        raise InputError("At a working size of %d px this %d x %d px layer's short side is under "
                         "%d px; set Working size to at least %d." % (
                             int(size), width, height, least,
                             -(-least * long_ // short)))


def npy_size(path):
    """(width, height) of a .npy image file, from its header."""
    with open(path, "rb") as f:
        return tuple(reversed(_npy_header(f, path)[0][:2]))


def layer_name(styles):
    """The new layer's name: the styles' names, then "(neural style)"."""
    return "%s (neural style)" % " + ".join(name for _, name in styles)


# --- the filter's steps, the same in both plug-ins --------------------------------------------

class PluginHost(object):
    """What a plug-in supplies to stylize_layer and preview_sheet: its GIMP's calls."""

    result_suffix = ".npy"  # the worker's result format this GIMP reads back

    def styles(self, folder):
        """[(path, name)] of the chosen style and optional second style (layers saved in
        `folder`); InputError when no style is chosen."""
        raise NotImplementedError

    def selection(self, area=None):
        """None when nothing is selected, else (raw mask pixels at the layer's pixels, (h, w, 1),
        "float" or "u8"); with an `area` (preview_area), that part at its scale."""
        raise NotImplementedError

    def save_content(self, path, area=None):
        """Write the layer's pixels (alpha kept) as a .npy file at `path`; with an `area` from
        preview_area, that part of the layer at its scale."""
        raise NotImplementedError

    def preview_area(self, side, whole=False):
        """For the dialog's preview (GIMP 3 only): (x, y, width, height, scale) of the part of
        the layer to read (the selection's box, or all of it when `whole` or nothing is
        selected) and the scale that brings its long side to at most `side` pixels."""
        raise NotImplementedError

    def show(self, path, name, masked, layer):
        """Put the picture at `path` into the new layer above the source (made on the first call,
        `layer` None; with the selection as its layer mask when `masked`); return the layer."""
        raise NotImplementedError

    def remove(self, layer):
        raise NotImplementedError

    def undo_group(self, start):
        raise NotImplementedError

    # GIMP cancels a plug-in by killing the process that started the progress bar, before it can
    # take back a half-painted layer; a host that can run a follower (follow) keeps this process
    # off the bar, so Cancel ends only the follower and this one leaves the image as it was.
    # "thread": the worker's run goes on in a thread here (GIMP 3: its calls let other threads
    # run); "follower": the follower runs the worker too (GIMP 2.10's calls block every thread).
    follows = None

    def live_layer(self, name, masked, content):
        """(A host that `follows`.) A new layer above the source holding the .npy `content` (the
        source's own pixels: nothing shows yet), with the selection as its mask when `masked`,
        added outside the undo history (take it away with drop_live)."""
        raise NotImplementedError

    def drop_live(self, layer):
        """Take away a live_layer, outside the undo history."""
        raise NotImplementedError

    def place(self, item):
        """(A host that `follows`.) (parent, the sibling above, the one below) of an item, as
        ids (None where there is none)."""
        raise NotImplementedError

    def group_moved(self, group):
        """Whether the user moved the live group during the run (`live_group_place`, its place
        noted by live_layer): another parent, or both its neighbours changed (one alone: a
        layer beside it added or removed)."""
        (parent, above, below), now = self.live_group_place, self.place(group)
        return parent != now[0] or (above != now[1] and below != now[2])

    def follow(self, layer, folder):
        """Run the follower (follow_run, in a process of its own that holds the progress bar)
        on `layer` and the state files in `folder` until the run is done; "success",
        "cancel" (GIMP's Cancel ended it) or an error message."""
        raise NotImplementedError

    def progress(self, fraction=None, text=None, end=False):
        """Start the progress bar (fraction None), move it, or end it."""
        raise NotImplementedError

    def flush(self):
        """Redraw GIMP's displays."""
        raise NotImplementedError

    def open_sheet(self, path):
        """Open the preview contact sheet at `path` as a new image and return it."""
        raise NotImplementedError

    def message(self, text):
        """Tell the user `text` (GIMP's message: a box, or its Error Console)."""
        raise NotImplementedError

    def ask_download(self, question, notice):
        """Whether to download a model now (`question` asks it, `notice` says it happens; both
        say what and from where). Without a user to ask (a script's non-interactive call), the
        call itself is the consent. None: a call that may ask nothing (GIMP 3's last values)."""
        return True


# --- no model yet: the offer and the download ----------------------------------------------------

def model_missing(settings):
    """True when the recorded model file is not there (inside Flatpak: on the host, where the
    worker runs and the sandbox may not see)."""
    model = settings.get("model")
    if not model:
        return False
    return not _host_file_exists(model)


def _source_text(source):
    """"the official VGG19 weights (548 MB from download.pytorch.org)"; without a size, "... from
    HOST"."""
    mb = source.get("size_mb") or 0
    if mb:
        return "%s (%d MB from %s)" % (source["label"], round(mb), source["host"])
    return "%s from %s" % (source["label"], source["host"])


def download_offer(settings, question=True):
    """What GIMP asks (or, `question` False, says) before fetching a model: what, how large,
    from where."""
    sources = settings.get("model_sources") or []
    what = _source_text(sources[0]) if sources else "one"
    text = "No stylefu model is installed yet. " + (
        "Download %s now?" % what if question else "Downloading %s now." % what)
    for source in sources[1:]:
        text += " Where that is unreachable: %s." % _source_text(source)
    return text + " This happens once; a cut download resumes where it stopped."


def fetch_command(settings):
    """The worker command that fetches the first model that works into the recorded path."""
    names = [source["name"] for source in settings.get("model_sources") or []] or ["auto"]
    return worker_command(settings, ["export", "--weights", ",".join(names), "--progress", "json",
                                     "--watch-stdin", "--if-missing", "-o", settings["model"]])


# What the dialog's preview and estimate say while no model is installed (the worker's "No model
# at PATH; create one with `stylefu export` (or pass --model PATH)" spoke of the command line,
# took seven lines of the preview's column, and hid that OK offers the download).
NO_MODEL_YET = "No model is installed yet; OK offers to download one."


def no_model_unasked(settings):
    """What a call that may ask nothing (GIMP 3's last values) says instead of the download
    question."""
    return ("No stylefu model is installed, and a call with the last values asks nothing; run "
            "the filter from its menu to download one, or run `%s` in a terminal."
            % export_command(settings))


def export_command(settings):
    """The command a user types to fetch a model into the recorded path themselves."""
    return user_command(settings, ["export", "--weights", "auto", "-o", settings["model"]])


def _check_model_for_dialog(settings):
    if model_missing(settings):
        raise InputError(NO_MODEL_YET)


def ensure_model(host, settings, folder):
    """When the model is missing: ask, then download it with GIMP's progress bar (size and
    source in its text); the worker checks the hash. BridgeError when declined or failed."""
    if not model_missing(settings):
        return
    answer = host.ask_download(download_offer(settings), download_offer(settings, question=False))
    if answer is None:
        raise BridgeError(no_model_unasked(settings))
    if not answer:
        raise BridgeError("No stylefu model is installed; run the filter again and choose "
                          "Download, or run `%s` in a terminal." % export_command(settings))
    command = fetch_command(settings)
    log("worker:", " ".join(command))
    host.progress(text="%s: looking for a model to download" % TITLE)
    try:
        def follow(record):
            host.progress(min(1.0, float(record.get("fraction", 0.0))), progress_text(record))
            if record.get("event") in ("fetch", "notice"):
                log("model:", progress_text(record))
        final = run_worker(command, on_record=follow, cwd=folder)
    finally:
        host.progress(end=True)
    log("model:", final.get("model"), final.get("weights"))


def stylize_layer(host, settings, values, kept=None):
    """The filter: the worker stylizes the host's layer into a new layer above it, shown as it
    forms, inside one undo group; on any failure the image is left as it was. `kept`: the
    dialog's KeptWorker, whose model is loaded already (else a new worker runs it). Returns the
    new layer (the procedures' return value, for scripts)."""
    folder = exchange_dir()
    try:
        styles = host.styles(folder)
        selection = host.selection()
        # The selection restricts the style loss (guided Grams) and the worker's result to it:
        # one mask serves every style; or, with the second style "outside the selection", the
        # selection is the first style's region and its inverse the second's.
        outside = second_style_outside(values["second_style_goes"], len(styles),
                                       selection is not None)
        masks = selection_masks(folder, selection, outside)
        content = os.path.join(folder, "content.npy")
        host.save_content(content)
        check_layer_size(settings, *npy_size(content), size=values["size"])
        ensure_model(host, settings, folder)  # after the input checks: they need no model
        # One mask: the selection also becomes the new layer's mask (see docs/gimp.md, "The
        # selection": exact source pixels outside at any working size). Two cover the whole layer:
        # no layer mask.
        masked = selection is not None and not outside
        output = os.path.join(folder, "result" + host.result_suffix)
        args = stylize_args(settings, content, styles, output, values, masks)
        command = None
        if kept is not None:
            log("worker: the dialog's, run", " ".join(args))
            run = functools.partial(run_kept, kept, args)
        else:
            command = worker_command(settings, ["run"] + args)
            log("worker:", " ".join(command))
            run = functools.partial(run_worker, command, cwd=folder)
        if host.follows:
            return _run_followed(host, run, output, layer_name(styles), masked, content,
                                 command if host.follows == "follower" else None)
        return _run_into_layer(host, run, output, layer_name(styles), masked)
    finally:
        remove_dir(folder)


def _run_into_layer(host, run, output, name, masked):
    """`run(on_record=...)` (run_worker or run_kept) paints the layer; its result becomes a
    new layer above it, which this returns."""
    host.progress(text="%s: starting the worker" % TITLE)
    host.undo_group(start=True)
    state = {"layer": None}
    try:
        def follow(record):
            show_progress(host, record)
            if record.get("image"):  # the painting so far, shown in the new layer
                state["layer"] = host.show(record["image"], name, masked, state["layer"])
                host.flush()
                log("preview", record["image"])

        log_tiles(run(on_record=follow))
        state["layer"] = host.show(output, name, masked, state["layer"])
    except BaseException:
        if state["layer"] is not None:  # the image goes back to exactly what it was
            host.remove(state["layer"])
        raise
    finally:
        host.undo_group(start=False)
        host.progress(end=True)
    host.flush()
    return state["layer"]


FOLLOW_FILE = "follow.json"  # the run's state, from the filter's process to its follower
FOLLOW_POLL_S = 0.1  # how often the follower reads it
FOLLOW_STOP_S = 10.0  # how long a cancelled filter waits for its worker's run to end
# The filter rewrites the state at least this often ("beat"), through phases without records
# (the model's load, a large layer's targets); a follower whose filter has been silent for
# FOLLOW_LOST_S (it died: its folder stays) stops, rather than hold a batch run forever.
FOLLOW_BEAT_S, FOLLOW_LOST_S = 2.0, 60.0


def log_tiles(final):
    """A run's tiles (its final record's metrics) in the run log; a preview's has none."""
    if "metrics" in final:
        log("tiles:", json.dumps(final["metrics"].get("tiles", {}), sort_keys=True))


def write_follow(folder, state):
    """The run's state for the follower, replaced whole (it never reads half a file)."""
    path = os.path.join(folder, FOLLOW_FILE)
    with io.open(path + ".new", "w", encoding="utf-8") as f:
        f.write(u"%s" % json.dumps(state))
    try:
        os.replace(path + ".new", path)
    except AttributeError:  # Python 2.7 (GIMP 2.10): only rename, which on Windows never replaces
        if os.path.exists(path):  # (there the filter reads it only once the follower has ended)
            os.remove(path)
        os.rename(path + ".new", path)


def read_follow(folder):
    try:
        with io.open(os.path.join(folder, FOLLOW_FILE), encoding="utf-8") as f:
            return native_text(json.loads(f.read()))
    except (IOError, OSError, ValueError):
        return None


def follow_run(host, layer, folder):
    """The follower (the plug-ins' internal procedure, its own process): the progress bar and
    the painting as it forms in `layer`, from the state the filter writes in `folder`, until
    the run is done or the folder has gone; or, when the state has the worker's command, runs
    the worker itself (GIMP 2.10), into the filter's run log. GIMP's Cancel kills this process
    only."""
    state = read_follow(folder) or {}
    if state.get("command"):
        _log["path"] = state.get("log")
        return _follow_worker(host, layer, folder, state["command"])
    shown = None
    host.progress(text="%s: starting the worker" % TITLE)
    try:
        while True:
            state = read_follow(folder)
            if state is None and not os.path.isdir(folder):
                return
            if state is not None and time.time() - state.get("beat", time.time()) > FOLLOW_LOST_S:
                log("follower: the filter has gone silent; stopping")
                return
            if state is not None:
                if state.get("image") and state["image"] != shown:
                    if shown is None:
                        log("follower: the live layer shows the painting as it forms")
                    shown = state["image"]
                    host.paint(layer, shown)
                    host.flush()
                if state.get("text"):
                    host.progress(state.get("fraction", 0.0), state["text"])
                if state.get("done"):
                    return
            time.sleep(FOLLOW_POLL_S)
    finally:
        host.progress(end=True)


def _follow_worker(host, layer, folder, command):
    """The follower that runs the worker (`command`) itself, painting `layer` as it goes."""
    state = {"shown": False}

    def follow(record):
        show_progress(host, record)
        if record.get("image"):
            if not state["shown"]:
                log("follower: the live layer shows the painting as it forms")
                state["shown"] = True
            host.paint(layer, record["image"])
            host.flush()
            log("preview", record["image"])

    host.progress(text="%s: starting the worker" % TITLE)
    try:
        final = run_worker(command, on_record=follow, cwd=folder)
    except BridgeError as exc:
        # Handed to the filter, which says it: the follower's own failure would make GIMP say
        # it a second time ("Calling error for procedure ...").
        write_follow(folder, dict(read_follow(folder) or {}, error=str(exc), ended=True))
        return
    except Exception:
        write_follow(folder, dict(read_follow(folder) or {}, ended=True))  # a failure, not Cancel
        raise
    finally:
        host.progress(end=True)
    write_follow(folder, dict(read_follow(folder) or {}, ended=True))
    log_tiles(final)


def follower_cancelled(folder):
    """Whether GIMP's Cancel ended a worker-running follower (_follow_worker): killed, it never
    said it ended (GIMP 2.10 reports Cancel only as its translated word "cancelled")."""
    return not (read_follow(folder) or {}).get("ended")


FILTER_CANCELLED = "The filter was cancelled."
PREVIEW_CANCELLED = "The preview was cancelled."


def _run_followed(host, run, output, name, masked, content, command=None):
    """_run_into_layer for a host that `follows`: the progress bar and the painting as it forms
    in a live layer by the follower, the worker's run in a thread of this process (or, given
    its `command`, in the follower), then the result as the new layer in one undo group.
    Cancel, or a failure, takes the live layer away: the image and its undo history are as
    they were."""
    folder = os.path.dirname(output)
    live = host.live_layer(name, masked, content)
    try:
        if command is not None:
            _follow_command(host, command, folder, live, FILTER_CANCELLED)
        else:
            log_tiles(_follow_thread(host, run, folder, live, FILTER_CANCELLED))
    finally:
        host.drop_live(live)
    return _show_result(host, output, name, masked)


def _follow_command(host, command, folder, layer, cancelled):
    """The follower runs the worker's `command` itself (GIMP 2.10), painting `layer` (None: a
    run with no painting); CancelledError(`cancelled`) when GIMP's Cancel ended it."""
    write_follow(folder, {"fraction": 0.0, "text": "%s: starting the worker" % TITLE,
                          "command": command, "log": log_path()})
    followed = host.follow(layer, folder)
    if followed == "cancel":
        log("follower:", followed)
        raise CancelledError(cancelled)
    if followed != "success":
        raise BridgeError("The progress stopped unexpectedly (%s)." % followed)
    failed = (read_follow(folder) or {}).get("error")
    if failed:  # the worker's sentence
        raise BridgeError(failed)


def _follow_thread(host, run, folder, layer, cancelled):
    """`run(on_record=..., stop=...)` (run_worker or run_kept) in a thread of this
    process while the follower shows its progress (and its painting in `layer`; None: none);
    returns its final record. GIMP's Cancel ends the follower: `stop` is set (the worker goes at
    once) and CancelledError(`cancelled`) raised."""
    state = {"fraction": 0.0, "text": "%s: starting the worker" % TITLE, "image": None,
             "done": False}
    stop, lock, outcome = threading.Event(), threading.Lock(), {}

    def save():
        with lock:  # (the worker's thread and the beat's)
            write_follow(folder, dict(state, beat=time.time()))

    def beat():
        while not stop.wait(FOLLOW_BEAT_S) and not state["done"]:
            save()

    def follow(record):
        if record.get("event") == "notice":
            log_notice(record)
        state.update(fraction=min(1.0, float(record.get("fraction", 0.0))),
                     text=progress_text(record))
        if record.get("image"):
            state["image"] = record["image"]
            log("preview", record["image"])
        save()

    def work():
        try:
            outcome["final"] = run(on_record=follow, stop=stop)
        except BaseException as exc:  # handed to the filter's thread
            outcome["error"] = exc
        finally:
            state["done"] = True
            save()

    save()
    threads = [threading.Thread(target=work), threading.Thread(target=beat)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        followed = host.follow(layer, folder)
    except BaseException:
        stop.set()
        raise
    if followed != "success":
        stop.set()
        threads[0].join(FOLLOW_STOP_S)
        log("follower:", followed)
        if followed == "cancel":
            raise CancelledError(cancelled)
        raise BridgeError("The progress stopped unexpectedly (%s)." % followed)
    threads[0].join()
    stop.set()  # (the beat)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["final"]


def _show_result(host, output, name, masked):
    """The worker's result as the new layer above the source, in one undo group."""
    host.undo_group(start=True)
    try:
        layer = host.show(output, name, masked, None)
    finally:
        host.undo_group(start=False)
    host.flush()
    return layer


def start_dialog_preview(host, worker, settings, values):
    """The dialog's preview of the layer (or the selection's box) with the dialog's `values`:
    its files written and its run asked of the dialog's kept `worker` (a KeptWorker); returns
    (KeptRun, path of the result). The host reads a small `area` of the layer (preview_area);
    wrong input (no style yet) is InputError, as for the filter."""
    _check_model_for_dialog(settings)
    folder = worker.run_folder()
    try:
        styles = host.styles(folder)
        # With the second style outside the selection the whole layer is painted; else the
        # selection's box is what the result changes.
        outside = values["second_style_goes"] == "outside"
        area = host.preview_area(2 * preview_side(settings), whole=outside)
        selection = host.selection(area)
        _check_preview_size(settings, area, selection is not None)
        outside = second_style_outside(values["second_style_goes"], len(styles),
                                       selection is not None)
        masks = selection_masks(folder, selection, outside)
        content = os.path.join(folder, "content.npy")
        host.save_content(content, area)
        output = os.path.join(folder, "preview.png")
        args = dialog_preview_args(settings, content, styles, output, values, masks)
        log("dialog preview:", " ".join(args))
        return worker.submit(args, folder), output
    except BaseException:
        remove_dir(folder)
        raise


def _check_preview_size(settings, area, selected):
    """InputError when the worker could not paint the preview of `area` (preview_area's): a
    layer under the network's minimum side (check_layer_size), or a box too small or too thin."""
    _, _, width, height, scale = area
    if not selected:
        check_layer_size(settings, width, height)
    least, side = int(settings["limits"]["size"][0]), preview_side(settings)
    if min(width, height) < least or \
            min(width, height) * min(scale, float(side) / max(width, height)) < least:
        raise InputError("This %d x %d px %s is too small or too narrow to preview (under %d px "
                         "across at the preview's size)%s." % (
                             width, height, "selection" if selected else "layer", least,
                             "; OK still runs the filter" if selected else ""))


def preview_sheet(host, settings, files, style_folder=None, size=0):
    """Neural Style Preview: the contact sheet of the chosen styles on the host's layer, opened
    as a new image (returned)."""
    styles = preview_styles(files, style_folder)
    folder = exchange_dir()
    try:
        content = os.path.join(folder, "content.npy")
        host.save_content(content)
        check_layer_size(settings, *npy_size(content))
        ensure_model(host, settings, folder)
        sheet, figures = (os.path.join(folder, name)
                          for name in ("preview-sheet.png", "preview.json"))
        command = preview_command(settings, content, styles, sheet, figures, size)
        log("worker:", " ".join(command))
        if host.follows == "follower":
            _follow_command(host, command, folder, None, PREVIEW_CANCELLED)
        elif host.follows:
            _follow_thread(host, functools.partial(run_worker, command, cwd=folder), folder,
                           None, PREVIEW_CANCELLED)
        else:
            _run_previews(host, command, folder)
        opened = host.open_sheet(sheet)
        # Its notes (e.g. HEIC photos left out), in the run log from the worker's records; the
        # figures file brings them here from any process the worker ran in.
        with io.open(figures, encoding="utf-8") as f:
            for record in json.load(f).get("notes", []):
                host.message(record.get("message", ""))  # GIMP's own title says "Warning"
        return opened
    finally:
        remove_dir(folder)


def _run_previews(host, command, folder):
    """The preview's worker run here, for a host without a follower (its progress bar is this
    process's: GIMP's Cancel ends it, and the worker with it, --watch-stdin)."""
    host.progress(text="%s: starting the worker" % TITLE)
    try:
        run_worker(command, lambda record: show_progress(host, record), cwd=folder)
    finally:
        host.progress(end=True)


def exchange_dir():
    """A private folder for the files exchanged with the worker.

    In Flatpak, /tmp is private to the sandbox; the app's cache folder has the same path on the
    host, so the worker (run on the host) sees the same files.
    """
    base = _exchange_base()
    if base and not os.path.isdir(base):
        os.makedirs(base)
    return tempfile.mkdtemp(prefix="stylefu-", dir=base)


def _exchange_base():
    """The app's cache folder in Flatpak (None elsewhere: the temporary folder)."""
    if in_flatpak() and os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "stylefu")
    return None


def remove_dir(path):
    """Remove an exchange folder, moved aside first: a worker still writing into it (a kept run
    cancelled in one long evaluation) finds no folder there instead of refilling it mid-removal."""
    aside = path + ".removed"
    try:
        os.rename(path, aside)
    except OSError:  # gone already, or (Windows) a file in it still open: removed where it is
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


# --- .npy files without numpy ------------------------------------------------------------------

def _npy_descr(kind):
    order = "<" if sys.byteorder == "little" else ">"
    return {"float": order + "f4", "u8": "|u1", "u16": order + "u2"}[kind]


def write_npy(path, data, shape, kind="float"):
    """Write raw native-endian pixels (float32, uint8 or uint16, HxWxC) as a .npy file."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        _npy_descr(kind), ", ".join(str(int(n)) for n in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = (header + " " * pad + "\n").encode("latin1")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + bytearray([len(header) % 256, len(header) // 256]))
        f.write(header)
        f.write(data)


def _npy_header(f, path="the file"):
    """(shape, header dict) of the open .npy file `f`, left at its data."""
    magic = f.read(8)
    if magic[:6] != b"\x93NUMPY":
        raise BridgeError("The worker's result %s is not a .npy file." % path)
    major = bytearray(magic)[6]
    size_bytes = bytearray(f.read(2 if major == 1 else 4))
    length = sum(b << (8 * i) for i, b in enumerate(size_bytes))
    header = ast.literal_eval(f.read(length).decode("latin1"))
    return tuple(header["shape"]), header


def read_npy(path):
    """(shape, raw bytes) of a float32 .npy file written by the worker, in native byte order."""
    with open(path, "rb") as f:
        shape, header = _npy_header(f, path)
        data = f.read()
    if header["descr"] != _npy_descr("float") or header["fortran_order"] or len(shape) != 3:
        raise BridgeError("The worker's result %s is not a float32 HxWxC array." % path)
    if len(data) != 4 * shape[0] * shape[1] * shape[2]:
        raise BridgeError("The worker's result %s is truncated." % path)
    return shape, data


# --- running the worker ----------------------------------------------------------------------

def _time_left(record):
    """', about 3 min 20 s left' from a progress record's seconds_left (none before it is known)."""
    if record.get("seconds_left") is None:
        return ""
    seconds = max(0, int(round(float(record["seconds_left"]))))
    if seconds < 60:
        return ", about %d s left" % seconds
    if seconds < 3600:
        return ", about %d min %02d s left" % (seconds // 60, seconds % 60)
    return ", about %d h %02d min left" % (seconds // 3600, seconds % 3600 // 60)


def show_progress(host, record):
    """A worker's record on the host's progress bar (a notice in the run log too)."""
    if record.get("event") == "notice":
        log_notice(record)
    host.progress(min(1.0, float(record.get("fraction", 0.0))), progress_text(record))


def progress_text(record, title=TITLE):
    """The progress bar's text for one JSON progress record: level and evaluation, or what is
    downloaded from where and how far."""
    if record.get("event") == "fetch":
        return "%s: downloading %s" % (title, _source_text(record))
    if record.get("event") == "progress" and record.get("stage") == "download":
        return "%s: downloading %s from %s: %d of %d MB" % (
            title, record["label"], record["host"], round(record["done_mb"]),
            round(record["total_mb"]))
    if record.get("event") == "progress" and "of" in record:  # stylefu preview's, a style done
        return "%s: %d of %d styles previewed" % (title, record["done"], record["of"])
    if record.get("event") == "progress":
        level, levels = record["level"], record["levels"]
        if record["evaluation"] >= record["evaluations"] and level < levels:
            return "%s: level %d of %d, computing targets%s" % (title, level + 1, levels,
                                                                 _time_left(record))
        return "%s: level %d of %d, evaluation %d of %d%s" % (
            title, level, levels, record["evaluation"], record["evaluations"], _time_left(record))
    if record.get("event") == "notice":  # e.g. "2048x1536 px is optimised in 512 px tiles"
        return "%s: %s" % (title, notice_text(record))
    return "%s: %s" % (title, record.get("event", ""))


def dialog_preview_text(record):
    """The dialog preview's one line for a progress record, within DIALOG_TEXT_CHARS: how far it
    is and, once the worker knows, the time left ("Preview: 45%, 3 s left")."""
    if record.get("event") != "progress":
        return "Preview: painting"
    text = "Preview: %d%%" % round(100 * min(1.0, max(0.0, float(record.get("fraction", 0.0)))))
    if record.get("seconds_left") is not None:
        seconds = max(0, int(round(float(record["seconds_left"]))))
        text += (", %d s left" % seconds if seconds < 60 else
                 ", %d min left" % round(seconds / 60.0) if seconds < 5970 else
                 ", %d h left" % round(seconds / 3600.0))
    return text


def _last_line(path):
    try:
        with io.open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except (IOError, OSError):
        return ""
    # Skip Python's "Fatal Python error"/traceback furniture: keep the last meaningful line.
    for line in reversed(lines):
        if not line.startswith(("File ", "Traceback", "Current thread", "^")):
            return line[len("stylefu: error: "):] if line.startswith("stylefu: error: ") else line
    return ""


_WINDOWS = os.name == "nt"


def _describe_exit(code):
    if code is not None and code < 0:
        try:
            return "killed by signal %s" % signal.Signals(-code).name
        except (AttributeError, ValueError):
            return "killed by signal %d" % -code
    if code is not None and code >= 0xC0000000:  # a Windows NTSTATUS, e.g. an access violation
        return "exit code 0x%08X (a crash)" % code
    return "exit code %s" % code


def _no_console():
    """Popen's extra arguments: on Windows no console window for the worker (closing it would
    kill the worker)."""
    return {"creationflags": 0x08000000} if _WINDOWS else {}  # CREATE_NO_WINDOW


def _start_worker(command, stderr, cwd):
    """Popen the worker with its stdin and stdout as pipes; BridgeError when it cannot start."""
    try:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, cwd=cwd, env=worker_env(), **_no_console())
    except OSError as exc:
        raise BridgeError("Cannot start the stylefu worker %s (%s); %s."
                          % (command[0], exc.strerror or exc, REINSTALL))


def _json_record(raw):
    """The JSON object on one line of the worker's stdout, or None (a library printing there)."""
    try:
        record = native_text(json.loads(raw.decode("utf-8")))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _is_final(record):
    return record.get("event") in ("result", "error", "cancelled")


def _kill_when(stop, proc):
    """Kill the worker `proc` once the Event `stop` is set (a cancelled run), from a thread that
    ends with the worker; nothing when `stop` is None."""
    def watch():
        while proc.poll() is None:
            if stop.wait(FOLLOW_POLL_S):
                if proc.poll() is None:
                    proc.kill()
                return
    if stop is not None:
        thread = threading.Thread(target=watch)
        thread.daemon = True
        thread.start()


def _close_pipes(proc):
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except (IOError, OSError):
            pass


def _outcome(final, code, stderr_path):
    """The final record of a finished worker, or BridgeError with its one-line message."""
    if final is not None and final.get("event") == "error":
        raise BridgeError(final.get("message") or "The stylefu worker failed.")
    if final is not None and final.get("event") == "cancelled":
        raise BridgeError("The stylefu worker was cancelled.")
    if code != 0 or final is None:
        detail = _last_line(stderr_path)
        raise BridgeError("The stylefu worker stopped unexpectedly (%s)%s" % (
            _describe_exit(code), (": " + detail) if detail else "."))
    return final


def run_worker(command, on_record=None, on_start=None, cwd=None, stop=None):
    """Run the worker, call on_record(record) for each JSON line; return the final record.

    The worker's stdin is a pipe kept open for the whole run: when this process ends for any
    reason (GIMP's Cancel kills the plug-in), the pipe closes and the worker stops by itself
    (--watch-stdin); so does `stop` (an Event) once set. Raises BridgeError with the worker's
    one-line message on any failure.
    """
    stderr_path = os.path.join(cwd or tempfile.gettempdir(), "worker-stderr.txt")
    with open(stderr_path, "wb") as stderr:
        proc = _start_worker(command, stderr, cwd)
        _kill_when(stop, proc)
        if on_start is not None:
            on_start(proc)
        final = None
        try:
            for raw in iter(proc.stdout.readline, b""):
                record = _json_record(raw)
                if record is None:
                    continue
                if _is_final(record):
                    final = record
                elif on_record is not None:
                    on_record(record)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # an exception in on_record: do not leave the worker running
                proc.kill()
                proc.wait()
            _close_pipes(proc)
            _keep_worker_stderr(stderr_path, proc.returncode)
    return _outcome(final, code, stderr_path)


KEPT_POLL_S = 0.05  # how often run_kept looks at the kept worker's records


def run_kept(kept, args, on_record=None, stop=None):
    """run_worker's way (blocking, on_record(record) for each progress record, the final record
    or BridgeError) for `stylefu run ARGS` asked of a KeptWorker; the files are the caller's.
    GIMP's Cancel kills the plug-in: the kept worker's stdin closes and it stops the run; `stop`
    (an Event) set cancels the run and waits (up to FOLLOW_STOP_S) for its end, so that the caller
    removes its files once the worker writes no more (CancelledError)."""
    run = kept.submit(args, None)
    try:
        while True:
            for record in run.poll():
                if on_record is not None:
                    on_record(record)
            if run.done:
                return run.result()
            if stop is not None and stop.is_set():
                run.stop()
                deadline = time.time() + FOLLOW_STOP_S
                while not run.done and time.time() < deadline:
                    time.sleep(KEPT_POLL_S)
                    run.poll()
                raise CancelledError(FILTER_CANCELLED)
            time.sleep(KEPT_POLL_S)
    finally:
        run.stop()


_running = []  # BackgroundWorkers whose process has not ended yet


@atexit.register
def _finish_background():
    """When the plug-in ends (OK's run done, or Cancel), its daemon threads die with it: wait
    for the background workers (stopped, they end by themselves), kill one that is late, and
    remove their folders, so nothing is left behind."""
    deadline = time.time() + BackgroundWorker.CANCEL_GRACE
    for worker in list(_running):
        worker.stop()
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
        worker.thread.join(timeout=5.0)  # its stderr into the run's log first
        remove_dir(worker.folder)


class BackgroundWorker(object):
    """A worker process that never blocks its caller (the GIMP 3 dialog's KeptWorker): a thread
    reads its JSON lines into a queue, which the caller drains from its own main loop (GLib
    timeouts), so GIMP's dialog stays responsive. stop() ends it the worker's way (stdin
    closed) and kills it only if it has not ended within CANCEL_GRACE s (beyond the worker's
    own 15 s limit after its stdin closes, so normally never). Its private `folder` is removed
    once the worker has ended and stop() was called."""

    CANCEL_GRACE = 20.0

    def __init__(self, command, folder):
        self.folder = folder
        self.stderr_path = os.path.join(folder, "worker-stderr.txt")
        self._records = queue.Queue()
        self._lock = threading.Lock()
        self._stopped = self._ended = False
        self.code = None
        with open(self.stderr_path, "wb") as stderr:
            self.proc = _start_worker(command, stderr, folder)
        _running.append(self)
        self.thread = threading.Thread(target=self._read)
        self.thread.daemon = True
        self.thread.start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            record = _json_record(raw)
            if record is not None:
                self._records.put(record)
        code = self.proc.wait()
        _close_pipes(self.proc)
        _keep_worker_stderr(self.stderr_path, code)
        self._records.put(("exit", code))
        with self._lock:
            self._ended, stopped = True, self._stopped
        if self in _running:
            _running.remove(self)
        if stopped:
            remove_dir(self.folder)

    def drain(self):
        """Every record that arrived since the last call, final ones included (never waits).
        Once the worker has ended, `self.code` is its exit code."""
        records = []
        while True:
            try:
                item = self._records.get_nowait()
            except queue.Empty:
                return records
            if isinstance(item, tuple):
                self.code = item[1]
            else:
                records.append(item)

    def stop(self):
        """Cancel a running worker (stdin closed, killed after CANCEL_GRACE s) and remove its
        folder once it has ended. Never waits."""
        with self._lock:
            if self._stopped:
                return
            self._stopped, ended = True, self._ended
        if ended:
            remove_dir(self.folder)
            return
        try:
            self.proc.stdin.close()
        except (IOError, OSError):
            pass
        timer = threading.Timer(self.CANCEL_GRACE, self._kill)
        timer.daemon = True
        timer.start()

    def _kill(self):
        if self.proc.poll() is None:
            log("the cancelled worker did not stop within %g s: killed" % self.CANCEL_GRACE)
            self.proc.kill()


class KeptWorker(object):
    """One `stylefu serve` worker kept for the GIMP 3 dialog's life, so a refreshed preview or
    estimate pays neither the worker's start nor the model's load: runs are asked as JSON lines
    on its stdin (submit) and answered in order; each is a KeptRun, which the caller polls from
    its own main loop. close() ends the worker (its stdin closed) and removes its folder, the
    runs' folders included."""

    def __init__(self, settings):
        folder = exchange_dir()
        try:
            model = ["--model", settings["model"]] if settings.get("model") else []
            command = worker_command(settings, ["serve"] + model)
            log("dialog worker:", " ".join(command))
            self.worker = BackgroundWorker(command, folder)
        except BaseException:
            remove_dir(folder)
            raise
        self.runs, self.current, self.closed = {}, None, False
        self.folders = self.requests = 0  # numbers given so far (a request's is never reused)

    @property
    def alive(self):
        self.pump()
        return self.worker.code is None and not self.closed

    def run_folder(self):
        """A new folder for a run's files, inside the worker's own."""
        self.folders += 1
        folder = os.path.join(self.worker.folder, "run-%d" % self.folders)
        os.mkdir(folder)
        return folder

    def submit(self, args, folder, command="run"):
        """Ask the worker for `stylefu COMMAND ARGS` (run or estimate; its files in `folder`,
        from run_folder, removed once it has ended and was stopped; None: the caller's)."""
        self.requests += 1
        run = KeptRun(self, self.requests, args, folder)
        self._send({"id": run.ident, command: list(args)})
        self.runs[run.ident] = run
        return run

    def cancel(self, run):
        """Stop `run` at its next evaluation (or before it starts). Never waits."""
        self._send({"cancel": run.ident})

    def _send(self, request):
        try:
            self.worker.proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.worker.proc.stdin.flush()
        except (IOError, OSError, ValueError):  # the worker has gone: pump says why
            pass

    def pump(self):
        """Hand the worker's records to their runs; once it has ended, end every run left."""
        for record in self.worker.drain():
            if record.get("event") == "started":
                self.current = self.runs.get(record.get("id"))
            elif self.current is not None:
                if _is_final(record):
                    self.runs.pop(self.current.ident, None)
                    self.current.finish(record, 0)
                    self.current = None
                else:
                    self.current.records.append(record)
        if self.worker.code is not None:
            for run in list(self.runs.values()):
                run.finish(None, self.worker.code)
            self.runs.clear()

    def close(self):
        """End the worker (stdin closed: it cancels its run and exits) and remove its folder."""
        self.closed = True
        self.worker.stop()


class KeptRun(object):
    """One request to a KeptWorker: poll() (its progress records so far, never waits), done,
    result() (its final record, or BridgeError as run_worker raises it), stop(); `args` are its
    command's arguments. Its folder (None: the caller's files) goes once it has ended and stop()
    was called."""

    def __init__(self, worker, ident, args, folder):
        self.worker, self.ident, self.args, self.folder = worker, ident, args, folder
        self.records, self.final, self.code, self._stopped = [], None, None, False

    def poll(self):
        self.worker.pump()
        records, self.records = self.records, []
        return records

    @property
    def done(self):
        return self.code is not None

    def result(self):
        return _outcome(self.final, self.code, self.worker.worker.stderr_path)

    def finish(self, final, code):
        self.final, self.code = final, code
        if self._stopped:
            self._remove_folder()

    def _remove_folder(self):
        if self.folder is not None:
            remove_dir(self.folder)

    def stop(self):
        """Cancel the run if it goes on, and remove its folder once it has ended. Never waits."""
        if self._stopped:
            return
        self._stopped = True
        if self.done:
            self._remove_folder()
        else:
            self.worker.cancel(self)
