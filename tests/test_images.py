"""Image input/output: modes, orientation, alpha, 16-bit, and the user errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import rgb_noise
from PIL import Image

from stylefu.core.errors import UserError
from stylefu.core.io.images import PILLOW_FORMATS, load_image, save_image


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "o.jpg", exif=exif)
    picture = load_image(tmp_path / "o.jpg")
    assert (picture.height, picture.width) == (40, 20)


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "1", "LA", "RGBA", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray((rgb_noise(20, 30) * 255).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray((np.linspace(0, 65535, 600).reshape(20, 30)).astype(np.uint16))
    else:
        image = base.convert(mode)
    path = tmp_path / ("m.tif" if mode == "CMYK" else "m.png")
    image.save(path)
    picture = load_image(path)
    assert picture.rgb.shape == (20, 30, 3) and picture.rgb.dtype == np.float32
    assert (picture.alpha is not None) == (mode in ("LA", "RGBA"))
    if mode == "I;16":  # the full 16-bit range maps to 0..1, not clipped at 255
        assert picture.rgb.max() == pytest.approx(1.0) and picture.rgb[0, 1, 0] < 0.01


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_output_keeps_precision(tmp_path, suffix):
    ramp = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 100)
    rgb = np.stack([ramp, ramp[::-1], ramp * 0.5], axis=2)
    path = save_image(tmp_path / f"out{suffix}", rgb, ramp, bits=16)
    raw = path.read_bytes()
    if suffix == ".png":
        assert raw[24] == 16 and raw[25] == 6  # bit depth 16, RGBA
    else:
        assert raw[:4] == b"II*\x00"
    with Image.open(path) as image:  # other readers see the same picture
        assert image.size == (100, 10) and image.mode == "RGBA"


@pytest.mark.parametrize("bits", [12, 1, "16"])
def test_bits_other_than_8_or_16_are_refused(tmp_path, bits):
    # StylizeResult.save(path, bits=12) wrote 8 bits without a word
    with pytest.raises(UserError, match=r"^--bits must be 8 or 16, not "):
        save_image(tmp_path / "x.png", rgb_noise(16, 16), bits=bits)
    assert not (tmp_path / "x.png").exists()


def test_npy_round_trip_is_exact(tmp_path):
    rgb = rgb_noise(12, 16)
    save_image(tmp_path / "x.npy", rgb, rgb[..., 0])
    back = load_image(tmp_path / "x.npy")
    assert np.array_equal(back.rgb, rgb) and np.array_equal(back.alpha, rgb[..., 0])


@pytest.mark.parametrize("source", [None, 5, io.BytesIO(b"data"), [[0, 1], [1, 0]]])
def test_a_source_of_another_type_is_one_sentence(source):
    # the Python API's content, style or mask given as something else: not pathlib's TypeError
    # (a bytes path loads: tests/test_api.py)
    with pytest.raises(UserError, match=f"^content: give a path, PIL image, numpy array or "
                                        f"Picture, not {type(source).__name__}"):
        load_image(source, "content")


def test_bad_files(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(UserError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.fromarray((rgb_noise(64, 64) * 255).astype(np.uint8)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:2000])
    with pytest.raises(UserError, match="truncated"):
        load_image(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match="too large"):
        load_image(tmp_path / "full.png")  # 4096 px: between 1x and 2x... and beyond the limit


# Display P3's primaries adapted to D50 (as in Apple's profile), with a plain 2.2 gamma: a profile
# written here byte by byte, so the test needs no profile file and checks lcms against numpy.
P3_D50 = np.array([[0.5151, 0.2920, 0.1571], [0.2412, 0.6922, 0.0666], [-0.0011, 0.0419, 0.7841]])
SRGB_D50 = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
                     [0.0139322, 0.0971045, 0.7141733]])


def rgb_profile(primaries: np.ndarray | None, gamma: float, name: str,
                curve: bytes | None = None, lut: bool = False) -> bytes:
    """A version 2 matrix/TRC RGB display profile (ICC.1:2001-04), its tags in order; `curve`, a
    tone curve's tag data in place of the plain gamma; no `primaries`: a grey TRC profile; `lut`:
    the same colours as a LUT profile (A2B0 only: the gamma in its input tables, the matrix in
    its 9x9x9 grid of XYZ, which a linear map fills exactly)."""
    import struct

    def fixed(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(values) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(fixed(v) for v in values)

    text = name.encode() + b"\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + b"\0" * 67)
    curve = curve or b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    white = primaries.sum(axis=1) if primaries is not None else (0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", xyz(white)), (b"cprt", b"text\0\0\0\0none\0")]
    if primaries is None:  # grey: its one tone curve
        tags.append((b"kTRC", curve))
    elif lut:
        inputs, nodes = np.linspace(0, 1, 1024) ** gamma, np.linspace(0, 1, 9)
        rgb = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
        xyz = np.clip(np.round(rgb @ primaries.T * 32768), 0, 65535)  # lut16's XYZ: 1.0 = 0x8000
        identity = b"".join(fixed(v) for v in np.eye(3).ravel())
        tags.append((b"A2B0", b"mft2\0\0\0\0" + bytes([3, 3, 9, 0]) + identity
                     + struct.pack(">HH", len(inputs), 2)
                     + np.round(np.tile(inputs, 3) * 65535).astype(">u2").tobytes()
                     + xyz.astype(">u2").tobytes() + np.tile([0, 65535], 3).astype(">u2").tobytes()))
    else:
        tags += [(k, xyz(primaries[:, i])) for i, k in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
        tags += [(k, curve) for k in (b"rTRC", b"gTRC", b"bTRC")]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntr"
              + (b"GRAY" if primaries is None else b"RGB ") + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + b"\0" * 4 + fixed(0.9642) + fixed(1.0)
              + fixed(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


def p3_to_srgb(rgb8: np.ndarray) -> np.ndarray:
    """The profile above to sRGB in numpy: linear light through D50 XYZ, clipped, sRGB's curve."""
    linear = (rgb8 / 255.0) ** 2.2
    srgb = np.clip(linear @ (np.linalg.inv(SRGB_D50) @ P3_D50).T, 0, 1)
    return np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)


