#!/usr/bin/env python2
# -*- coding: utf-8 -*-
"""stylefu for GIMP 2.10 (Python-Fu): Filters > Artistic > Neural Style Transfer... and Preview...

GIMP 2.10 embeds Python 2.7, so this file is Python 2.7 (and runs on Python 3 too, for tests).
The work is done by the stylefu worker in the environment that `stylefu gimp install --gimp 2.10`
recorded, through the bridge pasted below (the steps both GIMP plug-ins share); this file supplies
GIMP 2.10's calls and its arguments. GIMP 2.10's Python sees 8-bit pixel regions only, so
content goes out as 8-bit .npy and the result comes back as an 8-bit PNG loaded by GIMP itself.
The result is a NEW layer above the source inside one undo group; the source is never changed.
"""
from __future__ import division, print_function

import functools
import os
import sys
import traceback

from gimpfu import (
    ADD_SELECTION_MASK,
    CHANNEL_OP_INTERSECT,
    CHANNEL_OP_REPLACE,
    LAYER_MODE_PASS_THROUGH,
    NORMAL_MODE,
    PF_DIRNAME,
    PF_DRAWABLE,
    PF_FILE,
    PF_IMAGE,
    PF_LAYER,
    PF_OPTION,
    PF_SLIDER,
    PF_SPINNER,
    PF_STRING,
    gimp,
    main,
    pdb,
    register,
)

# <stylefu-bridge>  (the installer replaces this block by plugin/common/stylefu_bridge.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "common"))
from stylefu_bridge import (  # noqa: E402
    PREVIEW_STYLE_SLOTS,
    SECOND_STYLE_LABELS,
    TITLE,
    BridgeError,
    InputError,
    PluginHost,
    begin_run,
    follow_run,
    follower_cancelled,
    load_settings,
    log,
    preview_sheet,
    settings_or_unset,
    style_file,
    style_name,
    stylize_layer,
    with_log,
    write_npy,
)

# </stylefu-bridge>

STYLE_SOURCES = ["the style file", "the style layer"]
SECOND_STYLE_SOURCES = ["no second style", "the second style file", "the second style layer"]


def reports_errors(function):
    """gimpfu turns an exception into an execution error with its text: one readable line that
    names the run log."""
    @functools.wraps(function)
    def wrapped(*args):
        begin_run(__file__, function.__name__)
        try:
            return function(*args)
        except BridgeError as exc:
            log("error:", exc)
            raise RuntimeError(with_log(str(exc)))
        except Exception:
            log(traceback.format_exc())
            raise
    return wrapped


def save_drawable(drawable, path):
    """The drawable's 8-bit pixels (as GIMP 2.10 hands them to Python) as a HxWxC uint8 .npy."""
    region = drawable.get_pixel_rgn(0, 0, drawable.width, drawable.height, False, False)
    data = region[0:drawable.width, 0:drawable.height]
    write_npy(path, data, (drawable.height, drawable.width, drawable.bpp), kind="u8")


def style_input(folder, source, style_path, style_layer, prefix="style"):
    """(path of the style for the worker, its name) from the dialog's file or layer choice."""
    which = prefix.replace("_", " ")
    if source == "layer":
        if style_layer is None:
            raise InputError("Choose a %s layer, or take the %s from a file." % (which, which))
        path = os.path.join(folder, prefix + ".npy")
        save_drawable(style_layer, path)
        return path, style_layer.name
    if not style_path:
        if prefix == "style":
            raise InputError("Choose a style: an image file or a layer of an open image.")
        raise InputError("Choose a second style image, or set 'Take the second style from' to "
                         "'no second style'.")
    return style_file(style_path, which), style_name(style_path)


