#!/usr/bin/env python2
# -*- coding: utf-8 -*-
"""stylefu for GIMP 2.10 (Python-Fu): Filters > Artistic > Neural Style Transfer... and Preview...

GIMP 2.10 embeds Python 2.7, so this file is Python 2.7 (and runs on Python 3 too, for tests).
The work is done by the stylefu worker (the bridge below) in the environment that
`stylefu gimp install --gimp 2.10` recorded. GIMP 2.10's Python sees 8-bit pixel regions only, so
content goes out as 8-bit .npy and the result comes back as an 8-bit PNG loaded by GIMP itself.
The result is a NEW layer above the source inside one undo group; the source is never changed.
"""
from __future__ import division, print_function

import json
import os
import sys

from gimpfu import (
    ADD_SELECTION_MASK,
    PF_DRAWABLE,
    PF_FILE,
    PF_IMAGE,
    PF_INT,
    PF_LAYER,
    PF_OPTION,
    PF_SLIDER,
    PF_SPINNER,
    gimp,
    main,
    pdb,
    register,
)

# <stylefu-bridge>  (the installer replaces this block by plugin/common/stylefu_bridge.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "common"))
from stylefu_bridge import (  # noqa: E402
    SECOND_STYLE_LABELS,
    BridgeError,
    exchange_dir,
    load_settings,
    log,
    mask_options,
    progress_text,
    remove_dir,
    run_command,
    run_options,
    run_worker,
    second_style_blend,
    second_style_outside,
    settings_or_unset,
    worker_command,
    write_npy,
    write_selection_masks,
)

# </stylefu-bridge>

TITLE = "Neural style"
STYLE_SOURCES = ["the style file", "the style layer"]
SECOND_STYLE_SOURCES = ["no second style", "the second style file", "the second style layer"]


def save_drawable(drawable, path):
    """The drawable's 8-bit pixels (as GIMP 2.10 hands them to Python) as a HxWxC uint8 .npy."""
    region = drawable.get_pixel_rgn(0, 0, drawable.width, drawable.height, False, False)
    data = region[0:drawable.width, 0:drawable.height]
    write_npy(path, data, (drawable.height, drawable.width, drawable.bpp), kind="u8")


def selection_mask(image, drawable):
    """The selection over the drawable as its grayscale mask (raw HxWx1 uint8 pixels, and that
    shape), or None when nothing is selected.

    Read from the selection channel at the drawable's size and offsets, so feathered edges stay
    soft (the worker blends them); the selection exists only on the canvas.
    """
    if pdb.gimp_selection_is_empty(image):
        return None
    ox, oy = drawable.offsets
    width, height = drawable.width, drawable.height
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + width, image.width), min(oy + height, image.height)
    mask = bytearray(width * height)
    if x1 > x0 and y1 > y0:
        rows = image.selection.get_pixel_rgn(x0, y0, x1 - x0, y1 - y0, False, False)[x0:x1, y0:y1]
        n = x1 - x0
        for i in range(y1 - y0):
            start = (y0 - oy + i) * width + (x0 - ox)
            mask[start:start + n] = rows[i * n:(i + 1) * n]
    if not any(mask):
        raise BridgeError("The selection does not touch the layer; select part of the layer, or "
                          "Select > None to stylize all of it.")
    return bytes(mask), (height, width, 1)


def place_result(image, source, png_path, name, old=None, masked=False):
    """Load the worker's PNG as a layer directly above the source (replacing `old`); `masked`:
    the selection becomes its layer mask."""
    layer = pdb.gimp_file_load_layer(image, png_path)
    layer.name = name
    if old is not None:
        pdb.gimp_image_remove_layer(image, old)
    pdb.gimp_image_insert_layer(image, layer, source.parent,
                                pdb.gimp_image_get_item_position(image, source))
    layer.set_offsets(*source.offsets)
    if masked:  # see the README: exact source pixels outside, at any working size
        layer.add_mask(layer.create_mask(ADD_SELECTION_MASK))
    return layer


def style_input(folder, source, style_file, style_layer, prefix="style"):
    """(path of the style for the worker, its name) from the dialog's file or layer choice."""
    if source == "layer":
        if style_layer is None:
            raise BridgeError("Choose a %s layer, or take the %s from a file."
                              % ((prefix.replace("_", " "),) * 2))
        path = os.path.join(folder, prefix + ".npy")
        save_drawable(style_layer, path)
        return path, style_layer.name
    if not style_file:
        if prefix == "style":
            raise BridgeError("Choose a style: an image file or a layer of an open image.")
        raise BridgeError("Choose a second style image, or set 'Take the second style from' to "
                          "'no second style'.")
    return style_file, os.path.splitext(os.path.basename(style_file))[0]