def test_colour_profile_becomes_srgb(tmp_path):
    """A Display P3 photo (what phones save) is converted to sRGB: taken as sRGB its reds and
    greens would lose saturation in the result."""
    pixels = (rgb_noise(24, 32, seed=3) * 255).astype(np.uint8)
    pixels[0, 0] = (220, 40, 30)  # a saturated red, far from its sRGB reading
    alpha = np.linspace(0, 255, 24 * 32).reshape(24, 32).astype(np.uint8)
    icc = rgb_profile(P3_D50, 2.2, "Display P3 (test)")
    Image.fromarray(pixels).save(tmp_path / "p3.png", icc_profile=icc)
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(tmp_path / "p3a.png", icc_profile=icc)
    expected = p3_to_srgb(pixels.astype(np.float64))
    for name in ("p3.png", "p3a.png"):
        picture = load_image(tmp_path / name)
        assert np.abs(picture.rgb - expected).max() < 2.5 / 255  # lcms's rounding: 8 bits
        assert np.abs(picture.rgb[0, 0] - pixels[0, 0] / 255).max() > 20 / 255
    assert np.array_equal(np.round(load_image(tmp_path / "p3a.png").alpha * 255), alpha)
    as_pil = load_image(Image.open(tmp_path / "p3.png"))  # the Python API's PIL images too
    assert np.array_equal(as_pil.rgb, load_image(tmp_path / "p3.png").rgb)


def test_a_profile_is_judged_srgb_by_its_colours_not_its_name(tmp_path):
    """A linear-light profile with sRGB's primaries is called "sRGB-elle-V2-g10.icc" (Krita's):
    taken as sRGB by its name, its picture came out far too dark. A profile of sRGB's colours by
    another name leaves the pixels as they are."""
    import struct

    linear = rgb_noise(24, 32, seed=5)
    pixels = np.round(linear * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "linear.png",
                                 icc_profile=rgb_profile(SRGB_D50, 1.0, "sRGB-elle-V2-g10.icc"))
    encoded = np.where(pixels / 255 <= 0.0031308, 12.92 * pixels / 255,
                       1.055 * (pixels / 255) ** (1 / 2.4) - 0.055)
    assert np.abs(load_image(tmp_path / "linear.png").rgb - encoded).max() < 2.5 / 255
    steps = np.linspace(0, 1, 1024)
    srgb_curve = np.where(steps <= 0.04045, steps / 12.92, ((steps + 0.055) / 1.055) ** 2.4)
    table = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(srgb_curve * 65535).astype(
        ">u2").tobytes()
    Image.fromarray(pixels).save(tmp_path / "monitor.png",
                                 icc_profile=rgb_profile(SRGB_D50, 1.0, "My monitor", table))
    assert np.array_equal(load_image(tmp_path / "monitor.png").rgb, pixels / np.float32(255))


def test_srgb_broken_and_mask_profiles_leave_pixels_alone(tmp_path):
    from PIL import ImageCms

    from stylefu.core.method.guides import load_mask

    pixels = (rgb_noise(16, 16, seed=4) * 255).astype(np.uint8)
    untagged = pixels / np.float32(255)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cases = {"srgb.png": srgb, "broken.png": b"\0\0\0\x80acsp" + b"\1" * 40}  # read as sRGB
    for name, icc in cases.items():
        Image.fromarray(pixels).save(tmp_path / name, icc_profile=icc)
        assert np.array_equal(load_image(tmp_path / name).rgb, untagged), name
    gray = pixels[..., 0]
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "mask.png",
                                                icc_profile=rgb_profile(P3_D50, 2.2, "P3"))
    assert np.abs(load_mask(tmp_path / "mask.png") - gray / 255).max() < 1e-4  # data, not colour



def _with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """`png` with one more chunk, right after IHDR."""
    import struct
    import zlib

    chunk = (struct.pack(">I", len(payload)) + kind + payload
             + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    return png[:33] + chunk + png[33:]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_inputs_keep_16_bits(tmp_path, suffix):
    """Pillow reads 16-bit RGB(A) files as 8 bits; a photographer's 16-bit TIFF painted with a
    mask must keep its 16 bits outside it (and smooth skies everywhere)."""
    ramp = np.linspace(0, 1, 3000, dtype=np.float32).reshape(30, 100)
    rgb = np.stack([ramp, ramp[::-1], ramp * 0.5], axis=2)
    for alpha in (None, ramp[::-1]):
        path = save_image(tmp_path / f"deep{suffix}", rgb, alpha, bits=16)
        picture = load_image(path)
        assert len(np.unique(picture.rgb[..., 0])) == 3000  # not 256
        assert np.abs(picture.rgb - rgb).max() < 1e-5
        if alpha is not None:
            assert np.abs(picture.alpha - alpha).max() < 1e-5


def test_16_bit_inputs_are_turned_upright(tmp_path):
    """EXIF orientation on the 16-bit path turns the picture as Pillow turns the 8-bit one."""
    from PIL import ImageOps

    from stylefu.core.io.images import _png16

    rgb = rgb_noise(12, 20, seed=5)
    high = (np.round(rgb * 65535).astype(np.uint16) >> 8).astype(np.uint8)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.png"  # eXIf holds the TIFF structure, no "Exif\0\0"
        path.write_bytes(_with_chunk(_png16(rgb), b"eXIf", exif.tobytes()[6:]))
        picture = load_image(path)
        assert np.abs(picture.rgb * 255 - np.round(picture.rgb * 255)).max() > 0.1  # 16 bits
        eight = Image.fromarray(high)
        eight.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(eight))
        assert np.array_equal(np.round(picture.rgb * 65535).astype(np.uint16) >> 8, expected), \
            orientation


