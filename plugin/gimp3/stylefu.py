#!/usr/bin/env python3
"""stylefu for GIMP 3: Filters > Artistic > Neural Style Transfer... and Neural Style Preview...

GIMP runs this file with its own Python; the work is done by the stylefu worker (see the bridge
below) in the environment `stylefu gimp install` recorded. Pixels travel as float32 .npy files,
read and written through GEGL in float, so high bit depth images never pass through 8 bits.
The result is a NEW layer above the source, inside one undo group; the source is never changed.
"""

import functools
import json
import os
import sys
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402

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
    read_npy,
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

PROC = "python-fu-stylefu"
PROC_PREVIEW = "python-fu-stylefu-preview"
MENU = "<Image>/Filters/Artistic"
TITLE = "Neural style"
STYLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".npy")
PREVIEW_STYLE_FILES = 4
RW = GObject.ParamFlags.READWRITE


def failure(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


# --- pixels -------------------------------------------------------------------------------------

def reports_errors(run):
    """Turn a run function's failures into an execution error with one readable line."""
    @functools.wraps(run)
    def wrapped(procedure, *args):
        try:
            return run(procedure, *args)
        except BridgeError as exc:
            log("error:", exc)
            return failure(procedure, str(exc))
        except Exception:
            log(traceback.format_exc())
            return failure(procedure, "stylefu plug-in error: "
                           + traceback.format_exc().strip().splitlines()[-1])
    return wrapped


def pixel_format(channels):
    return "R'G'B'A float" if channels == 4 else "R'G'B' float"


def read_pixels(drawable, channels):
    """The drawable's pixels as float32 bytes, in sRGB-encoded 0..1 whatever the image precision."""
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    return bytes(drawable.get_buffer().get(rect, 1.0, pixel_format(channels),
                                           Gegl.AbyssPolicy.CLAMP))


def selection_mask(image, drawable):
    """The selection over the drawable as its grayscale mask (raw HxWx1 float32 pixels in 0..1,
    and that shape), or None when nothing is selected.

    Read at the drawable's size and offsets from the selection channel in linear "Y float", so
    feathered edges stay soft (the worker blends them); outside the canvas nothing is selected.
    """
    if Gimp.Selection.is_empty(image):
        return None
    _, x, y = drawable.get_offsets()
    w, h = drawable.get_width(), drawable.get_height()
    data = bytes(image.get_selection().get_buffer().get(Gegl.Rectangle.new(x, y, w, h), 1.0,
                                                        "Y float", Gegl.AbyssPolicy.NONE))
    if not any(data):  # every float is 0.0: the selection lies beside the layer
        raise BridgeError("The selection does not touch the layer; select part of the layer, or "
                          "Select > None to stylize all of it.")
    return data, (h, w, 1)


def save_drawable(drawable, path, keep_alpha=True):
    channels = 4 if keep_alpha and drawable.has_alpha() else 3
    write_npy(path, read_pixels(drawable, channels),
              (drawable.get_height(), drawable.get_width(), channels))


def fill_layer(layer, npy_path):
    """Write a worker .npy (HxWx3|4 float32, the layer's size) into the layer's pixels."""
    shape, data = read_npy(npy_path)
    w, h = layer.get_width(), layer.get_height()
    if shape[:2] != (h, w):
        raise BridgeError(f"The worker returned {shape[1]}x{shape[0]} pixels for a {w}x{h} "
                          "layer.")
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), pixel_format(shape[2]), data)
    buffer.flush()
    layer.update(0, 0, w, h)


