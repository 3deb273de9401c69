"""Runs INSIDE GIMP 3 with its user interface (under Xvfb): the user's undo steps around the
filter's live layer (the installed plug-in's own Host.live_layer and drop_live, as a run adds and
takes it away, undo history frozen).

On an image of layers A, photo (the source), B, C, top first: (1) B removed while the live layer
exists, undone after the run; (2) B removed before the run, undone during it; (3) the source
itself removed during the run, undone after it (and the result's step); (4) the live layer
removed during the run, undone after it; (5) the live layer's group removed during the run,
undone after it; (6) the live layer moved out of its group during the run, undone after it;
(IN_GROUP) the live layer painted, moved within its group, its opacity, mode, visibility or name
changed, the source painted or moved within the group, or the group renamed or moved, during the
run, undone after it.
Before each undo this writes OUT/NAME.ready (how many Ctrl+Z) and waits for OUT/NAME.done:
tests/test_gimp3.py presses Ctrl+Z in GIMP's window (GIMP 3.0's PDB has no undo call), then
this records the layers (a group as [name, children], a hidden layer's name with " (hidden)")
in OUT/undo.json.
"""

import array
import json
import os
import sys
import time

from gi.repository import Gegl, Gimp

JOB = json.load(open(os.environ["STYLEFU_SUITE"]))
sys.path.insert(0, JOB["plug_in"])
import stylefu  # noqa: E402  (the installed plug-in)

# Flat colours (the screenshots tell the layers apart): photo 160 x 120 in a 400 x 300 image,
# B below it and A above it, each partly over the others, C the background.
SIZE, PLACES = (400, 300), {"A": (260, 20, 100, 80, (0.85, 0.2, 0.2)),
                            "photo": (40, 40, 160, 120, (0.25, 0.45, 0.85)),
                            "B": (160, 120, 160, 120, (0.2, 0.7, 0.3)),
                            "C": (0, 0, 400, 300, (0.9, 0.9, 0.88))}


def pixels(w, h, colour, stripes=False):
    """RGB float pixels: one colour, or (the live layer's painting) orange with dark stripes."""
    rows = []
    for y in range(h):
        rows.extend(c * (0.4 if stripes and (x + y) // 12 % 2 else 1.0)
                    for x in range(w) for c in colour)
    return array.array("f", rows).tobytes()


W, H = PLACES["photo"][2:4]
content = os.path.join(JOB["out"], "content.npy")
stylefu.bridge.write_npy(content, pixels(W, H, (0.95, 0.6, 0.1), stripes=True), (H, W, 3))


def undo_by_the_user(name, presses=1):
    with open(os.path.join(JOB["out"], name + ".ready"), "w") as ready:
        ready.write(str(presses))
    print("[undo] waiting for Ctrl+Z:", name, file=sys.stderr, flush=True)
    while not os.path.exists(os.path.join(JOB["out"], name + ".done")):
        time.sleep(0.2)


def tree(items):
    named = [item.get_name() + ("" if item.get_visible() else " (hidden)") for item in items]
    return [[name, tree(item.get_children())] if item.is_group_layer() else name
            for name, item in zip(named, items)]


def end_run(host, live):
    """What the filter does at the run's end: the live layer away, the result in its undo
    group (here the live layer's first picture)."""
    host.drop_live(live)
    stylefu.bridge._show_result(host, content, "result", False)


def picture():
    """The image (shown) with its history starting here: A, photo, B, C."""
    image = Gimp.Image.new(*SIZE, Gimp.ImageBaseType.RGB)
    image.undo_disable()
    for name in ("C", "B", "photo", "A"):
        x, y, w, h, colour = PLACES[name]
        layer = Gimp.Layer.new(image, name, w, h, Gimp.ImageType.RGB_IMAGE, 100.0,
                               Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(x, y)
        layer.get_buffer().set(Gegl.Rectangle.new(0, 0, w, h), "R'G'B' float",
                               pixels(w, h, colour))
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
end_run(host, live)
result["source_removed_during"] = {"after": tree(image.get_layers())}
Gimp.displays_flush()
undo_by_the_user("source-removed-during", 2)
result["source_removed_during"]["undone_after"] = tree(image.get_layers())
display.delete()

for step, edit in (("live_removed_during", "remove live"), ("group_removed_during", "remove group"),
                   ("live_moved_during", "move live")):
    image, display = picture()
    host = stylefu.Host(image, [layer(image, "photo")], None, Gimp.RunMode.NONINTERACTIVE)
    live = host.live_layer("live", False, content)
    if edit == "move live":  # to the top of the image: the user keeps the painting so far
        image.reorder_item(live, None, 0)
    else:
        image.remove_layer(live if edit == "remove live" else host.live_group)
    result[step] = {"during": tree(image.get_layers())}
    stylefu.FollowHost.paint(live, content)  # the follower's next picture: nothing to paint
    end_run(host, live)
    result[step]["after"] = tree(image.get_layers())
    Gimp.displays_flush()
    undo_by_the_user(step.replace("_", "-"), 2)  # the result's step, then the user's removal
    result[step]["undone_after"] = tree(image.get_layers())
    display.delete()

def centre(item):
    """The RGB at the source's centre (the flat colour it had, or what the user painted)."""
    rect = Gegl.Rectangle.new(W // 2, H // 2, 1, 1)
    raw = item.get_buffer().get(rect, 1.0, "R'G'B' float", Gegl.AbyssPolicy.NONE)
    return [round(v, 2) for v in array.array("f", bytes(raw))]


# The user's steps on the live layer, or on the source, inside the group during the run.
IN_GROUP = (("live_painted", lambda host, live: live.edit_fill(Gimp.FillType.WHITE)),
            ("live_reordered", lambda host, live: host.image.reorder_item(live, host.live_group, 1)),
            ("live_opacity", lambda host, live: live.set_opacity(40.0)),
            ("live_mode", lambda host, live: live.set_mode(Gimp.LayerMode.MULTIPLY)),
            ("live_hidden", lambda host, live: live.set_visible(False)),
            ("live_renamed", lambda host, live: live.set_name("mine")),
            ("source_painted", lambda host, live: host.source.edit_fill(Gimp.FillType.WHITE)),
            ("source_reordered",
             lambda host, live: host.image.reorder_item(host.source, host.live_group, 0)),
            ("group_renamed", lambda host, live: host.live_group.set_name("mine")),
            ("group_reordered", lambda host, live: host.image.reorder_item(host.live_group, None, 0)))
for step, edit in IN_GROUP:
    image, display = picture()
    host = stylefu.Host(image, [layer(image, "photo")], None, Gimp.RunMode.NONINTERACTIVE)
    live = host.live_layer("live", False, content)
    print("[undo] step", step, file=sys.stderr, flush=True)
    edit(host, live)
    result[step] = {"during": tree(image.get_layers())}
    end_run(host, live)
    result[step]["after"] = tree(image.get_layers())
    Gimp.displays_flush()
    undo_by_the_user(step.replace("_", "-"), 2)  # the result's step, then the user's edit
    result[step]["undone_after"] = tree(image.get_layers())
    result[step]["photo"] = centre(host.source)
    display.delete()
print("[undo] end", file=sys.stderr, flush=True)
print("[undo]", result, file=sys.stderr, flush=True)
with open(os.path.join(JOB["out"], "undo.json"), "w") as f:
    json.dump(result, f)