def _para(function: int, *values: float) -> bytes:
    """An ICC parametric curve's tag data."""
    import struct

    return (b"para\0\0\0\0" + struct.pack(">HH", function, 0)
            + b"".join(struct.pack(">i", round(v * 65536)) for v in values))


def _table(entries: np.ndarray) -> bytes:
    import struct

    samples = np.round(entries * 65535).astype(">u2").tobytes()
    return b"curv\0\0\0\0" + struct.pack(">I", len(entries)) + samples


# Profiles of each tone curve kind ICC has for a matrix/TRC profile: plain gamma (Adobe RGB's
# way), parametric (Display P3's: sRGB's curve, type 3), a table (ProPhoto's and cameras'), and
# real profiles where the machine has them (Ghostscript's Adobe RGB and ROMM/ProPhoto RGB).
GHOSTSCRIPT_ICC = ["/usr/share/color/icc/ghostscript",
                   "/var/cache/gimp3-trixie/rootfs/usr/share/color/icc/ghostscript"]
TEST_PROFILES = {
    "gamma": lambda: rgb_profile(P3_D50, 2.2, "P3 gamma"),
    "para": lambda: rgb_profile(P3_D50, 0, "Display P3",
                                _para(3, 2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)),
    "table": lambda: rgb_profile(P3_D50, 0, "P3 table", _table(np.linspace(0, 1, 1024) ** 1.8)),
    "lut": lambda: rgb_profile(P3_D50, 2.2, "P3 as a LUT", lut=True),
    **{f"ghostscript {n}": (lambda n=n: next(
        (open(f"{d}/{n}.icc", "rb").read() for d in GHOSTSCRIPT_ICC
         if __import__("os").path.exists(f"{d}/{n}.icc")), None)) for n in ("a98", "rommrgb")},
}


@pytest.mark.parametrize("kind", TEST_PROFILES)
def test_16_bit_input_with_a_colour_profile_keeps_16_bits(tmp_path, kind):
    """A 16-bit Adobe RGB or ProPhoto TIFF/PNG was converted to sRGB in 8 bits (lcms in Pillow
    takes 8-bit modes only): its smooth ramps came out in 1/255 steps. Now a matrix/TRC profile
    is converted in float: as lcms converts (its own 8-bit conversion of the same colours, the
    reference, within its rounding), with the 16 bits kept, as a path and as a PIL image."""
    import io
    import zlib

    from PIL import ImageCms

    from stylefu.core.io.images import _png16

    icc = TEST_PROFILES[kind]()
    if icc is None:
        pytest.skip("no Ghostscript ICC profiles on this machine")
    levels = np.arange(0, 256, 5, dtype=np.uint8)  # every 5th 8-bit level on each axis
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 52, 3)
    reference = ImageCms.profileToProfile(Image.fromarray(grid), ImageCms.ImageCmsProfile(
        io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB")
    path = tmp_path / "grid.png"
    path.write_bytes(_with_chunk(_png16(grid / np.float32(255)), b"iCCP", b"x\0\0" + zlib.compress(icc)))
    picture = load_image(path)
    assert np.abs(picture.rgb - np.asarray(reference) / 255).max() < 1.5 / 255  # lcms rounds to 8
    assert np.abs(picture.rgb - np.asarray(reference) / 255).mean() < 0.5 / 255
    ramp = np.linspace(0.2, 0.3, 3000, dtype=np.float32).reshape(30, 100)  # a smooth sky
    path.write_bytes(_with_chunk(_png16(np.stack([ramp, ramp, ramp], axis=2)), b"iCCP",
                                 b"x\0\0" + zlib.compress(icc)))
    for source in (path, Image.open(path)):
        values = load_image(source).rgb[..., 1]
        assert len(np.unique(values)) > 1000  # 8 bits: about 26 steps
        assert np.all(np.diff(values.ravel()) >= 0)


def test_16_bit_input_with_a_gamma_profile_matches_its_formula(tmp_path):
    """The float conversion against the formula: linear light through D50 XYZ, sRGB's curve."""
    import zlib

    from stylefu.core.io.images import _png16

    rgb = rgb_noise(16, 16, seed=6)
    icc = b"P3\0\0" + zlib.compress(rgb_profile(P3_D50, 2.2, "P3"))  # name, method 0, profile
    path = tmp_path / "p3-16.png"
    path.write_bytes(_with_chunk(_png16(rgb), b"iCCP", icc))
    stored = np.round(rgb * 65535) / 65535
    gamma = round(2.2 * 256) / 256  # as the profile holds it
    linear = stored.astype(np.float64) ** gamma
    srgb = np.clip(linear @ (np.linalg.inv(SRGB_D50) @ P3_D50).T, 0, 1)
    expected = np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)
    # the matrices as profiles store them (s15.16) move dark blues by under 1e-3; 8 bits: 4e-3
    assert np.abs(load_image(path).rgb - expected).max() < 1.5e-3


def test_16_bit_input_with_a_lut_profile_is_near_its_formula_between_the_grid(tmp_path):
    """A LUT profile's 16-bit colours take the blend of littlecms's conversion of the 8-bit grid
    around them: against the formula the LUT was made from, as near as lcms's own 8-bit
    conversion (measured: mean 0.27/255, 99th percentile 3.1/255, where lcms's own 8-bit
    conversion is off by a mean 0.29/255 and up to 14.5/255 at gamut edges: its interpolation)."""
    import zlib

    from stylefu.core.io.images import _png16

    samples = np.random.default_rng(1).integers(0, 65536, (64, 64, 3)).astype(np.uint16)
    path = tmp_path / "lut-16.png"
    icc = rgb_profile(P3_D50, 2.2, "P3 as a LUT", lut=True)
    path.write_bytes(_with_chunk(_png16(samples / np.float32(65535)), b"iCCP",
                                 b"x\0\0" + zlib.compress(icc)))
    srgb = np.clip((samples / 65535) ** 2.2 @ (np.linalg.inv(SRGB_D50) @ P3_D50).T, 0, 1)
    expected = np.where(srgb <= 0.0031308, 12.92 * srgb, 1.055 * srgb ** (1 / 2.4) - 0.055)
    off = np.abs(load_image(path).rgb - expected) * 255
    assert off.mean() < 0.4 and np.percentile(off, 99) < 4.5, (off.mean(), np.percentile(off, 99))


def _lifted(black: float) -> bytes:
    """A tone curve whose black is lifted to `black` linear light (a measured display's profile,
    a scanner's): sRGB's curve scaled into black..1, a parametric curve of type 4."""
    k = (1 - black) ** (1 / 2.4)
    return _para(4, 2.4, k / 1.055, k * 0.055 / 1.055, (1 - black) / 12.92, 0.04045, black, black)


@pytest.mark.parametrize("black", [0.02, 0.3])  # 0.3: beyond L* 50, where lcms stops
def test_16_bit_input_whose_profile_lifts_black_is_converted_as_lcms_does(tmp_path, black):
    """Pillow's conversion into its sRGB (a version 4 profile, perceptual intent) makes littlecms
    compensate the black point: a profile whose black is lifted has it mapped to black. The 16-bit
    float conversion ignored that: its blacks came out grey (39/255 for a black lifted to 0.02),
    6.8/255 off the 8-bit picture on average. Now it compensates as lcms does: greys as lcms's,
    colours near (lcms's 8-bit conversion of these goes through its interpolated table, up to
    14/255 off at gamut edges, so the check is on the mean), RGB and grey profiles alike; a black
    lighter than L* 50 is compensated as L* 50, as lcms does."""
    import io
    import zlib

    from PIL import ImageCms

    from stylefu.core.io.images import _png16

    def lcms(pixels: np.ndarray, icc: bytes) -> np.ndarray:
        return np.asarray(ImageCms.profileToProfile(
            Image.fromarray(pixels), ImageCms.ImageCmsProfile(io.BytesIO(icc)),
            ImageCms.createProfile("sRGB"), outputMode="RGB")) / 255

    icc = rgb_profile(P3_D50, 0, "lifted", _lifted(black))
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 52, 3)
    path = tmp_path / "grid.png"
    path.write_bytes(_with_chunk(_png16(grid / np.float32(255)), b"iCCP", b"x\0\0" + zlib.compress(icc)))
    off = np.abs(load_image(path).rgb - lcms(grid, icc))
    assert off.mean() < 0.5 / 255, off.mean() * 255
    greys = grid[:, :, 0] == grid[:, :, 1]
    greys &= grid[:, :, 1] == grid[:, :, 2]
    # greys: lcms's 8-bit tables step by up to 1.9/255 where a black lifted to 0.3 flattens them
    assert off[greys].max() < 2.5 / 255 and off[0, 0].max() < 0.5 / 255  # black: 0 at 0.02
    grey = rgb_profile(None, 0, "lifted grey", _lifted(black))
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(levels * 257).save(tmp_path / "grey16.png", icc_profile=grey)
    expected = lcms(levels.astype(np.uint8), grey)
    assert np.abs(load_image(tmp_path / "grey16.png").rgb - expected).max() < 2.5 / 255


