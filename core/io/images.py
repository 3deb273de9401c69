"""Image input and output: any Pillow image, array or .npy in, float32 RGB 0..1 (+ alpha) inside.

Inputs get EXIF orientation applied and their colours converted to sRGB from an embedded colour
profile (Display P3, Adobe RGB, a printer's CMYK...); palette, grayscale, CMYK and 16-bit modes are
converted, 16-bit RGB(A) PNG and TIFF files (and grey-with-alpha PNGs) at their full 16 bits (a
PIL image opened from one too, while its file can be read again; a matrix/TRC colour profile
converted in float), integer grayscale by its bit depth (never its values; a grey TRC profile's
tone converted in float too); a PNG's transparent
colour becomes alpha; alpha is kept aside and put back on the result. Outputs are written to a
temporary name and renamed, so a crash never leaves half a file; .png/.tif can be 16-bit, .npy
keeps float32.
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from ..network.vgg import MIN_SIDE
from ..notes import act
from .files import atomic_write, check_input_file, check_output_path
from .jpeg import cut_short
from .profiles import deep_in_srgb, foreign_profile, grey_by_levels_in_srgb, grey_in_srgb, in_srgb
from .quiet import PROCESS_STREAMS, captured_log, captured_stderr, detail

if TYPE_CHECKING:
    import torch

# Output formats by suffix: Pillow's (8-bit; .png and .tif also 16-bit) and .npy (float32).
PILLOW_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
                  ".bmp": "BMP", ".webp": "WEBP"}
try:  # AVIF where this Pillow has libavif (its wheels from 11.3 on)
    from PIL import AvifImagePlugin

    if getattr(AvifImagePlugin, "SUPPORTED", False):
        PILLOW_FORMATS[".avif"] = "AVIF"
except ImportError:
    pass
OUTPUT_SUFFIXES = (*PILLOW_FORMATS, ".npy")
BITS16_SUFFIXES = (".png", ".tif", ".tiff", ".npy")  # .npy keeps float32
# The longest side each format's encoder writes (libwebp's limit, libjpeg's).
MAX_SIDES = {"WEBP": 16383, "JPEG": 65500}
# Lossy outputs at quality 95: Pillow's defaults (75 JPEG and AVIF, 80 WebP) smear a painting's
# fine strokes.
SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}, "AVIF": {"quality": 95}}
# Written into each preview sheet (EXIF ImageDescription; BMP has no place for it), so that a
# folder of styles or photos holding one does not hand it on as a style or photo.
PREVIEW_SHEET_MARK = "stylefu preview sheet"
# A float image with values above this holds 0..255 (or other) numbers, not 0..1: refused, not
# clipped to white. Up to it, overshoots (from sharpening or resampling) are clipped to 1.
FLOAT_RANGE_LIMIT = 1.5
# libtiff's own lines on stderr: "module: text", its module a C name or the name Pillow opens the
# file by; other lines fd 2 gets while it decodes are another thread's.
LIBTIFF_LINE = re.compile(r"(?:tempfile\.tif|_?[A-Z][A-Za-z0-9]*): ")


@dataclass
class Picture:
    """RGB float32 [H,W,3] in 0..1, optional alpha [H,W], and a name for messages and layers."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    name: str = "image"
    notes: tuple[str, ...] = ()  # what a run says about it once (an animation's first frame)

    def __repr__(self) -> str:  # the arrays' own reprs fill a terminal
        return (f"Picture(rgb={array_text(self.rgb)}, alpha={array_text(self.alpha)}, "
                f"name={self.name!r})")

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


def array_text(array) -> str | None:
    """An array in a repr: its shape and type, not its values."""
    if not isinstance(array, np.ndarray):
        return None if array is None else repr(array)
    return f"<{'x'.join(map(str, array.shape))} {array.dtype}>"


def _from_array(array: np.ndarray, name: str) -> Picture:
    array = np.asarray(array)
    unsigned = array.dtype.kind == "u"  # either byte order: '>u2' (a TIFF's or FITS's) too
    if unsigned and array.dtype.itemsize == 1:
        array = array.astype(np.float32) / 255.0
    elif unsigned and array.dtype.itemsize == 2:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        # int64 from 0..255 or 0..1 numbers is ambiguous: a guess could turn an image white or black.
        raise UserError(f"{name}: integer pixels of type {array.dtype} are ambiguous (0..255 or "
                        "0..1?); save the array as uint8 (0..255), uint16 (0..65535) or float32 (0..1).")
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise UserError(f"{name}: pixels of type {array.dtype} are not numbers; use uint8, uint16 "
                        "or float32 (0..1).")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise UserError(f"{name}: an image array must be HxW, HxWx3 or HxWx4, not {array.shape}.")
    if array.size == 0:
        raise UserError(f"{name}: the image array is empty ({array.shape}).")
    if not np.isfinite(array).all():
        raise UserError(f"{name} contains NaN or infinite pixel values.")
    if array.max() > FLOAT_RANGE_LIMIT or array.min() < 1 - FLOAT_RANGE_LIMIT:
        fix = ("divide by 255 (or save as uint8)" if array.max() > FLOAT_RANGE_LIMIT else
               "bring them into 0..1 (e.g. (values + 1) / 2 for -1..1)")  # negatives: not 0..255
        raise UserError(f"{name}: float pixel values must lie in 0..1, but they span "
                        f"{array.min():.4g}..{array.max():.4g}; {fix}.")
    array = np.clip(array, 0.0, 1.0)
    channels = array.shape[2]
    alpha = array[..., -1].copy() if channels in (2, 4) else None
    color = array[..., :1] if channels in (1, 2) else array[..., :3]
    rgb = np.ascontiguousarray(np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color)
    return Picture(rgb, alpha, name)


