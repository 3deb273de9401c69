"""Runs INSIDE GIMP 3 with its user interface (under Xvfb): the filter's dialog, for real.

tests/test_gimp3.py starts this, waits for the "Neural Style Transfer" dialog to appear, takes its
screenshot and presses Cancel (Alt+C), then does the same with the Custom quality and presses OK
(Alt+O) with xdotool, and checks OUT/gui.json: the first run was cancelled, the second ran the
filter from the dialog's values (defaults from the installer's settings) and added its layer.
With "gray" in the job, the dialog on a grayscale copy of the picture (its preview, cancelled);
with "broken_style", last, the dialog once the style file is no longer an image (cancelled).
With "missing_model" in the job, a third run without a model: OK, then the question whether to
download one, declined (Alt+C).
With "progress_cancel" in the job, first of all a run without the dialog whose progress bar's
Cancel (in the image window's status bar) the test clicks once the live layer shows the painting.
"""

import json
import os
import sys

import numpy as np
from gi.repository import Gegl, Gimp, Gio

JOB = json.load(open(os.environ["STYLEFU_SUITE"]))
content = np.load(JOB["content"])
h, w = content.shape[:2]
image = Gimp.Image.new(w, h, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", w, h, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
buffer = layer.get_buffer()
buffer.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' float", content.astype(np.float32).tobytes())
buffer.flush()
Gimp.Display.new(image)
Gimp.displays_flush()
procedure = Gimp.get_pdb().lookup_procedure("python-fu-stylefu")
config = procedure.create_config()
config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
config.set_property("image", image)
config.set_core_object_array("drawables", [layer])
config.set_property("style-file", Gio.File.new_for_path(JOB["style"]))
config.set_property("size", JOB["size"])
config.set_property("iterations", JOB["iterations"])
config.set_property("strength", JOB["strength"])
result = {}
if JOB.get("progress_cancel"):
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("preset", "custom")
    config.set_property("iterations", JOB["progress_cancel"])
    print("[gui] running the filter to cancel it", file=sys.stderr, flush=True)
    result["progress_cancel"] = procedure.run(config).index(0).value_nick
    result["progress_cancel_layers"] = [item.get_name() for item in image.get_layers()]
    config.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    config.set_property("iterations", JOB["iterations"])
# First a preset quality (the test cancels that dialog), then Custom, which shows its evaluations.
for preset in ("normal", "custom"):
    config.set_property("preset", preset)
    print("[gui] opening the dialog with quality", preset, file=sys.stderr, flush=True)
    values = procedure.run(config)
    result[preset] = values.index(0).value_nick
result["layers"] = [item.get_name() for item in image.get_layers()]
if JOB.get("gray"):
    # A grayscale image: its preview must be gray, as the new layer will be (cancelled).
    gray = Gimp.Image.new(w, h, Gimp.ImageBaseType.GRAY)
    gray_layer = Gimp.Layer.new(gray, "gray photo", w, h, Gimp.ImageType.GRAY_IMAGE, 100.0,
                                Gimp.LayerMode.NORMAL)
    gray.insert_layer(gray_layer, None, 0)
    buffer = gray_layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' float",
               content.astype(np.float32).tobytes())
    buffer.flush()
    Gimp.Display.new(gray)
    config.set_property("image", gray)
    config.set_core_object_array("drawables", [gray_layer])
    print("[gui] opening the dialog on a grayscale image", file=sys.stderr, flush=True)
    result["gray"] = procedure.run(config).index(0).value_nick
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
if JOB.get("missing_model"):
    # No model: after the filter's dialog, the question whether to download one (declined).
    with open(JOB["settings"]) as f:
        settings = json.load(f)
    settings["model"] = JOB["missing_model"]
    with open(JOB["settings"], "w") as f:
        json.dump(settings, f)
    print("[gui] opening the dialog without a model", file=sys.stderr, flush=True)
    values = procedure.run(config)
    result["no_model"] = values.index(0).value_nick
    result["no_model_message"] = str(values.index(1)) if values.length() > 1 else ""
    result["no_model_layers"] = [item.get_name() for item in image.get_layers()]
    settings["model"] = JOB["model"]
    with open(JOB["settings"], "w") as f:
        json.dump(settings, f)
if JOB.get("broken_style"):
    # The remembered style file is no longer an image: the preview fails with the worker's
    # sentence, in the preview's column without widening the dialog (cancelled).
    with open(JOB["style"], "wb") as f:
        f.write(b"not an image\n" * 10)
    print("[gui] opening the dialog with a broken style file", file=sys.stderr, flush=True)
    result["broken_style"] = procedure.run(config).index(0).value_nick
print("[gui]", result, file=sys.stderr, flush=True)
with open(os.path.join(JOB["out"], "gui.json"), "w") as f:
    json.dump(result, f)
