"""Colour profiles: an image's colours into sRGB, the space VGG was trained in and the one an
untagged output is read in. 8-bit pictures go through littlecms (Pillow's ImageCms); 16-bit ones
with a matrix/TRC RGB profile or a grey TRC profile are converted in float, as littlecms
converts them, so their precision is kept (littlecms in Pillow takes 8-bit modes only); 16-bit
RGB with any other RGB profile (a LUT) through littlecms's conversion of a grid of 8-bit colours,
16-bit grey through its 256 levels, interpolated between them.
"""

from __future__ import annotations

import functools
import io
import struct

import numpy as np
from PIL import Image, ImageCms

_SRGB = ImageCms.createProfile("sRGB")  # what colour profiles are converted to


def foreign_profile(image: Image.Image) -> ImageCms.ImageCmsProfile | None:
    """The colour profile the image embeds, unless it is sRGB's or cannot be read (then the
    colours are taken as sRGB, as browsers do)."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = _is_srgb(bytes(icc))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    return None if srgb else profile


# Every 8-bit level a colour may differ by from sRGB's and still be sRGB: lcms's rounding.
# A gamma-2.2 profile with sRGB's primaries differs by 5 in the shadows.
SRGB_LEVELS = 2


@functools.lru_cache(maxsize=16)
def _is_srgb(icc: bytes) -> bool:
    """Whether an RGB profile's colours are sRGB's, judged by what it does to a grid of colours
    (relative colorimetric), not by its name: a linear profile may be called "sRGB-elle-V2-g10"."""
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if profile.profile.xcolor_space.strip() != "RGB":
        return False
    levels = np.linspace(0, 255, 9).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    seen = ImageCms.profileToProfile(Image.fromarray(grid), profile, _SRGB, outputMode="RGB",
                                     renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    return int(np.abs(np.asarray(seen, np.int16) - grid).max()) <= SRGB_LEVELS


def in_srgb(image: Image.Image) -> Image.Image:
    """The image's colours in sRGB, the space VGG was trained in and the one an untagged output
    is read in, where it embeds another colour profile (phones save Display P3: taken as sRGB, a
    result's colours would come out dull or shifted). Integer grey modes are converted by
    images._gray16 (grey_in_srgb, in float), float ones taken as sRGB."""
    profile = foreign_profile(image)
    if profile is None or image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "P", "PA"):
        return image
    try:
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        alpha = image.convert("RGBA").getchannel("A") if has_alpha else None
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("L" if image.mode == "LA" else "RGB")
        converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _tag_table(icc: bytes) -> dict[bytes, bytes]:
    """An ICC profile's tags by signature (their data; {} for a profile cut short)."""
    try:
        count = struct.unpack_from(">I", icc, 128)[0]
        entries = [struct.unpack_from(">4sII", icc, 132 + 12 * i) for i in range(count)]
    except struct.error:
        return {}
    return {sig: icc[offset:offset + size] for sig, offset, size in entries}


def _curve(tag: bytes):
    """An ICC tone curve (curv: identity, gamma or table; para: types 0-4) as a numpy function
    of 0..1 values, or None for one of another kind."""
    kind = tag[:4]
    if kind == b"curv":
        (count,) = struct.unpack_from(">I", tag, 8)
        if count == 0:
            return lambda x: x
        if count == 1:
            gamma = struct.unpack_from(">H", tag, 12)[0] / 256
            return lambda x: x ** gamma
        table = np.frombuffer(tag, ">u2", count, 12).astype(np.float64) / 65535
        return lambda x: np.interp(x, np.linspace(0, 1, count), table)
    if kind == b"para":
        function = struct.unpack_from(">H", tag, 8)[0]
        counts = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}
        if function not in counts:
            return None
        values = [v / 65536 for v in struct.unpack_from(f">{counts[function]}i", tag, 12)]
        g, a, b, c, d, e, f = values + [0.0] * (7 - len(values))
        if function == 0:
            a, d = 1.0, -np.inf
        elif function in (1, 2):  # from -b/a, plus type 2's c (type 1's is 0); c below it
            d, e, f, c = -b / a, c, c, 0.0
        return lambda x: np.where(x >= d, np.maximum(a * x + b, 0) ** g + e, c * x + f)
    return None