@pytest.mark.parametrize("gamma", [1.0, 1.8])
def test_16_bit_grey_with_a_grey_profile_is_converted(tmp_path, gamma):
    """A 16-bit grey PNG with a grey TRC profile was taken as sRGB (lcms in Pillow takes 8-bit grey
    only) while the same picture in 8 bits was converted: a linear scan came out far too dark.
    Now it is converted in float, as lcms converts the 8-bit one (the reference, within its
    rounding), its 16 bits kept."""
    import zlib

    icc = rgb_profile(None, gamma, "grey")
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)  # every 8-bit level
    Image.fromarray(levels * 257).save(tmp_path / "levels16.png", icc_profile=icc)
    Image.fromarray(levels.astype(np.uint8)).save(tmp_path / "levels8.png", icc_profile=icc)
    assert Image.open(tmp_path / "levels16.png").mode in ("I;16", "I")  # Pillow's 16-bit grey
    reference = load_image(tmp_path / "levels8.png").rgb  # lcms's conversion
    difference = np.abs(load_image(tmp_path / "levels16.png").rgb - reference)
    # lcms rounds to 8 bits, and its 8-bit tables stray under level 16 (measured: up to 9.7/255
    # at gamma 1.0, 1.5/255 at 1.8, where the formula below holds to 1e-3)
    assert difference.reshape(256, 3)[16:].max() < 1.5 / 255 and difference.mean() < 0.6 / 255
    ramp = np.linspace(0, 1, 4096).reshape(64, 64)
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "ramp.png",
                                                                    icc_profile=icc)
    picture = load_image(tmp_path / "ramp.png")
    assert len(np.unique(picture.rgb[..., 0])) > 3000  # 16 bits kept: 8 would give 256 levels
    linear = (np.round(ramp * 65535) / 65535) ** (round(gamma * 256) / 256)
    expected = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert np.abs(picture.rgb[..., 1] - expected).max() < 1e-3
    assert np.array_equal(load_image(Image.open(tmp_path / "ramp.png")).rgb, picture.rgb)
    samples = np.round(np.dstack([ramp, ramp]) * 65535).astype(np.uint16)  # grey and alpha
    la16 = _png(tmp_path / "la16.png", samples, 4)
    la16.write_bytes(_with_chunk(la16.read_bytes(), b"iCCP", b"x\0\0" + zlib.compress(icc)))
    with_alpha = load_image(la16)
    assert np.abs(with_alpha.rgb[..., 1] - expected).max() < 1e-3
    assert np.abs(with_alpha.alpha - ramp).max() < 1e-4