def new_layer_above(image, source, name):
    """A layer of the source's size, offsets, kind (RGB or gray) and alpha, directly above it."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    kind = {(False, False): Gimp.ImageType.RGB_IMAGE, (False, True): Gimp.ImageType.RGBA_IMAGE,
            (True, False): Gimp.ImageType.GRAY_IMAGE,
            (True, True): Gimp.ImageType.GRAYA_IMAGE}[(gray, source.has_alpha())]
    layer = Gimp.Layer.new(image, name, source.get_width(), source.get_height(), kind, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
    _, x, y = source.get_offsets()
    layer.set_offsets(x, y)
    return layer


# --- the filter ---------------------------------------------------------------------------------

def dialog_values(config, styles=1):
    """The dialog's values keyed by Config field names (what bridge.run_options takes)."""
    choice = config.get_property
    values = {"strength": choice("strength"), "preset": choice("preset"),
              "iterations": choice("iterations"), "size": choice("size"),
              "tile_size": choice("tile-size"), "preserve_colors": choice("preserve-colors"),
              "style_scale": choice("style-scale"), "seed": choice("seed"),
              "device": choice("device")}
    if styles == 2:
        values["style_blend"] = second_style_blend(choice("second-style-weight"))
    return values


def show_dialog(procedure, config, title):
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    dialog.fill(None)
    accepted = dialog.run()
    dialog.destroy()
    return accepted


def style_input(config, folder, prefix="style"):
    """(path of the style for the worker, its name): a layer of any open image, else a file;
    None when neither is chosen. `prefix` "second-style" reads the optional second style."""
    layer = config.get_property(f"{prefix}-layer")
    if layer is not None:
        path = os.path.join(folder, f"{prefix}.npy")
        save_drawable(layer, path, keep_alpha=False)
        return path, layer.get_name()
    style = config.get_property(f"{prefix}-file")
    if style is None or not style.get_path():
        return None
    path = style.get_path()
    return path, os.path.splitext(os.path.basename(path))[0]


def style_inputs(config, folder):
    """[(path, name)] of the style and, when one is chosen, the second style."""
    first = style_input(config, folder)
    if first is None:
        raise BridgeError("Choose a style: an image file or a layer of an open image.")
    second = style_input(config, folder, "second-style")
    return [first] if second is None else [first, second]


def single_layer(drawables):
    if len(drawables) != 1 or not drawables[0].is_layer() or drawables[0].is_group_layer():
        raise BridgeError("Select exactly one (non-group) layer to stylize.")
    return drawables[0]


@reports_errors
def run_stylize(procedure, run_mode, image, drawables, config, run_data):
    if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, config,
                                                                "Neural Style Transfer"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    folder = None
    state = {"layer": None}
    try:
        settings = load_settings(__file__)
        source = single_layer(drawables)
        folder = exchange_dir()
        styles = style_inputs(config, folder)
        style_name = " + ".join(name for _, name in styles)
        content = os.path.join(folder, "content.npy")
        output = os.path.join(folder, "result.npy")
        # The selection restricts the style loss (guided Grams) and the worker's result to it:
        # one mask serves every style; or, with the second style "outside the selection", the
        # selection is the first style's region and its inverse the second's.
        selection = selection_mask(image, source)
        outside = second_style_outside(config.get_property("second-style-goes"), len(styles),
                                       selection is not None)
        masks = write_selection_masks(folder, *selection, outside=outside) if selection else []
        save_drawable(source, content)
        command = worker_command(settings, ["run", content] + [path for path, _ in styles]
                                 + ["-o", output]
                                 + run_options(dialog_values(config, len(styles)), settings)
                                 + mask_options(masks))
        log("worker:", " ".join(command))
        Gimp.progress_init(f"{TITLE}: starting the worker")
        image.undo_group_start()
        try:
            def new_layer():
                layer = new_layer_above(image, source, layer_name(style_name))
                # One mask: see the README, exact source pixels outside at any working size. Two
                # (the selection and its inverse) cover the whole layer: no layer mask.
                if len(masks) == 1:
                    layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
                return layer

            def show(record):
                if record.get("event") == "notice":
                    log("notice:", record.get("message", ""))
                Gimp.progress_update(min(1.0, float(record.get("fraction", 0.0))))
                Gimp.progress_set_text(progress_text(record, TITLE))
                if record.get("image"):  # the painting so far, shown in the new layer
                    if state["layer"] is None:
                        state["layer"] = new_layer()
                    fill_layer(state["layer"], record["image"])
                    Gimp.displays_flush()
                    log("preview", record["image"])

            final = run_worker(command, on_record=show, cwd=folder)
            log("tiles:", json.dumps(final.get("metrics", {}).get("tiles", {})))
            if state["layer"] is None:
                state["layer"] = new_layer()
            fill_layer(state["layer"], output)
        except BaseException:
            if state["layer"] is not None:  # the image goes back to exactly what it was
                image.remove_layer(state["layer"])
            raise
        finally:
            image.undo_group_end()
            Gimp.progress_end()
        Gimp.displays_flush()
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    finally:
        if folder:
            remove_dir(folder)


