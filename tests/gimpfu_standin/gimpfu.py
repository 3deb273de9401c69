# -*- coding: utf-8 -*-
"""A small, faithful stand-in for GIMP 2.10's `gimpfu` module, for testing the Python-Fu plug-in.

No `gimpfu-stubs` package exists anywhere, and GIMP 2.10 with Python 2 is gone from current
Debian, so tests/test_gimp2.py runs the plug-in against this: the parts of the gimpfu/gimp/pdb API
the plug-in uses, with GIMP 2.10's names, argument orders and behaviour (8-bit pixel regions
sliced as `rgn[x0:x1, y0:y1]`, layers that belong to an image, `gimp_file_load_layer` converting
to the image's base type, undo groups that must balance, exceptions from the plug-in function
becoming an execution error with the exception's text; layer groups, whose items' undo steps
record their parent and position, as GIMP's do, and removed items, which stay in the steps that
removed them). Python 2.7 and 3, standard library only.
"""
from __future__ import division, print_function

import struct
import zlib

# --- constants (values as in GIMP 2.10's gimpenums) ---------------------------------------------
RGB, GRAY, INDEXED = 0, 1, 2
RGB_IMAGE, RGBA_IMAGE, GRAY_IMAGE, GRAYA_IMAGE = 0, 1, 2, 3
ADD_WHITE_MASK, ADD_BLACK_MASK, ADD_ALPHA_MASK, ADD_ALPHA_TRANSFER_MASK, ADD_SELECTION_MASK = range(5)
NORMAL_MODE, LAYER_MODE_PASS_THROUGH = 0, 61  # (GIMP 2.10's GimpLayerMode values)
CHANNEL_OP_ADD, CHANNEL_OP_SUBTRACT, CHANNEL_OP_REPLACE, CHANNEL_OP_INTERSECT = range(4)
(PF_INT8, PF_INT16, PF_INT32, PF_INT, PF_FLOAT, PF_STRING, PF_VALUE, PF_COLOR, PF_COLOUR,
 PF_REGION, PF_IMAGE, PF_LAYER, PF_CHANNEL, PF_DRAWABLE, PF_TOGGLE, PF_BOOL, PF_SLIDER,
 PF_SPINNER, PF_ADJUSTMENT, PF_FONT, PF_FILE, PF_BRUSH, PF_PATTERN, PF_GRADIENT, PF_RADIO,
 PF_TEXT, PF_PALETTE, PF_FILENAME, PF_DIRNAME, PF_OPTION) = range(30)

PROCEDURES = {}


class Killed(BaseException):
    """Stands for GIMP killing the plug-in process that holds the progress bar (its Cancel)."""


class ExecutionError(Exception):
    """What GIMP reports when the plug-in function raises (status EXECUTION_ERROR + message)."""


# --- pixels -------------------------------------------------------------------------------------

def _bpp(kind):
    return {RGB_IMAGE: 3, RGBA_IMAGE: 4, GRAY_IMAGE: 1, GRAYA_IMAGE: 2}[kind]


def _to_gray(data, channels):
    """RGB(A) bytes -> Y(A) bytes with GIMP's luminance weights (what a GRAY image stores)."""
    raw = bytearray(data)
    out = bytearray()
    for i in range(0, len(raw), channels):
        r, g, b = raw[i], raw[i + 1], raw[i + 2]
        out.append(int(round(0.2126 * r + 0.7152 * g + 0.0722 * b)))
        if channels == 4:
            out.append(raw[i + 3])
    return bytes(out)


