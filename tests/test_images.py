"""Image input/output: modes, orientation, alpha, 16-bit, and the user errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rgb_noise
from PIL import Image

from stylefu.core.errors import UserError
from stylefu.core.io.images import load_image, save_image


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


def test_npy_round_trip_is_exact(tmp_path):
    rgb = rgb_noise(12, 16)
    save_image(tmp_path / "x.npy", rgb, rgb[..., 0])
    back = load_image(tmp_path / "x.npy")
    assert np.array_equal(back.rgb, rgb) and np.array_equal(back.alpha, rgb[..., 0])


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
