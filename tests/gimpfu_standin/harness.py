# -*- coding: utf-8 -*-
"""Drives the installed GIMP 2.10 plug-in with the gimpfu stand-in (Python 2.7 or 3).

usage: harness.py JOB.json   (written by tests/test_gimp2.py; see there)
Prints nothing useful; writes OUT/report.json and each new layer's raw 8-bit pixels.
"""
from __future__ import division, print_function

import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gimpfu  # noqa: E402  (the stand-in)
from gimpfu import pdb  # noqa: E402

JOB = json.load(io.open(sys.argv[1], encoding="utf-8"))
OUT = JOB["out"]
report = {"procedures": {}}


def make_image(kind, alpha=False, offsets=(0, 0), canvas=None, name="source", pixels=None):
    """An image with one layer holding the job's content (raw RGB/RGBA/Y/YA bytes files), or
    the job's `pixels` entry of that name."""
    width, height = JOB["width"], JOB["height"]
    gray = kind == "gray"
    cw, ch = canvas or (width, height)
    image = gimpfu.gimp.Image(cw, ch, gimpfu.GRAY if gray else gimpfu.RGB)
    layer_kind = {(False, False): gimpfu.RGB_IMAGE, (False, True): gimpfu.RGBA_IMAGE,
                  (True, False): gimpfu.GRAY_IMAGE, (True, True): gimpfu.GRAYA_IMAGE}[(gray, alpha)]
    layer = gimpfu.gimp.Layer(image, name, width, height, layer_kind)
    with open(JOB["pixels"][pixels or ("gray" if gray else "rgb") + ("a" if alpha else "")],
              "rb") as f:
        layer.data = f.read()
    image.layers.append(layer)
    layer.offsets = tuple(offsets)
    return image, layer


def args_for(image, layer, style_file=None, style_layer=None, second_style_file=None,
             second_style_layer=None, second_style_weight=0.5, tile_size=0, strength=100.0,
             second_source=None, second_style_goes="everywhere"):
    """The procedure's 19 arguments, as GIMP passes them (options as indices)."""
    choices = JOB["choices"]
    if second_source is None:
        second_source = 2 if second_style_layer is not None else 1 if second_style_file else 0
    return (image, layer, style_file or "", 1 if style_layer is not None else 0, style_layer,
            second_style_file or "", second_source, second_style_layer, second_style_weight,
            choices["second_style_goes"].index(second_style_goes), strength,
            choices["preset"].index("custom"), JOB["iterations"], JOB["size"],
            tile_size, 0, 1.0, 0, choices["device"].index("cpu"))


def run(name, image, layer, **kwargs):
    before = layer.data
    status, message, returned = gimpfu.run("python-fu-stylefu", *args_for(image, layer, **kwargs))
    record = {"status": status, "message": message, "source_unchanged": layer.data == before,
              "layers": [item.name for item in image.layers], "undo_steps": len(image.undo_steps),
              "undo_open": image._depth}
    if status == "success":
        new = image.layers[image.layers.index(layer) - 1]
        record.update(name=new.name, size=[new.width, new.height], offsets=list(new.offsets),
                      bpp=new.bpp, has_mask=new.mask is not None, returns_new_layer=returned is new)
        with open(os.path.join(OUT, name + "-result.raw"), "wb") as f:
            f.write(new.data)
        if new.mask is not None:
            with open(os.path.join(OUT, name + "-mask.raw"), "wb") as f:
                f.write(new.mask.data)
        image.undo()
        record["layers_after_undo"] = [item.name for item in image.layers]
    report[name] = record


def tree(items):
    """The layers, top first: a group as [name, children], a hidden one's name + " (hidden)"."""
    named = [item.name + ("" if item.visible else " (hidden)") for item in items]
    return [[name, tree(item.children)] if isinstance(item, gimpfu.GroupLayer) else name
            for name, item in zip(named, items)]