class Host(PluginHost):
    """GIMP 2.10's calls for the bridge's steps: 8-bit pixel regions, the result loaded as PNG."""

    result_suffix = ".png"

    def __init__(self, image, drawable, style_choices=()):
        """`style_choices`: (source "file" or "layer", file, layer, prefix) per chosen style."""
        self.image, self.source, self.style_choices = image, drawable, style_choices

    def styles(self, folder):
        return [style_input(folder, *choice) for choice in self.style_choices]

    def selection(self):
        """Read from the selection channel at the layer's size and offsets, so feathered edges
        stay soft (the worker blends them); the selection exists only on the canvas."""
        image, drawable = self.image, self.source
        if pdb.gimp_selection_is_empty(image):
            return None
        ox, oy = drawable.offsets
        width, height = drawable.width, drawable.height
        x0, y0 = max(ox, 0), max(oy, 0)
        x1, y1 = min(ox + width, image.width), min(oy + height, image.height)
        mask = bytearray(width * height)
        if x1 > x0 and y1 > y0:
            rows = image.selection.get_pixel_rgn(x0, y0, x1 - x0, y1 - y0, False,
                                                 False)[x0:x1, y0:y1]
            n = x1 - x0
            for i in range(y1 - y0):
                start = (y0 - oy + i) * width + (x0 - ox)
                mask[start:start + n] = rows[i * n:(i + 1) * n]
        return bytes(mask), (height, width, 1), "u8"

    def save_content(self, path):
        save_drawable(self.source, path)

    def show(self, path, name, masked, layer):
        """Load the worker's PNG as a layer directly above the source, replacing `layer`."""
        new = pdb.gimp_file_load_layer(self.image, path)
        new.name = name
        if layer is not None:
            pdb.gimp_image_remove_layer(self.image, layer)
        pdb.gimp_image_insert_layer(self.image, new, *self.result_place())
        new.set_offsets(*self.source.offsets)
        self.add_mask(new, masked)
        return new

    def add_mask(self, layer, masked):
        """The new layer's mask, as GIMP 3's plug-in makes it (plugin/gimp3/stylefu.py,
        add_mask): the selection where it paints only there, and the source's own mask where
        GIMP applies one, both as one mask; the selection is as it was after."""
        image, source = self.image, self.source
        own = source.mask if source.mask is not None and \
            pdb.gimp_layer_get_apply_mask(source) else None
        if own is None:
            if masked:
                layer.add_mask(layer.create_mask(ADD_SELECTION_MASK))
            return
        saved = None if pdb.gimp_selection_is_empty(image) else pdb.gimp_selection_save(image)
        try:
            pdb.gimp_image_select_item(image, CHANNEL_OP_INTERSECT if masked else
                                       CHANNEL_OP_REPLACE, own)
            layer.add_mask(layer.create_mask(ADD_SELECTION_MASK))
        finally:
            if saved is None:
                pdb.gimp_selection_none(image)
            else:
                pdb.gimp_image_select_item(image, CHANNEL_OP_REPLACE, saved)
                pdb.gimp_image_remove_channel(image, saved)

    def result_place(self):
        """(parent, position) of the result: above the source, or where the user removed it
        (or its live group) during the run, above the group left, else on top of the image."""
        group = getattr(self, "live_group", None)
        for item in (self.source, group):
            if item is not None and pdb.gimp_item_is_valid(item):
                return item.parent, pdb.gimp_image_get_item_position(self.image, item)
        return None, 0

    def remove(self, layer):
        pdb.gimp_image_remove_layer(self.image, layer)

    def undo_group(self, start):
        (pdb.gimp_image_undo_group_start if start else pdb.gimp_image_undo_group_end)(self.image)

    follows = "follower"  # pygimp's calls hold Python's lock: no thread here runs meanwhile

    def live_layer(self, name, masked, content):
        """A copy of the source's pixels above it (its own mode and opacity, as the result's),
        added with the undo history frozen (GIMP's way for in-situ previews): drop_live leaves
        the image as it was when frozen. The live layer and the source go into a pass-through
        group in the source's place, so the user's undo steps, which record layers' positions
        among their siblings, hold during the run and after it (a layer of their own removed
        then, undone later, came back one position off)."""
        source = self.source
        pdb.gimp_image_undo_freeze(self.image)
        try:
            self.live_group = group = pdb.gimp_layer_group_new(self.image)
            group.name = "%s (painting)" % TITLE
            pdb.gimp_layer_set_mode(group, LAYER_MODE_PASS_THROUGH)
            pdb.gimp_image_insert_layer(self.image, group, source.parent,
                                        pdb.gimp_image_get_item_position(self.image, source))
            pdb.gimp_image_reorder_item(self.image, source, group, 0)
            self.live_group_name, self.live_group_place = group.name, self.place(group)
            layer = gimp.Layer(self.image, name, source.width, source.height, source.type, 100.0,
                               NORMAL_MODE)
            copy_pixels(source, layer)
            pdb.gimp_image_insert_layer(self.image, layer, group, 0)
            layer.set_offsets(*source.offsets)
            self.add_mask(layer, masked)
            self.live_name = layer.name  # (GIMP may have made it unique)
        finally:
            pdb.gimp_image_undo_thaw(self.image)
        gimp.displays_flush()
        return layer

    def drop_live(self, layer):
        """The live layer away and the group's other layers (the source, any the user added in
        it) back in its place, as GIMP 3's plug-in does (plugin/gimp3/stylefu.py, drop_live:
        what the user did during the run stays in their undo steps, replayed as recorded, so a
        removed live layer is hidden, one moved out of the group stays, one renamed stays in
        the group hidden, and the group their undo step needs is kept; the source out of the
        group, the order in it changed, or the group renamed or moved: the group stays in its
        place, the live layer in it hidden)."""
        image, group, source = self.image, self.live_group, self.source

        def position(item):
            return pdb.gimp_image_get_item_position(image, item)
        pdb.gimp_image_undo_freeze(image)
        try:
            removed = not pdb.gimp_item_is_valid(layer)
            in_group = not removed and layer.parent is not None and layer.parent.ID == group.ID
            taken = not (removed or in_group)  # theirs now
            renamed = in_group and layer.name != self.live_name
            parent = source.parent if pdb.gimp_item_is_valid(source) else None
            source_out = not (pdb.gimp_item_is_valid(group) and parent is not None
                              and parent.ID == group.ID)
            group_changed = not source_out and (group.name != self.live_group_name or
                                                self.group_moved(group))
            reordered = not source_out and (in_group and position(layer) != 0 or
                                            position(source) != (1 if in_group else 0))
            in_place = source_out or group_changed or reordered
            if removed or renamed or (in_group and in_place):
                pdb.gimp_item_set_visible(layer, False)
            elif in_group:
                pdb.gimp_image_remove_layer(image, layer)
            kept = "%s (kept for undo)" % TITLE
            if in_place:
                log("the layer, its live group or their order changed during the run: the group "
                    "stays in its place for their undo steps")
                group.name = kept
            else:
                parent = group.parent
                for item in reversed(group.children):
                    if not (renamed and item.ID == layer.ID):
                        pdb.gimp_image_reorder_item(image, item, parent, position(group) + 1)
                if removed or taken or renamed:
                    log("the live layer was removed, moved or renamed during the run: its group "
                        "stays, hidden, for its undo step")
                    group.name = kept
                    pdb.gimp_item_set_visible(group, False)
                    siblings = parent.children if parent is not None else image.layers
                    pdb.gimp_image_reorder_item(image, group, parent, len(siblings) - 1)
                else:
                    pdb.gimp_image_remove_layer(image, group)
        finally:
            pdb.gimp_image_undo_thaw(image)
        gimp.displays_flush()

    def place(self, item):
        parent = item.parent
        siblings = [s.ID for s in (parent.children if parent is not None else self.image.layers)]
        at = siblings.index(item.ID)
        return (parent.ID if parent is not None else None, siblings[at - 1] if at else None,
                siblings[at + 1] if at + 1 < len(siblings) else None)

    def follow(self, layer, folder):
        try:
            pdb.python_fu_stylefu_follow(self.image, layer, folder)
        except (gimp.error, RuntimeError) as exc:  # pygimp: the follower's error, or cancelled
            return "cancel" if follower_cancelled(folder) else str(exc)
        return "success"

    def progress(self, fraction=None, text=None, end=False):
        progress(fraction, text, end)

    def flush(self):
        gimp.displays_flush()

    def ask_download(self, question, notice):
        """gimpfu does not tell a plug-in whether a user is there to answer (a modal question
        would hang a batch run): GIMP 2.10 says what it downloads, then downloads it."""
        gimp.message(notice)
        return True

    def open_sheet(self, path):
        sheet = pdb.gimp_file_load(path, path)
        try:
            gimp.Display(sheet)
        except gimp.error:  # no display without a user interface (gimp -i): a script's call
            return sheet
        gimp.displays_flush()
        return sheet

    def message(self, text):
        gimp.message(text)