def _checked_picture(picture: Picture) -> Picture:
    """A Picture as given where it is one (float32 [H,W,3] in 0..1, alpha [H,W]); one a caller
    built otherwise is read as an array would be (0..255 floats were taken as 0..1: white)."""
    rgb, alpha = picture.rgb, picture.alpha
    if isinstance(rgb, np.ndarray) and rgb.dtype == np.float32 and rgb.ndim == 3 and \
            rgb.shape[2] == 3 and rgb.size and 0 <= rgb.min() and rgb.max() <= 1 and (
            alpha is None or isinstance(alpha, np.ndarray) and alpha.dtype == np.float32
            and alpha.shape == rgb.shape[:2] and 0 <= alpha.min() and alpha.max() <= 1):
        return picture  # (min and max are NaN where a pixel is)
    rgb = np.asarray(rgb)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if rgb.ndim == 2:
            rgb = rgb[..., None]
        if alpha.shape != rgb.shape[:2]:
            raise UserError(f"{picture.name}: its alpha is {alpha.shape}, its pixels "
                            f"{rgb.shape[:2]}; give both the same height and width.")
        rgb = np.concatenate([rgb, alpha[..., None].astype(rgb.dtype)], axis=2)
    checked = _from_array(rgb, picture.name)
    return Picture(checked.rgb, checked.alpha, picture.name, picture.notes)


# Pillow has no 16-bit RGB mode: it decodes these raw modes of PNG and TIFF files to their high
# bytes; the same decoder with the other byte order's unpacker gives the low bytes (N: native,
# libtiff's own decoding). A 16-bit grey-and-alpha PNG (LA;16B, read as RGBA) has no such
# unpacker: plain RGBA takes its four bytes as they come (grey high, low, alpha high, low).
_OTHER_BYTE_ORDER = {f"{mode};16{order}": f"{mode};16{other}" for mode in ("RGB", "RGBA")
                     for order, other in (("B", "L"), ("L", "B"),
                                          ("N", "B" if sys.byteorder == "little" else "L"))}
_OTHER_BYTE_ORDER["LA;16B"] = "RGBA"
_OTHER_BYTE_ORDER.update({f"{band};16{order}": f"{band};16{other}" for band in "RGBA"
                          for order, other in (("B", "L"), ("L", "B"))})  # a TIFF's planes


def _raw_mode(tile) -> str | None:
    args = tile[3]
    return args if isinstance(args, str) else args[0] if args else None


def _with_raw_mode(tile, raw_mode: str):
    args = tile[3]
    args = raw_mode if isinstance(args, str) else (raw_mode, *args[1:])
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _planes_at_sixteen_bits(image: Image.Image) -> Image.Image:
    """`image` (opened, not loaded) with an uncompressed 16-bit TIFF's planes (PlanarConfiguration
    2: each channel apart, Photoshop's "per channel") read as 16-bit samples' high bytes: Pillow
    reads each plane's bytes as 8-bit samples (a scrambled picture)."""
    tags = getattr(image, "tag_v2", None)
    if image.format != "TIFF" or tags is None or tags.get(284) != 2 or set(
            bits if isinstance(bits := tags.get(258), tuple) else (bits,)) != {16} or not all(
            t[0] == "raw" and _raw_mode(t) in ("R", "G", "B", "A") for t in image.tile):
        return image
    order = "L" if tags._endian == "<" else "B"
    image.tile = [_with_raw_mode(t, f"{_raw_mode(t)};16{order}") for t in image.tile]
    return image


def _is_sixteen_bit_rgb(tiles: list) -> bool:
    """Whether a file's tiles (taken before load()) are 16-bit RGB(A) (or LA) PNG or TIFF data."""
    return bool(tiles) and all(_raw_mode(t) in _OTHER_BYTE_ORDER for t in tiles)


