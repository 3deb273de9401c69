#!/usr/bin/env python3
"""stylefu for GIMP 3: Filters > Artistic > Neural Style Transfer... and Neural Style Preview...

GIMP runs this file with its own Python; the work is done by the stylefu worker in the environment
`stylefu gimp install` recorded, through stylefu_bridge.py beside this file (the steps both GIMP
plug-ins share); this file supplies GIMP 3's calls, its arguments and its dialog's layout.
Pixels travel as float32 .npy files (16-bit where they leave sRGB's 0..1), read and written
through GEGL, so high bit depth images never pass through 8 bits.
The result is a NEW layer above the source, inside one undo group; the source is never changed.
"""

import functools
import os
import sys
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402

sys.dont_write_bytecode = True  # leave nothing in the plug-in's folder but what was installed
import stylefu_bridge as bridge  # noqa: E402  (installed beside this file by `stylefu gimp install`)

PROC = "python-fu-stylefu"
PROC_PREVIEW = "python-fu-stylefu-preview"
PROC_FOLLOW = "python-fu-stylefu-follow"  # internal: the filter's progress (bridge.follow_run)
MENU = "<Image>/Filters/Artistic"
RW = GObject.ParamFlags.READWRITE


def reports_errors(run):
    """Turn a run function's failures into GIMP's return values with one readable line: wrong
    input is a calling error (as in GIMP's own plug-ins), anything else an execution error."""
    @functools.wraps(run)
    def wrapped(procedure, *args):
        bridge.begin_run(__file__, procedure.get_name())
        try:
            return run(procedure, *args)
        except bridge.CancelledError:
            bridge.log("cancelled: the image is as it was")
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        except bridge.BridgeError as exc:
            bridge.log("error:", exc)
            status = (Gimp.PDBStatusType.CALLING_ERROR if isinstance(exc, bridge.InputError)
                      else Gimp.PDBStatusType.EXECUTION_ERROR)
            return procedure.new_return_values(status, GLib.Error(bridge.with_log(str(exc))))
        except Exception:
            bridge.log(traceback.format_exc())
            return procedure.new_return_values(
                Gimp.PDBStatusType.EXECUTION_ERROR,
                GLib.Error(bridge.with_log("stylefu plug-in error: "
                                           + traceback.format_exc().strip().splitlines()[-1])))
    return wrapped


# --- pixels -------------------------------------------------------------------------------------

def pixel_format(channels, kind="float"):
    return ("R'G'B'A " if channels == 4 else "R'G'B' ") + kind


def in_unit_range(data):
    """Whether raw float32 pixels all lie in 0..1 (colours outside sRGB, or HDR values, do not):
    read as unsigned words, 0.0 to 1.0 are the least, a sign bit or NaN larger (one pass)."""
    return max(memoryview(data).cast("I"), default=0) <= 0x3F800000


def scaled_rect(area, dx=0, dy=0):
    """GEGL's rectangle (in the scaled buffer's coordinates) for an area (x, y, w, h, scale) of a
    buffer whose origin is (dx, dy) away; the whole drawable at scale 1 when area is None."""
    x, y, w, h, scale = area
    return Gegl.Rectangle.new(int((x + dx) * scale), int((y + dy) * scale),
                              max(1, int(round(w * scale))), max(1, int(round(h * scale)))), scale


def save_drawable(drawable, path, area=None):
    """The drawable's pixels (and alpha) as a float32 .npy, sRGB-encoded 0..1 whatever the precision;
    where they leave 0..1 (a wide-gamut profile's colours outside sRGB, HDR values above 1), a
    16-bit one, clipped by babl into sRGB as an sRGB screen shows them (the worker paints in
    sRGB 0..1); with an `area`, that part at its scale (GEGL resamples)."""
    channels = 4 if drawable.has_alpha() else 3
    rect, scale = scaled_rect(area or (0, 0, drawable.get_width(), drawable.get_height(), 1.0))
    buffer, kind = drawable.get_buffer(), "float"
    data = bytes(buffer.get(rect, scale, pixel_format(channels), Gegl.AbyssPolicy.CLAMP))
    if not in_unit_range(data):
        kind = "u16"
        data = bytes(buffer.get(rect, scale, pixel_format(channels, kind), Gegl.AbyssPolicy.CLAMP))
    bridge.write_npy(path, data, (rect.height, rect.width, channels), kind)


def fill_layer(layer, npy_path):
    """Write a worker .npy (HxWx3|4 float32, the layer's size) into the layer's pixels."""
    shape, data = bridge.read_npy(npy_path)
    w, h = layer.get_width(), layer.get_height()
    if shape[:2] != (h, w):
        raise bridge.BridgeError(f"The worker returned {shape[1]}x{shape[0]} pixels for a {w}x{h} "
                                 "layer.")
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), pixel_format(shape[2]), data)
    buffer.flush()
    layer.update(0, 0, w, h)