def _matrix_shaper(icc: bytes):
    """(3x3 matrix to D50 XYZ, three tone curves) of a matrix/TRC RGB profile (Adobe RGB,
    ProPhoto, Display P3, most cameras'), or None for another kind (a LUT profile, CMYK, grey):
    what lcms itself uses for such a profile, so the float conversion below matches its."""
    if icc[16:24] != b"RGB XYZ ":
        return None
    tags = _tag_table(icc)
    names = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")
    if any(n not in tags for n in names) or b"A2B0" in tags or b"A2B1" in tags:
        return None  # lcms would take a LUT over the matrix
    try:
        matrix = np.array([[v / 65536 for v in struct.unpack_from(">3i", tags[n], 8)]
                           for n in names[:3]]).T
        curves = [_curve(tags[n]) for n in names[3:]]
    except struct.error:
        return None
    return None if any(c is None for c in curves) else (matrix, curves)


_SRGB_MATRIX = _matrix_shaper(ImageCms.ImageCmsProfile(_SRGB).tobytes())[0]
_D50 = np.array([0.9642, 1.0, 0.8249])  # the profile connection space's white
_DARKEST_BLACK_L = 50.0  # littlecms takes a profile's black as at most this light (L*)


def _black(luminance: float) -> float:
    """The black point littlecms compensates (a neutral of its darkest colorant's luminance, L*
    50 at most). Pillow converts with the perceptual intent into its sRGB, a version 4 profile,
    so littlecms maps a profile's black to sRGB's: a lifted black (a measured display's profile,
    a scanner's) comes out black, linear light as (Y - black) / (1 - black)."""
    return float(np.clip(luminance, 0, ((_DARKEST_BLACK_L + 16) / 116) ** 3))


def _srgb_encoded(linear: np.ndarray) -> np.ndarray:
    """sRGB's tone curve on linear light 0..1."""
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


_ENCODE_STEPS = 1 << 16  # sRGB's curve as lines between this many steps: within 1e-6 of it
_ENCODE = _srgb_encoded(np.linspace(0, 1, _ENCODE_STEPS + 1)).astype(np.float32)


def _srgb_encoded_by_table(linear: np.ndarray) -> np.ndarray:
    """_srgb_encoded on float32 linear light 0..1 from a table: lookups, not a power per pixel."""
    at = linear * np.float32(_ENCODE_STEPS)
    step = np.minimum(at.astype(np.intp), _ENCODE_STEPS - 1)
    low = np.take(_ENCODE, step)
    return low + (np.take(_ENCODE, step + 1) - low) * (at - step).astype(np.float32)


def grey_in_srgb(grey: np.ndarray, icc: bytes | None) -> np.ndarray | None:
    """Grey 0..1 with a grey TRC profile's tone (kTRC, XYZ connection, no LUT: what lcms uses)
    converted to sRGB in float, as lcms converts it: a neutral of D50 white, so each of R, G, B
    is sRGB's curve on the profile's linear light (its black point compensated: _black). None
    for a profile of another kind."""
    if not icc or icc[16:24] != b"GRAYXYZ ":
        return None
    tags = _tag_table(icc)
    if b"kTRC" not in tags or b"A2B0" in tags or b"A2B1" in tags:
        return None
    try:
        curve = _curve(tags[b"kTRC"])
    except struct.error:
        return None
    if curve is None:
        return None
    black = _black(curve(np.float64(0)))
    linear = (curve(grey.astype(np.float64)) - black) / (1 - black)
    return _srgb_encoded(np.clip(linear, 0, 1)).astype(np.float32)


def grey_by_levels_in_srgb(grey: np.ndarray, icc: bytes) -> np.ndarray | None:
    """Grey 0..1 with a grey profile of any kind (a LUT, Lab connection) in sRGB: littlecms
    converts its 256 8-bit levels, and each value takes the line between its two levels, so
    16-bit steps stay steps. [H, W, 3] float32 (a Lab profile's grey need not be neutral); None
    where littlecms cannot convert it."""
    table = _lcms_in_srgb(np.arange(256, dtype=np.uint8).reshape(1, 256), icc)
    if table is None:
        return None
    table = table.reshape(256, 3)
    at = np.clip(grey, 0, 1) * 255
    return np.stack([np.interp(at, np.arange(256), table[:, c]) for c in range(3)],
                    axis=-1).astype(np.float32)


