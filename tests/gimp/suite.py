"""Runs INSIDE headless GIMP 3 (python-fu-eval): drives the installed stylefu plug-in.

tests/test_gimp3.py writes a job file ($STYLEFU_SUITE) and runs this once; every scenario is
recorded in OUT/results.json with pixel arrays in OUT/*.npy, and the pytest tests assert on them.
GIMP starts once for all scenarios (its start-up is the slow part).
"""

import json
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np
from gi.repository import Gegl, Gimp, Gio

JOB = json.load(open(os.environ["STYLEFU_SUITE"]))
OUT = JOB["out"]
PDB = Gimp.get_pdb()
PROC, PROC_PREVIEW = "python-fu-stylefu", "python-fu-stylefu-preview"
results = {}


def log(*parts):
    print("[suite]", *parts, file=sys.stderr, flush=True)


def pixels(drawable, fmt="R'G'B'A float"):
    w, h = drawable.get_width(), drawable.get_height()
    data = bytes(drawable.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt,
                                           Gegl.AbyssPolicy.CLAMP))
    dtype = np.uint8 if fmt.endswith("u8") else np.float32
    return np.frombuffer(data, dtype).reshape(h, w, -1).copy()


def make_image(array, *, gray=False, alpha=False, precision=None, canvas=None, offsets=(0, 0),
               name="source"):
    """A new image with one layer holding `array` (HxWx3|4 float 0..1)."""
    h, w = array.shape[:2]
    cw, ch = canvas or (w, h)
    base = Gimp.ImageBaseType.GRAY if gray else Gimp.ImageBaseType.RGB
    image = (Gimp.Image.new_with_precision(cw, ch, base, precision) if precision
             else Gimp.Image.new(cw, ch, base))
    kinds = {(False, False): Gimp.ImageType.RGB_IMAGE, (False, True): Gimp.ImageType.RGBA_IMAGE,
             (True, False): Gimp.ImageType.GRAY_IMAGE, (True, True): Gimp.ImageType.GRAYA_IMAGE}
    layer = Gimp.Layer.new(image, name, w, h, kinds[(gray, alpha)], 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    fmt = "R'G'B'A float" if array.shape[2] == 4 else "R'G'B' float"
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), fmt, np.ascontiguousarray(array, np.float32).tobytes())
    buffer.flush()
    return image, layer


def run(name, procedure, image, layer, drawables=None, mode=Gimp.RunMode.NONINTERACTIVE,
        **props):
    """Run a procedure (non-interactively unless `mode`); record status, message and the
    image's layers."""
    proc = PDB.lookup_procedure(procedure)
    config = proc.create_config()
    config.set_property("run-mode", mode)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer] if drawables is None else drawables)
    for key, value in props.items():
        if (key.startswith("style") or key.endswith("file")) and isinstance(value, str):
            value = Gio.File.new_for_path(value)
        config.set_property(key.replace("_", "-"), value)
    before = pixels(layer)
    layers_before = [item.get_name() for item in image.get_layers()]
    tree_before = tree(image.get_layers())
    images_before = len(Gimp.get_images())
    values = proc.run(config)
    status = values.index(0)
    record = {"status": status.value_nick, "message": "",
              "source_unchanged": bool(np.array_equal(before, pixels(layer))),
              "layers": [item.get_name() for item in image.get_layers()],
              "layers_before": layers_before, "new_images": len(Gimp.get_images()) - images_before,
              "tree": tree(image.get_layers()), "tree_before": tree_before,
              "undo_enabled": bool(image.undo_is_enabled())}
    if status != Gimp.PDBStatusType.SUCCESS and values.length() > 1:
        record["message"] = str(values.index(1))
    elif procedure == PROC:  # what a script gets back: the new layer's id
        returned = values.index(1) if values.length() > 1 else None
        record["returned"] = returned.get_id() if isinstance(returned, Gimp.Layer) else None
    log(name, record["status"], record["message"], record["layers"])
    results[name] = record
    return record, values


def tree(items):
    """The layers' names, a group as [name, its children's tree]."""
    return [[item.get_name(), tree(item.get_children())] if item.is_group_layer()
            else item.get_name() for item in items]


def visible(image):
    return pixels(Gimp.Layer.new_from_visible(image, image, "visible"))