def progress(fraction=None, text=None, end=False):
    """GIMP's progress bar: start it (fraction None), move it, or end it."""
    if end:
        pdb.gimp_progress_end()
    elif fraction is None:
        gimp.progress_init(text)
    else:
        gimp.progress_update(fraction)
        pdb.gimp_progress_set_text(text)


def copy_pixels(source, target):
    """The source drawable's 8-bit pixels into the target (same size and kind), without undo."""
    width, height = source.width, source.height
    target.get_pixel_rgn(0, 0, width, height, True, False)[0:width, 0:height] = \
        source.get_pixel_rgn(0, 0, width, height, False, False)[0:width, 0:height]
    target.flush()
    target.update(0, 0, width, height)


class FollowHost(object):
    """The follower's calls (follow_run): the progress bar, the live layer's pixels."""

    def __init__(self, image):
        self.image = image

    def progress(self, fraction=None, text=None, end=False):
        progress(fraction, text, end)

    def flush(self):
        gimp.displays_flush()

    def paint(self, layer, path):
        """The worker's PNG into the live layer's pixels (a pixel region: no undo step); none
        once the user removed it (GIMP kills a plug-in that writes to a removed drawable)."""
        if not pdb.gimp_item_is_valid(layer):
            return
        painted = pdb.gimp_file_load_layer(self.image, path)  # converted to the image's kind
        try:
            if (painted.width, painted.height, painted.bpp) != (layer.width, layer.height,
                                                               layer.bpp):
                raise BridgeError("The worker's painting %s does not fit the layer." % path)
            copy_pixels(painted, layer)
        finally:
            pdb.gimp_item_delete(painted)


