# -*- coding: utf-8 -*-
"""The GIMP side of the worker bridge, shared by the GIMP 3 and the GIMP 2.10 plug-ins.

GIMP's own Python cannot import torch, so the plug-ins hand the work to `python -m stylefu.core run`
in the environment that `stylefu gimp install` recorded, and follow its JSON lines. This file runs
under GIMP 2.10's Python 2.7 as well as GIMP 3's Python 3, needs nothing beyond the standard
library (no numpy: GIMP's bundled Python may lack it), and never imports stylefu. The installer
pastes it into each installed plug-in, so every plug-in is one self-contained file.
"""
from __future__ import division, print_function

import array
import ast
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

# Raised whenever the settings gain a key the plug-ins need (2: "second_style_goes"), so an old
# file gives load_settings' sentence instead of a failure at run time.
SETTINGS_VERSION = 2
FLATPAK_INFO = "/.flatpak-info"
# "Second style goes": where the optional second style is painted, the first choice being the
# default (the one place it is set; the installer's settings take it from here). "everywhere":
# blended with the first style over the whole layer (a selection limits both); "outside": the
# first style inside the selection and the second outside it (one mask per style, m and 1 - m).
SECOND_STYLE_PLACES = ("everywhere", "outside")
SECOND_STYLE_LABELS = {"everywhere": "Everywhere, blended", "outside": "Outside the selection"}


class BridgeError(Exception):
    """Anything that stops a run, as the one sentence GIMP shows to the user."""


def settings_path(plugin_file):
    """The settings file the installer writes beside the plug-in: same name, `.json`."""
    return os.path.splitext(os.path.abspath(plugin_file))[0] + ".json"


def load_settings(plugin_file):
    """The installer's settings (worker interpreter, model, dialog defaults and choices)."""
    path = settings_path(plugin_file)
    try:
        with io.open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (IOError, OSError, ValueError):
        raise BridgeError("stylefu is not set up for this GIMP (%s is missing or damaged); run "
                          "`stylefu gimp install` in the environment that has stylefu." % path)
    if settings.get("version") != SETTINGS_VERSION:
        raise BridgeError("%s was written by another stylefu version; run `stylefu gimp install` "
                          "again." % path)
    return settings


# What a plug-in registers its dialog with when the installer's settings are missing; running
# then fails with load_settings' sentence that says to run `stylefu gimp install`.
UNSET_SETTINGS = {
    "defaults": {"strength": 50.0, "preset": "", "iterations": 0, "size": 16,
                 "preserve_colors": "", "style_scale": 1.0, "seed": 0, "device": "",
                 "second_style_weight": 0.5, "second_style_goes": SECOND_STYLE_PLACES[0],
                 "tile_size": 0},
    "choices": {"preset": [""], "preserve_colors": [""], "device": [""],
                "second_style_goes": list(SECOND_STYLE_PLACES)},
    "limits": {"size": [16, 16384], "tile_size": [0, 16384]}, "help": {}}


def log(*parts):
    """A line on GIMP's console (stderr), flushed at once (GIMP may kill the plug-in)."""
    print("[stylefu]", *parts, file=sys.stderr)
    sys.stderr.flush()


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
        command = ["flatpak-spawn", "--host", "--watch-bus"] + command
    return command


def worker_env():
    """GIMP's environment without the variables that point Python at GIMP's own Python."""
    return dict((k, v) for k, v in os.environ.items()
                if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                             "PYTHONUSERBASE", "PYTHONNOUSERSITE", "VIRTUAL_ENV"))


def run_options(values, settings):
    """`stylefu run` options for the dialog's values (a dict keyed by the Config field names)."""
    options = ["--progress", "json", "--watch-stdin", "--keep-size",
               # The dialog's 0..100 slider is the core's --strength (balanced at 50 on any model).
               "--strength", repr(float(values["strength"])),
               "--preset", str(values["preset"]), "--size", str(int(values["size"])),
               "--preserve-colors", str(values["preserve_colors"]),
               "--style-scale", repr(float(values["style_scale"])),
               "--seed", str(int(values["seed"])), "--device", str(values["device"])]
    if int(values.get("iterations") or 0) > 0:
        options += ["--iterations", str(int(values["iterations"]))]
    if values.get("tile_size") is not None:
        options += ["--tile-size", str(int(values["tile_size"]))]
    if values.get("style_blend"):
        options += ["--style-blend", ",".join(repr(float(w)) for w in values["style_blend"])]
    if int(settings.get("preview_every") or 0) > 0:
        options += ["--save-every", str(int(settings["preview_every"]))]
    if settings.get("model"):
        options += ["--model", settings["model"]]
    return options


