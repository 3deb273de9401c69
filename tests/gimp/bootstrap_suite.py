"""Runs INSIDE headless GIMP 3 (python-fu-eval): the filter exactly as install.py left it.

tests/test_bootstrap.py installs stylefu with the one command into a fresh HOME, then runs this
once with that HOME as GIMP's: the plug-in GIMP finds in ~/.config/GIMP/3.0/plug-ins, its settings
and its worker are the installer's, untouched. Results go to $STYLEFU_SUITE's "out" folder.
"""

import json
import os
import sys
import traceback

import numpy as np
from gi.repository import Gegl, Gimp, Gio

JOB = json.load(open(os.environ["STYLEFU_SUITE"]))
results = {}


def pixels(layer):
    w, h = layer.get_width(), layer.get_height()
    data = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, "R'G'B' float",
                                  Gegl.AbyssPolicy.CLAMP)
    return np.frombuffer(bytes(data), np.float32).reshape(h, w, 3).copy()


def main():
    pdb = Gimp.get_pdb()
    results["registered"] = bool(pdb.procedure_exists("python-fu-stylefu"))
    content = np.load(JOB["content"])
    h, w = content.shape[:2]
    image = Gimp.Image.new(w, h, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "source", w, h, Gimp.ImageType.RGB_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' float", content.tobytes())
    buffer.flush()
    proc = pdb.lookup_procedure("python-fu-stylefu")
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    config.set_property("style-file", Gio.File.new_for_path(JOB["style"]))
    config.set_property("preset", "custom")
    for key in ("iterations", "size", "strength"):
        config.set_property(key, JOB[key])
    values = proc.run(config)
    status = values.index(0)
    results["status"] = status.value_nick
    results["message"] = str(values.index(1)) if values.length() > 1 and \
        status != Gimp.PDBStatusType.SUCCESS else ""
    results["layers"] = [item.get_name() for item in image.get_layers()]
    if len(image.get_layers()) == 2:
        new = image.get_layers()[0]
        results["mean_change"] = float(np.abs(pixels(new) - pixels(layer)).mean())


try:
    main()
except Exception:
    results["suite_error"] = traceback.format_exc()
    print("[bootstrap]", results["suite_error"], file=sys.stderr, flush=True)
with open(os.path.join(JOB["out"], "results.json"), "w") as f:
    json.dump(results, f, indent=2)