def read_png(path):
    """(width, height, channels, bytes) of an 8-bit non-interlaced PNG (what Pillow writes)."""
    with open(path, "rb") as f:
        blob = f.read()
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise ExecutionError("Could not open '%s' for reading: not a PNG" % path)
    pos, idat, header = 8, b"", None
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        chunk = blob[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    if depth != 8 or interlace:
        raise ExecutionError("stand-in reads 8-bit non-interlaced PNGs only")
    raw = bytearray(zlib.decompress(idat))
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def _check_not_removed(drawable):
    """GIMP's tile writes: "Plug-In ... tried writing to drawable N which was removed from the
    image (killing)" (the plug-in process is closed)."""
    if getattr(drawable, "removed", False):
        raise Killed()


class PixelRgn(object):
    """gimp.PixelRgn: `rgn[x0:x1, y0:y1]` reads (and assigns) raw 8-bit bytes."""

    def __init__(self, drawable, x, y, w, h, dirty, shadow):
        self.drawable, self.x, self.y, self.w, self.h = drawable, x, y, w, h
        self.dirty = dirty

    def __getitem__(self, key):
        xs, ys = key
        d = self.drawable
        rows = [d.data[(y * d.width + xs.start) * d.bpp:(y * d.width + xs.stop) * d.bpp]
                for y in range(ys.start, ys.stop)]
        return b"".join(rows)

    def __setitem__(self, key, value):
        if not self.dirty:
            raise ExecutionError("pixel region is not writable (dirty=False)")
        xs, ys = key
        d = self.drawable
        _check_not_removed(d)
        data = bytearray(d.data)
        row = (xs.stop - xs.start) * d.bpp
        for i, y in enumerate(range(ys.start, ys.stop)):
            start = (y * d.width + xs.start) * d.bpp
            data[start:start + row] = value[i * row:(i + 1) * row]
        d.data = bytes(data)


# --- images, layers, masks ---------------------------------------------------------------------

_ids = [0]


def _new_id():
    _ids[0] += 1
    return _ids[0]


class Channel(object):
    """gimp.Channel (a layer mask, or the image's selection): one 8-bit value per pixel."""

    bpp = 1

    def __init__(self, image, name, width, height, opacity=100.0, color=(0, 0, 0)):
        self.ID = _new_id()
        self.image, self.name, self.width, self.height = image, name, width, height
        self.opacity, self.color = opacity, color
        self.offsets = (0, 0)
        self.data = b"\0" * (width * height)

    def get_pixel_rgn(self, x, y, w, h, dirty=True, shadow=False):
        return PixelRgn(self, x, y, w, h, dirty, shadow)

    def flush(self):
        """Written pixel regions reach GIMP (the stand-in writes through at once)."""

    def update(self, x, y, width, height):
        """Redraw a rectangle (nothing to redraw here)."""


class Layer(object):
    """gimp.Layer: name, size, offsets, bpp, alpha, an optional mask, 8-bit pixels; `parent`
    (a GroupLayer, or None at the image's top level); `removed` once taken out of its image
    (GIMP keeps it for the undo step that removed it)."""

    def __init__(self, image, name, width, height, kind, opacity=100.0, mode=NORMAL_MODE):
        self.ID = _new_id()
        self.image, self.name, self.width, self.height = image, name, width, height
        self.type, self.opacity, self.mode = kind, opacity, mode
        self.offsets = (0, 0)
        self.mask, self.apply_mask = None, True
        self.parent = None
        self.visible, self.removed = True, False
        self.data = b"\0" * (width * height * _bpp(kind))

    @property
    def bpp(self):
        return _bpp(self.type)

    @property
    def has_alpha(self):
        return self.type in (RGBA_IMAGE, GRAYA_IMAGE)

    @property
    def is_gray(self):
        return self.type in (GRAY_IMAGE, GRAYA_IMAGE)

    def set_offsets(self, x, y):
        self.image._push("set offsets")
        self.offsets = (x, y)

    def get_pixel_rgn(self, x, y, w, h, dirty=True, shadow=False):
        return PixelRgn(self, x, y, w, h, dirty, shadow)

    def create_mask(self, kind):
        if kind != ADD_SELECTION_MASK:
            raise ExecutionError("stand-in: only ADD_SELECTION_MASK")
        # The selection's values (soft ones included) at the layer's pixels; none off the canvas.
        sel = self.image.selection
        values = bytearray(sel.data)
        ox, oy = self.offsets
        data = bytearray(self.width * self.height)
        for y in range(self.height):
            for x in range(self.width):
                if 0 <= x + ox < sel.width and 0 <= y + oy < sel.height:
                    data[y * self.width + x] = values[(y + oy) * sel.width + x + ox]
        mask = Channel(self.image, self.name, self.width, self.height)
        mask.data = bytes(data)
        return mask

    def add_mask(self, mask):
        self.image._push("add mask")
        self.mask, mask.layer = mask, self  # (a mask lies at its layer's offsets)

    def flush(self):
        """Written pixel regions reach GIMP (the stand-in writes through at once)."""

    def update(self, x, y, width, height):
        """Redraw a rectangle (nothing to redraw here)."""


class GroupLayer(Layer):
    """gimp.GroupLayer (pdb.gimp_layer_group_new): its `children`, top first."""

    def __init__(self, image):
        Layer.__init__(self, image, "Layer Group", image.width, image.height, RGBA_IMAGE)
        self.layers = []

    @property
    def children(self):
        return list(self.layers)


def _mark_removed(item, removed):
    """GIMP's "removed" flag, on a group's layers too."""
    item.removed = removed
    for child in getattr(item, "layers", ()):
        _mark_removed(child, removed)


class Image(object):
    """gimp.Image with a layer stack (index 0 = top), a selection channel and undo groups."""

    def __init__(self, width, height, base_type=RGB):
        self.width, self.height, self.base_type = width, height, base_type
        self.layers = []
        self.selection = Channel(self, "Selection Mask", width, height)  # all 0: nothing selected
        self.undo_steps = []   # closed top-level undo steps, newest last
        self._group = None
        self._depth = 0
        self._frozen = 0
        self.criticals = []  # what GIMP would print as CRITICAL

    def _push(self, what):
        if self._frozen:  # gimp_image_undo_freeze: nothing is recorded
            return
        if self._depth:
            self._group.append(what)
        else:
            self.undo_steps.append([what])

    def _container(self, parent):
        return self.layers if parent is None else parent.layers

    def _attached(self, item):
        """In this image's layer tree (not floating, not removed)."""
        return item is not None and not item.removed and item.image is self and \
            item in self._container(item.parent) and \
            (item.parent is None or self._attached(item.parent))

    def undo(self):
        """Ctrl+Z: undo the newest step: layers added, moved or removed by it, as GIMP's layer
        undo does (a removed or moved layer back into the parent and at the position its step
        recorded; a parent no longer in the image: GIMP's CRITICAL, and nothing back)."""
        step = self.undo_steps.pop()
        for entry in reversed([entry for entry in step if isinstance(entry, tuple)]):
            layer = entry[1]
            if entry[0] == "insert" and self._attached(layer):
                self._container(layer.parent).remove(layer)
                layer.parent = None
                _mark_removed(layer, True)
            elif entry[0] == "reorder":
                if not (self._attached(layer) and (entry[2] is None or
                                                   self._attached(entry[2]))):
                    self.criticals.append("gimp_image_reorder_item: assertion failed")
                    continue
                self._container(layer.parent).remove(layer)
                container = self._container(entry[2])
                container.insert(min(entry[3], len(container)), layer)
                layer.parent = entry[2]
            elif entry[0] == "remove":
                parent, position = entry[2], entry[3]
                if parent is not None and not self._attached(parent):
                    self.criticals.append("gimp_item_tree_get_insert_pos: assertion failed")
                    continue
                container = self._container(parent)
                container.insert(min(position, len(container)), layer)
                layer.parent = parent
                _mark_removed(layer, False)


class error(RuntimeError):
    """gimp.error, what pygimp raises when a call fails (a RuntimeError)."""


class Display(object):
    def __init__(self, image):
        if not gimp.interface:  # gimp-display-new fails without a user interface (gimp -i)
            raise error("could not create display")
        self.image = image


class _Gimp(object):
    """The `gimp` module: progress, messages, displays, and the classes above."""

    Image, Layer, GroupLayer, Channel, Display, error = \
        Image, Layer, GroupLayer, Channel, Display, error

    def __init__(self):
        self.progress = []
        self.messages = []
        self.interface = True  # False: GIMP started without one (gimp -i, a batch script)
        self.updates, self.cancel_at = 0, None  # a number: Cancel at that progress update
        self.user_at = None  # (number, function): the user's edit at that progress update

    def progress_init(self, text=None):
        self.progress.append(("init", text))

    def progress_update(self, fraction):
        self.progress.append(("update", fraction))
        self.updates += 1
        if self.user_at is not None and self.updates >= self.user_at[0]:
            edit, self.user_at = self.user_at[1], None
            edit()
        if self.cancel_at is not None and self.updates >= self.cancel_at:
            self.cancel_at = None
            raise Killed()

    def displays_flush(self):
        pass

    def message(self, text):
        self.messages.append(text)


class _Pdb(object):
    """The `pdb` object: the procedures the plug-in calls, with GIMP 2.10's signatures."""

    def __getattr__(self, name):
        """A registered plug-in procedure (run-mode left out, as pygimp does): its failure is
        gimp.error with its message; Cancel (Killed) is GIMP's cancelled status."""
        proc = PROCEDURES.get(name.replace("_", "-"))
        if proc is None:
            raise AttributeError(name)

        def call(*args):
            try:
                return proc["function"](*args)
            except Killed:  # pygimp: RuntimeError(GIMP's word for cancelled, translated)
                raise RuntimeError("abgebrochen")
            except Exception as exc:
                raise error(str(exc))
        return call

    def gimp_image_undo_freeze(self, image):
        image._frozen += 1

    def gimp_image_undo_thaw(self, image):
        if image._frozen == 0:
            raise ExecutionError("undo thaw without freeze")
        image._frozen -= 1

    def gimp_item_delete(self, item):
        if item in getattr(item.image, "layers", ()):
            raise ExecutionError("an item in an image cannot be deleted")

    def gimp_image_undo_group_start(self, image):
        if image._depth == 0:
            image._group = []
        image._depth += 1

    def gimp_image_undo_group_end(self, image):
        if image._depth == 0:
            raise ExecutionError("undo group end without start")
        image._depth -= 1
        if image._depth == 0:
            if image._group:
                image.undo_steps.append(image._group)
            image._group = None

    def gimp_progress_set_text(self, text):
        gimp.progress.append(("text", text))

    def gimp_progress_end(self):
        gimp.progress.append(("end", None))

    def gimp_selection_is_empty(self, image):
        return not any(bytearray(image.selection.data))

    def gimp_layer_get_apply_mask(self, layer):
        if layer.mask is None:
            raise ExecutionError("Layer '%s' has no mask" % layer.name)
        return layer.apply_mask

    def gimp_selection_save(self, image):
        """A copy of the selection as a new channel of the image."""
        channel = Channel(image, "Selection Mask copy", image.width, image.height)
        channel.data = image.selection.data
        image.channels = getattr(image, "channels", []) + [channel]
        image._push("add channel")
        return channel

    def gimp_image_remove_channel(self, image, channel):
        image.channels.remove(channel)
        image._push("remove channel")

    def gimp_selection_none(self, image):
        image.selection.data = b"\0" * (image.width * image.height)
        image._push("select none")

    def gimp_image_select_item(self, image, operation, item):
        """A channel (a saved selection, or a layer mask at its layer's offsets) as the
        selection, or its intersection with it."""
        if operation not in (CHANNEL_OP_REPLACE, CHANNEL_OP_INTERSECT):
            raise ExecutionError("stand-in: only CHANNEL_OP_REPLACE and CHANNEL_OP_INTERSECT")
        ox, oy = item.layer.offsets if getattr(item, "layer", None) else (0, 0)
        sel, values = image.selection, bytearray(item.data)
        old, data = bytearray(sel.data), bytearray(sel.width * sel.height)
        for y in range(item.height):
            for x in range(item.width):
                if 0 <= x + ox < sel.width and 0 <= y + oy < sel.height:
                    at = (y + oy) * sel.width + x + ox
                    value = values[y * item.width + x]
                    data[at] = value if operation == CHANNEL_OP_REPLACE else \
                        (value * old[at] + 127) // 255
        sel.data = bytes(data)
        image._push("select item")

    def gimp_image_select_rectangle(self, image, operation, x, y, width, height):
        if operation != CHANNEL_OP_REPLACE:
            raise ExecutionError("stand-in: only CHANNEL_OP_REPLACE")
        sel = image.selection
        data = bytearray(sel.width * sel.height)
        for row in range(max(y, 0), min(y + height, sel.height)):
            for col in range(max(x, 0), min(x + width, sel.width)):
                data[row * sel.width + col] = 255
        sel.data = bytes(data)

    def gimp_image_get_item_position(self, image, item):
        if not image._attached(item):
            raise ExecutionError("Item '%s' is not in the image" % item.name)
        return image._container(item.parent).index(item)

    def gimp_layer_group_new(self, image):
        return GroupLayer(image)

    def gimp_layer_set_mode(self, layer, mode):
        layer.mode = mode
        image = layer.image
        if image._attached(layer):
            image._push("set mode")

    def gimp_item_is_valid(self, item):
        """An item that exists (floating or in its image), not one removed (undo keeps it)."""
        return not item.removed

    def gimp_item_set_visible(self, item, visible):
        """Allowed on a removed item too (no check that it is attached); its undo step only if
        it is."""
        item.visible = bool(visible)
        if item.image._attached(item):
            item.image._push("set visible")

    def _parent_ok(self, image, parent):
        if parent is not None and not (isinstance(parent, GroupLayer) and
                                       image._attached(parent)):
            raise ExecutionError("the parent is not a layer group in the image")

    def gimp_image_insert_layer(self, image, layer, parent, position):
        if layer.image is not image or layer.removed or image._attached(layer):
            raise ExecutionError("layer cannot be inserted")
        self._parent_ok(image, parent)
        container = image._container(parent)
        container.insert(min(max(position, 0), len(container)), layer)
        layer.parent = parent
        image._push(("insert", layer))

    def gimp_image_reorder_item(self, image, item, parent, position):
        """Within its level, or into another (GIMP's gimp_item_tree_reorder_item); its undo
        step records the old parent and position."""
        if not image._attached(item):
            raise ExecutionError("Item '%s' is not in the image" % item.name)
        self._parent_ok(image, parent)
        ancestor = parent
        while ancestor is not None:
            if ancestor is item:
                raise ExecutionError("an item cannot be moved into itself")
            ancestor = ancestor.parent
        old = image._container(item.parent)
        old_position = old.index(item)
        old.remove(item)
        new = image._container(parent)
        new.insert(min(max(position, 0), len(new)), item)  # (within its level: at most n - 1)
        image._push(("reorder", item, item.parent, old_position))
        item.parent = parent

    def gimp_image_remove_layer(self, image, layer):
        if not image._attached(layer):
            raise ExecutionError("Item '%s' is not in the image" % layer.name)
        container = image._container(layer.parent)
        position = container.index(layer)
        container.remove(layer)
        image._push(("remove", layer, layer.parent, position))
        layer.parent = None
        _mark_removed(layer, True)

    def gimp_file_load_layer(self, image, filename):
        width, height, channels, data = read_png(filename)
        if image.base_type == GRAY and channels >= 3:
            data, channels = _to_gray(data, channels), channels - 2
        kind = {1: GRAY_IMAGE, 2: GRAYA_IMAGE, 3: RGB_IMAGE, 4: RGBA_IMAGE}[channels]
        layer = Layer(image, filename.replace("\\", "/").rsplit("/", 1)[-1], width, height, kind)
        layer.data = data
        return layer

    def gimp_file_load(self, filename, raw_filename):
        width, height, channels, data = read_png(filename)
        image = Image(width, height, GRAY if channels < 3 else RGB)
        layer = self.gimp_file_load_layer(image, filename)
        image.layers.append(layer)
        return image


gimp = _Gimp()
pdb = _Pdb()


def register(proc_name, blurb, help, author, copyright, date, label, imagetypes, params,
             results, function, menu=None, domain=None, on_query=None, on_run=None):
    """Record the procedure like gimpfu does (its name gets python-fu- unless it has a prefix)."""
    if not proc_name.startswith(("python-", "python_", "extension-", "plug-in-", "file-")):
        proc_name = "python-fu-" + proc_name
    for i, param in enumerate(params):
        if param[0] in (PF_SLIDER, PF_SPINNER, PF_ADJUSTMENT, PF_OPTION, PF_RADIO) and len(param) < 5:
            raise TypeError("%s: parameter %d needs a 5th element" % (proc_name, i))
    PROCEDURES[proc_name] = {"label": label, "imagetypes": imagetypes, "params": params,
                             "results": results, "function": function, "menu": menu}


def main():
    """gimpfu.main(): GIMP would now query or run the plug-in; the tests call `run` instead."""


def run(proc_name, *args):
    """Run a registered procedure non-interactively: (status, message, return values)."""
    proc = PROCEDURES[proc_name]
    if len(args) != len(proc["params"]):
        raise TypeError("%s takes %d arguments, got %d" % (proc_name, len(proc["params"]), len(args)))
    try:
        values = proc["function"](*args)
    except Exception as exc:  # gimpfu: the exception's text is the procedure's error message
        return "execution-error", str(exc), None
    # pygimp fits what the function returns to the registered results: None for none, else one
    # value per result ("wrong number of parameters", an execution error, otherwise).
    returned = () if values is None else values if isinstance(values, tuple) else (values,)
    if len(returned) != len(proc["results"]):
        return "execution-error", "wrong number of parameters", None
    return "success", "", values