def deep_in_srgb(samples: np.ndarray, icc: bytes | None) -> np.ndarray | None:
    """16-bit RGB(A) samples ([H,W,C] uint16) with a matrix/TRC profile's colours converted to
    sRGB in float, as lcms converts them (relative colorimetric, the black point compensated:
    _black; clipped to sRGB's gamut), their precision kept: float32 0..1, alpha as it was.
    Another RGB profile (a LUT) through lcms's grid (rgb_by_grid_in_srgb). None where lcms
    cannot convert it (then the 8-bit path stands)."""
    shaper = _matrix_shaper(icc) if icc else None
    if shaper is None:
        srgb = rgb_by_grid_in_srgb(samples[..., :3] / np.float32(65535), icc) if icc else None
        return None if srgb is None else np.concatenate(
            [srgb, samples[..., 3:] / np.float32(65535)], axis=-1)
    matrix, curves = shaper
    codes = np.linspace(0, 1, 65536)  # every 16-bit value: each curve looked up, not computed per pixel
    linear = [np.take(curve(codes).astype(np.float32), samples[..., i]) for i, curve in enumerate(curves)]
    black = _black(matrix[1] @ [float(curve(np.float64(0))) for curve in curves])
    to_srgb = (np.linalg.solve(_SRGB_MATRIX, matrix) / (1 - black)).astype(np.float32)
    lift = (black / (1 - black) * np.linalg.solve(_SRGB_MATRIX, _D50)).astype(np.float32)
    srgb = [_srgb_encoded_by_table(np.clip(sum(row[i] * linear[i] for i in range(3)) - cut, 0, 1))
            for row, cut in zip(to_srgb, lift)]
    return np.stack([*srgb, *(samples[..., 3:] / np.float32(65535)).transpose(2, 0, 1)], axis=-1)


GRID_STEP = 5  # 8-bit levels between grid nodes: 52 per axis, 140608 colours (255 = 51 x 5)
_CHUNK = 1 << 20  # pixels blended at a time: bounded memory on large photos


@functools.lru_cache(maxsize=4)
def _srgb_grid(icc: bytes) -> np.ndarray | None:
    """littlecms's 8-bit conversion to sRGB (the 8-bit pictures' own, in_srgb) of every
    GRID_STEP-th level on each axis: [N, N, N, 3] float32 0..1; None where it cannot convert."""
    levels = np.arange(0, 256, GRID_STEP, dtype=np.uint8)
    n = len(levels)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(n * n, n, 3)
    converted = _lcms_in_srgb(grid, icc)
    return None if converted is None else converted.reshape(n, n, n, 3)


def _lcms_in_srgb(pixels: np.ndarray, icc: bytes) -> np.ndarray | None:
    """8-bit `pixels` (grey [H, W] or RGB [H, W, 3]) tagged with `icc`, converted to sRGB by
    littlecms as an 8-bit picture is (in_srgb): [H, W, 3] float32 0..1; None where it cannot."""
    image = Image.fromarray(pixels)
    image.info["icc_profile"] = icc
    converted = in_srgb(image)
    if converted is image or converted.mode != "RGB":  # left as it was
        return None
    return np.asarray(converted).astype(np.float32) / np.float32(255)


def rgb_by_grid_in_srgb(rgb: np.ndarray, icc: bytes) -> np.ndarray | None:
    """RGB 0..1 ([H, W, 3]) with an RGB profile of any kind (a LUT) in sRGB: littlecms converts
    a grid of 8-bit colours (_srgb_grid) and each colour takes the trilinear blend of its cell's
    eight corners, so 16-bit steps stay steps (and 8-bit colours on the grid get exactly the
    8-bit conversion). [H, W, 3] float32; None where littlecms cannot convert it."""
    table = _srgb_grid(bytes(icc))
    if table is None:
        return None
    n = table.shape[0]
    planes = [np.ascontiguousarray(table[..., c].ravel()) for c in range(3)]
    flat = rgb.reshape(-1, 3)
    out = np.empty(flat.shape, np.float32)

    def lerp(a, b, fraction):  # into b
        b -= a
        b *= fraction
        b += a
        return b

    for start in range(0, len(flat), _CHUNK):
        at = np.clip(flat[start:start + _CHUNK], 0, 1).astype(np.float32) * np.float32(n - 1)
        low = np.minimum(at.astype(np.intp), n - 2)
        fr, fg, fb = ((at[:, axis] - low[:, axis]).astype(np.float32) for axis in range(3))
        base = (low[:, 0] * n + low[:, 1]) * n + low[:, 2]
        corners = {(dr, dg): (base + (dr * n + dg) * n, base + (dr * n + dg) * n + 1)
                   for dr in (0, 1) for dg in (0, 1)}
        for c, plane in enumerate(planes):  # one channel at a time: 1-D gathers, contiguous blends
            edge = {k: lerp(np.take(plane, near), np.take(plane, far), fb)
                    for k, (near, far) in corners.items()}
            out[start:start + _CHUNK, c] = lerp(lerp(edge[0, 0], edge[0, 1], fg),
                                               lerp(edge[1, 0], edge[1, 1], fg), fr)
    return out.reshape(rgb.shape)