def users_undo_steps():
    """The user's edits during a run (at the follower's third progress update) and Ctrl+Z,
    on layers A, photo (the source), B, C, as tests/gimp/gui_undo.py does in GIMP 3: (1) B
    removed during the run, undone after it (and the result's step); (2) B removed before
    it, undone during it; (3) the source, (4) the live layer, (5) the live layer's group
    removed during it, undone after it; (6) the live layer moved out of its group, (7) moved
    below the source within it, (8) the source moved above it, (9) the group moved to the top,
    during it, undone after it."""
    def picture():
        image, photo = make_image("rgb", name="photo")
        for name, position in (("A", 0), ("B", 2), ("C", 3)):
            layer = gimpfu.gimp.Layer(image, name, JOB["width"], JOB["height"], gimpfu.RGB_IMAGE)
            pdb.gimp_image_insert_layer(image, layer, None, position)
        del image.undo_steps[:]  # the history starts here
        return image, photo

    def named(image, name):
        return [item for item in image.layers if item.name == name][0]

    def group_of(image):
        return [item for item in image.layers if isinstance(item, gimpfu.GroupLayer)][0]

    def run_with(image, photo, edit, undo_after):
        record = {}

        def during():
            edit()
            record["during"] = tree(image.layers)
        gimpfu.gimp.user_at = (gimpfu.gimp.updates + 3, during)
        try:
            status, message, _ = gimpfu.run("python-fu-stylefu",
                                            *args_for(image, photo, style_file=JOB["style"]))
            record.update(status=status, message=message, after=tree(image.layers))
            for _ in range(undo_after):
                image.undo()
            record.update(undone_after=tree(image.layers), criticals=image.criticals)
        except BaseException:  # (the stand-in's GIMP would have gone on)
            import traceback
            record["error"] = traceback.format_exc()
        finally:
            gimpfu.gimp.user_at = None
        return record

    report["undo"] = undo = {}
    image, photo = picture()
    undo["removed_during"] = run_with(
        image, photo, lambda: pdb.gimp_image_remove_layer(image, named(image, "B")), 2)
    image, photo = picture()  # beside the group: not a move of it (one neighbour changed)
    undo["above_removed_during"] = run_with(
        image, photo, lambda: pdb.gimp_image_remove_layer(image, named(image, "A")), 2)
    image, photo = picture()
    pdb.gimp_image_remove_layer(image, named(image, "B"))
    undo["removed_before"] = run_with(image, photo, image.undo, 1)
    image, photo = picture()
    undo["source_removed_during"] = run_with(
        image, photo, lambda: pdb.gimp_image_remove_layer(image, photo), 2)
    image, photo = picture()
    undo["live_removed_during"] = run_with(
        image, photo, lambda: pdb.gimp_image_remove_layer(image, group_of(image).children[0]),
        2)
    image, photo = picture()
    undo["group_removed_during"] = run_with(
        image, photo, lambda: pdb.gimp_image_remove_layer(image, group_of(image)), 2)
    image, photo = picture()
    undo["live_moved_during"] = run_with(
        image, photo,
        lambda: pdb.gimp_image_reorder_item(image, group_of(image).children[0], None, 0), 2)
    image, photo = picture()
    undo["live_reordered"] = run_with(  # below the source, within its group
        image, photo,
        lambda: pdb.gimp_image_reorder_item(image, group_of(image).children[0],
                                            group_of(image), 1), 2)
    image, photo = picture()
    undo["source_reordered"] = run_with(
        image, photo, lambda: pdb.gimp_image_reorder_item(image, photo, group_of(image), 0), 2)
    image, photo = picture()
    undo["group_reordered"] = run_with(
        image, photo, lambda: pdb.gimp_image_reorder_item(image, group_of(image), None, 0), 2)


def soft_selection_image():
    """A layer with offsets on a larger canvas, and a soft selection (values the test chose,
    written into the selection channel as a script can) partly beyond the layer."""
    width, height = JOB["soft_canvas"]
    image, layer = make_image("rgb", offsets=JOB["soft_offsets"], canvas=(width, height))
    with open(JOB["soft_selection"], "rb") as f:
        image.selection.get_pixel_rgn(0, 0, width, height, True, False)[0:width, 0:height] = \
            f.read()
    image.selection.flush()
    image.selection.update(0, 0, width, height)
    return image, layer