def stylize(image, drawable, style_file, style_source, style_layer, second_style_file,
            second_style_source, second_style_layer, second_style_weight, second_style_goes,
            strength, preset, iterations, size, tile_size, preserve_colors, style_scale, seed,
            device):
    """The filter: stylize `drawable` into a new layer above it (see the module docstring)."""
    settings = load_settings(__file__)
    choices = settings["choices"]
    values = {"strength": strength, "preset": choices["preset"][preset], "iterations": iterations,
              "size": size, "tile_size": tile_size,
              "preserve_colors": choices["preserve_colors"][preserve_colors],
              "style_scale": style_scale, "seed": seed, "device": choices["device"][device]}
    folder = exchange_dir()
    try:
        first = "layer" if STYLE_SOURCES[style_source] == "the style layer" else "file"
        styles = [style_input(folder, first, style_file, style_layer)]
        second = SECOND_STYLE_SOURCES[second_style_source]
        if second != "no second style":
            styles.append(style_input(folder, "layer" if second.endswith("layer") else "file",
                                      second_style_file, second_style_layer, "second_style"))
            values["style_blend"] = second_style_blend(second_style_weight)
        content = os.path.join(folder, "content.npy")
        output = os.path.join(folder, "result.png")
        # The selection restricts the style loss (guided Grams) and the worker's result to it:
        # one mask serves every style; or, with the second style "outside the selection", the
        # selection is the first style's region and its inverse the second's.
        selection = selection_mask(image, drawable)
        outside = second_style_outside(choices["second_style_goes"][second_style_goes],
                                       len(styles), selection is not None)
        masks = write_selection_masks(folder, selection[0], selection[1], "u8",
                                      outside) if selection else []
        save_drawable(drawable, content)
        # One mask: the selection becomes the new layer's mask (see the README: exact source
        # pixels outside). Two (the selection and its inverse) cover the whole layer: none.
        masked = len(masks) == 1
        command = worker_command(settings, ["run", content] + [path for path, _ in styles]
                                 + ["-o", output] + run_options(values, settings)
                                 + mask_options(masks))
        log("worker:", " ".join(command))
        name = "%s (neural style)" % " + ".join(style_name for _, style_name in styles)
        gimp.progress_init("%s: starting the worker" % TITLE)
        pdb.gimp_image_undo_group_start(image)
        state = {"layer": None}
        try:
            def show(record):
                if record.get("event") == "notice":
                    log("notice:", record.get("message", ""))
                gimp.progress_update(min(1.0, float(record.get("fraction", 0.0))))
                pdb.gimp_progress_set_text(progress_text(record, TITLE))
                if record.get("image"):  # the painting so far, shown in the new layer
                    state["layer"] = place_result(image, drawable, record["image"], name,
                                                  state["layer"], masked)
                    gimp.displays_flush()
                    log("preview", record["image"])

            final = run_worker(command, on_record=show, cwd=folder)
            log("tiles:", json.dumps(final.get("metrics", {}).get("tiles", {}), sort_keys=True))
            state["layer"] = place_result(image, drawable, output, name, state["layer"], masked)
        except BaseException:
            if state["layer"] is not None:  # the image goes back to exactly what it was
                pdb.gimp_image_remove_layer(image, state["layer"])
            raise
        finally:
            pdb.gimp_image_undo_group_end(image)
            pdb.gimp_progress_end()
        gimp.displays_flush()
    except BridgeError as exc:
        log("error:", exc)
        raise RuntimeError(str(exc))  # gimpfu: EXECUTION_ERROR with this message
    finally:
        remove_dir(folder)