def _sixteen_bits(source: Path | bytes, image: Image.Image, tiles: list) -> np.ndarray | None:
    """A 16-bit RGB(A) (or grey-and-alpha PNG) file's samples ([H,W,C] uint16, before EXIF
    orientation) from `image` (loaded: its high bytes) and a second decoding of `source` (the
    file, or its contents) for the low bytes; None where that decoding fails (the 8-bit picture
    then stands)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as again:
            _planes_at_sixteen_bits(again)
            again.tile = [_with_raw_mode(t, _OTHER_BYTE_ORDER[_raw_mode(t)]) for t in again.tile]
            again.load()
            low = np.asarray(again)
    except Exception:  # a Pillow whose tiles differ: only the 8 low bits are lost
        return None
    high = np.asarray(image)
    if low.shape != high.shape:
        return None
    if all(_raw_mode(t) == "LA;16B" for t in tiles):  # [grey, alpha], each high << 8 | low
        return low[..., 0::2].astype(np.uint16) << 8 | low[..., 1::2]
    return high.astype(np.uint16) << 8 | low


def _deep_picture(deep: np.ndarray, image: Image.Image, to_srgb: bool, name: str) -> Picture | None:
    """16-bit samples (_sixteen_bits) of `image` as a Picture: a PNG's transparent colour as
    alpha, an embedded RGB (or grey TRC) profile's colours converted to sRGB keeping the 16
    bits, turned upright; None for a profile lcms cannot convert or a grey one of another kind
    (its 8-bit conversion then stands)."""
    deep = _keyed(deep, image.info.get("transparency"))
    if to_srgb and foreign_profile(image) is not None:
        icc = image.info["icc_profile"]
        if deep.shape[2] >= 3:
            deep = deep_in_srgb(deep, icc)
        else:  # grey and alpha
            grey = grey_in_srgb(deep[..., 0] / np.float32(65535), icc)
            deep = None if grey is None else np.stack([grey, deep[..., 1] / np.float32(65535)], -1)
        if deep is None:
            return None
    return _from_array(_upright(deep, image.getexif().get(0x0112, 1)), name)


def _pil_sixteen_bits(image: Image.Image, name: str, to_srgb: bool) -> Picture | None:
    """A PIL image opened from a 16-bit RGB(A) PNG or TIFF (the API's `Image.open(path)`, which
    Pillow holds as 8 bits) at its 16 bits, from its file read again (by its name, or its file
    object's contents while it is open); only where that file's 8-bit decoding is exactly this
    image's pixels (the first frame, not edited since), else None."""
    if image.format not in ("PNG", "TIFF") or image.tell() != 0 or image.mode not in ("RGB", "RGBA"):
        return None
    source = None
    try:
        if isinstance(image.filename, (str, bytes, os.PathLike)) and image.filename \
                and os.path.isfile(image.filename):
            source = Path(os.fsdecode(image.filename))
        elif image.fp is not None and image.fp.seekable():  # Image.open(io.BytesIO(data))
            at = image.fp.tell()
            image.fp.seek(0)
            source = image.fp.read()
            image.fp.seek(at)
        if source is None:
            return None
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as again:
            tiles = list(_planes_at_sixteen_bits(again).tile)
            if not _is_sixteen_bit_rgb(tiles):
                return None
            again.load()
            if again.mode != image.mode or not np.array_equal(np.asarray(again), np.asarray(image)):
                return None  # edited since, or another file now under that name
            deep = _sixteen_bits(source, again, tiles)
    except Exception:  # a file gone or a stream not ours to read: the 8-bit picture stands
        return None
    return None if deep is None else _deep_picture(deep, image, to_srgb, name)


def _bmp_alpha(path: Path, tiles: list, image: Image.Image) -> None:
    """Put back the alpha of a 32-bit BMP whose fourth bytes Pillow skips (BI_RGB, or bit fields
    with a 40-byte header): Pillow itself writes RGBA that way; all zero, they are padding."""
    if image.mode != "RGB" or len(tiles) != 1 or tiles[0][0] != "raw" or _raw_mode(tiles[0]) != "BGRX":
        return
    _, (x0, y0, x1, y1), offset, (_, stride, orientation) = tiles[0]
    width, height = x1 - x0, y1 - y0
    with open(path, "rb") as f:
        f.seek(offset)
        data = np.frombuffer(f.read(stride * height), np.uint8)
    if data.size < stride * height:  # Pillow loaded it: not expected, but never a guess
        return
    alpha = data.reshape(height, stride)[:, 3:4 * width:4]
    if alpha.any():
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha[::orientation])))


def _keyed(deep: np.ndarray, key) -> np.ndarray:
    """16-bit RGB samples with an alpha channel from a PNG's tRNS colour (its pixels transparent)."""
    if not isinstance(key, tuple) or deep.shape[2] != 3:
        return deep
    opaque = (deep != np.array(key, np.uint16)).any(axis=2)
    return np.concatenate([deep, (opaque * 65535).astype(np.uint16)[..., None]], axis=2)