@pytest.mark.parametrize("gamma", [1.0, 1.8])
def test_16_bit_grey_with_another_kind_of_grey_profile_is_converted(tmp_path, gamma):
    """A 16-bit grey PNG with a grey profile that is no XYZ tone curve (here its curve taken to
    Lab's L*, as lcms reads a Lab-connected grey profile) was taken as sRGB: 9/255 (gamma 1.0) to
    60/255 (1.8) off the 8-bit file's lcms conversion. Now lcms converts its 256 levels and the
    values between them take the line between two levels: exactly the 8-bit conversion at each
    level, and a 16-bit ramp keeps its steps."""
    icc = bytearray(rgb_profile(None, gamma, "grey via Lab"))
    icc[20:24] = b"Lab "  # the profile connection space
    levels = np.arange(256, dtype=np.uint16).reshape(16, 16)  # every 8-bit level
    Image.fromarray(levels * 257).save(tmp_path / "levels16.png", icc_profile=bytes(icc))
    Image.fromarray(levels.astype(np.uint8)).save(tmp_path / "levels8.png", icc_profile=bytes(icc))
    reference = load_image(tmp_path / "levels8.png").rgb  # lcms's conversion
    assert np.abs(reference - (levels / 255)[..., None]).max() > 5 / 255  # the profile matters
    assert np.abs(load_image(tmp_path / "levels16.png").rgb - reference).max() < 0.5 / 255
    ramp = np.round(np.linspace(0, 1, 4096).reshape(64, 64) * 65535).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png", icc_profile=bytes(icc))
    picture = load_image(Image.open(tmp_path / "ramp.png"))  # the API's path too
    assert len(np.unique(picture.rgb[..., 0])) > 3000  # 8 bits would give 256 levels
    assert np.all(np.diff(picture.rgb[..., 0].ravel()) >= 0)  # a ramp stays a ramp


def test_16_bit_input_with_another_kind_of_profile_is_converted_in_8_bits(tmp_path):
    """A profile that is no matrix/TRC RGB one (here: Pillow's LAB profile on RGB data) is left
    to lcms, in 8 bits, as an 8-bit file with it is: the 16-bit path does not skip it."""
    import zlib

    from PIL import ImageCms

    from stylefu.core.io.images import _png16

    rgb = rgb_noise(16, 16, seed=7)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    (tmp_path / "lab16.png").write_bytes(_with_chunk(_png16(rgb), b"iCCP", b"x\0\0" + zlib.compress(icc)))
    high = (np.round(rgb * 65535).astype(np.uint16) >> 8).astype(np.uint8)
    Image.fromarray(high).save(tmp_path / "lab8.png", icc_profile=icc)
    assert np.array_equal(load_image(tmp_path / "lab16.png").rgb, load_image(tmp_path / "lab8.png").rgb)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_pil_image_of_a_16_bit_file_keeps_16_bits(tmp_path, suffix):
    """`stylize(Image.open("x16.png"))` got 8 bits (Pillow has no 16-bit RGB mode) where the
    path got 16. Now the file is read again, by its name or from its open stream; an image edited
    since, or a copy (no file behind it), is taken as the 8 bits it holds."""
    import io

    ramp = np.linspace(0, 1, 3000, dtype=np.float32).reshape(30, 100)
    rgb = np.stack([ramp, ramp[::-1], ramp * 0.5], axis=2)
    path = save_image(tmp_path / f"deep{suffix}", rgb, ramp[::-1], bits=16)
    loaded = Image.open(path)
    loaded.load()
    for image in (Image.open(path), loaded, Image.open(io.BytesIO(path.read_bytes()))):
        picture = load_image(image)
        assert len(np.unique(picture.rgb[..., 0])) == 3000
        assert np.abs(picture.rgb - rgb).max() < 1e-5 and np.abs(picture.alpha - ramp[::-1]).max() < 1e-5
    edited = Image.open(path)
    edited.load()
    edited.putpixel((0, 0), (255, 0, 0, 255))
    copy = Image.open(path).copy()
    for image, red in ((edited, 1.0), (copy, rgb[0, 0, 0])):
        picture = load_image(image)
        assert len(np.unique(picture.rgb[..., 0])) <= 256
        assert abs(picture.rgb[0, 0, 0] - red) < 1 / 255


def test_lossy_outputs_keep_fine_detail(tmp_path):
    """.jpg and .webp are written at quality 95, not Pillow's 75/80 (which smear a painting's
    strokes): JPEG's quantisation steps stay small and WebP's error well under its default's."""
    import io

    from skimage import data

    rgb = data.astronaut()[:128, :128].astype(np.float32) / 255
    jpeg = save_image(tmp_path / "o.jpg", rgb)
    assert max(Image.open(jpeg).quantization[0]) <= 12  # 61 at Pillow's default
    webp = save_image(tmp_path / "o.webp", rgb)
    default = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(default, "WEBP")

    def error(image):
        return np.abs(np.asarray(Image.open(image).convert("RGB"), np.float32) / 255 - rgb).mean()

    assert error(webp) < 0.8 * error(default)


@pytest.mark.skipif(".avif" not in PILLOW_FORMATS, reason="this Pillow writes no AVIF")
def test_avif_outputs_keep_fine_detail_and_transparency(tmp_path):
    """-o x.avif (where Pillow has libavif) at quality 95, not Pillow's 75, with its alpha; read
    back as any input."""
    import io

    from skimage import data

    rgb = data.astronaut()[:128, :128].astype(np.float32) / 255
    alpha = np.linspace(0, 1, 128, dtype=np.float32)[None, :].repeat(128, 0)
    avif = save_image(tmp_path / "o.avif", rgb, alpha)
    default = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(default, "AVIF")
    picture = load_image(avif)
    assert np.abs(picture.rgb - rgb).mean() < 0.8 * np.abs(load_image(
        Image.open(default)).rgb - rgb).mean()
    assert picture.alpha is not None and np.abs(picture.alpha - alpha).max() < 4 / 255