def new_layer_above(image, source, name, place=None):
    """A layer of the source's size, offsets, kind (RGB or gray) and alpha, directly above it
    (or at `place`: (parent, position))."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    kind = {(False, False): Gimp.ImageType.RGB_IMAGE, (False, True): Gimp.ImageType.RGBA_IMAGE,
            (True, False): Gimp.ImageType.GRAY_IMAGE,
            (True, True): Gimp.ImageType.GRAYA_IMAGE}[(gray, source.has_alpha())]
    layer = Gimp.Layer.new(image, name, source.get_width(), source.get_height(), kind, 100.0,
                           Gimp.LayerMode.NORMAL)
    _, x, y = source.get_offsets()
    layer.set_offsets(x, y)  # before it is in a group whose position is locked, which refuses it
    image.insert_layer(layer, *(place or (source.get_parent(), image.get_item_position(source))))
    return layer


def same(item, other):
    """Whether two of libgimp's item proxies stand for one item."""
    return item is not None and other is not None and item.get_id() == other.get_id()


class Host(bridge.PluginHost):
    """GIMP 3's calls for the bridge's steps: float pixels through GEGL, the dialog's config."""

    def __init__(self, image, drawables, config, run_mode):
        if len(drawables) == 1 and drawables[0].is_layer_mask():  # (GIMP passes the mask)
            raise bridge.InputError("The layer's mask is active; select the layer itself (click "
                                    "its thumbnail in the Layers dialog).")
        if len(drawables) != 1 or not drawables[0].is_layer() or drawables[0].is_group_layer():
            raise bridge.InputError("Select exactly one (non-group) layer to stylize.")
        self.image, self.source, self.config, self.run_mode = image, drawables[0], config, run_mode

    def check_changeable(self):
        """InputError, before anything changes, where GIMP would refuse the new layer: with a
        floating selection, or in a group whose pixels are locked (GIMP killed the plug-in
        half-way, the image changed and its undo history off)."""
        if self.image.get_floating_sel() is not None:
            raise bridge.InputError("Anchor the floating selection first (Layer > Anchor Layer), "
                                    "or make it a layer of its own (Layer > To New Layer).")
        group = self.source.get_parent()
        while group is not None:
            if group.get_lock_content():
                raise bridge.InputError(
                    f'The layer is in the layer group "{group.get_name()}", whose pixels are '
                    "locked; unlock them (Lock pixels, in the Layers dialog) so that the new "
                    "layer can go beside the layer.")
            group = group.get_parent()

    def style(self, folder, prefix):
        """(path, name) of a style: a layer of any open image, else a file; None if neither."""
        layer = self.config.get_property(f"{prefix}-layer")
        if layer is not None:
            path = os.path.join(folder, f"{prefix}.npy")
            save_drawable(layer, path)  # its alpha too: transparent pixels are no part of a style
            return path, layer.get_name()
        chosen = self.config.get_property(f"{prefix}-file")
        if chosen is None or not chosen.get_path():
            return None
        path = bridge.style_file(chosen.get_path(), prefix.replace("-", " "))
        return path, bridge.style_name(path)

    def styles(self, folder):
        first = self.style(folder, "style")
        if first is None:
            raise bridge.InputError("Choose a style: an image file or a layer of an open image.")
        second = self.style(folder, "second-style")
        return [first] if second is None else [first, second]

    def selection(self, area=None):
        """Read at the layer's size and offsets (or its `area`) from the selection channel in
        linear "Y float", so feathered edges stay soft (the worker blends them); off the canvas
        nothing is."""
        if Gimp.Selection.is_empty(self.image):
            return None
        _, x, y = self.source.get_offsets()
        rect, scale = scaled_rect(area or (0, 0, self.source.get_width(),
                                           self.source.get_height(), 1.0), x, y)
        data = self.image.get_selection().get_buffer().get(rect, scale, "Y float",
                                                           Gegl.AbyssPolicy.NONE)
        return bytes(data), (rect.height, rect.width, 1), "float"

    def save_content(self, path, area=None):
        save_drawable(self.source, path, area=area)

    def preview_area(self, side, whole=False):
        w, h = self.source.get_width(), self.source.get_height()
        x = y = 0
        if not whole and not Gimp.Selection.is_empty(self.image):
            inside, bx, by, bw, bh = self.source.mask_intersect()
            if inside:
                x, y, w, h = bx, by, bw, bh
        return x, y, w, h, min(1.0, float(side) / max(w, h))

    def show(self, path, name, masked, layer):
        if layer is None:
            layer = new_layer_above(self.image, self.source, name, self.result_place())
            self.add_mask(layer, masked)
        fill_layer(layer, path)
        return layer

    def add_mask(self, layer, masked):
        """The new layer's mask: the selection where it paints only there (`masked`), and the
        source's own mask where GIMP applies one (else the parts it hides came back painted),
        both as one mask; the selection is as it was after."""
        own = self.source.get_mask()
        own = own if own is not None and self.source.get_apply_mask() else None
        if own is None:
            if masked:
                layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
            return
        saved = None if Gimp.Selection.is_empty(self.image) else Gimp.Selection.save(self.image)
        try:  # the mask made from the selection: the source's mask, within the selection
            self.image.select_item(Gimp.ChannelOps.INTERSECT if masked else
                                   Gimp.ChannelOps.REPLACE, own)
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
        finally:
            if saved is None:
                Gimp.Selection.none(self.image)
            else:
                self.image.select_item(Gimp.ChannelOps.REPLACE, saved)
                self.image.remove_channel(saved)

    def remove(self, layer):
        self.image.remove_layer(layer)

    def undo_group(self, start):
        (self.image.undo_group_start if start else self.image.undo_group_end)()

    follows = "thread"

    def live_layer(self, name, masked, content):
        # Frozen: GIMP's way for in-situ previews; the image is as it was when it thaws again
        # in drop_live (the final layer is added after, in its own undo group). The live layer
        # and the source go into a pass-through group in the source's place, so the user's undo
        # steps, which record layers' positions, hold both during the run and after it (a
        # layer of their own removed then, undone later, came back one position off).
        selected = self.image.get_selected_layers()
        self.image.undo_freeze()
        try:
            self.live_group = group = Gimp.GroupLayer.new(self.image,
                                                          f"{bridge.TITLE} (painting)")
            group.set_mode(Gimp.LayerMode.PASS_THROUGH)
            self.image.insert_layer(group, self.source.get_parent(),
                                    self.image.get_item_position(self.source))
            self.image.reorder_item(self.source, group, 0)
            self.live_group_name, self.live_group_place = group.get_name(), self.place(group)
            layer = new_layer_above(self.image, self.source, name)
            self.add_mask(layer, masked)
            # The source's own pixels, copied as they are: `content` may be clipped into sRGB.
            w, h = layer.get_width(), layer.get_height()
            whole = Gegl.Rectangle.new(0, 0, w, h)
            self.source.get_buffer().copy(whole, Gegl.AbyssPolicy.NONE, layer.get_buffer(), whole)
            layer.update(0, 0, w, h)
            self.live_name = layer.get_name()  # (GIMP may have made it unique)
            self.image.set_selected_layers(selected)
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()
        return layer

    def drop_live(self, layer):
        # The group's other layers (the source, any the user added in it) back in its place.
        # What the user did during the run stays in their undo steps, which GIMP replays as
        # recorded, in the layer tree (GIMP 3.0's PDB can neither drop an undo step nor change
        # a removed item's place): a removed live layer, or the group with it, would come back
        # as it was, and a step on an item taken away gives a CRITICAL. So a removed live layer
        # is hidden (still allowed on a removed item), and the group its undo step puts it back
        # into stays, empty and hidden, at the bottom of its siblings (no position shifted).
        # A live layer the user moved out of the group is theirs: it stays, and the group too.
        # One renamed stays in that group, hidden. The source taken out of the group, the
        # group renamed or moved, or the order in it changed (the source or the live layer
        # moved): the group stays in its place, the live layer in it hidden, for those steps.
        # A group left is named for why it is there.
        self.image.undo_freeze()
        try:
            group, source, removed = self.live_group, self.source, not layer.is_valid()
            in_group = not removed and same(layer.get_parent(), group)
            taken = not (removed or in_group)  # theirs now
            renamed = in_group and layer.get_name() != self.live_name
            source_out = not (group.is_valid() and source.is_valid()
                              and same(source.get_parent(), group))
            position = self.image.get_item_position
            group_changed = not source_out and (group.get_name() != self.live_group_name or
                                                self.group_moved(group))
            reordered = not source_out and (in_group and position(layer) != 0 or
                                            position(source) != (1 if in_group else 0))
            in_place = source_out or group_changed or reordered
            if removed or renamed or (in_group and in_place):
                layer.set_visible(False)
            elif in_group:
                self.image.remove_layer(layer)
            kept = f"{bridge.TITLE} (kept for undo)"
            if in_place:
                bridge.log("the layer, its live group or their order changed during the run: the "
                           "group stays in its place for their undo steps")
                group.set_name(kept)
            else:
                parent = group.get_parent()
                for item in reversed(group.get_children()):
                    if not (renamed and same(item, layer)):
                        self.image.reorder_item(item, parent, position(group) + 1)
                if removed or taken or renamed:
                    bridge.log("the live layer was removed, moved or renamed during the run: "
                               "its group stays, hidden, for its undo step")
                    group.set_name(kept)
                    group.set_visible(False)
                    siblings = parent.get_children() if parent else self.image.get_layers()
                    self.image.reorder_item(group, parent, len(siblings) - 1)
                else:
                    self.image.remove_layer(group)
        finally:
            self.image.undo_thaw()
        Gimp.displays_flush()

    def place(self, item):
        parent = item.get_parent()
        siblings = [s.get_id() for s in (parent.get_children() if parent else
                                         self.image.get_layers())]
        at = siblings.index(item.get_id())
        return (parent.get_id() if parent else None, siblings[at - 1] if at else None,
                siblings[at + 1] if at + 1 < len(siblings) else None)

    def result_place(self):
        """(parent, position) of the result: above the source, or where the user removed it
        (or its live group) during the run, above the group left, else on top of the image."""
        if self.source.is_valid():
            return self.source.get_parent(), self.image.get_item_position(self.source)
        group = getattr(self, "live_group", None)
        if group is not None and group.is_valid():
            return group.get_parent(), self.image.get_item_position(group)
        return None, 0

    def follow(self, layer, folder):
        procedure = Gimp.get_pdb().lookup_procedure(PROC_FOLLOW)
        config = procedure.create_config()
        config.set_property("layer", layer)
        config.set_property("folder", folder)
        values = procedure.run(config)  # GIL released: the worker's thread goes on meanwhile
        status = values.index(0)
        if status in (Gimp.PDBStatusType.SUCCESS, Gimp.PDBStatusType.CANCEL):
            return status.value_nick
        return f"{status.value_nick}: {values.index(1) if values.length() > 1 else ''}"

    def progress(self, fraction=None, text=None, end=False):
        progress(fraction, text, end)

    def flush(self):
        Gimp.displays_flush()


    def ask_download(self, question, notice):
        """A Cancel/Download question in an interactive call only; a script's non-interactive
        call is the consent itself. A last-values call (Repeat, or a batch script) shows no
        dialog, as GIMP's own plug-ins do: a question crashed a console GIMP (no display) and
        would block a batch run on one, so it stops with how to install a model (None)."""
        if self.run_mode == Gimp.RunMode.NONINTERACTIVE:
            return True
        if self.run_mode != Gimp.RunMode.INTERACTIVE:
            return None
        return ask(question, "Download a model?", "_Download")

    def open_sheet(self, path):
        sheet = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
        # Untitled, so that closing it offers "Save as" instead of overwriting a temporary file.
        sheet.set_file(Gio.File.new_for_path(os.path.join(os.path.dirname(os.path.dirname(path)),
                                                          "stylefu-preview.png")))
        if self.run_mode == Gimp.RunMode.INTERACTIVE:
            Gimp.Display.new(sheet)
            Gimp.displays_flush()
        return sheet

    def message(self, text):
        Gimp.message(text)