def follow(image, layer, folder):
    """The filter's internal follower (see follow_run): its errors are the filter's."""
    follow_run(FollowHost(image), layer, folder)


@reports_errors
def stylize(image, drawable, style_path, style_source, style_layer, second_style_path,
            second_style_source, second_style_layer, second_style_weight, second_style_goes,
            strength, preset, iterations, size, tile_size, preserve_colors, style_scale, seed,
            device):
    """The filter: stylize `drawable` into a new layer above it (see the module docstring);
    returns that layer."""
    settings = load_settings(__file__)
    choices = settings["choices"]
    values = {"strength": strength, "preset": choices["preset"][preset], "iterations": iterations,
              "size": size, "tile_size": tile_size,
              "preserve_colors": choices["preserve_colors"][preserve_colors],
              "style_scale": style_scale, "seed": seed, "device": choices["device"][device],
              "second_style_weight": second_style_weight,
              "second_style_goes": choices["second_style_goes"][second_style_goes]}
    first = "layer" if STYLE_SOURCES[style_source] == "the style layer" else "file"
    styles = [(first, style_path, style_layer, "style")]
    second = SECOND_STYLE_SOURCES[second_style_source]
    if second != "no second style":
        styles.append(("layer" if second.endswith("layer") else "file", second_style_path,
                       second_style_layer, "second_style"))
    return stylize_layer(Host(image, drawable, styles), settings, values)