def _png(path, samples: np.ndarray, color_type: int, trns: bytes | None = None,
         depth: int | None = None):
    """A PNG of `samples` (uint8 or uint16: the bit depth, unless `depth` packs grey in 1, 2 or 4
    bits) with an optional tRNS chunk, written here: Pillow writes neither 16-bit colour keys nor
    16-bit grey with alpha."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
            ">I", zlib.crc32(kind + payload))

    height, width = samples.shape[:2]
    if depth:  # each sample's low `depth` bits, packed along the row
        bits = np.unpackbits(samples.astype(np.uint8)[..., None], axis=2)[..., 8 - depth:]
        rows = np.packbits(bits.reshape(height, -1), axis=1)
    else:
        depth = samples.dtype.itemsize * 8
        rows = samples.astype(f">u{depth // 8}").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + (
        chunk(b"tRNS", trns) if trns else b"") + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b""))
    return path


DARK_SCAN = (np.arange(20 * 30).reshape(20, 30) % 200 + 10).astype(np.uint16)  # all under 256


@pytest.mark.parametrize("source", ["png-as-pillow-10-opens-it", "tiff-mode-I", "api-mode-I"])
def test_16_bit_grey_is_read_by_its_depth_not_its_values(tmp_path, monkeypatch, source):
    """A dark 16-bit scan (every value under 256) opened as Pillow's mode I was taken as 8-bit:
    257x too bright. Pillow 10 opens 16-bit grey PNGs as mode I; Pillow writes mode-I pictures as
    32-bit TIFFs; an API caller may hand over a mode-I image: all read on the 16-bit scale."""
    from PIL import PngImagePlugin

    if source == "png-as-pillow-10-opens-it":
        monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
        given = _png(tmp_path / "scan.png", DARK_SCAN, 0)
    else:
        image = Image.fromarray(DARK_SCAN.astype(np.int32))
        assert image.mode == "I"
        given = image if source == "api-mode-I" else tmp_path / "scan.tif"
        if source == "tiff-mode-I":
            image.save(given)
    if isinstance(given, Image.Image):
        assert given.mode == "I"
    else:
        with Image.open(given) as opened:
            assert opened.mode == "I"
    picture = load_image(given)
    assert np.allclose(picture.rgb[..., 0], DARK_SCAN / 65535, atol=1e-7)
    assert picture.rgb.max() < 0.01


@pytest.mark.parametrize("values", [(0, 70000), (-5, 200)])
def test_integer_grey_outside_16_bits_is_refused_naming_the_file(tmp_path, values):
    """Mode-I values above 65535 or below 0 (a 32-bit integer TIFF) were clipped without a word."""
    array = np.linspace(*values, 600).reshape(20, 30).astype(np.int32)
    Image.fromarray(array).save(tmp_path / "counts.tif")
    lo, hi = values
    with pytest.raises(UserError, match=rf"^{tmp_path / 'counts.tif'} holds integer pixel values "
                                        rf"{lo}\.\.{hi}, outside the 16-bit range 0\.\.65535 .*; "
                                        r"save it as an 8- or 16-bit PNG or TIFF\.$"):
        load_image(tmp_path / "counts.tif")
    with pytest.raises(UserError, match=rf"^content holds integer pixel values {lo}\.\.{hi}.*"
                                        r"scale it to 0\.\.65535 or give an 8-bit picture as mode L"):
        load_image(Image.fromarray(array), "content")


def test_a_float_file_of_0_to_255_says_what_a_file_user_can_do(tmp_path):
    """A 32-bit float TIFF holding 0..255 got the numpy array's "divide by 255"."""
    array = np.linspace(0, 255, 600, dtype=np.float32).reshape(20, 30)
    Image.fromarray(array).save(tmp_path / "float.tif")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'float.tif'} holds 32-bit float pixels "
                                        r"spanning 0\.\.255, where float pictures are read as 0\.\.1;"
                                        r" save it as an 8- or 16-bit PNG or TIFF\.$"):
        load_image(tmp_path / "float.tif")
    with pytest.raises(UserError, match=r"^style 1 holds 32-bit float pixels .* scale it to 0\.\.1"):
        load_image(Image.fromarray(array), "style 1")
    Image.fromarray(array / 255).save(tmp_path / "unit.tif")  # 0..1: read as it is
    assert np.allclose(load_image(tmp_path / "unit.tif").rgb[..., 0], array / 255, atol=1e-6)


@pytest.mark.parametrize("kind", ["grey8", "rgb8", "grey16", "rgb16", "palette", "grey2"])
def test_a_transparent_colour_key_becomes_alpha(tmp_path, kind):
    """A PNG's tRNS colour on grey or RGB (8 or 16 bits) made those pixels transparent in every
    viewer but opaque here: the alpha was lost without a word. A 2-bit grey's key is on the
    file's 0..3 scale, which Pillow scales for the pixels but not for the key."""
    import struct

    deep = kind.endswith("16")
    levels = (np.arange(20 * 30).reshape(20, 30) % 7 * (9000 if deep else 30)).astype(
        np.uint16 if deep else np.uint8)
    key = int(levels[0, 1])  # 9000 or 30: the whole 16 bits compared, not the high byte
    if kind == "grey2":
        levels = (np.arange(20 * 32).reshape(20, 32) % 4).astype(np.uint8)
        key = 1
        _png(tmp_path / "k.png", levels, 0, struct.pack(">H", key), depth=2)
    elif kind == "palette":
        Image.fromarray(levels).convert("P").save(tmp_path / "k.png", transparency=key)
    elif kind.startswith("grey"):
        _png(tmp_path / "k.png", levels, 0, struct.pack(">H", key))
    else:
        _png(tmp_path / "k.png", np.stack([levels] * 3, axis=2), 2, struct.pack(">HHH", *[key] * 3))
    picture = load_image(tmp_path / "k.png")
    assert picture.alpha is not None
    assert np.array_equal(picture.alpha == 0, levels == key)
    assert np.all(picture.alpha[levels != key] == 1)