def progress(fraction=None, text=None, end=False):
    """GIMP's progress bar: start it (fraction None), move it, or end it."""
    if end:
        Gimp.progress_end()
    elif fraction is None:
        Gimp.progress_init(text)
        Gimp.progress_pulse()
    else:
        Gimp.progress_update(fraction)
        Gimp.progress_set_text(text)


class FollowHost:
    """The follower's calls (bridge.follow_run): the progress bar, the live layer's pixels."""

    progress = staticmethod(progress)

    @staticmethod
    def paint(layer, path):
        if layer.is_valid():  # (the user may remove it, or its group, during the run)
            fill_layer(layer, path)

    @staticmethod
    def flush():
        Gimp.displays_flush()


# --- the dialogs --------------------------------------------------------------------------------

def gimp_ui():
    """GimpUi, initialised once per plug-in process (the filter's dialog, then maybe a question)."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    gi.require_version("Pango", "1.0")
    from gi.repository import GimpUi

    if not getattr(gimp_ui, "ready", False):
        GimpUi.init(PROC)
        gimp_ui.ready = True
    return GimpUi


def ask(text, title, accept):
    """A modal question with Cancel and `accept`; True when accepted."""
    GimpUi = gimp_ui()
    gi.require_version("Gtk", "3.0")
    from gi.repository import Gtk

    dialog = GimpUi.Dialog(title=title, role="stylefu-question", modal=True)
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button(accept, Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    label = Gtk.Label(label=text, wrap=True, max_width_chars=60, xalign=0.0)
    area = dialog.get_content_area()
    area.set_border_width(12)
    area.pack_start(label, True, True, 0)
    label.show()
    accepted = dialog.run() == Gtk.ResponseType.OK
    dialog.destroy()
    return accepted


def show_dialog(procedure, config, title, layout=None):
    """Run the procedure's dialog; `layout(dialog, config)` fills it and may return an object
    with a close() method (the preview), called before the dialog goes."""
    GimpUi = gimp_ui()
    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    extra = None
    if layout is None:
        dialog.fill(None)
    else:
        extra = layout(dialog, config)
    try:
        accepted = dialog.run()
    finally:
        if extra is not None:
            extra.close()
    dialog.destroy()
    return accepted


# The filter's dialog: (container, title, folded, entries); an expander when folded, else a frame.
STYLIZE_GROUPS = (
    ("style-group", "Style", False, ["style-file", "style-layer"]),
    ("second-style-group", "Second style", True,
     ["second-style-file", "second-style-layer", "second-style-weight", "second-style-goes"]),
    ("result-group", "Result", False,
     ["strength", "preset", "iterations", "preserve-colors", "style-scale", "size"]),
    ("advanced-group", "Advanced", True, ["tile-size", "seed", "device"]),
)


def stylize_layout(dialog, config, host=None, settings=None, worker=None):
    """The filter's entries in frames and folded expanders; the evaluation count shows only
    for the Custom quality (the one choice of how long to optimise). With a `host` (the layer),
    the preview column to their left and the estimate under them, both asked of `worker` (a
    DialogWorker); returns the DialogPreview (or None)."""
    for container, title, folded, entries in STYLIZE_GROUPS:
        dialog.fill_box(f"{container}-box", entries)
        dialog.get_label(f"{container}-title", title, False, False)
        fill = dialog.fill_expander if folded else dialog.fill_frame
        fill(container, f"{container}-title", False, f"{container}-box")
    groups = [container for container, _, _, _ in STYLIZE_GROUPS]
    preview = None
    if host is None:
        dialog.fill(groups)
    else:
        from gi.repository import Gtk

        settings_box = dialog.fill_box("settings-box", groups)
        estimate = DialogEstimate(config, host, settings, worker)
        settings_box.pack_end(estimate.label, False, False, 0)
        column = dialog.fill_box("preview-box", ["preview"])  # the toggle, below the picture
        preview = DialogPreview(config, host, settings, estimate, worker)
        column.pack_start(preview.widget, False, False, 0)
        column.reorder_child(preview.widget, 0)
        main = dialog.fill_box("main-box", ["preview-box", "settings-box"])
        main.set_orientation(Gtk.Orientation.HORIZONTAL)
        main.set_spacing(12)
        dialog.fill(["main-box"])
        if settings is not None:
            try:  # started now, its start overlaps the half second before the first requests
                worker.get()
            except bridge.BridgeError:
                pass  # the estimate and the preview say why
        estimate.schedule()
        preview.schedule()
    evaluations = dialog.get_widget("iterations", GObject.TYPE_NONE)

    def follow_quality(*_):
        evaluations.set_visible(config.get_property("preset") == bridge.CUSTOM_QUALITY)
    config.connect("notify::preset", follow_quality)
    follow_quality()
    return preview


class DialogWorker:
    """The worker kept for the dialog (bridge.KeptWorker), shared by its preview and its
    estimate and then running the filter: started as the dialog opens, again if it died, ended
    when the procedure ends."""

    def __init__(self, settings):
        self.settings, self.kept = settings, None

    def get(self):
        if self.kept is None or not self.kept.alive:
            self.kept = bridge.KeptWorker(self.settings)
        return self.kept

    def running(self):
        """The worker if it runs, else None (the filter then starts its own)."""
        return self.kept if self.kept is not None and self.kept.alive else None

    def close(self):
        if self.kept is not None:
            self.kept.close()
            self.kept = None


class DialogJob:
    """A dialog's background worker, followed from GLib timeouts: `timer` (a start pending after
    the last change), `poller` (the running worker's), `worker`; `what` names it in the log."""

    what = "job"

    def stop(self):
        """Cancel the pending or running job (the worker stops by itself, see bridge)."""
        for source in (self.timer, self.poller):
            if source is not None:
                GLib.source_remove(source)
        self.timer = self.poller = None
        if self.worker is not None:
            bridge.log(f"dialog {self.what} cancelled")
            self.worker.stop()
            self.worker = None


class DialogPreview(DialogJob):
    """The filter dialog's preview: the layer (or the selection's box) painted with the dialog's
    current values at bridge.DIALOG_PREVIEW_SIDE px with the draft preset, by the dialog's kept
    worker (DialogWorker) followed from GLib timeouts, so GIMP stays responsive.
    Shown as it forms, with its own progress bar; a changed entry cancels the running preview
    and starts a new one; the dialog's "Draft preview" toggle (aux argument "preview") turns it
    off."""

    what = "preview"
    DELAY_MS = 500  # after the last change: dragging a slider starts one preview, not dozens
    POLL_MS = 100
    COLUMN = 180  # the preview column's least width in pixels
    TEXT_CHARS = bridge.DIALOG_TEXT_CHARS

    def __init__(self, config, host, settings, estimate, kept):
        from gi.repository import Gtk, Pango

        self.config, self.host, self.settings, self.estimate = config, host, settings, estimate
        self.kept = kept  # the DialogWorker, shared with the estimate
        self.worker = self.output = None
        self.timer = self.poller = None
        self.picture = Gtk.Image()
        side = bridge.preview_side(settings)
        self.picture.set_size_request(side, side)
        # A fixed width (labels of TEXT_CHARS, ellipsized or wrapped): the dialog must not
        # change its layout while the progress text changes.
        self.bar = Gtk.ProgressBar()
        self.text = Gtk.Label()
        self.text.set_ellipsize(Pango.EllipsizeMode.END)
        self.text.set_width_chars(self.TEXT_CHARS)
        self.text.set_max_width_chars(self.TEXT_CHARS)
        self.text.set_xalign(0.0)
        self.status = Gtk.Label()
        self.status.set_line_wrap(True)
        # A long file name wraps within the column instead of widening the dialog.
        self.status.set_line_wrap_mode(Pango.WrapMode.WORD_CHAR)
        self.status.set_width_chars(self.TEXT_CHARS)
        self.status.set_max_width_chars(self.TEXT_CHARS)
        self.status.set_xalign(0.0)
        self.widget = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6)
        self.widget.set_size_request(max(side, self.COLUMN), -1)
        for child in (self.picture, self.bar, self.text, self.status):
            self.widget.pack_start(child, False, False, 0)
        self.widget.show_all()
        self.handler = config.connect("notify", self.changed)

    def enabled(self):
        return bool(self.config.get_property("preview"))

    def changed(self, _config, pspec):
        if pspec.name.replace("-", "_") in bridge.DIALOG_PREVIEW_IGNORES:
            return
        self.schedule()

    def schedule(self):
        """Cancel the running preview; start a new one after DELAY_MS when the toggle is on."""
        self.stop()
        on = self.enabled()
        self.widget.set_sensitive(on)
        if on:
            self.say(0.0, bridge.DIALOG_PREVIEW_WAITING, "")
            self.timer = GLib.timeout_add(self.DELAY_MS, self.start)
        else:
            self.say(0.0, "Preview off", "")
            bridge.log("dialog preview off")

    def say(self, fraction, text, status, log=False):
        """The preview's progress, its line and a status sentence; with `log`, the run log's
        path goes into the status's tooltip (in the narrow column it took four lines)."""
        status = bridge.typeable(status, self.settings)
        self.bar.set_fraction(fraction)
        self.text.set_text(text)
        self.status.set_text(status)
        if status:
            bridge.log("dialog preview says:", status)
        path = bridge.log_path() if log and status else None
        self.status.set_tooltip_text(f"Details in the run log: {path}" if path else None)

    def show_file(self, path):
        from gi.repository import GdkPixbuf

        try:
            pixbuf = GdkPixbuf.Pixbuf.new_from_file(path)
        except GLib.Error as exc:  # a half-written file: the next one comes soon
            bridge.log("dialog preview: cannot show", path, exc.message)
            return
        if self.host.image.get_base_type() == Gimp.ImageBaseType.GRAY:
            # The worker paints in colour; a grayscale layer gets the gray of it, so must the
            # preview (it showed the style's colours the new layer would never have).
            gray = pixbuf.copy()
            pixbuf.saturate_and_pixelate(gray, 0.0, False)
            pixbuf = gray
        self.picture.set_from_pixbuf(pixbuf)
        # Where it is (the picture, centred in its area), for the tests' screenshots.
        x, y = self.picture.translate_coordinates(self.picture.get_toplevel(), 0, 0)[-2:]
        box, pixbuf = self.picture.get_allocation(), self.picture.get_pixbuf()
        w, h = pixbuf.get_width(), pixbuf.get_height()
        bridge.log(f"dialog preview shown: {os.path.basename(path)} {w}x{h} at "
                   f"{x + (box.width - w) // 2},{y + (box.height - h) // 2} in the dialog")

    def show_layer(self, area):
        """The unstylized layer (its area) at the preview's size until the painting arrives.
        Read through GEGL: GIMP 3.0.4's drawable thumbnails crash Python (a double free)."""
        from gi.repository import GdkPixbuf

        x, y, w, h, _ = area
        rect, scale = scaled_rect((x, y, w, h, bridge.preview_side(self.settings) / max(w, h)))
        data = self.host.source.get_buffer().get(rect, scale, "R'G'B' u8", Gegl.AbyssPolicy.CLAMP)
        self.picture.set_from_pixbuf(GdkPixbuf.Pixbuf.new_from_bytes(
            GLib.Bytes.new(bytes(data)), GdkPixbuf.Colorspace.RGB, False, 8, rect.width,
            rect.height, 3 * rect.width))

    def start(self):
        self.timer = None
        if self.settings is None:
            self.say(0.0, "No preview", f"stylefu is not set up for this GIMP; {bridge.REINSTALL}.",
                     log=True)
            return False
        try:
            values = dialog_values(self.config)
            outside = values["second_style_goes"] == "outside"
            self.show_layer(self.host.preview_area(bridge.preview_side(self.settings),
                                                   whole=outside))
            # The worker answers in order: after an estimate under way (a first calibration
            # then never measures a machine busy with a preview).
            self.worker, self.output = bridge.start_dialog_preview(self.host, self.kept.get(),
                                                                   self.settings, values)
        except bridge.BridgeError as exc:  # no style yet, a selection it cannot use, ...
            bridge.log("dialog preview:", exc)
            self.say(0.0, "No preview", str(exc))
            return False
        self.say(0.0, "Preview: starting", "")
        self.poller = GLib.timeout_add(self.POLL_MS, self.poll)
        return False

    def poll(self):
        """Follow the worker (a GLib timeout: True to be called again)."""
        try:
            return self.follow()
        except Exception:  # a bug here must not leave a worker running behind the dialog
            bridge.log("dialog preview:", traceback.format_exc())
            self.say(0.0, "Preview failed", "The preview failed.", log=True)
            self.poller = None
            self.stop()
            return False

    def follow(self):
        worker = self.worker
        for record in worker.poll():
            self.say(min(1.0, float(record.get("fraction", 0.0))),
                     bridge.dialog_preview_text(record), "")
            if record.get("image"):
                self.show_file(record["image"])
        if not worker.done:
            return True
        self.poller = None
        try:
            final = worker.result()
        except bridge.BridgeError as exc:
            bridge.log("dialog preview failed:", exc)
            self.say(0.0, "Preview failed", str(exc), log=True)
        else:
            self.show_file(self.output)
            seconds = final.get("metrics", {}).get("seconds", 0.0)
            self.say(1.0, f"Preview done ({seconds:.0f} s)", "")
            bridge.log("dialog preview done")
        worker.stop()  # removes its folder
        self.worker = None
        return False

    def close(self):
        """The dialog goes: no more previews (nor estimates); the worker stays for the filter."""
        self.config.disconnect(self.handler)
        self.stop()
        self.estimate.close()