def second_style_blend(weight):
    """--style-blend's (first, second) weights for the dialog's weight of the second style (0..1).

    One number is enough for two styles (the core normalises the weights): 0.5 blends them
    equally, 1 uses the second style alone.
    """
    weight = min(1.0, max(0.0, float(weight)))
    return (1.0 - weight, weight)


def second_style_outside(place, styles, selected):
    """True when the dialog's "Second style goes" asks for the second style outside the selection
    (then the worker gets the selection and its inverse as one mask per style, and the new layer
    no layer mask); False for "everywhere". BridgeError when that choice cannot be carried out.
    """
    if place not in SECOND_STYLE_PLACES:
        raise BridgeError("'Second style goes' must be one of %s, not %r."
                          % (", ".join(SECOND_STYLE_PLACES), place))
    if place == "everywhere":
        return False
    if styles != 2:
        raise BridgeError("'Second style goes: outside the selection' needs a second style; "
                          "choose one, or set 'Second style goes' to 'everywhere, blended'.")
    if not selected:
        raise BridgeError("'Second style goes: outside the selection' needs a selection for the "
                          "first style; select part of the layer, or set 'Second style goes' to "
                          "'everywhere, blended'.")
    return True


_INVERT_U8 = bytes(bytearray(range(255, -1, -1)))


def inverse_mask(data, kind="float"):
    """The raw pixels of 1 - m for a mask's raw pixels m (native float32 in 0..1, or uint8):
    everything the selection leaves out, soft edges kept soft (m + (1 - m) = 1 everywhere)."""
    if kind == "u8":
        return bytes(data).translate(_INVERT_U8)
    inverse = array.array("f", [1.0 - v for v in array.array("f", bytes(data))])
    return inverse.tobytes() if hasattr(inverse, "tobytes") else inverse.tostring()


def write_selection_masks(folder, data, shape, kind="float", outside=False):
    """Write the selection's mask (raw pixels `data`, HxWx1) for the worker; with `outside` also
    its inverse, for the second style. Returns the mask paths, one per `--mask` in style order.
    """
    path = os.path.join(folder, "selection.npy")
    write_npy(path, data, shape, kind)
    if not outside:
        return [path]
    inverse = inverse_mask(data, kind)
    if not any(bytearray(inverse)):  # 0.0 is all zero bytes in float32 too
        raise BridgeError("The selection covers the whole layer, so the second style would go "
                          "nowhere; select less, or set 'Second style goes' to 'everywhere, "
                          "blended'.")
    inverse_path = os.path.join(folder, "selection-inverse.npy")
    write_npy(inverse_path, inverse, shape, kind)
    return [path, inverse_path]


def mask_options(masks):
    """`stylefu run` options for the mask files (one for every style, or one per style)."""
    options = []
    for path in masks:
        options += ["--mask", path]
    return options


def exchange_dir():
    """A private folder for the files exchanged with the worker.

    In Flatpak, /tmp is private to the sandbox; the app's cache folder has the same path on the
    host, so the worker (run on the host) sees the same files.
    """
    base = None
    if in_flatpak() and os.environ.get("XDG_CACHE_HOME"):
        base = os.path.join(os.environ["XDG_CACHE_HOME"], "stylefu")
        if not os.path.isdir(base):
            os.makedirs(base)
    return tempfile.mkdtemp(prefix="stylefu-", dir=base)


def remove_dir(path):
    shutil.rmtree(path, ignore_errors=True)


# --- .npy files without numpy ------------------------------------------------------------------

def _npy_descr(kind):
    order = "<" if sys.byteorder == "little" else ">"
    return {"float": order + "f4", "u8": "|u1"}[kind]