def _upright(array: np.ndarray, orientation: int) -> np.ndarray:
    """An [H,W,C] array turned as EXIF `orientation` (1-8) says, as ImageOps.exif_transpose."""
    turns = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(turns.get(orientation, lambda a: a)(array))


def _from_pil(image: Image.Image, name: str, to_srgb: bool = True,
              path: Path | None = None, white: int = 65535) -> Picture:
    """`image` as a Picture; `path`, the file it was read from, names it in refusals (a file's
    user is told to re-save it, an API caller holding a PIL image to scale it); `white`, its
    integer grey's white (_grey_white)."""
    # A TIFF's grey stored white at 0 (MinIsWhite): Pillow turns 8-bit grey round, not deeper.
    white_is_zero = image.format == "TIFF" and getattr(image, "tag_v2", {}).get(262) == 0
    image = ImageOps.exif_transpose(image)
    if to_srgb:
        image = in_srgb(image)
    mode, who = image.mode, path or name
    key = image.info.get("transparency")  # a PNG's tRNS colour: those pixels are transparent
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        icc = image.info.get("icc_profile") if to_srgb and foreign_profile(image) else None
        values = np.asarray(image)
        if white_is_zero:
            values = white - values.astype(np.int64)
        return _gray16(values, who, name, key if isinstance(key, int) else None,
                       path is not None, white, icc)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        finite = values[np.isfinite(values)]
        if finite.size and (finite.max() > FLOAT_RANGE_LIMIT or finite.min() < 1 - FLOAT_RANGE_LIMIT):
            raise UserError(f"{who} holds 32-bit float pixels spanning {finite.min():.4g}.."
                            f"{finite.max():.4g}, where float pictures are read as 0..1; " + (
                                "save it as an 8- or 16-bit PNG or TIFF." if path is not None else
                                "scale it to 0..1 (image.point(lambda v: v / 255)) or convert it "
                                "to mode L."))
        return _from_array(values, name)
    if mode == "La":  # premultiplied: Pillow converts it to LA only
        image, mode = image.convert("LA"), "LA"
    has_alpha = mode in ("RGBA", "RGBa", "LA", "PA") or (
        mode in ("P", "L", "RGB", "1") and key is not None)  # Pillow's convert applies the key
    image = image.convert("RGBA" if has_alpha else "RGB")  # palette, CMYK, L, 1, RGBa -> RGB(A)
    return _from_array(np.asarray(image), name)


def _grey_white(image: Image.Image) -> int:
    """The white of a file's integer grey: 2^bits - 1 for a TIFF of 9 to 15 bits per sample
    (Pillow unpacks a 12-bit camera's TIFF to 0..4095 in a 16-bit mode: 16x too dark), else
    65535."""
    bits = getattr(image, "tag_v2", {}).get(258) if image.format == "TIFF" else None
    bits = bits[0] if isinstance(bits, tuple) and len(bits) == 1 else bits
    return 2 ** bits - 1 if isinstance(bits, int) and 8 < bits < 16 else 65535


def _gray16(values: np.ndarray, who, name: str, key: int | None, from_file: bool,
            white: int = 65535, icc: bytes | None = None) -> Picture:
    """16-bit grayscale: 0..white (65535; a 12-bit TIFF's 4095) -> 0..1, decided by the mode and
    file, never by the values (a dark 16-bit scan whose values all lie under 256 is no 8-bit
    picture). Pillow's mode I (16-bit PNGs in
    Pillow 10, signed and 32-bit integer TIFFs, a mode-I image given to the API) is read on the
    same scale; values outside it are refused: a 32-bit file has no agreed white, and clipping
    them would flatten the picture without a word. `icc`: a grey profile to convert from, in
    float (lcms in Pillow takes 8-bit grey only)."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UserError(f"{who} holds integer pixel values {values.min()}..{values.max()}, outside "
                        "the 16-bit range 0..65535 integer grayscale is read in; " + (
                            "save it as an 8- or 16-bit PNG or TIFF." if from_file else
                            "scale it to 0..65535 or give an 8-bit picture as mode L."))
    gray = values.astype(np.float32) / np.float32(white)
    if icc:  # a TRC profile in float; any other kind by lcms's 256 levels; unreadable: as sRGB
        converted = grey_in_srgb(gray, icc)
        if converted is None:
            converted = grey_by_levels_in_srgb(gray, icc)
        gray = gray if converted is None else converted
    if key is None:
        return _from_array(gray, name)
    alpha = (values != key).astype(np.float32)
    return _from_array(np.dstack([gray, alpha]), name)  # grey, or RGB from a grey profile


def sheet_mark() -> Image.Exif:
    """The EXIF a preview sheet is saved with (`is_preview_sheet`)."""
    exif = Image.Exif()
    exif[0x010E] = PREVIEW_SHEET_MARK  # ImageDescription
    return exif


def is_preview_sheet(path: Path) -> bool:
    """Whether `path` is a stylefu preview sheet (its mark), from the file's header alone."""
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")  # a damaged file is the run's to report, not this
            description = getattr(image, "tag_v2", {}).get(0x010E)  # TIFF's own tag
            return (PREVIEW_SHEET_MARK.encode() in (image.info.get("exif") or b"")
                    or description == PREVIEW_SHEET_MARK)
    except Exception:  # noqa: BLE001 - any file Pillow cannot open is no sheet of ours
        return False