class DialogEstimate(DialogJob):
    """The dialog's line under its entries: what the filter would take on this layer with the
    current entries on this machine (`stylefu estimate`, bridge.start_estimate), worked out by the
    dialog's kept worker and followed from GLib timeouts like the preview, so GIMP never waits
    for it (the first estimate on a machine calibrates, a few seconds). Refreshed when an entry
    it depends on changes (bridge.DIALOG_ESTIMATE_FOLLOWS), cancelling the one under way."""

    what = "estimate"
    DELAY_MS = 500
    POLL_MS = 200
    TEXT_CHARS = 44

    def __init__(self, config, host, settings, kept):
        from gi.repository import Gtk

        self.config, self.host, self.settings, self.kept = config, host, settings, kept
        self.worker = self.timer = self.poller = None
        self.label = Gtk.Label()
        self.label.set_line_wrap(True)
        self.label.set_width_chars(self.TEXT_CHARS)
        self.label.set_max_width_chars(self.TEXT_CHARS)
        self.label.set_xalign(0.0)
        self.label.set_yalign(0.0)
        # Two lines kept from the start: the dialog must not grow when the estimate arrives.
        _, two_lines = self.label.create_pango_layout("X\nX").get_pixel_size()
        self.label.set_size_request(-1, two_lines)
        self.label.show()
        self.handler = config.connect("notify", self.changed)

    def changed(self, _config, pspec):
        if pspec.name.replace("-", "_") in bridge.DIALOG_ESTIMATE_FOLLOWS:
            self.schedule()

    def schedule(self):
        self.stop()
        self.label.set_text("The filter: estimating its time on this machine...")
        self.timer = GLib.timeout_add(self.DELAY_MS, self.start)

    def size(self):
        return self.host.source.get_width(), self.host.source.get_height()

    def start(self):
        self.timer = None
        if self.settings is None:
            self.label.set_text("The filter: no estimate (stylefu is not set up)")
            return False
        try:
            self.worker = bridge.start_estimate(self.kept.get(), self.settings, *self.size(),
                                                values=dialog_values(self.config))
        except bridge.BridgeError as exc:
            self.failed(exc)
            return False
        self.poller = GLib.timeout_add(self.POLL_MS, self.poll)
        return False

    def failed(self, exc):
        bridge.log("dialog estimate failed:", exc)
        self.label.set_text(f"The filter: no estimate. {exc}")

    def poll(self):
        worker = self.worker
        worker.poll()
        if not worker.done:
            return True
        self.poller, self.worker = None, None
        try:
            text = bridge.estimate_text(worker.result(), *self.size())
        except bridge.BridgeError as exc:
            self.failed(exc)
        else:
            self.label.set_text(text)
            bridge.log("dialog estimate shown:", text)
        worker.stop()  # removes its folder
        return False

    def close(self):
        self.config.disconnect(self.handler)
        self.stop()