def preview(image, drawable, style_folder, style_1, style_2, style_3, size):
    """Neural Style Preview: the contact sheet of several styles, opened as a new image."""
    settings = load_settings(__file__)
    styles = [s for s in (style_1, style_2, style_3) if s]
    if style_folder and os.path.isdir(style_folder):
        styles += [os.path.join(style_folder, n) for n in sorted(os.listdir(style_folder))
                   if n.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"))]
    folder = exchange_dir()
    try:
        if not styles:
            raise BridgeError("Choose style images for the preview: files or a folder of images.")
        content = os.path.join(folder, "content.npy")
        sheet = os.path.join(folder, "preview-sheet.png")
        save_drawable(drawable, content)
        args = ["preview", content] + styles + ["-o", sheet]
        if size > 0:
            args += ["--size", str(int(size))]
        if settings.get("model"):
            args += ["--model", settings["model"]]
        gimp.progress_init("%s: previewing %d styles" % (TITLE, len(styles)))
        run_command(worker_command(settings, args), cwd=folder)
        result = pdb.gimp_file_load(sheet, sheet)
        gimp.Display(result)
        gimp.displays_flush()
        return result
    except BridgeError as exc:
        log("error:", exc)
        raise RuntimeError(str(exc))
    finally:
        remove_dir(folder)


def _register():
    settings = settings_or_unset(__file__)
    d, choices = settings["defaults"], settings["choices"]
    low, high = settings["limits"]["size"]
    tile_low, tile_high = settings["limits"]["tile_size"]
    register(
        "python-fu-stylefu",
        "Paint the layer in the style of another image (Gatys et al.)",
        "Adds a new layer above the active one, stylized by the stylefu worker with one style "
        "or a blend of two; a selection limits the style to it (the worker's mask and the new "
        "layer's mask), or takes the first style while the second goes outside it; the source "
        "layer is left untouched.",
        "stylefu contributors", "stylefu contributors", "2026",
        "Neural Style _Transfer...", "RGB*, GRAY*",
        [
            (PF_IMAGE, "image", "Input image", None),
            (PF_DRAWABLE, "drawable", "Input layer", None),
            (PF_FILE, "style_file", "Style image", ""),
            (PF_OPTION, "style_source", "Take the style from", 0, STYLE_SOURCES),
            (PF_LAYER, "style_layer", "Style layer", None),
            (PF_FILE, "second_style_file", "Second style image (optional)", ""),
            (PF_OPTION, "second_style_source", "Take the second style from", 0,
             SECOND_STYLE_SOURCES),
            (PF_LAYER, "second_style_layer", "Second style layer", None),
            (PF_SLIDER, "second_style_weight", "Second style weight (0.5: equal blend)",
             d["second_style_weight"], (0.0, 1.0, 0.05)),
            (PF_OPTION, "second_style_goes", "Second style goes",
             choices["second_style_goes"].index(d["second_style_goes"]),
             [SECOND_STYLE_LABELS[place] for place in choices["second_style_goes"]]),
            (PF_SLIDER, "strength", "Style strength", d["strength"], (0, 100, 1)),
            (PF_OPTION, "preset", "Quality", choices["preset"].index(d["preset"]),
             choices["preset"]),
            (PF_SPINNER, "iterations", "Iterations (0: the preset's)", d["iterations"],
             (0, 10000, 10)),
            (PF_SPINNER, "size", "Working size", d["size"], (low, high, 16)),
            (PF_SPINNER, "tile_size", "Tile size (0: automatic)", d["tile_size"],
             (tile_low, tile_high, 64)),
            (PF_OPTION, "preserve_colors", "Preserve colours",
             choices["preserve_colors"].index(d["preserve_colors"]), choices["preserve_colors"]),
            (PF_SLIDER, "style_scale", "Style scale", d["style_scale"], (0.1, 8.0, 0.1)),
            (PF_INT, "seed", "Seed", d["seed"]),
            (PF_OPTION, "device", "Device", choices["device"].index(d["device"]),
             choices["device"]),
        ],
        [],
        stylize, menu="<Image>/Filters/Artistic")
    register(
        "python-fu-stylefu-preview",
        "Preview several styles on the layer as one contact sheet",
        "Opens a new image with a quick low-resolution stylization per style.",
        "stylefu contributors", "stylefu contributors", "2026",
        "Neural Style _Preview...", "RGB*, GRAY*",
        [
            (PF_IMAGE, "image", "Input image", None),
            (PF_DRAWABLE, "drawable", "Input layer", None),
            (PF_FILE, "style_folder", "Folder of style images", ""),
            (PF_FILE, "style_1", "Style 1", ""),
            (PF_FILE, "style_2", "Style 2", ""),
            (PF_FILE, "style_3", "Style 3", ""),
            (PF_SPINNER, "size", "Preview size (0: stylefu's default)", 0, (0, 2048, 16)),
        ],
        [(PF_IMAGE, "sheet", "The contact sheet")],
        preview, menu="<Image>/Filters/Artistic")


_register()
main()