@reports_errors
def preview(image, drawable, style_folder, *files_and_size):
    """Neural Style Preview: the contact sheet of several styles (PREVIEW_STYLE_SLOTS files and
    a folder), opened as a new image."""
    settings = load_settings(__file__)
    files, size = files_and_size[:-1], files_and_size[-1]
    return preview_sheet(Host(image, drawable), settings, files, style_folder, size)


def _register():
    settings = settings_or_unset(__file__)
    d, choices = settings["defaults"], settings["choices"]

    def limits(name):
        return tuple(settings["limits"][name])  # (low, high, step)

    register(
        "python-fu-stylefu",
        "Paint the layer in the style of another image (Gatys et al.)",
        "Adds a new layer above the active one, stylized by the stylefu worker with one style "
        "or a blend of two; a selection limits the style to it (the worker's mask and the new "
        "layer's mask), or takes the first style while the second goes outside it; the source "
        "layer is left untouched. Returns the new layer.",
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
             d["second_style_weight"], limits("second_style_weight")),
            (PF_OPTION, "second_style_goes", "Second style goes",
             choices["second_style_goes"].index(d["second_style_goes"]),
             [SECOND_STYLE_LABELS[place] for place in choices["second_style_goes"]]),
            (PF_SLIDER, "strength", "Style strength", d["strength"], limits("strength")),
            (PF_OPTION, "preset", "Quality", choices["preset"].index(d["preset"]),
             choices["preset"]),
            (PF_SPINNER, "iterations", "Evaluations (custom quality only)", d["iterations"],
             limits("iterations")),
            (PF_SPINNER, "size", "Working size", d["size"], limits("size")),
            (PF_SPINNER, "tile_size", "Tile size (0: automatic)", d["tile_size"],
             limits("tile_size")),
            (PF_OPTION, "preserve_colors", "Preserve colours",
             choices["preserve_colors"].index(d["preserve_colors"]), choices["preserve_colors"]),
            (PF_SLIDER, "style_scale", "Style scale", d["style_scale"], limits("style_scale")),
            (PF_SPINNER, "seed", "Seed", d["seed"], limits("seed")),
            (PF_OPTION, "device", "Device", choices["device"].index(d["device"]),
             choices["device"]),
        ],
        [(PF_LAYER, "layer", "The new stylized layer, directly above the source")],
        stylize, menu="<Image>/Filters/Artistic")
    register(
        "python-fu-stylefu-preview",
        "Preview several styles on the layer as one contact sheet",
        "Opens a new image with a quick low-resolution stylization per style.",
        "stylefu contributors", "stylefu contributors", "2026",
        "Neural Style _Preview...", "RGB*, GRAY*",
        [(PF_IMAGE, "image", "Input image", None),
         (PF_DRAWABLE, "drawable", "Input layer", None),
         (PF_DIRNAME, "style_folder", "Folder of style images", "")]
        + [(PF_FILE, "style_%d" % i, "Style %d" % i, "") for i in range(1, PREVIEW_STYLE_SLOTS + 1)]
        + [(PF_SPINNER, "size", "Preview size (0: stylefu's default)", 0, limits("preview_size"))],
        [(PF_IMAGE, "sheet", "The contact sheet")],
        preview, menu="<Image>/Filters/Artistic")
    register(
        "python-fu-stylefu-follow",
        "Internal: the progress of a running Neural Style Transfer or Preview",
        "Called by python-fu-stylefu (and -preview): runs its worker, shows the progress and "
        "the painting as it forms in the live layer, so that GIMP's Cancel ends this procedure "
        "and the filter takes the live layer away (the preview's worker ends with it).",
        "stylefu contributors", "stylefu contributors", "2026", "", "RGB*, GRAY*",
        [(PF_IMAGE, "image", "Input image", None),
         (PF_LAYER, "layer", "The live layer (none: a preview's progress alone)", None),
         (PF_STRING, "folder", "The run's exchange folder", "")],
        [], follow)


_register()
main()