def dialog_values(config):
    """The dialog's values keyed by Config field names (what bridge.run_options takes)."""
    names = ("strength", "preset", "iterations", "size", "tile_size", "preserve_colors",
             "style_scale", "seed", "device", "second_style_weight", "second_style_goes")
    return {name: config.get_property(name.replace("_", "-")) for name in names}


@reports_errors
def run_stylize(procedure, run_mode, image, drawables, config, run_data):
    host = Host(image, drawables, config, run_mode)
    host.check_changeable()
    worker = None  # the dialog's, which then runs the filter too (its model is loaded)
    try:
        if run_mode == Gimp.RunMode.INTERACTIVE:
            try:
                settings = bridge.load_settings(__file__)
            except bridge.BridgeError:
                settings = None  # the preview says so; OK then fails with load_settings' sentence
            worker = DialogWorker(settings)
            if not show_dialog(procedure, config, "Neural Style Transfer",
                               functools.partial(stylize_layout, host=host, settings=settings,
                                                 worker=worker)):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        settings = bridge.load_settings(__file__)
        layer = bridge.stylize_layer(host, settings, dialog_values(config),
                                     worker.running() if worker is not None else None)
        return Gimp.ValueArray.new_from_values([
            GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
            GObject.Value(Gimp.Layer, layer)])
    finally:
        if worker is not None:
            worker.close()