def layer_name(style_name):
    return f"{style_name} (neural style)"


# --- the preview contact sheet --------------------------------------------------------------------

def preview_styles(config):
    paths = []
    for i in range(1, PREVIEW_STYLE_FILES + 1):
        style = config.get_property(f"style-{i}")
        if style is not None and style.get_path():
            paths.append(style.get_path())
    folder = config.get_property("style-folder")
    if folder is not None and folder.get_path() and os.path.isdir(folder.get_path()):
        for name in sorted(os.listdir(folder.get_path())):
            if name.lower().endswith(STYLE_SUFFIXES):
                paths.append(os.path.join(folder.get_path(), name))
    if not paths:
        raise BridgeError("Choose style images for the preview: files or a folder of images.")
    return paths


@reports_errors
def run_preview(procedure, run_mode, image, drawables, config, run_data):
    if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, config,
                                                                "Neural Style Preview"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    folder = None
    try:
        settings = load_settings(__file__)
        source = single_layer(drawables)
        styles = preview_styles(config)
        folder = exchange_dir()
        content = os.path.join(folder, "content.npy")
        sheet = os.path.join(folder, "preview-sheet.png")
        save_drawable(source, content)
        args = ["preview", content] + styles + ["-o", sheet]
        if config.get_property("size") > 0:
            args += ["--size", str(config.get_property("size"))]
        if settings.get("model"):
            args += ["--model", settings["model"]]
        Gimp.progress_init(f"{TITLE}: previewing {len(styles)} styles")
        Gimp.progress_pulse()
        try:
            run_command(worker_command(settings, args), cwd=folder)
        finally:
            Gimp.progress_end()
        result = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(sheet))
        result.set_file(Gio.File.new_for_path(os.path.join(os.path.dirname(folder),
                                                           "stylefu-preview.png")))
        if run_mode == Gimp.RunMode.INTERACTIVE:
            Gimp.Display.new(result)
            Gimp.displays_flush()
        return Gimp.ValueArray.new_from_values([
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Image, result)])
    finally:
        if folder:
            remove_dir(folder)


# --- registration ---------------------------------------------------------------------------------

def make_choice(nicks, labels=None):
    choice = Gimp.Choice.new()
    for i, nick in enumerate(nicks):
        label = labels[nick] if labels else nick.capitalize() if nick else "-"
        choice.add(nick, i, label, "")
    return choice