def one_or_many(given) -> list:
    """A list of images, or one image (a path, array, PIL image: an array's rows are no list)."""
    return ([given] if isinstance(given, (str, bytes)) or not isinstance(given, Sequence)
            else list(given))


def load_image(source, name: str | None = None, to_srgb: bool = True) -> Picture:
    """Read `source` (a path: str, bytes or path object; a PIL image, numpy array or Picture) as
    a Picture, its colours in sRGB (unless not `to_srgb`: a mask's values are data, not colours).

    Raises UserError with one sentence for a missing, unreadable, truncated or oversized file.
    """
    if isinstance(source, Picture):
        return _checked_picture(source)
    if isinstance(source, Image.Image):
        _planes_at_sixteen_bits(source)  # (a loaded image has no tiles left: nothing changes)
        deep = _pil_sixteen_bits(source, name or "image", to_srgb)  # before load() closes its file
        if deep is not None:
            return deep
        try:  # a lazily opened file decodes here: damage in it is the caller's file's
            with decoding():
                source.load()
        except OSError as exc:
            if "closed image" in str(exc):  # not the file's damage: the caller's close()
                raise UserError(f"{name or 'image'}: this PIL image was closed before it was "
                                "read; pass it open, or call its load() before closing it.") \
                    from None
            raise UserError(f"{name or 'image'}: the picture's file is truncated or damaged and "
                            f"cannot be read{detail([str(exc)])}.") from None
        return _from_pil(source, name or "image", to_srgb, white=_grey_white(source))
    if isinstance(source, np.ndarray):
        return _from_array(source, name or "array")
    if isinstance(source, bytes) and b"\0" in source:  # no path holds NUL: a file's contents
        raise UserError(f"{name or 'image'}: these bytes are an image file's contents, not a path; "
                        "give PIL.Image.open(io.BytesIO(data)).")
    if not isinstance(source, (str, bytes, os.PathLike)):  # else a TypeError from inside pathlib
        raise UserError(f"{name or 'image'}: give a path, PIL image, numpy array or Picture, not "
                        f"{type(source).__name__}.")
    path = check_input_file(source, "Image file")
    label = name or path.stem
    if path.suffix.lower() == ".npy":
        return _from_array(_load_npy(path), label)
    said: list[str] = []  # what Pillow warned and libtiff printed: the detail of a refusal
    printed: list[str] = []
    try:
        with PROCESS_STREAMS, warnings.catch_warnings(record=True) as warned:
            # Pillow only warns between 1x and 2x its pixel limit; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with captured_log(said), _opened(path) as image:
                    tiles = list(image.tile)  # load() empties them
                    if image.format == "TIFF":  # Pillow maps an uncompressed L, I;16 or RGBA
                        image.filename = ""  # strip at its turned size: garbled under 5..8
                    if image.format == "PNG":
                        _check_png_data(path, image.size)
                    # decodes everything: a file cut short raises OSError here
                    with captured_stderr(printed, LIBTIFF_LINE) if image.format == "TIFF" \
                            else nullcontext(), \
                            decoding():
                        image.load()
                    if any(": Warning, " not in line for line in printed):
                        raise OSError("libtiff reported an error")  # its strips left blank
                    if image.format in ("JPEG", "MPO") and cut_short(path.read_bytes(), image):
                        raise UserError(_cut_short(path, image.size))  # closed by an end marker
                    if image.format == "BMP":
                        _bmp_alpha(path, tiles, image)
                    scale = {"L;2": 85, "L;4": 17}.get(_raw_mode(tiles[0]) if tiles else None)
                    if scale and isinstance(image.info.get("transparency"), int):
                        image.info["transparency"] *= scale  # Pillow scales the grey, not its key
                    deep = _sixteen_bits(path, image, tiles) if _is_sixteen_bit_rgb(tiles) else None
                    picture = None if deep is None else _deep_picture(deep, image, to_srgb, label)
                    if picture is None:
                        picture = _from_pil(image, label, to_srgb, path, _grey_white(image))
                    picture.notes = _first_image_only(image, path.name)
            finally:
                said += [str(w.message) for w in warned] + printed
        _say_again(warned, printed)  # a picture that loads: what was said is shown, as before
        return picture
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(_too_large(path)) from None
    except UnidentifiedImageError:
        if _is_tiff(path):  # "save it as TIFF" would answer a TIFF user with nothing to do
            raise UserError(f"{path} is a TIFF of a kind stylefu cannot read (float colour, for "
                            f"one){detail(said)}; save it as an 8- or 16-bit PNG or TIFF.") from None
        kind = _heif_kind(path)
        if kind == "AVIF" and ".avif" in PILLOW_FORMATS:  # Pillow reads AVIF: this one is broken
            raise UserError(f"{path} is an AVIF picture that is truncated or damaged and cannot "
                            f"be read{detail(said)}.") from None
        if kind:  # an iPhone's photo (HEIC), or AVIF where this Pillow has no libavif
            raise UserError(f"{path} is a HEIC picture, which stylefu cannot read; save it as "
                            "JPEG or PNG first (an iPhone takes JPEG with Settings, Camera, "
                            "Formats, Most Compatible)." if kind == "HEIC" else f"{path} is an "
                            "AVIF picture and this Pillow reads none (Pillow 11.3 and later do); "
                            "save it as JPEG or PNG, or upgrade Pillow.") from None
        raise UserError(f"{path} is not an image stylefu can read{detail(said)}; save it as PNG, "
                        "JPEG or TIFF.") from None
    except OSError:
        raise UserError(f"{path} is truncated or damaged and cannot be read{detail(said)}.") from None


