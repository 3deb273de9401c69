"""Runs INSIDE GIMP 3 with its user interface (under Xvfb): the user's undo steps around the
filter's live layer (the installed plug-in's own Host.live_layer and drop_live, as a run adds and
takes it away, undo history frozen).

On an image of layers A, photo (the source), B, C, top first: (1) B removed while the live layer
exists, undone after the run; (2) B removed before the run, undone during it; (3) the source
itself removed during the run, undone after it. Before each undo this writes OUT/NAME.ready and
waits for OUT/NAME.done: tests/test_gimp3.py presses Ctrl+Z in GIMP's window (GIMP 3.0's PDB has
no undo call), then this records the layers (a group as [name, children]) in OUT/undo.json.
"""

import json
import os
import sys
import time

from gi.repository import Gegl, Gimp

JOB = json.load(open(os.environ["STYLEFU_SUITE"]))
sys.path.insert(0, JOB["plug_in"])
import stylefu  # noqa: E402  (the installed plug-in)

W, H = 64, 48
content = os.path.join(JOB["out"], "content.npy")
stylefu.bridge.write_npy(content, bytes(W * H * 3 * 4), (H, W, 3))


def undo_by_the_user(name):
    open(os.path.join(JOB["out"], name + ".ready"), "w").close()
    print("[undo] waiting for Ctrl+Z:", name, file=sys.stderr, flush=True)
    while not os.path.exists(os.path.join(JOB["out"], name + ".done")):
        time.sleep(0.2)


def tree(items):
    return [[item.get_name(), tree(item.get_children())] if item.is_group_layer()
            else item.get_name() for item in items]


def picture():
    """The image (shown) with its history starting here: A, photo, B, C."""
    image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    image.undo_disable()
    for name in ("C", "B", "photo", "A"):
        layer = Gimp.Layer.new(image, name, W, H, Gimp.ImageType.RGB_IMAGE, 100.0,
                               Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        layer.get_buffer().set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B' float",
                               bytes(W * H * 3 * 4))
    image.undo_enable()
    return image, Gimp.Display.new(image)


def layer(image, name):
    return next(item for item in image.get_layers() if item.get_name() == name)


result = {}
image, display = picture()
host = stylefu.Host(image, [layer(image, "photo")], None, Gimp.RunMode.NONINTERACTIVE)
live = host.live_layer("live", False, content)
image.remove_layer(layer(image, "B"))
during = tree(image.get_layers())
host.drop_live(live)
Gimp.displays_flush()
undo_by_the_user("removed-during")
result["removed_during"] = {"during": during, "undone_after": tree(image.get_layers())}
display.delete()

image, display = picture()
image.remove_layer(layer(image, "B"))
host = stylefu.Host(image, [layer(image, "photo")], None, Gimp.RunMode.NONINTERACTIVE)
live = host.live_layer("live", False, content)
Gimp.displays_flush()
undo_by_the_user("removed-before")
result["removed_before"] = {"undone_during": tree(image.get_layers())}
host.drop_live(live)
result["removed_before"]["after"] = tree(image.get_layers())
display.delete()

image, display = picture()
source = layer(image, "photo")
host = stylefu.Host(image, [source], None, Gimp.RunMode.NONINTERACTIVE)
live = host.live_layer("live", False, content)
image.remove_layer(source)
host.drop_live(live)
Gimp.displays_flush()
undo_by_the_user("source-removed-during")
result["source_removed_during"] = {"undone_after": tree(image.get_layers())}
display.delete()
print("[undo]", result, file=sys.stderr, flush=True)
with open(os.path.join(JOB["out"], "undo.json"), "w") as f:
    json.dump(result, f)