def add_stylize_arguments(procedure, settings):
    d, choices, helps = settings["defaults"], settings["choices"], settings.get("help", {})
    low, high = settings["limits"]["size"]
    procedure.add_file_argument("style-file", "Style _image", "Style image file (used when no "
                                "style layer is chosen)", Gimp.FileChooserAction.OPEN, True, None,
                                RW)
    procedure.add_drawable_argument("style-layer", "Style la_yer", "A layer of any open image "
                                    "as the style (instead of the file)", True, RW)
    procedure.add_file_argument("second-style-file", "Second style ima_ge", "Optional: a second "
                                "style image, blended with the first", Gimp.FileChooserAction.OPEN,
                                True, None, RW)
    procedure.add_drawable_argument("second-style-layer", "Second style lay_er", "Optional: a "
                                    "layer as the second style (instead of the file)", True, RW)
    procedure.add_double_argument("second-style-weight", "Second style _weight", "Share of the "
                                  "second style in the blend (0.5: equal, 1: the second alone); "
                                  "used only when a second style is chosen", 0.0, 1.0,
                                  d["second_style_weight"], RW)
    # No mnemonic: every letter of the label is taken by another entry or a dialog button.
    procedure.add_choice_argument("second-style-goes", "Second style goes", "Everywhere, "
                                  "blended with the first style; or outside the selection, the "
                                  "first style inside it (needs a selection and a second style)",
                                  make_choice(choices["second_style_goes"], SECOND_STYLE_LABELS),
                                  d["second_style_goes"], RW)
    procedure.add_double_argument("strength", "Style s_trength", "Style/content balance: 50 is "
                                  "balanced on every model, every 25 more multiplies the style by 10",
                                  0.0, 100.0, d["strength"], RW)
    procedure.add_choice_argument("preset", "_Quality", helps.get("preset", ""),
                                  make_choice(choices["preset"]), d["preset"], RW)
    procedure.add_int_argument("iterations", "Iteratio_ns", "Evaluations at full size "
                               "(0: the quality preset's)", 0, 10000, d["iterations"], RW)
    procedure.add_int_argument("size", "Working si_ze", helps.get("size", ""), low, high,
                               d["size"], RW)
    tile_low, tile_high = settings["limits"]["tile_size"]
    procedure.add_int_argument("tile-size", "Tile size in _pixels", helps.get("tile_size", ""),
                               tile_low, tile_high, d["tile_size"], RW)
    procedure.add_choice_argument("preserve-colors", "Preserve colo_urs",
                                  helps.get("preserve_colors", ""),
                                  make_choice(choices["preserve_colors"]), d["preserve_colors"], RW)
    procedure.add_double_argument("style-scale", "Style sc_ale", helps.get("style_scale", ""),
                                  0.1, 8.0, d["style_scale"], RW)
    procedure.add_int_argument("seed", "See_d", helps.get("seed", ""), 0, 2**31 - 1, d["seed"], RW)
    procedure.add_choice_argument("device", "De_vice", helps.get("device", ""),
                                  make_choice(choices["device"]), d["device"], RW)


def add_preview_arguments(procedure, settings):
    procedure.add_file_argument("style-folder", "Style _folder", "Every image in this folder is "
                                "a candidate style", Gimp.FileChooserAction.SELECT_FOLDER, True,
                                None, RW)
    for i in range(1, PREVIEW_STYLE_FILES + 1):
        procedure.add_file_argument(f"style-{i}", f"Style {i}", "A candidate style image",
                                    Gimp.FileChooserAction.OPEN, True, None, RW)
    procedure.add_int_argument("size", "Preview si_ze", "Long side of each preview in pixels "
                               "(0: stylefu preview's default)", 0, 2048, 0, RW)
    procedure.add_image_return_value("sheet", "Sheet", "The contact sheet, as a new image",
                                     False, GObject.ParamFlags.READWRITE)


class StylefuPlugIn(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC, PROC_PREVIEW]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        settings = settings_or_unset(__file__)
        if name == PROC:
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN,
                                                run_stylize, None)
            procedure.set_menu_label("Neural Style _Transfer...")
            procedure.set_documentation(
                "Paint the layer in the style of another image (Gatys et al.)",
                "Adds a new layer above the active one, stylized by the stylefu worker with one "
                "style or a blend of two; a selection limits the style to it (the worker's mask "
                "and the new layer's mask), or takes the first style while the second goes "
                "outside it; the source layer is left untouched.", name)
            add_stylize_arguments(procedure, settings)
        else:
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN,
                                                run_preview, None)
            procedure.set_menu_label("Neural Style _Preview...")
            procedure.set_documentation(
                "Preview several styles on the layer as one contact sheet",
                "Opens a new image with a quick low-resolution stylization per style and "
                "each style's distance numbers.", name)
            add_preview_arguments(procedure, settings)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.add_menu_path(MENU)
        procedure.set_attribution("stylefu", "stylefu contributors", "2026")
        return procedure


if __name__ == "__main__":
    Gimp.main(StylefuPlugIn.__gtype__, sys.argv)