@reports_errors
def run_preview(procedure, run_mode, image, drawables, config, run_data):
    if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, config,
                                                                "Neural Style Preview"):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    settings = bridge.load_settings(__file__)
    host = Host(image, drawables, config, run_mode)
    files = [config.get_property(f"style-{i}") for i in range(1, bridge.PREVIEW_STYLE_SLOTS + 1)]
    folder = config.get_property("style-folder")
    sheet = bridge.preview_sheet(host, settings, [f.get_path() for f in files if f is not None],
                                 folder.get_path() if folder is not None else None,
                                 config.get_property("size"))
    return Gimp.ValueArray.new_from_values([
        GObject.Value(Gimp.PDBStatusType, Gimp.PDBStatusType.SUCCESS),
        GObject.Value(Gimp.Image, sheet)])


def run_follow(procedure, config, run_data):
    """The filter's internal follower (bridge.follow_run). No run log of its own: its filter's
    run log has the run; its failure is the filter's error."""
    try:
        bridge.follow_run(FollowHost, config.get_property("layer"),
                          config.get_property("folder"))
    except Exception:
        traceback.print_exc()
        return procedure.new_return_values(
            Gimp.PDBStatusType.EXECUTION_ERROR,
            GLib.Error(traceback.format_exc().strip().splitlines()[-1]))
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