def main():
    sys.argv = [JOB["plugin"]]
    # GIMP runs the file as __main__; exec keeps its globals alive (Python 2's runpy clears them).
    namespace = {"__name__": "__main__", "__file__": JOB["plugin"]}
    with open(JOB["plugin"], "rb") as f:
        exec(compile(f.read(), JOB["plugin"], "exec"), namespace)
    for proc_name, proc in gimpfu.PROCEDURES.items():
        report["procedures"][proc_name] = {"menu": proc["menu"], "label": proc["label"],
                                           "params": [p[1] for p in proc["params"]]}
    image, layer = make_image("rgb")
    pdb.gimp_image_select_rectangle(image, gimpfu.CHANNEL_OP_REPLACE, *JOB["selection"])
    run("rgb_selection", image, layer, style_file=JOB["style"])
    image, layer = make_image("rgb", alpha=True, offsets=(7, 5), canvas=(90, 70))
    run("rgba_offsets", image, layer, style_file=JOB["style"])
    image, layer = make_image("gray")
    run("gray", image, layer, style_file=JOB["style"])
    style_image, style_layer = make_image("rgb", name="stripes")
    image, layer = make_image("rgb")
    run("style_layer", image, layer, style_layer=style_layer)
    image, layer = soft_selection_image()
    run("soft_selection", image, layer, style_file=JOB["style"])
    style2_image, style2_layer = make_image("rgb", name="swirls", pixels="style2")
    # The same soft selection with a second style that goes outside it.
    image, layer = soft_selection_image()
    run("regions", image, layer, style_file=JOB["style"], second_style_layer=style2_layer,
        second_style_weight=JOB["second_style_weight"], second_style_goes="outside")
    image, layer = make_image("rgb")
    run("two_styles", image, layer, style_file=JOB["style"], second_style_layer=style2_layer,
        second_style_weight=JOB["second_style_weight"])
    image, layer = make_image("rgb")
    run("tiled", image, layer, style_file=JOB["style"], tile_size=JOB["tile_size"])
    # The layer's own mask hides its left half: the new layer's mask hides it too (within the
    # selection where there is one), the selection as it was after.
    for name, selected in (("layer_mask", False), ("layer_mask_selection", True)):
        image, layer = make_image("rgb", offsets=(7, 5), canvas=(90, 70))
        mask = gimpfu.Channel(image, "mask", layer.width, layer.height)
        mask.data = bytes(bytearray(0 if x < layer.width // 2 else 255 for y in
                                    range(layer.height) for x in range(layer.width)))
        layer.add_mask(mask)
        if selected:
            x, y, w, h = JOB["selection"]
            pdb.gimp_image_select_rectangle(image, gimpfu.CHANNEL_OP_REPLACE, 7 + x, 5 + y, w, h)
        chosen = image.selection.data
        del image.undo_steps[:]  # the history starts here
        run(name, image, layer, style_file=JOB["style"])
        report[name].update(selection_kept=image.selection.data == chosen,
                            channels_kept=not getattr(image, "channels", []))
    users_undo_steps()
    # GIMP's Cancel at the follower's third progress update (the live layer painted by then).
    image, layer = make_image("rgb")
    gimpfu.gimp.cancel_at = gimpfu.gimp.updates + 3
    run("cancelled", image, layer, style_file=JOB["style"])
    with io.open(report["cancelled"]["message"].rsplit("(see ", 1)[1].rstrip(")"),
                 encoding="utf-8") as f:
        report["cancelled"]["log"] = f.read()  # (later runs prune the logs)
    image, layer = make_image("rgb")
    run("bad_style", image, layer, style_file=JOB["bad_style"])
    # GIMP 2.10 hands a PF_FILE to Python 2.7 as UTF-8 bytes (json gives unicode there).
    accented = JOB["bad_style_accented"]
    run("bad_style_accented", image, layer, style_file=accented.encode("utf-8")
        if sys.version_info[0] == 2 else accented)
    run("no_style", image, layer)
    run("no_second_style", image, layer, style_file=JOB["style"], second_source=1)
    run("outside_without_selection", image, layer, style_file=JOB["style"],
        second_style_layer=style2_layer, second_style_goes="outside")
    pdb.gimp_image_select_rectangle(image, gimpfu.CHANNEL_OP_REPLACE, *JOB["selection"])
    run("outside_without_second_style", image, layer, style_file=JOB["style"],
        second_style_goes="outside")
    pdb.gimp_image_select_rectangle(image, gimpfu.CHANNEL_OP_REPLACE, 0, 0, JOB["width"],
                                    JOB["height"])
    run("selection_covers_layer", image, layer, style_file=JOB["style"],
        second_style_layer=style2_layer, second_style_goes="outside")
    image, layer = make_image("rgb", offsets=JOB["soft_offsets"], canvas=JOB["soft_canvas"])
    pdb.gimp_image_select_rectangle(image, gimpfu.CHANNEL_OP_REPLACE, 70, 50, 15, 15)
    run("selection_beside_layer", image, layer, style_file=JOB["style"])
    run("missing_style_file", image, layer, style_file=JOB["style"] + ".gone.png")
    fetched_model()
    preview(image, layer)