def _first_image_only(image: Image.Image, name: str) -> tuple[str, ...]:
    """The note of a file holding more pictures than the first, which alone is painted: an
    animated GIF, PNG or WebP's frames, a TIFF's pages (not its reduced-resolution images and
    masks, NewSubfileType bits 0 and 2: the thumbnails and previews many TIFFs carry; a camera's
    MPO holds a preview too, and says nothing)."""
    try:
        if image.format in ("GIF", "PNG", "WEBP"):
            frames = int(getattr(image, "n_frames", 1))
            return (f"{name} has {frames} frames: only the first is used (stylefu batch paints "
                    "frames saved as files).",) if frames > 1 else ()
        if image.format == "TIFF":
            pages = 0
            for index in range(int(getattr(image, "n_frames", 1))):
                image.seek(index)
                pages += not int(image.tag_v2.get(254, 0)) & 0b101
            image.seek(0)
            return (f"{name} has {pages} pages: only the first is used (save a page as its own "
                    "file to paint it).",) if pages > 1 else ()
    except Exception:  # a later one damaged: the first one loaded, and nothing rests on a note
        pass
    return ()


def _is_tiff(path: Path) -> bool:
    with suppress(OSError), open(path, "rb") as f:
        return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF
    return False


@contextmanager
def decoding() -> Iterator[None]:
    """Pillow's other errors on damaged data (ValueError from a PNG's or BMP's header, libavif's
    RuntimeError, a decoder's SyntaxError) as the OSError a damaged file raises."""
    try:
        yield
    except (ValueError, RuntimeError, SyntaxError) as exc:
        raise OSError(str(exc)) from exc


def _opened(path: Path) -> Image.Image:
    with decoding():
        return _planes_at_sixteen_bits(Image.open(path))


# ISO media brands (the `ftyp` box) of HEIF pictures: AVIF's, and HEVC's (an iPhone's HEIC).
_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC",
                b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC", b"hevx": "HEIC"}


def _heif_kind(path: Path) -> str | None:
    """"AVIF" or "HEIC" for a HEIF picture (its major or a compatible brand), else None."""
    with suppress(OSError), open(path, "rb") as f:
        head = f.read(64)
        if head[4:8] == b"ftyp":
            size = int.from_bytes(head[:4], "big")
            brands = [head[i:i + 4] for i in range(8, min(size, len(head)), 4)]
            return next((_HEIF_BRANDS[b] for b in brands if b in _HEIF_BRANDS), None)
    return None


def _say_again(warned: list, printed: list[str]) -> None:
    for w in warned:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if printed:
        with suppress(OSError):  # stderr closed: nowhere to say it
            os.write(2, "".join(line + "\n" for line in printed).encode())


def check_pixel_count(height: int, width: int, name: str) -> None:
    """UserError for a picture over Pillow's pixel limit (its guard against decompression bombs),
    whichever way it comes: a file, a .npy array, a layer's size given to an estimate."""
    if height * width > Image.MAX_IMAGE_PIXELS:
        raise UserError(_too_large(name))


def _too_large(name) -> str:
    return f"{name} is too large ({Image.MAX_IMAGE_PIXELS} pixels at most); scale it down first."