# --- registration ---------------------------------------------------------------------------------

def make_choice(nicks, labels=None):
    choice = Gimp.Choice.new()
    for i, nick in enumerate(nicks):
        label = labels[nick] if labels else nick.capitalize() if nick else "-"
        choice.add(nick, i, label, "")
    return choice


def add_stylize_arguments(procedure, settings):
    d, choices, helps = settings["defaults"], settings["choices"], settings.get("help", {})

    def number(kind, name, label, blurb):
        """An int or double argument with its range from the settings' limits."""
        low, high = settings["limits"][name][:2]
        add = procedure.add_int_argument if kind is int else procedure.add_double_argument
        add(name.replace("_", "-"), label, blurb, kind(low), kind(high), kind(d[name]), RW)

    def choice(name, label, blurb, labels=None):
        """A choice argument; a text one while unset: libgimp checks a run's values against
        the procedure made at the run, whose choices GIMP's registration ('none') no longer
        has, and refused them before load_settings could say what is wrong."""
        if settings is bridge.UNSET_SETTINGS:
            procedure.add_string_argument(name.replace("_", "-"), label, blurb, d[name], RW)
        else:
            procedure.add_choice_argument(name.replace("_", "-"), label, blurb,
                                          make_choice(choices[name], labels), d[name], RW)

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
    number(float, "second_style_weight", "Second style _weight", "Share of the second style in "
           "the blend (0.5: equal, 1: the second alone); used only when a second style is chosen")
    # No mnemonic: every letter of the label is taken by another entry or a dialog button.
    choice("second_style_goes", "Second style goes", "Everywhere, blended with the first style; "
           "or outside the selection, the first style inside it (needs a selection and a second "
           "style)", bridge.SECOND_STYLE_LABELS)
    number(float, "strength", "Style s_trength", f"Style/content balance: {d['strength']:g} is balanced on "
           "every model; higher paints more style")
    choice("preset", "_Quality", helps.get("preset", "") + "; Custom: the evaluations below")
    number(int, "iterations", "Evaluatio_ns", "Evaluations at full size (Custom quality only)")
    number(int, "size", "Working si_ze", helps.get("size", ""))
    number(int, "tile_size", "Tile size in _pixels", helps.get("tile_size", ""))
    choice("preserve_colors", "Preserve colo_urs", helps.get("preserve_colors", ""))
    number(float, "style_scale", "Style sc_ale", helps.get("style_scale", ""))
    number(int, "seed", "See_d", helps.get("seed", ""))
    choice("device", "De_vice", helps.get("device", ""))
    procedure.add_layer_return_value("layer", "Layer", "The new stylized layer, directly above "
                                     "the source", False, RW)
    # Remembered with the dialog's values, not a PDB argument: scripts never preview.
    procedure.add_boolean_aux_argument("preview", "Dra_ft preview", "Paint a small preview "
                                       "with the current settings whenever one changes", True, RW)