def write_npy(path, data, shape, kind="float"):
    """Write raw native-endian pixels (float32 or uint8, HxWxC) as a .npy file."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        _npy_descr(kind), ", ".join(str(int(n)) for n in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = (header + " " * pad + "\n").encode("latin1")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + bytearray([len(header) % 256, len(header) // 256]))
        f.write(header)
        f.write(data)


def read_npy(path):
    """(shape, raw bytes) of a float32 .npy file written by the worker, in native byte order."""
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic[:6] != b"\x93NUMPY":
            raise BridgeError("The worker's result %s is not a .npy file." % path)
        major = bytearray(magic)[6]
        size_bytes = bytearray(f.read(2 if major == 1 else 4))
        length = sum(b << (8 * i) for i, b in enumerate(size_bytes))
        header = ast.literal_eval(f.read(length).decode("latin1"))
        data = f.read()
    shape = tuple(header["shape"])
    if header["descr"] != _npy_descr("float") or header["fortran_order"] or len(shape) != 3:
        raise BridgeError("The worker's result %s is not a float32 HxWxC array." % path)
    if len(data) != 4 * shape[0] * shape[1] * shape[2]:
        raise BridgeError("The worker's result %s is truncated." % path)
    return shape, data


# --- running the worker ----------------------------------------------------------------------

def progress_text(record, title="Neural style"):
    """The progress bar's text for one JSON progress record: stage, scale and iteration."""
    if record.get("event") == "progress":
        text = "%s: scale %d of %d, iteration %d of %d" % (
            title, record["scale"], record["scales"], record["iteration"], record["iterations"])
        if record["iteration"] >= record["iterations"] and record["scale"] < record["scales"]:
            text = "%s: scale %d of %d, computing targets" % (
                title, record["scale"] + 1, record["scales"])
        return text
    if record.get("event") == "notice":  # e.g. "2048x1536 px is optimised in 512 px tiles"
        return "%s: %s" % (title, record.get("message", ""))
    return "%s: %s" % (title, record.get("stage") or record.get("event", ""))


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


def _describe_exit(code):
    if code is not None and code < 0:
        try:
            return "killed by signal %s" % signal.Signals(-code).name
        except (AttributeError, ValueError):
            return "killed by signal %d" % -code
    return "exit code %s" % code


def run_worker(command, on_record=None, on_start=None, cwd=None):
    """Run the worker, call on_record(record) for each JSON line; return the final record.

    The worker's stdin is a pipe kept open for the whole run: when this process ends for any
    reason (GIMP's Cancel kills the plug-in), the pipe closes and the worker stops by itself
    (--watch-stdin). Raises BridgeError with the worker's one-line message on any failure.
    """
    stderr_path = os.path.join(cwd or tempfile.gettempdir(), "worker-stderr.txt")
    extra = {}
    if os.name == "nt":
        extra["creationflags"] = 0x08000000  # CREATE_NO_WINDOW: no console window flashes
    with open(stderr_path, "wb") as stderr:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=stderr, cwd=cwd, env=worker_env(), **extra)
        except OSError as exc:
            raise BridgeError("Cannot start the stylefu worker %s (%s); run `stylefu gimp "
                              "install` again from the environment that has stylefu."
                              % (command[0], exc.strerror or exc))
        if on_start is not None:
            on_start(proc)
        final = None
        try:
            for raw in iter(proc.stdout.readline, b""):
                try:
                    record = json.loads(raw.decode("utf-8"))
                except ValueError:
                    continue  # not ours (a library printing to stdout)
                if not isinstance(record, dict):
                    continue
                if record.get("event") in ("result", "error", "cancelled"):
                    final = record
                elif on_record is not None:
                    on_record(record)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # an exception in on_record: do not leave the worker running
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except (IOError, OSError):
                    pass
    if final is not None and final.get("event") == "error":
        raise BridgeError(final.get("message") or "The stylefu worker failed.")
    if final is not None and final.get("event") == "cancelled":
        raise BridgeError("The stylefu worker was cancelled.")
    if code != 0 or final is None:
        detail = _last_line(stderr_path)
        raise BridgeError("The stylefu worker stopped unexpectedly (%s)%s" % (
            _describe_exit(code), (": " + detail) if detail else "."))
    return final


def run_command(command, cwd=None):
    """Run a worker command that prints no JSON (e.g. `stylefu preview`); BridgeError on failure."""
    stderr_path = os.path.join(cwd or tempfile.gettempdir(), "worker-stderr.txt")
    with open(stderr_path, "wb") as stderr:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stderr, stderr=stderr,
                                    cwd=cwd, env=worker_env())
        except OSError as exc:
            raise BridgeError("Cannot start the stylefu worker %s (%s); run `stylefu gimp "
                              "install` again." % (command[0], exc.strerror or exc))
        proc.stdin.close()
        code = proc.wait()
    if code != 0:
        detail = _last_line(stderr_path)
        raise BridgeError("stylefu failed (%s)%s" % (_describe_exit(code),
                                                    (": " + detail) if detail else "."))