def record_composite(name, image, before):
    """Whether the image as seen is `before` (its visible pixels) wherever nothing is selected,
    and how much it changed where all is."""
    w, h = image.get_width(), image.get_height()
    selected = np.frombuffer(bytes(image.get_selection().get_buffer().get(
        Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y float", Gegl.AbyssPolicy.NONE)),
        np.float32).reshape(h, w)
    after = visible(image)
    results[name].update(
        outside_equal=bool(np.array_equal(after[selected == 0], before[selected == 0])),
        inside_change=float(np.abs(after[selected == 1] - before[selected == 1])[:, :3].mean()))


def our_plugins():
    """[(pid, start time)] of the stylefu plug-in processes this GIMP runs, oldest first."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getppid() and any(c.endswith(b"stylefu.py") for c in command):
            found.append((int(fields[19]), int(pid)))
    return [pid for _, pid in sorted(found)]


def worker_folder(parent):
    """The exchange folder of the worker `parent` started (its working folder), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    return os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
    return None


def kill_follower(record, done, paintings=3, timeout=120):
    """What GIMP's Cancel does to the filter's follower (the process that holds the progress
    bar): SIGKILL, once the live layer has had `paintings` to show; never once `done` is set (a
    watch that outlived its run killed the next run's follower)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not done.is_set():
        # The filter is the plug-in whose worker paints; its follower the newest plug-in after it
        # (an earlier run's may still be ending).
        plugins = our_plugins()
        for plugin in plugins[:-1]:
            folder = worker_folder(plugin)
            if folder and any(name.startswith("result.scale1-") and
                              int(name[14:18]) >= paintings for name in os.listdir(folder)):
                time.sleep(0.5)  # the follower's next look (bridge.FOLLOW_POLL_S) shows it
                if not done.is_set():
                    os.kill(plugins[-1], signal.SIGKILL)
                    record["killed"] = True
                return
        time.sleep(0.05)


def describe_new_layer(name, image, source, selection=False):
    """Record the new layer (the one above the source) and save its pixels for the tests."""
    record = results[name]
    layers = image.get_layers()
    if len(layers) < 2:
        return None
    new = layers[image.get_item_position(source) - 1]
    _, x, y = new.get_offsets()
    record.update(id=new.get_id(), name=new.get_name(), size=[new.get_width(), new.get_height()],
                  offsets=[x, y],
                  has_alpha=bool(new.has_alpha()), is_gray=bool(new.is_gray()),
                  has_mask=new.get_mask() is not None,
                  position_above=image.get_item_position(new) == image.get_item_position(source) - 1,
                  precision=image.get_precision().value_nick)
    np.save(os.path.join(OUT, f"{name}-source.npy"), pixels(source))
    np.save(os.path.join(OUT, f"{name}-result.npy"), pixels(new))
    if selection:
        visible = Gimp.Layer.new_from_visible(image, image, "visible")
        np.save(os.path.join(OUT, f"{name}-visible.npy"), pixels(visible))
    return new


def set_settings(**changes):
    with open(JOB["settings"]) as f:
        settings = json.load(f)
    settings.update(changes)
    with open(JOB["settings"], "w") as f:
        json.dump(settings, f)


def soft_selection_image(content):
    """The content on a layer at (25, 13) of a larger canvas, under a feathered selection that
    covers the layer's right part and goes beyond it."""
    h, w = content.shape[:2]
    image, layer = make_image(content, canvas=(w + 40, h + 30), offsets=(25, 13))
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *JOB["soft_selection"])
    Gimp.Selection.feather(image, JOB["feather"])
    return image, layer


def main():
    content = np.load(JOB["content"])  # HxWx3 float32
    fast = {"preset": "custom", "iterations": JOB["iterations"], "size": JOB["size"],
            "style_file": JOB["style"], "strength": JOB["strength"]}
    results["registered"] = {p: bool(PDB.procedure_exists(p)) for p in (PROC, PROC_PREVIEW)}
    if not JOB.get("figure_only"):
        scenarios(content, fast)
    if JOB.get("figure"):
        figure(JOB["figure"])


def doc_example(content):
    """docs/gimp.md's Python-Fu example, as a script runs it on an image's layer."""
    image, layer = make_image(content)
    namespace = {"image": image, "layer": layer}
    try:
        exec(JOB["doc_example"], namespace)
        stylized = namespace["stylized"]
        results["doc_example"] = {"name": stylized.get_name(),
                                  "top": image.get_layers()[0].get_id() == stylized.get_id(),
                                  "layers": [item.get_name() for item in image.get_layers()]}
    except Exception as exc:
        results["doc_example"] = {"error": repr(exc)}


def scenarios(content, fast):
    h, w = content.shape[:2]
    if JOB.get("doc_example"):
        doc_example(content)

    image, layer = make_image(content)
    run("rgb", PROC, image, layer, **fast)
    describe_new_layer("rgb", image, layer)

    rgba = np.concatenate([content, np.ones((h, w, 1), np.float32)], axis=2)
    rgba[:, : w // 4, 3] = 0.0          # a fully transparent band
    rgba[h // 2:, w // 2:, 3] = 0.5     # and a half-transparent corner
    image, layer = make_image(rgba, alpha=True)
    run("rgba", PROC, image, layer, **fast)
    describe_new_layer("rgba", image, layer)

    image, layer = make_image(content, canvas=(w + 40, h + 30), offsets=(25, 13))
    run("offsets", PROC, image, layer, **fast)
    describe_new_layer("offsets", image, layer)

    image, layer = make_image(content, gray=True)
    run("gray", PROC, image, layer, **fast)
    describe_new_layer("gray", image, layer)

    image, layer = make_image(content, precision=Gimp.Precision.FLOAT_NON_LINEAR)
    run("float32", PROC, image, layer, **fast)
    describe_new_layer("float32", image, layer)

    image, layer = make_image(content)
    sel = JOB["selection"]  # x, y, w, h
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *sel)
    run("selection", PROC, image, layer, **fast)
    describe_new_layer("selection", image, layer, selection=True)

    style_image, style_layer = make_image(np.load(JOB["style_array"]), name="stripes", alpha=True)
    image, layer = make_image(content)
    run("style_layer", PROC, image, layer, **dict(fast, style_file=None, style_layer=style_layer))
    describe_new_layer("style_layer", image, layer)

    # A feathered selection on a layer with offsets, partly beyond the layer: the worker's mask
    # must be the selection's soft values at the layer's own pixels.
    image, layer = soft_selection_image(content)
    # The expected mask through another API: gimp-selection-value (0..255) at every pixel.
    expected = np.array([[Gimp.Selection.value(image, 25 + x, 13 + y) for x in range(w)]
                         for y in range(h)], np.float32) / 255
    np.save(os.path.join(OUT, "soft_selection-expected-mask.npy"), expected)
    run("soft_selection", PROC, image, layer, **fast)
    describe_new_layer("soft_selection", image, layer, selection=True)

    # Two styles, the second from a layer, blended 1:3.
    image, layer = make_image(content)
    run("two_styles", PROC, image, layer, **dict(fast, second_style_layer=style_layer,
                                                 second_style_weight=JOB["second_style_weight"]))
    describe_new_layer("two_styles", image, layer)

    # The same soft selection with the second style outside it: the selection and its inverse
    # are the two styles' masks; the whole layer is stylized, without a layer mask.
    image, layer = soft_selection_image(content)
    run("regions", PROC, image, layer, **dict(fast, second_style_layer=style_layer,
                                              second_style_weight=JOB["second_style_weight"],
                                              second_style_goes="outside"))
    describe_new_layer("regions", image, layer, selection=True)

    # A tile size smaller than the working size: the worker optimises in tiles and says so.
    image, layer = make_image(content)
    run("tiled", PROC, image, layer, **dict(fast, tile_size=JOB["tile_size"]))
    describe_new_layer("tiled", image, layer)

    # A layer larger than the working size: back at the layer's size with the layer's detail.
    image, layer = make_image(np.load(JOB["large"]))
    run("large", PROC, image, layer, **dict(fast, **JOB.get("large_values", {})))
    describe_new_layer("large", image, layer)

    # A layer at offsets in a group whose position is locked, under a selection: the new layer
    # gets the layer's offsets and its mask the selection there (GIMP refused the offsets).
    image, layer = make_image(content, canvas=(w + 40, h + 30), offsets=(25, 13))
    group = Gimp.GroupLayer.new(image, "position locked")
    image.insert_layer(group, None, 0)
    image.reorder_item(layer, group, 0)
    group.set_lock_position(True)
    x, y, sw, sh = JOB["selection"]
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 25 + x, 13 + y, sw, sh)
    before = visible(image)
    run("position_locked", PROC, image, layer, **fast)
    new = group.get_children()[0]
    results["position_locked"].update(offsets=list(new.get_offsets()[1:]),
                                      has_mask=new.get_mask() is not None)
    record_composite("position_locked", image, before)

    # Pixels beyond sRGB's 0..1, which the worker refused: an Adobe RGB image's green outside
    # sRGB and a linear float image's values above 1 (HDR), the layer its own style too.
    beyond = content.copy()
    beyond[:, : w // 3] = [0.0, 1.0, 0.0]
    beyond[:, -w // 3:] *= 3.0
    image, layer = make_image(beyond, precision=Gimp.Precision.FLOAT_LINEAR)
    image.set_color_profile(Gimp.ColorProfile.new_rgb_adobe())
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *JOB["selection"])
    before = visible(image)
    run("beyond_srgb", PROC, image, layer, **dict(fast, style_file=None, style_layer=layer))
    describe_new_layer("beyond_srgb", image, layer)
    results["beyond_srgb"]["source_range"] = [float(before.min()), float(before.max())]
    record_composite("beyond_srgb", image, before)

    # The layer's own mask hides its left half (and half hides a stripe): the new layer hides
    # them too, within the selection where there is one; the selection is as it was after.
    for name, selected in (("layer_mask", False), ("layer_mask_selection", True)):
        image, layer = make_image(content)
        hidden = np.ones((h, w), np.float32)
        hidden[:, : w // 2], hidden[: h // 4] = 0.0, 0.5
        mask = layer.create_mask(Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        mask.get_buffer().set(Gegl.Rectangle.new(0, 0, w, h), "Y float", hidden.tobytes())
        mask.get_buffer().flush()
        if selected:
            image.select_rectangle(Gimp.ChannelOps.REPLACE, *JOB["selection"])
        chosen = image.get_selection().get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0,
                                                       "Y float", Gegl.AbyssPolicy.NONE)
        channels = len(image.get_channels())
        before = visible(image)
        run(name, PROC, image, layer, **fast)
        new = describe_new_layer(name, image, layer)
        np.save(os.path.join(OUT, f"{name}-hidden.npy"), hidden)
        np.save(os.path.join(OUT, f"{name}-before.npy"), before)
        np.save(os.path.join(OUT, f"{name}-visible.npy"), visible(image))
        np.save(os.path.join(OUT, f"{name}-mask.npy"), np.frombuffer(bytes(
            new.get_mask().get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y float",
                                            Gegl.AbyssPolicy.NONE)), np.float32).reshape(h, w))
        results[name].update(selection_kept=bytes(image.get_selection().get_buffer().get(
            Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y float", Gegl.AbyssPolicy.NONE)) == bytes(
            chosen), channels_kept=len(image.get_channels()) == channels)

    # Where GIMP would refuse the new layer: refused before anything changes.
    image, layer = make_image(content)
    group = Gimp.GroupLayer.new(image, "pixels locked")
    image.insert_layer(group, None, 0)
    image.reorder_item(layer, group, 0)
    group.set_lock_content(True)
    run("pixels_locked", PROC, image, layer, **fast)
    image, layer = make_image(content)
    layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
    run("mask_active", PROC, image, layer, drawables=[layer.get_mask()], **fast)
    image.select_rectangle(Gimp.ChannelOps.REPLACE, *JOB["selection"])
    Gimp.edit_copy([layer])
    floating = Gimp.edit_paste(layer, False)[0]
    run("floating", PROC, image, floating, **fast)

    # The settings file damaged after GIMP registered the plug-in: load_settings' sentence
    # (GIMP refused the registered choices' values first; a file of another shape crashed it).
    image, layer = make_image(content)
    with open(JOB["settings"]) as f:
        installed = f.read()
    version = json.loads(installed)["version"]
    try:
        for name, text in (("settings_cut", installed[:200]), ("settings_list", "[]"),
                           ("settings_no_dialog", json.dumps({"version": version,
                                                              "python": JOB["python"]})),
                           ("settings_no_python", json.dumps({"version": version}))):
            with open(JOB["settings"], "w") as f:
                f.write(text)
            run(name, PROC, image, layer, **fast)
        run("settings_no_python_preview", PROC_PREVIEW, image, layer, style_1=JOB["style"],
            size=JOB["size"])
    finally:
        with open(JOB["settings"], "w") as f:
            f.write(installed)

    # A selection beside the layer: a clear error before any work.
    image, layer = make_image(content, canvas=(w + 40, h + 30), offsets=(25, 13))
    image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 20, 10)
    run("selection_beside_layer", PROC, image, layer, **fast)

    # Errors: each must leave the image exactly as it was.
    image, layer = make_image(content)
    run("bad_style", PROC, image, layer, **dict(fast, style_file=JOB["bad_style"]))
    run("no_style", PROC, image, layer, **dict(fast, style_file=None))
    run("missing_style_file", PROC, image, layer, **dict(fast, style_file=JOB["style"] + ".gone.png"))
    two, first = make_image(content)
    second = Gimp.Layer.new(two, "second", w, h, Gimp.ImageType.RGB_IMAGE, 100.0,
                            Gimp.LayerMode.NORMAL)
    two.insert_layer(second, None, 1)
    run("two_layers", PROC, two, first, drawables=[first, second], **fast)
    # GIMP's Cancel kills the follower mid-run: the live layer goes, the image is as it was.
    killed, done = {"killed": False}, threading.Event()
    threading.Thread(target=kill_follower, args=(killed, done), daemon=True).start()
    run("cancelled", PROC, image, layer, **dict(fast, iterations=400))
    done.set()
    results["cancelled"].update(killed)
    # No model: the filter fetches one (a non-interactive call is the consent) into the
    # recorded path, then runs; here from a source that fails, then from random weights.
    set_settings(model=JOB["missing_model"], model_sources=[JOB["failing_source"]])
    run("missing_model", PROC, image, layer, **fast)
    # A last-values call (a batch script's, with no last values stored: GIMP passes its
    # arguments) asks nothing: no dialog (it crashed this console GIMP), no download.
    set_settings(model=JOB["missing_model"], model_sources=[JOB["random_source"]])
    run("last_vals_no_model", PROC, image, layer, mode=Gimp.RunMode.WITH_LAST_VALS, **fast)
    run("last_vals_no_model_preview", PROC_PREVIEW, image, layer,
        mode=Gimp.RunMode.WITH_LAST_VALS, style_1=JOB["style"], size=JOB["size"])
    results["last_vals_no_model"]["model_exists"] = os.path.isfile(JOB["missing_model"])
    set_settings(model=JOB["fetched_model"], model_sources=[JOB["random_source"]])
    fetch_image, fetch_layer = make_image(content)
    run("fetched_model", PROC, fetch_image, fetch_layer, **fast)
    results["fetched_model"]["model_exists"] = os.path.isfile(JOB["fetched_model"])
    set_settings(model=JOB["model"], python=JOB["dying_python"])
    run("dying_worker", PROC, image, layer, **fast)
    set_settings(python=JOB["python"])
    outside = dict(fast, second_style_layer=style_layer, second_style_goes="outside")
    run("outside_without_selection", PROC, image, layer, **outside)
    Gimp.Selection.all(image)
    run("selection_covers_layer", PROC, image, layer, **outside)
    run("outside_without_second_style", PROC, image, layer, **dict(fast, second_style_goes="outside"))

    # The preview contact sheet opens as a new image.
    if JOB["preview"]:
        image, layer = make_image(content)
        # The first and the last of the dialog's style slots.
        _, values = run("preview", PROC_PREVIEW, image, layer, style_1=JOB["style"],
                        style_4=JOB["style2"], style_folder=JOB["style_folder"], size=JOB["size"])
        if results["preview"]["status"] == "success":
            sheet = values.index(1)
            results["preview"]["sheet_size"] = [sheet.get_width(), sheet.get_height()]
            Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, sheet,
                           Gio.File.new_for_path(os.path.join(OUT, "preview-sheet.png")), None)



def figure(fig):
    """A larger run for the README: the selection stylized, the rest of the picture untouched."""
    big = np.load(fig["content"])
    image, layer = make_image(big)
    image.select_ellipse(Gimp.ChannelOps.REPLACE, *fig["selection"])
    run("figure", PROC, image, layer, style_file=fig["style"], preset="custom",
        iterations=fig["iterations"], size=fig["size"], strength=fig["strength"])
    Gimp.Selection.none(image)
    flat = image.flatten()
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(fig["output"]),
                   None)
    log("figure", flat.get_name(), fig["output"])


try:
    main()
except Exception:
    results["suite_error"] = traceback.format_exc()
    log(results["suite_error"])
with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