def add_preview_arguments(procedure, settings):
    procedure.add_file_argument("style-folder", "Style _folder", "Every image in this folder is "
                                "a candidate style", Gimp.FileChooserAction.SELECT_FOLDER, True,
                                None, RW)
    for i in range(1, bridge.PREVIEW_STYLE_SLOTS + 1):
        procedure.add_file_argument(f"style-{i}", f"Style {i}", "A candidate style image",
                                    Gimp.FileChooserAction.OPEN, True, None, RW)
    low, high = settings["limits"]["preview_size"][:2]
    procedure.add_int_argument("size", "Preview si_ze", "Long side of each preview in pixels "
                               "(0: stylefu preview's default)", low, high, 0, RW)
    procedure.add_image_return_value("sheet", "Sheet", "The contact sheet, as a new image",
                                     False, GObject.ParamFlags.READWRITE)


class StylefuPlugIn(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC, PROC_PREVIEW, PROC_FOLLOW]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        if name == PROC_FOLLOW:
            procedure = Gimp.Procedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_follow, None)
            procedure.set_documentation(
                "Internal: the progress of a running Neural Style Transfer or Preview",
                "Called by python-fu-stylefu (and -preview) while its worker runs: shows the "
                "progress and the painting as it forms in the live layer, so that GIMP's Cancel "
                "ends this procedure and the filter takes the live layer away (the preview ends "
                "its worker).", name)
            procedure.add_layer_argument("layer", "Layer", "The live layer (none: a preview's "
                                         "progress alone)", True, RW)
            procedure.add_string_argument("folder", "Folder", "The run's exchange folder", "",
                                          RW)
            procedure.set_attribution("stylefu", "stylefu contributors", "2026")
            return procedure
        settings = bridge.settings_or_unset(__file__)
        try:
            return self.create_filter(name, settings)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            # A file of this version but another shape: registered as if unset, so the menu
            # entries stay (they vanished) and GIMP reports no crash.
            bridge.log("stylefu.json lacks what the dialog needs:", traceback.format_exc())
            return self.create_filter(name, bridge.UNSET_SETTINGS)

    def create_filter(self, name, settings):
        """The filter's or the preview's procedure, its arguments from `settings`."""
        if name == PROC:
            procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN,
                                                run_stylize, None)
            procedure.set_menu_label("Neural Style _Transfer...")
            procedure.set_documentation(
                "Paint the layer in the style of another image (Gatys et al.)",
                "Adds a new layer above the active one, stylized by the stylefu worker with one "
                "style or a blend of two; a selection limits the style to it (the worker's mask "
                "and the new layer's mask), or takes the first style while the second goes "
                "outside it; the source layer is left untouched. Returns the new layer.", name)
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