def fetched_model():
    """No model at the recorded path: the plug-in says what it downloads, fetches it (random
    weights here), then paints; the settings are put back afterwards."""
    settings_file = os.path.splitext(JOB["plugin"])[0] + ".json"
    with io.open(settings_file, encoding="utf-8") as f:
        original = f.read()
    settings = dict(json.loads(original), model=JOB["fetched_model"],
                    model_sources=[JOB["random_source"]])
    with io.open(settings_file, "w", encoding="utf-8") as f:
        f.write(u"%s" % json.dumps(settings))
    try:
        del gimpfu.gimp.messages[:]
        image, layer = make_image("rgb")
        run("fetched_model", image, layer, style_file=JOB["style"])
        report["fetched_model"].update(messages=list(gimpfu.gimp.messages),
                                       model_exists=os.path.isfile(JOB["fetched_model"]))
    finally:
        with io.open(settings_file, "w", encoding="utf-8") as f:
            f.write(original)


def preview(image, layer):
    """The contact sheet from the last of the dialog's style slots and a folder of styles."""
    slots = len(gimpfu.PROCEDURES["python-fu-stylefu-preview"]["params"]) - 4
    files = [""] * (slots - 1) + [JOB["style"]]
    del gimpfu.gimp.messages[:]
    status, message, sheet = gimpfu.run("python-fu-stylefu-preview", image, layer,
                                        JOB["style_folder"], *(files + [JOB["size"]]))
    report["preview"] = {"status": status, "message": message, "slots": slots,
                         "messages": list(gimpfu.gimp.messages)}
    if sheet is not None:
        report["preview"]["sheet_size"] = [sheet.width, sheet.height]
    # The same from a batch script (gimp -i): no display can open; the script gets the sheet.
    gimpfu.gimp.interface = False
    try:
        status, message, sheet = gimpfu.run("python-fu-stylefu-preview", image, layer, "",
                                            *(files + [JOB["size"]]))
    finally:
        gimpfu.gimp.interface = True
    report["preview_batch"] = {"status": status, "message": message,
                               "sheet": sheet is not None and len(sheet.layers) == 1}
    # GIMP's Cancel at the follower's second progress update (the worker at work by then).
    gimpfu.gimp.cancel_at = gimpfu.gimp.updates + 2
    status, message, sheet = gimpfu.run("python-fu-stylefu-preview", image, layer,
                                        JOB["style_folder"], *(files + [JOB["size"]]))
    report["preview_cancelled"] = {"status": status, "message": message, "sheet": sheet}


try:
    main()
except Exception:
    import traceback
    report["harness_error"] = traceback.format_exc()
report["python"] = sys.version.split()[0]
with io.open(os.path.join(OUT, "report.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps(report, indent=2, sort_keys=True).decode("utf-8")
            if sys.version_info[0] == 2 else json.dumps(report, indent=2, sort_keys=True))