def _load_npy(path: Path) -> np.ndarray:
    """A .npy file's array, its size checked against its header before anything is allocated
    (a file cut short, or a header promising terabytes, is one UserError)."""
    try:
        mapped = np.load(path, allow_pickle=False, mmap_mode="r")  # reads the header only
    except ValueError:
        raise UserError(f"{path} is truncated or not a readable .npy image array.") from None
    if mapped.ndim >= 2:
        check_pixel_count(*mapped.shape[:2], str(path))
    array = np.array(mapped)
    del mapped  # closes the file (Windows keeps a mapped file locked)
    return array


# PNG colour type -> channels; Adam7 passes as (x start, y start, x step, y step).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))


def _check_png_data(path: Path, size: tuple[int, int]) -> None:
    """UserError unless the PNG's compressed data holds every row its header promises.

    Pillow accepts a zlib stream that ends early (then the missing rows stay blank); counting the
    inflated bytes (no unfiltering, no pixels kept) catches it before the image is allocated.
    """
    width, height = size
    inflater, inflated, expected = zlib.decompressobj(), 0, 1
    with open(path, "rb") as f:
        try:
            f.seek(8)
            length, _ = struct.unpack(">I4s", f.read(8))
            header = f.read(length + 4)  # IHDR and its CRC
            bits = header[8] * _PNG_CHANNELS.get(header[9], 4)
            expected = 0
            for x0, y0, dx, dy in (_ADAM7 if header[12] else ((0, 0, 1, 1),)):
                w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
                expected += h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0
            while inflated < expected and not inflater.eof:
                head = f.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    break
                if kind != b"IDAT":
                    f.seek(length + 4, 1)
                    continue
                data = f.read(length)
                while inflated < expected and not inflater.eof:  # 4 MB at a time: bounded memory
                    out = len(inflater.decompress(data, 1 << 22))
                    inflated, data = inflated + out, inflater.unconsumed_tail
                    if not out and not data:
                        break
                f.seek(4, 1)  # the chunk's CRC
        except (zlib.error, struct.error, IndexError):  # damaged data or header
            inflated = -1
    if inflated < expected:
        raise UserError(_cut_short(path, size))


def _cut_short(path: Path, size: tuple[int, int]) -> str:
    return (f"{path} is truncated or damaged: its image data stops before the {size[0]}x{size[1]} "
            "pixels its header promises.")


def check_min_side(picture: Picture) -> None:
    if min(picture.height, picture.width) < MIN_SIDE:
        raise UserError(f"{picture.name} is {picture.width}x{picture.height} px; the network needs "
                        f"at least {MIN_SIDE} px on each side.")


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side `long_side` and the aspect ratio kept (at least 1 px)."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def centre_of_shape(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred part of `array` [H,W,...] with the aspect ratio of height x width."""
    h, w = array.shape[:2]
    if h * width > w * height:  # taller than that shape: rows cut
        keep = max(1, round(w * height / width))
        return array[(h - keep) // 2:(h - keep) // 2 + keep]
    keep = max(1, round(h * width / height))
    return array[:, (w - keep) // 2:(w - keep) // 2 + keep]


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """[H,W,C] float array -> [1,C,H,W] float32 tensor."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """[1,C,H,W] tensor -> [H,W,C] float32 array clipped to 0..1."""
    return tensor.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()


def resize_tensor(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of an [N,C,H,W] tensor (shrinking without aliasing)."""
    import torch.nn.functional as F

    if tensor.shape[-2:] == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)


def resize_array(array: np.ndarray, height: int, width: int, clip: bool = True) -> np.ndarray:
    """Resize an [H,W] or [H,W,C] float array (float32, clipped to 0..1 unless not `clip`),
    without torch.

    Pillow's bilinear filter on float channels: antialiased when shrinking, plain bilinear
    (align_corners=False) when enlarging; torch's antialiased resize (resize_tensor) is a port of
    it and agrees to 2e-5.
    """
    if array.ndim == 2:
        return resize_array(array[..., None], height, width, clip)[..., 0]
    array = np.asarray(array, np.float32)
    if array.shape[:2] != (height, width):
        array = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(array[..., c]), "F")
                                     .resize((width, height), Image.BILINEAR))
                          for c in range(array.shape[2])], axis=2)
    return np.clip(array, 0.0, 1.0) if clip else array.copy()