def test_an_rgba_result_written_as_bmp_keeps_its_alpha(tmp_path):
    """`-o out.bmp` from an RGBA input wrote Pillow's BI_RGB BMP, whose fourth byte GIMP and
    Pillow read as padding: the transparency was gone. It is now a BITMAPV4HEADER with an alpha
    bit field, as GIMP writes (GIMP 3 read it back with alpha when checked by hand)."""
    rgb = rgb_noise(7, 9, seed=8)
    alpha = np.linspace(0, 1, 63, dtype=np.float32).reshape(7, 9)
    path = save_image(tmp_path / "out.bmp", rgb, alpha)
    with Image.open(path) as image:  # another reader sees the alpha
        assert image.mode == "RGBA" and image.info["compression"] == 3  # BI_BITFIELDS
        assert np.array_equal(np.asarray(image)[..., 3], np.round(alpha * 255).astype(np.uint8))
    back = load_image(path)
    assert np.abs(back.alpha - alpha).max() <= 0.5 / 255 + 1e-6
    assert np.abs(back.rgb - rgb).max() <= 0.5 / 255 + 1e-6
    with Image.open(save_image(tmp_path / "opaque.bmp", rgb)) as image:
        assert image.mode == "RGB"  # no alpha: a plain 24-bit BMP as before


@pytest.mark.parametrize("writer", ["pillow-bi-rgb", "bitfields-40-byte-header", "padding"])
def test_a_32_bit_bmp_whose_fourth_bytes_hold_alpha_keeps_it(tmp_path, writer):
    """A 32-bit BMP's alpha in the fourth bytes Pillow skips (BI_RGB, as Pillow itself writes
    RGBA; bit fields after a 40-byte header) was dropped; all zero, they are padding."""
    import struct

    alpha = (np.arange(6 * 10).reshape(6, 10) * 4).astype(np.uint8)
    rgba = np.dstack([(rgb_noise(6, 10, seed=9) * 255).astype(np.uint8),
                      np.zeros_like(alpha) if writer == "padding" else alpha])
    path = tmp_path / "a.bmp"
    if writer == "bitfields-40-byte-header":
        pixels = rgba[::-1][..., [2, 1, 0, 3]].tobytes()
        header = struct.pack("<IiiHHIIiiII4I", 40, 10, 6, 1, 32, 3, len(pixels), 0, 0, 0, 0,
                             0xFF0000, 0xFF00, 0xFF, 0xFF000000)
        path.write_bytes(b"BM" + struct.pack("<IHHI", 14 + len(header) + len(pixels), 0, 0,
                                             14 + len(header)) + header + pixels)
    else:
        Image.fromarray(rgba, "RGBA").save(path)
    with Image.open(path) as image:
        assert image.mode == "RGB"  # what Pillow alone makes of it
    picture = load_image(path)
    assert np.array_equal(picture.rgb, rgba[..., :3] / np.float32(255))
    if writer == "padding":
        assert picture.alpha is None
    else:
        assert np.array_equal(picture.alpha, alpha / np.float32(255))


def test_16_bit_grey_with_alpha_keeps_16_bits(tmp_path):
    """A 16-bit grey-and-alpha PNG (GIMP's export of a 16-bit grey layer with transparency) was
    read as 8-bit RGBA: grey and alpha each lost 8 bits without a word."""
    grey = np.linspace(0, 65535, 20 * 30).astype(np.uint16).reshape(20, 30)
    alpha = grey[::-1, ::-1].copy()
    picture = load_image(_png(tmp_path / "la16.png", np.stack([grey, alpha], axis=2), 4))
    assert np.array_equal(np.round(picture.rgb[..., 1] * 65535), grey)
    assert np.array_equal(np.round(picture.alpha * 65535), alpha)
    assert len(np.unique(picture.rgb[..., 0])) == 20 * 30  # not 256


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "RGB"])
def test_a_tiff_turned_by_its_orientation_tag_is_upright_and_whole(tmp_path, mode):
    """Pillow 13 memory-maps an uncompressed L, I;16 or RGBA TIFF at its turned size, so an
    Orientation of 5..8 (a scanner's or camera's portrait TIFF) came out garbled: each row's
    pixels from the wrong place."""
    from stylefu.core.io.images import _upright  # tested against ImageOps above

    rng = np.random.default_rng(11)
    samples = {"L": lambda: rng.integers(0, 256, (10, 20), dtype=np.uint8),
               "I;16": lambda: rng.integers(0, 65536, (10, 20), dtype=np.uint16),
               "RGBA": lambda: rng.integers(0, 256, (10, 20, 4), dtype=np.uint8),
               "RGB": lambda: rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)}[mode]()
    scale = 65535 if mode == "I;16" else 255
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.tif"
        Image.fromarray(samples).save(path, tiffinfo={274: orientation})
        picture = load_image(path)
        stacked = samples if samples.ndim == 3 else samples[..., None]
        expected = _upright(stacked, orientation)
        assert np.array_equal(np.round(picture.rgb * scale), np.broadcast_to(
            expected[..., :3], picture.rgb.shape)), orientation
        if mode == "RGBA":
            assert np.array_equal(np.round(picture.alpha * 255), expected[..., 3]), orientation