def _png16(rgba: np.ndarray) -> bytes:
    """A 16-bit RGB(A) PNG (Pillow writes 16 bits only for grayscale)."""
    height, width, channels = rgba.shape
    data = np.round(rgba * 65535).astype(">u2")
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    color_type = 6 if channels == 4 else 2
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def _tiff16(rgba: np.ndarray) -> bytes:
    """A 16-bit RGB(A) TIFF, deflate-compressed in one strip (Pillow has no 16-bit RGB mode)."""
    height, width, channels = rgba.shape
    pixels = zlib.compress(np.round(rgba * 65535).astype("<u2").tobytes(), 6)
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, channels, None),
               (259, 3, 1, 8), (262, 3, 1, 2), (273, 4, 1, None), (277, 3, 1, channels),
               (278, 3, 1, height), (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    if channels == 4:
        entries.append((338, 3, 1, 2))  # extra sample: unassociated alpha
    ifd_size = 2 + 12 * len(entries) + 4
    bits_offset = 8 + ifd_size
    pixel_offset = bits_offset + 2 * channels
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {258: bits_offset if channels > 2 else None, 273: pixel_offset}.get(tag, value)
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack(f"<{channels}H", *[16] * channels) + pixels


def _bmp32(rgba: np.ndarray) -> bytes:
    """A 32-bit BMP with alpha: a BITMAPV4HEADER with bit fields naming the alpha byte, as GIMP
    writes one (Pillow writes BI_RGB, whose fourth byte GIMP and Pillow read as padding)."""
    height, width, _ = rgba.shape
    pixels = np.ascontiguousarray(rgba[::-1][..., [2, 1, 0, 3]]).tobytes()  # bottom-up BGRA
    header = struct.pack("<IiiHHIIiiII4I4s36x12x", 108, width, height, 1, 32, 3, len(pixels),
                         2835, 2835, 0, 0, 0xFF0000, 0xFF00, 0xFF, 0xFF000000, b"BGRs")
    start = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", start + len(pixels), 0, 0, start) + header + pixels


def check_bits(path: str | Path, bits: int) -> None:
    """UserError, before any work, for bits other than 8 or 16, or when --bits 16 names a format
    that holds 8 bits per channel (.jpg, .webp, .avif, .bmp): its result would silently lose the
    precision asked for."""
    suffix = Path(path).suffix.lower()
    if bits not in (8, 16):  # else 12 or "16" wrote 8 bits without a word
        raise UserError(f"--bits must be 8 or 16, not {bits!r}.")
    if bits == 16 and suffix in PILLOW_FORMATS and suffix not in BITS16_SUFFIXES:
        raise UserError(f"--bits 16 needs a .png or .tif output; {path} ({suffix}) holds 8 bits "
                        "per channel: change its suffix or leave out --bits 16.")


def check_output_size(path: str | Path, height: int, width: int) -> None:
    """UserError where the output's format cannot hold a picture this large (a run checks the
    result's size before it starts, not after its minutes)."""
    suffix = Path(os.fsdecode(path)).suffix.lower()
    most = MAX_SIDES.get(PILLOW_FORMATS.get(suffix))
    if most and max(height, width) > most:
        raise UserError(f"{os.fsdecode(path)}: a {suffix} picture is at most {most} px on a side, "
                        f"and this result is {width}x{height} px; write .png or .tif.")


def save_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None,
               bits: int = 8, log: Callable[[str], None] | None = None) -> Path:
    """Write an image atomically; the format follows the suffix (.npy keeps float32). `path`: a
    str, bytes or path object. `log` gets a note to act on where the format drops a transparent
    alpha (.jpg); without it nothing is said (an intermediate image)."""
    path = os.fsdecode(path)
    array = np.clip(rgb, 0, 1).astype(np.float32)
    if alpha is not None:
        array = np.concatenate([array, np.clip(alpha, 0, 1)[..., None].astype(np.float32)], axis=2)
    suffix = Path(path).suffix.lower()
    check_output_path(path, "output", OUTPUT_SUFFIXES)  # before any encoding work
    check_bits(path, bits)
    check_output_size(path, *array.shape[:2])
    if log is not None and suffix in (".jpg", ".jpeg") and alpha is not None \
            and float(np.min(alpha)) < 1:
        log(act(f"{Path(path).name} has no alpha channel: the content's transparent parts become "
                "opaque (write .png, .tif, .webp or .avif to keep the transparency)."))

    def write(tmp: Path) -> None:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        elif bits == 16 and suffix == ".png":
            tmp.write_bytes(_png16(array))
        elif bits == 16 and suffix in (".tif", ".tiff"):
            tmp.write_bytes(_tiff16(array))
        else:
            mode = "RGBA" if array.shape[2] == 4 else "RGB"
            image = Image.fromarray(np.round(array * 255).astype(np.uint8), mode)
            if suffix in (".jpg", ".jpeg") and mode == "RGBA":
                image = image.convert("RGB")
            if suffix == ".bmp" and mode == "RGBA":
                tmp.write_bytes(_bmp32(np.asarray(image)))
                return
            image.save(tmp, format=PILLOW_FORMATS[suffix],
                       **SAVE_OPTIONS.get(PILLOW_FORMATS[suffix], {}))

    return atomic_write(path, write)