def test_a_12_bit_grey_tiff_is_read_by_its_12_bits(tmp_path):
    """A 12-bit grey TIFF (a scientific or machine-vision camera's) unpacks to 0..4095 in
    Pillow's 16-bit mode and was divided by 65535: 16x too dark. Its BitsPerSample says 12."""
    import struct

    height, width = 4, 6
    values = (np.arange(height * width).reshape(height, width) * 170 + 5).astype(np.uint16)
    flat = [int(v) for v in values.ravel()]
    packed = b"".join(bytes([a >> 4, (a & 15) << 4 | b >> 8, b & 255])  # two samples, 3 bytes
                      for a, b in zip(flat[::2], flat[1::2]))
    entries = [(256, width), (257, height), (258, 12), (259, 1), (262, 1), (273, None),
               (277, 1), (278, height), (279, len(packed))]
    start = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, 4, 1, start if value is None else value) for tag, value in entries)
    (tmp_path / "g12.tif").write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 4 + packed)
    with Image.open(tmp_path / "g12.tif") as image:
        assert image.mode == "I;16" and image.tile[0].args[0] == "I;12"
    with Image.open(tmp_path / "g12.tif") as opened:  # the API given the opened file
        for picture in (load_image(tmp_path / "g12.tif"), load_image(opened)):
            assert np.allclose(picture.rgb[..., 0], values / 4095, atol=1e-6)


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("channels", [3, 4], ids=["RGB", "RGBA"])
def test_a_16_bit_tiff_stored_per_channel_keeps_its_pixels(tmp_path, order, channels):
    """Photoshop's "per channel" pixel order (PlanarConfiguration 2), uncompressed: Pillow read
    each 16-bit plane's bytes as 8-bit samples, a scrambled picture with exit 0."""
    tifffile = pytest.importorskip("tifffile")
    samples = np.random.default_rng(channels).integers(0, 65536, (30, 40, channels), np.uint16)
    path = tmp_path / "planes.tif"
    tifffile.imwrite(path, np.moveaxis(samples, -1, 0), photometric="rgb", planarconfig="separate",
                     byteorder=order, extrasamples=[2] * (channels - 3))
    with Image.open(path) as opened:  # the API given the opened file, too
        for picture in (load_image(path), load_image(opened)):
            assert np.abs(picture.rgb - samples[..., :3] / 65535).max() < 1e-6
            if channels == 4:
                assert np.abs(picture.alpha - samples[..., 3] / 65535).max() < 1e-6


def test_a_16_bit_grey_tiff_stored_white_at_zero_is_no_negative(tmp_path):
    """PhotometricInterpretation MinIsWhite (0 is white): Pillow turns 8-bit grey round, not
    16-bit, which loaded as its negative with exit 0."""
    tifffile = pytest.importorskip("tifffile")
    grey = np.linspace(0, 65535, 1200).astype(np.uint16).reshape(30, 40)
    for compression in (None, "zlib"):
        path = tmp_path / f"white-at-zero-{compression}.tif"
        tifffile.imwrite(path, 65535 - grey, photometric="miniswhite", compression=compression)
        with Image.open(path) as opened:
            for picture in (load_image(path), load_image(opened)):
                assert np.abs(picture.rgb[..., 0] - grey / 65535).max() < 1e-6, compression
    tifffile.imwrite(tmp_path / "8.tif", 255 - (grey >> 8).astype(np.uint8), photometric="miniswhite")
    assert np.abs(load_image(tmp_path / "8.tif").rgb[..., 0] - (grey >> 8) / 255).max() < 1e-6


def test_a_float_colour_tiff_is_named_as_a_tiff(tmp_path):
    """A 32-bit float RGB TIFF (GIMP's, Krita's or darktable's float export), which Pillow cannot
    open, was told "not an image stylefu can read; save it as PNG, JPEG or TIFF": it is a TIFF."""
    import struct

    height, width = 8, 10
    pixels = rgb_noise(height, width).astype("<f4").tobytes()
    entries = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None),
               (277, 3), (278, height), (279, len(pixels)), (284, 1), (339, None)]
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    offsets = {258: ifd_end, 339: ifd_end + 6, 273: ifd_end + 12}
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, 3 if tag in (258, 339) else 4, 3 if tag in (258, 339) else 1,
                    offsets.get(tag, value)) for tag, value in entries)
    path = tmp_path / "float.tif"
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 4
                     + struct.pack("<3H", 32, 32, 32) + struct.pack("<3H", 3, 3, 3) + pixels)
    with pytest.raises(UserError, match=rf"^{path} is a TIFF of a kind stylefu cannot read "
                                        r"\(float colour, for one\); save it as an 8- or 16-bit "
                                        r"PNG or TIFF\.$"):
        load_image(path)


def test_images_loaded_from_threads_at_once_leave_the_process_as_it_was(tmp_path, capfdbinary):
    """A TIFF's load sends fd 2 to a file (libtiff's lines) and sets warning filters: two
    threads at once (a preview painting two TIFF styles) left fd 2 on a removed file, so every
    later line of the command was lost, and the filters changed. What another thread writes
    meanwhile is not libtiff's: the TIFF loads and those bytes reach stderr as they were."""
    import os
    import threading
    import warnings

    paths = [tmp_path / f"t{i}.tif" for i in range(3)]
    for i, path in enumerate(paths):
        Image.fromarray((rgb_noise(90 + i, 120, seed=i) * 255).astype(np.uint8)).save(
            path, compression="tiff_deflate")
    filters, stderr = list(warnings.filters), os.fstat(2)
    failed, stop = [], threading.Event()

    def load_all(path):
        try:
            for _ in range(40):
                load_image(path)
        except Exception as exc:  # noqa: BLE001 (reported by the assertion)
            failed.append(exc)

    said = (b"Another thread: line\n", b"\rbar \xff 50%")  # a line; a progress bar's redraw

    def write_lines():
        while not stop.wait(0.001):
            for chunk in said:
                os.write(2, chunk)
    threads = [threading.Thread(target=load_all, args=(p,)) for p in paths]
    writer = threading.Thread(target=write_lines)
    for thread in [writer, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    writer.join()
    assert not failed, failed[0]
    assert warnings.filters == filters
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (stderr.st_ino, stderr.st_dev)
    os.write(2, b"last line\n")
    err = capfdbinary.readouterr().err
    assert err.count(said[0]) > 10 and err.count(said[0]) == err.count(said[1])
    assert err.replace(said[0], b"").replace(said[1], b"") == b"last line\n"
