"""Faults of the environment and of damaged inputs (issue 31), against real files, real processes
and real full or read-only file systems.

Each case asserts what the README's "What is guaranteed" table promises: the exit code, one
sentence naming the culprit (no traceback), the inputs unchanged and nothing left behind (no
temporary file, no orphan cache entry). Whatever could hang (a FIFO read) runs in a subprocess
with a timeout, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_fuzz
from PIL import Image
from test_fuzz import RUN, STYLEFU, assert_refused, cli, run_args, special, strict_records

from stylefu.core.batch.driver import BatchItem, remove_stale_temporaries
from stylefu.core.errors import UserError
from stylefu.core.io import files
from stylefu.core.io.images import PILLOW_FORMATS, load_image

TIMEOUT = 120  # seconds for one subprocess: far above its run time, far below a hung suite
world = test_fuzz.world  # the fixture: a scratch folder with inputs, a model and a snapshot


def stylefu(args, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    """The installed `stylefu` script as a real process (stdin closed, pipes for the rest)."""
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([str(STYLEFU), *map(str, args)], cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, **kwargs)


def one_error(err: str) -> str:
    """The one `stylefu: error:` sentence on stderr (no traceback), without its prefix."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("stylefu: error:")]
    assert len(lines) == 1, err
    message = lines[0].removeprefix("stylefu: error: ")
    assert message.endswith(".") and not re.search(r"\.\s+[A-Z]", message), message
    return message


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files (ours are hidden `.NAME.PID.HEX.tmp` siblings) under `folders`."""
    return [p for folder in folders for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --- 1. a cache on a full or read-only file system only costs speed ----------------------------

def mount_small_filesystem(folder: Path, state: str, stack: contextlib.ExitStack) -> Path | None:
    """A 64 kB tmpfs at `folder`, `full` (filled to the last byte) or `read-only` (remounted),
    unmounted when `stack` closes; None where mounting is not possible (not root)."""
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return None
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        return None
    stack.callback(subprocess.run, ["umount", str(folder)], check=False)
    if state == "full":
        with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return folder


def read_only_folder(folder: Path, stack: contextlib.ExitStack) -> Path:
    """A read-only file system at `folder`; not root, a folder without write permission (which
    does the same to a process that is not root either), writable again when `stack` closes."""
    mounted = mount_small_filesystem(folder, "read-only", stack)
    if mounted is not None:
        return mounted
    folder.chmod(0o555)
    stack.callback(folder.chmod, 0o755)
    return folder


def file_size_limit(limit: int):
    """For Popen's preexec_fn: no file this process (or its children) writes may grow past
    `limit` bytes, and a write past it fails with EFBIG ("File too large") instead of SIGXFSZ
    killing the process: a per-file quota, real in the kernel."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored stays ignored across exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


LIMIT = 4 << 20  # a per-file limit the torch copy (52 MB) and the gradient graph (100 MB) exceed


def test_cache_on_a_full_or_read_only_filesystem_or_past_a_size_limit_costs_only_speed(
        world, tmp_path):
    """Both engines, each with its cache writes (the torch copy of the weights, the targets, the
    torch-free engine's gradient graph) refused by RLIMIT_FSIZE (EFBIG, the big ones
    half-written), by a full disk (ENOSPC) and the torch engine's by a read-only file system
    (EROFS; these two where this may mount a tmpfs): exit 0, strict JSON, the same bytes as with
    a working cache, nothing (not even half a file) written there, what fits kept."""
    with contextlib.ExitStack() as stack:
        full = mount_small_filesystem(tmp_path / "full", "full", stack)
        read_only = mount_small_filesystem(tmp_path / "ro", "read-only", stack)
        filler = full and (full / "filler").stat().st_size
        caches = {"working": tmp_path / "cache", "size limit": tmp_path / "limited"}
        if full and read_only:
            caches |= {"full": full / "cache", "read-only": read_only}
        procs = {}
        for engine in ("torch", "onnx"):
            for name, cache in caches.items():
                if (engine, name) == ("onnx", "read-only"):
                    continue  # the same path as a full disk's: cache_write fails
                out = world.root / f"{engine}-{name}.png"
                procs[engine, name] = (out, stylefu(
                    run_args(world, out, ["--engine", engine]), world.root,
                    {"STYLEFU_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
                    preexec_fn=file_size_limit(LIMIT) if name == "size limit" else None))
        for (engine, name), (_, proc) in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0 and "Traceback" not in stderr, (engine, name, stderr)
            assert strict_records(stdout)[-1]["event"] == "result"
        for engine, name in procs:
            reference = (world.root / f"{engine}-working.png").read_bytes()
            assert (world.root / f"{engine}-{name}.png").read_bytes() == reference, (engine, name)
        if full and read_only:
            assert [p.name for p in full.rglob("*") if p.is_file()] == ["filler"]
            assert (full / "filler").stat().st_size == filler
            assert not list(read_only.iterdir())
        written = {p.relative_to(caches["working"]).parts[0]
                   for p in caches["working"].rglob("*") if p.is_file()}
        assert {"torch-weights", "gradient"} <= written  # the writes the others refused
        kept = {p.relative_to(caches["size limit"]).parts[0]
                for p in caches["size limit"].rglob("*") if p.is_file()}
        assert kept == {"targets", "speed.json"}, kept  # the big two refused, nothing half
        assert not leftovers(world.root, caches["working"], caches["size limit"])


def test_an_uncreatable_compile_cache_folder_costs_only_speed(world, tmp_path):
    """$TORCHINDUCTOR_CACHE_DIR inherited from elsewhere (here: under a file) is created when torch
    imports its compiler, which torch.optim does: the run goes on without it."""
    (tmp_path / "file").write_text("not a folder")
    out = world.root / "out.png"
    proc = stylefu(run_args(world, out),
                   world.root, {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "file" / "inductor"),
                                "STYLEFU_CACHE": str(tmp_path / "cache")})
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert strict_records(stdout)[-1]["event"] == "result" and out.exists()


def test_output_past_a_file_size_limit_ends_in_one_sentence(world, tmp_path):
    """RLIMIT_FSIZE at 100 bytes: every write fails with EFBIG, the cache's (only speed) and
    `-o`'s: one sentence naming it and the cause, exit 2, nothing left behind."""
    before = world.snapshot()
    out, cache = world.root / "out.png", tmp_path / "cache"
    proc = stylefu(run_args(world, out), world.root, {"STYLEFU_CACHE": str(cache),
                                                      "OMP_NUM_THREADS": "1"},
                   preexec_fn=file_size_limit(100))
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2, stderr
    message = one_error(stderr)
    assert str(out) in message and "File too large" in message, message
    assert strict_records(stdout)[-1] == {"event": "error", "message": message}
    assert world.snapshot() == before and not leftovers(world.root, cache)
    assert not [p for p in cache.rglob("*") if p.is_file()]


class _OverQuotaFile:
    """A file opened for writing whose writes fail as on a full quota (EDQUOT)."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@contextlib.contextmanager
def over_quota(folder: Path, monkeypatch):
    """In this process, every file opened for writing under `folder` fails its writes with
    EDQUOT ("Disk quota exceeded"): Python's open (Pillow, numpy, onnx, pathlib, json, the
    plug-in's logs, inductor's sources) and torch.save, whose writer then gets such a file."""
    import builtins

    import torch

    real_open, real_save, folder = builtins.open, torch.save, str(folder.resolve())

    def under(file) -> bool:
        if isinstance(file, int):
            with contextlib.suppress(OSError):
                file = os.readlink(f"/proc/self/fd/{file}")
        return isinstance(file, (str, os.PathLike)) and \
            os.path.abspath(os.fspath(file)).startswith(folder + os.sep)

    def quota_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        return _OverQuotaFile(opened) if set(mode) & set("wax+") and under(file) else opened

    def quota_save(obj, f, *args, **kwargs):
        if under(f):
            with quota_open(f, "wb") as file:
                return real_save(obj, file, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", quota_open)
        patch.setattr(io, "open", quota_open)
        patch.setattr(torch, "save", quota_save)
        yield


def test_cache_over_quota_costs_only_speed(world, tmp_path, monkeypatch, capsys):
    """EDQUOT on every cache write (targets, the torch copy, the gradient graph, speed.json, the
    plug-in's run logs), both engines: exit 0, the same bytes as with a working cache, no file
    left in the cache; `-o` over quota: one sentence naming it and the quota, exit 2, nothing
    left behind."""
    from stylefu.core.engines.onnx import engine as onnx_engine
    from stylefu.core.engines.torch import model as torch_model
    from stylefu.plugin.common import stylefu_bridge as bridge

    quota = tmp_path / "quota"
    quota.mkdir()
    for engine in ("torch", "onnx"):
        for name in ("working", "quota"):
            monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path / "cache" if name == "working"
                                                    else quota / "cache"))
            # Each run loads its model into its own cache (not one an earlier test loaded).
            torch_model._load.cache_clear()
            onnx_engine._load.cache_clear()
            out = world.root / f"{engine}-{name}.png"
            with over_quota(quota, monkeypatch):
                done = cli(capsys, *run_args(world, out, ["--engine", engine]))
            assert done.code == 0 and "Traceback" not in done.err, (engine, name, done.err)
        reference = (world.root / f"{engine}-working.png").read_bytes()
        assert (world.root / f"{engine}-quota.png").read_bytes() == reference, engine
    cache = tmp_path / "cache"
    written = {p.relative_to(cache).parts[0] for p in cache.rglob("*") if p.is_file()}
    assert {"torch-weights", "gradient", "targets", "speed.json"} <= written  # the quota refused
    with over_quota(quota, monkeypatch):
        assert bridge.start_log({"log_dir": str(quota / "cache" / "gimp-logs")}) != \
            str(quota / "cache" / "gimp-logs")  # another folder, or none: never an error
        bridge.log("a line no log can take")
    assert not [p for p in quota.rglob("*") if p.is_file()]  # not even an empty log

    before = world.snapshot()
    out = quota / "out.png"
    with over_quota(quota, monkeypatch):
        refused = cli(capsys, *run_args(world, out))
    assert refused.code == 2
    message = one_error(refused.err)
    assert str(out) in message and "quota" in message, message
    assert strict_records(refused.out)[-1] == {"event": "error", "message": message}
    assert world.snapshot() == before and not list(quota.glob("*.png")) and not leftovers(quota)


# --- 2. truncated and corrupt images: one sentence, exit 2, never a blank painting -------------

def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


# The PNG specification's Adam7 passes, (x start, y start, x step, y step): an oracle of its own.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))


def png_cut_short(width: int, height: int, keep: float, interlaced: bool = False) -> bytes:
    """A well-formed PNG (valid zlib stream, CRCs and IEND) whose image data holds only the first
    `keep` of the rows' bytes (of the Adam7 passes when `interlaced`): what Pillow alone accepts."""
    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    raw = b"".join(b"\x00" + row.tobytes() for x0, y0, dx, dy in passes
                   for row in pixels[y0::dy, x0::dx] if row.size)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw[: int(len(raw) * keep)])) + chunk(b"IEND", b""))


def encoded(fmt: str, height: int, width: int) -> bytes:
    """A picture with gradients and noise (a photo's compressibility) in format `fmt`."""
    return encoded_with(fmt, height, width)


def encoded_with(fmt: str, height: int, width: int, **options) -> bytes:
    """`encoded`, with Pillow's save `options`."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 24, (height, width, 3))
    pixels = (np.stack([x, y, x + y], axis=2) % 232 + noise).astype(np.uint8)
    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, pixels.astype(np.float32) / 255)
        return buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp",
          "GIF": ".gif", "npy": ".npy", **({"AVIF": ".avif"} if ".avif" in PILLOW_FORMATS else {})}
CUTS = (0.02, 0.5, 0.97)  # in the header, in the middle of the data, just before the end


def _tiff_tag_set(data: bytes, tag: int, value: int) -> bytes:
    """A little-endian TIFF with one tag's (short or long, one value) first IFD entry set."""
    import struct

    out = bytearray(data)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (count,) = struct.unpack_from("<H", out, ifd)
    for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", out, at)[0] == tag:
            struct.pack_into("<I", out, at + 8, value)
            return bytes(out)
    raise AssertionError(f"no tag {tag}")


# Damage Pillow met with another error than OSError (found by the random damage below), or with
# a log line on stderr beside our sentence.
DAMAGED = {
    "PNG, its IHDR chunk 2 bytes long": ("PNG", lambda d: d[:11] + bytes([2]) + d[12:]),
    "BMP, 24 bits with RLE8 compression": ("BMP", lambda d: d[:30] + bytes([1]) + d[31:]),
    "TIFF, 2048 samples per pixel": ("TIFF", lambda d: _tiff_tag_set(d, 277, 2048)),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_headers_are_refused_in_one_sentence(case, tmp_path):
    """A PNG or BMP whose header Pillow refuses with ValueError was an internal error; a TIFF
    Pillow logs an error about put a stray line on stderr (logging's last resort, so the command
    itself is run: pytest's own log handler would hide it) beside our sentence. Now each is one
    sentence naming the file, Pillow's words inside it (the model is not reached)."""
    fmt, damage = DAMAGED[case]
    path = tmp_path / f"damaged{SUFFIX[fmt]}"
    path.write_bytes(damage(encoded(fmt, 48, 64)))
    done = subprocess.run([sys.executable, "-m", "stylefu.core", "run", path, path, "-o",
                           tmp_path / "out.png", "--model", tmp_path / "no-model.onnx"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("stylefu: error: "), done.stderr
    assert len(done.stderr.splitlines()) == 1 and path.name in done.stderr, done.stderr


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_randomly_damaged_images_load_or_are_refused_in_one_sentence(fmt, tmp_path, capfd):
    """Bytes overwritten anywhere (1 to 16 of them, 200 files a format): a picture or a UserError
    naming the file with nothing else on stderr, never another exception (libavif's RuntimeError
    on a damaged AVIF was an internal error); the API's `Image.open(path)` that opens likewise
    (Pillow's OSError or ValueError came through as they were)."""
    data = encoded(fmt, 48, 64)
    rng = np.random.default_rng(7)
    path = tmp_path / f"damaged{SUFFIX[fmt]}"
    for _ in range(200):
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), rng.choice([1, 2, 4, 16])):
            damaged[at] = rng.integers(0, 256)
        path.write_bytes(damaged)
        capfd.readouterr()
        with warnings.catch_warnings():  # a picture that loads may repeat Pillow's warnings
            warnings.simplefilter("ignore")
            try:
                load_image(path)
            except UserError as exc:
                assert path.stem in str(exc) and capfd.readouterr().err == "", exc
            if fmt == "npy":
                continue
            try:
                image = Image.open(path)
            except Exception:  # refused by the caller's own open: nothing reaches stylefu
                continue
            with image:
                try:
                    load_image(image, "damaged")
                except UserError as exc:
                    assert "damaged" in str(exc)


@pytest.mark.parametrize("size", [(48, 64), (700, 1000)])
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_truncated_images_are_refused(fmt, size, tmp_path):
    """Every format cut short at three points, at a small and a large size: a UserError naming
    the file (the CLI's one sentence), never a picture with blank rows."""
    data = encoded(fmt, *size)
    path = tmp_path / f"cut{SUFFIX[fmt]}"
    for cut in CUTS:
        path.write_bytes(data[: max(1, int(len(data) * cut))])
        with pytest.raises(UserError, match=re.escape(path.name)):
            load_image(path)
    path.write_bytes(data)
    assert load_image(path).rgb.shape == (*size, 3)  # the whole file loads


@pytest.mark.parametrize("interlaced", [False, True])
def test_png_whose_data_stops_early_is_refused(interlaced, tmp_path):
    """Well-formed PNGs whose data stops early (no row, a few, half, all but one byte): refused;
    the whole data: loads, the same pixels."""
    path = tmp_path / "short.png"
    for keep in (0, 0.03, 0.5, 0.9999):
        path.write_bytes(png_cut_short(50, 36, keep, interlaced))
        with pytest.raises(UserError, match="truncated or damaged"):
            load_image(path)
    path.write_bytes(png_cut_short(50, 36, 1.0, interlaced))
    pixels = (np.random.default_rng(0).random((36, 50, 3)) * 255).astype(np.uint8)
    assert np.array_equal(np.round(load_image(path).rgb * 255), pixels)


def damaged_tiff(compression: str, pattern: bytes) -> bytes:
    """A compressed TIFF whose strip data (the file's middle) is overwritten with `pattern`: its
    header and IFD are whole, so Pillow hands the strips to libtiff, which reports the damage on
    stderr."""
    data = bytearray(encoded_with("TIFF", 150, 203, compression=compression))
    n = len(data)
    data[n // 4:n // 2] = (pattern * n)[:n // 2 - n // 4]
    return bytes(data)


# Per codec: a damage (the pattern written over its strips) and libtiff's own words for it, which
# go into our sentence, not beside it. JPEG-in-TIFF: libtiff reports the error, yet Pillow
# returned a picture with blank strips before (now refused).
LIBTIFF_SAYS = {"tiff_deflate": (b"\0", "ZIPDecode"), "packbits": (b"\0", "PackBitsDecode"),
                "tiff_lzw": (b"\0", "Using code not yet in table"),
                "jpeg": (b"\xff\x48", "JPEGLib: Unsupported marker type 0x48")}


def test_damaged_tiff_prints_only_our_sentence(world, capfd):
    """Through the command line, fd 2 included (libtiff writes there, not to sys.stderr): exit 2,
    every stderr line ours, libtiff's text inside the one sentence naming the file."""
    from stylefu.core.cli.main import main

    for compression, (pattern, words) in LIBTIFF_SAYS.items():
        damaged = world.root / f"{compression}.tif"
        damaged.write_bytes(damaged_tiff(compression, pattern))
        before = world.snapshot()
        args = run_args(world)
        args[1] = str(damaged)
        code = main(args)
        out, err = capfd.readouterr()
        assert code == 2, err
        assert all(line.startswith("stylefu: ") for line in err.splitlines()), err
        message = one_error(err)
        assert message.startswith(f"{damaged} is truncated or damaged") and words in message
        assert strict_records(out)[-1] == {"event": "error", "message": message}
        assert world.snapshot() == before


def test_npy_promising_terabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (100000, 100000, 3)})
        f.write(b"\0" * 1024)
    with pytest.raises(UserError, match="huge.npy is truncated"):  # not a MemoryError
        load_image(path)


def jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def closed_cuts(data: bytes, points=(0.02, 0.5, 0.97, 0.995)) -> list[bytes]:
    """`data` cut at `points` of its entropy-coded data (after the headers), each closed with an
    end marker (FF D9): what Pillow alone decodes, the missing blocks grey. (A cut inside the last
    MCU, which leaves no grey pixel, is the known limit: README.)"""
    start = data.find(b"\xff\xda") + 20
    return [data[:start + int((len(data) - start) * p)] + b"\xff\xd9" for p in points]


# Baseline variants: chroma subsampling 4:2:0, 4:2:2, 4:4:4, greyscale, restart intervals (every
# 5 MCUs, every MCU row), optimised Huffman tables.
JPEG_VARIANTS = {"4:2:0": {}, "4:2:2": {"subsampling": 1}, "4:4:4": {"subsampling": 0},
                 "grey": {"grey": True}, "restart 5": {"restart_marker_blocks": 5},
                 "restart row": {"restart_marker_rows": 1, "subsampling": 0},
                 "optimised": {"optimize": True}}


def jpeg_picture(variant: str, height: int = 150, width: int = 203) -> tuple[np.ndarray, dict]:
    """A picture for `variant` (odd sizes: partial MCUs at the edges) and its save options."""
    options = dict(JPEG_VARIANTS[variant])
    pixels = np.array(Image.open(io.BytesIO(encoded("PNG", height, width))))
    if options.pop("grey", False):
        pixels = pixels[..., 1]
    return pixels, options


@pytest.mark.parametrize("variant", list(JPEG_VARIANTS))
def test_jpeg_cut_and_closed_with_an_end_marker_is_refused(variant, tmp_path):
    """Baseline JPEGs cut short (early, in the middle, near the end, in the last MCU row) and
    closed with an end marker: refused with the one sentence; the whole file loads."""
    pixels, options = jpeg_picture(variant)
    data = jpeg_bytes(pixels, **options)
    path = tmp_path / "cut.jpg"
    for cut in closed_cuts(data):
        path.write_bytes(cut)
        with pytest.raises(UserError, match="cut.jpg is truncated or damaged: its image data "
                           "stops before the 203x150 pixels"):
            load_image(path)
    path.write_bytes(data)
    assert load_image(path).rgb.shape == (150, 203, 3)


@pytest.mark.parametrize("variant", ["4:2:0", "4:4:4", "grey", "restart 5"])
def test_jpeg_with_a_genuine_grey_128_bottom_loads(variant, tmp_path, monkeypatch):
    """A valid JPEG whose bottom is flat grey 128 (what a missing block decodes to) loads: the walk
    of its data, which the grey last MCU triggers, finds every MCU; the same file cut is refused."""
    from stylefu.core.io import jpeg

    pixels, options = jpeg_picture(variant)
    pixels[90:] = 128
    data = jpeg_bytes(pixels, **options)
    path = tmp_path / "grey.jpg"
    path.write_bytes(data)
    walks = []
    monkeypatch.setattr(jpeg, "_holds_mcus", lambda *a, f=jpeg._holds_mcus: walks.append(f(*a))
                        or walks[-1])
    loaded = load_image(path)
    assert walks == [True] and np.all(np.round(loaded.rgb[-1] * 255) == 128)
    path.write_bytes(closed_cuts(data, (0.5,))[0])
    with pytest.raises(UserError, match="truncated or damaged"):
        load_image(path)


def test_a_valid_jpeg_costs_no_walk_of_its_data(tmp_path, monkeypatch):
    """A photo-like JPEG (its last MCU not grey 128) is judged by its markers alone: no Huffman
    walk, so big valid photos load at libjpeg's speed."""
    from stylefu.core.io import jpeg

    monkeypatch.setattr(jpeg, "_holds_mcus", lambda *a: pytest.fail("walked a valid photo"))
    for variant in ("4:2:0", "grey", "restart 5"):
        pixels, options = jpeg_picture(variant, 700, 1000)
        path = tmp_path / "photo.jpg"
        path.write_bytes(jpeg_bytes(pixels, **options))
        assert load_image(path).rgb.shape == (700, 1000, 3)


def test_progressive_jpeg_missing_scans_is_refused(tmp_path):
    """A progressive JPEG cut before its last scan and closed with an end marker (it decodes as a
    plausible blurred picture): refused, its scans do not bring every coefficient to full
    precision. A cut inside the last scan (the last bit of the luminance's detail) is the known
    limit (README)."""
    from stylefu.core.io import jpeg

    pixels, _ = jpeg_picture("4:2:0")
    data = jpeg_bytes(pixels, progressive=True)
    last_scan = data.rfind(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    for keep in (0.05, 0.2, last_scan / len(data) - 0.01):
        path.write_bytes(data[: int(len(data) * keep)] + b"\xff\xd9")
        with pytest.raises(UserError, match="cut.jpg is truncated or damaged"):
            load_image(path)
    path.write_bytes(data)
    assert load_image(path).rgb.shape == (150, 203, 3)
    assert jpeg.cut_short(data, None) is False  # progressive: judged by its scans only


def test_run_refuses_a_jpeg_cut_and_closed_in_one_sentence(world, capsys):
    """Through the command line: exit 2, one sentence naming the file, nothing written."""
    cut = world.root / "cut.jpg"
    cut.write_bytes(closed_cuts(jpeg_bytes(jpeg_picture("4:2:0", 48, 64)[0]), (0.5,))[0])
    before = world.snapshot()
    args = run_args(world)
    args[2] = str(cut)  # the style
    message = assert_refused(cli(capsys, *args), ["cut.jpg"], before, world)
    assert "truncated or damaged" in message


def test_run_refuses_the_issues_png_in_one_sentence(world, capsys):
    """The issue's case through the command line: a 9000x9000 header and about 90 bytes of data
    (three whole rows): exit 2 with one sentence and a JSON error event, no output, inputs
    unchanged, at once (not after painting 81 blank megapixels)."""
    short = world.root / "short.png"
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0))
    data = zlib.compress(bytes(3 * (1 + 3 * 9000)), 9)
    assert len(data) < 120
    short.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    before = world.snapshot()
    args = run_args(world)
    args[1] = str(short)
    started = time.perf_counter()
    message = assert_refused(cli(capsys, *args), ["short.png"], before, world)
    assert "truncated or damaged" in message and time.perf_counter() - started < 20


# --- 3. special files anywhere an input goes: refused before any work, never a hang ------------

WORDS = {"fifo": "FIFO", "char device": "character device", "socket": "socket",
         "folder": "folder"}
# (command, where the special file goes): every input path of `run` and `batch`.
PLACES = [("run", "content"), ("run", "style"), ("run", "--mask"), ("run", "--init"),
          ("batch", "--style"), ("batch", "--mask"), ("batch", "--init"), ("batch", "@list")]


@pytest.mark.parametrize("kind", list(WORDS))
def test_special_files_as_inputs_are_refused_before_any_work(kind, world):
    """A FIFO, a device whose reads never end (/dev/full), a socket or a folder in every input place:
    exit 2 within the timeout, one sentence naming it and what it is, nothing written."""
    procs = {}
    for command, place in PLACES:
        name = f"{command}-{place.strip('-@')}{'.txt' if place == '@list' else '.png'}"
        path = special(world, kind, name)
        out = world.root / ("out" if command == "batch" else "out.png")
        if command == "run":
            args = run_args(world, out)
            if place in ("content", "style"):
                args[1 if place == "content" else 2] = str(path)
            else:
                args += [place, str(path)]
        else:
            inputs = ["@" + str(path)] if place == "@list" else [str(world.content)]
            args = ["batch", *inputs, "--style", str(path if place == "--style" else world.style),
                    "-o", out, "--model", world.model, *RUN, "--progress", "json", "--workers", "1"]
            if place in ("--mask", "--init"):
                args += [place, str(path)]
        procs[command, place] = (path, stylefu(args, world.root))
    before = world.snapshot()
    for (command, place), (path, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{command} with a {kind} as {place} hung")
        assert proc.returncode == 2, (command, place, stderr)
        message = one_error(stderr)
        assert path.name in message and WORDS[kind] in message, (command, place, message)
        assert strict_records(stdout)[-1] == {"event": "error", "message": message}
        assert "engine" not in stderr  # refused before the model loaded
    assert world.snapshot() == before and not (world.root / "out").exists()


def test_batch_with_a_fifo_among_its_inputs_does_the_others(world):
    """The issue's case: `stylefu batch fifo.png good.png`: the FIFO's item fails alone with one
    sentence, without being opened; the good item is written."""
    fifo = special(world, "fifo", "fifo.png")
    out = world.root / "out"
    proc = stylefu(["batch", fifo, world.content, "--style", world.style, "-o", out, "--model",
                    world.model, *RUN, "--progress", "json", "--workers", "1"], world.root)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a FIFO among the inputs hung the batch")
    assert proc.returncode == 3 and "Traceback" not in stderr, stderr  # 3: some items failed
    items = {Path(r["input"]).name: r for r in strict_records(stdout) if r["event"] == "item"}
    assert items["fifo.png"]["status"] == "failed" and "FIFO" in items["fifo.png"]["error"]
    assert items["content.png"]["status"] == "ok"
    assert load_image(out / "content.png").width == 64 and not (out / "fifo.png").exists()
    assert not leftovers(world.root)


# --- 4, 5. exports leave nothing behind: no torch copy, no stale or losing gradient graph ------

def graphs_beside(model: Path) -> list[Path]:
    return sorted(model.parent.glob(f"{model.stem}.gradient-*.onnx"))


def test_exports_leave_nothing_behind(tmp_path, monkeypatch):
    """Two exports to one -o at once (other seeds), then a re-export: a whole model; beside it
    exactly its own gradient graph (the loser's and the stale one removed); an empty cache (no
    torch copy named after a temporary file); no temporary file."""
    from stylefu.core.engines.onnx.gradient import sibling_path
    from stylefu.core.network.vgg import CONTENT_LAYER, read_artifact
    from stylefu.export import export

    cache = tmp_path / "cache"
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "m.onnx"
    env = {"STYLEFU_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    procs = [stylefu(["export", "--weights", "random", "--seed", seed, "-o", model], tmp_path, env)
             for seed in ("1", "2")]
    for proc in procs:
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr
    info, _ = read_artifact(model)  # whole: it parses, and it is one of the two
    assert info.weights_source in ("random (seed 1)", "random (seed 2)")
    assert graphs_beside(model) == [sibling_path(model, CONTENT_LAYER)]
    monkeypatch.setenv("STYLEFU_CACHE", str(cache))
    export("random", model, seed=3, progress=False, gradient=True)  # other weights, same path
    assert graphs_beside(model) == [sibling_path(model, CONTENT_LAYER)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["m.onnx", sibling_path(model, CONTENT_LAYER).name])  # no temporary file either
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_the_torch_free_engine_never_pairs_a_model_with_another_ones_graph(model_path, tmp_path,
                                                                           monkeypatch):
    """An export (other weights) renamed onto the model between the engine's load and its
    gradient graph: the graph is found by the loaded bytes' hash and built from the loaded file
    (kept open), so it holds the loaded weights; where an open file has no path (not
    Linux or macOS), building is refused in one sentence naming the model, nothing written."""
    import onnx
    from onnx import numpy_helper

    from stylefu.core.engines.onnx import engine, gradient
    from stylefu.core.io.cache import model_hash
    from stylefu.core.network.vgg import CONTENT_LAYER

    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEFU_CACHE", str(cache))
    model = tmp_path / "m.onnx"
    shutil.copyfile(model_path, model)
    loaded = engine.load_onnx_model(model)
    try:
        sha = loaded.engine.sha256
        other = onnx.load(str(model))
        first = next(t for t in other.graph.initializer if t.name.endswith(".weight"))
        weights = numpy_helper.to_array(first)
        first.CopyFrom(numpy_helper.from_array(weights * 2, first.name))
        onnx.save(other, str(tmp_path / "new.onnx"))
        os.replace(tmp_path / "new.onnx", model)  # what an export does
        assert model_hash(model) != sha

        with monkeypatch.context() as patch:  # no path to the open file: refused
            patch.setattr(gradient, "_path_of_open_file", lambda file: None)
            with pytest.raises(UserError, match=r"m\.onnx was replaced .* after this run loaded it"):
                loaded.gradient(CONTENT_LAYER)
        assert not cache.exists() or not list(cache.rglob("*.onnx"))

        loaded.gradient(CONTENT_LAYER)  # from the loaded file
        built = gradient.cached_path(model, CONTENT_LAYER, sha)
        graph = onnx.load(str(built))
        assert {p.key: p.value for p in graph.metadata_props}[gradient.SOURCE_KEY].startswith(sha)
        kept = {t.name: t for t in graph.graph.initializer}[first.name]
        assert np.array_equal(numpy_helper.to_array(kept), weights)  # the loaded weights
        assert [p.name for p in cache.rglob("*.onnx")] == [built.name]
    finally:
        engine._load.cache_clear()


def test_a_damaged_gradient_graph_is_passed_over_and_built_again(model_path, tmp_path,
                                                                  monkeypatch):
    """The torch-free engine's gradient graph damaged on disk (export's beside the model, the
    cache's) was an internal error (ONNX Runtime's InvalidProtobuf) on every run: each is now
    passed over, the cache's built again, whole."""
    import onnx

    from stylefu.core.engines.onnx import engine, gradient
    from stylefu.core.network.vgg import CONTENT_LAYER

    monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m.onnx"
    shutil.copyfile(model_path, model)
    loaded = engine.load_onnx_model(model)
    try:
        sha = loaded.engine.sha256
        beside = gradient.sibling_path(model, CONTENT_LAYER, sha256=sha)
        beside.write_bytes(b"")  # a file cut to nothing
        cached = gradient.cached_path(model, CONTENT_LAYER, sha)
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"\x08\x07\x12" + np.random.default_rng(0).bytes(4096))
        session = loaded.gradient(CONTENT_LAYER)
        assert session.outputs and beside.read_bytes() == b""  # the user's file left as it was
        graph = onnx.load(str(cached))
        assert {p.key: p.value for p in graph.metadata_props}[gradient.SOURCE_KEY].startswith(sha)
    finally:
        engine._load.cache_clear()


# --- 6, 7. stdout: pure JSON with stderr closed; a broken pipe ends quietly ---------------------

def test_stderr_closed_keeps_stdout_pure_json(world, tmp_path):
    """`2>&-`: every stdout line is strict JSON (the "engine" and "wrote" lines go nowhere, not
    to stdout), the run succeeds and the image is whole."""
    out = world.root / "out.png"
    command = " ".join(map(str, [STYLEFU, *run_args(world, out)]))
    done = subprocess.run(["sh", "-c", f"exec {command} 2>&-"], cwd=world.root, text=True,
                          capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "STYLEFU_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout
    records = strict_records(done.stdout)  # raises on a line that is not JSON
    assert records[-1]["event"] == "result" and "stylefu:" not in done.stdout
    assert load_image(out).rgb.shape == (48, 64, 3)


@pytest.mark.parametrize("command", ["run", "batch"])
def test_broken_stdout_pipe_ends_quietly(command, world):
    """The reader of `--progress json` goes away after one line (`| head -1`): exit 141 (as a
    shell reports coreutils killed by SIGPIPE), one line naming stdout, no traceback, no
    "check the path" advice, no output and no temporary file."""
    before = world.snapshot()
    if command == "run":
        args = run_args(world, world.root / "out.png")
    else:
        args = ["batch", world.content, "--style", world.style, "-o", world.root / "out",
                "--model", world.model, *RUN, "--progress", "json", "--workers", "1"]
    args[args.index("--iterations") + 1] = "5000"
    proc = stylefu(args, world.root)
    assert strict_records(proc.stdout.readline())[0]["event"] == "progress"
    proc.stdout.close()  # the reader goes away
    stderr = proc.stderr.read()
    assert proc.wait(timeout=TIMEOUT) == 141, stderr
    assert "Traceback" not in stderr and "check the path" not in stderr
    assert stderr.splitlines()[-1] == "stylefu: stopped: the program reading stdout closed the pipe."
    after = world.snapshot()
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert not [k for k in after if k.startswith("out") and k != "out"] and not leftovers(world.root)


# --- 8. a batch removes only dead writers' temporary files --------------------------------------

def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """Beside a batch's output: a live writer's temporary file (another batch in flight) stays,
    a dead writer's and a very old one go, files that are not ours stay."""
    out = tmp_path / "a.png"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"live": f".a.png.{live.pid}.{'1' * 16}.tmp", "mine": files.temporary_sibling(out).name,
                 "dead": f".a.png.{dead.pid}.{'2' * 16}.tmp", "old": f".a.png.{live.pid}.{'3' * 16}.tmp",
                 "other output": f".b.png.{dead.pid}.{'4' * 16}.tmp", "not ours": ".a.png.notes.tmp"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        week = time.time() - 7 * 86400
        os.utime(tmp_path / names["old"], (week, week))
        remove_stale_temporaries([BatchItem("in.png", ("s.png",), str(out))])
        kept = {p.name for p in tmp_path.iterdir()}
        assert kept == {names[k] for k in ("live", "mine", "other output", "not ours")}
    finally:
        live.kill()
        live.wait()


def test_a_writer_is_asked_whether_it_lives_never_signalled_on_windows(monkeypatch):
    """On Windows os.kill(pid, 0) terminates the process: a stale-file sweep must never call it
    there (it would kill a batch worker, or any program that got a dead writer's PID)."""
    def never(*args):
        raise AssertionError("os.kill called on Windows")

    monkeypatch.setattr(files, "_WINDOWS", True)  # not os.name: pathlib would turn Windows
    monkeypatch.setattr(files.os, "kill", never)
    asked = []
    monkeypatch.setattr(files, "_windows_alive", lambda pid: asked.append(pid) or pid == 7)
    assert files._alive(7) and not files._alive(8) and asked == [7, 8]


# --- a bounded cache: least recently used files go past the limit; `stylefu cache` -------------

def sparse(path: Path, size: int, mtime: float) -> Path:
    """A file of `size` bytes taking no disk space, last used at `mtime`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    os.utime(path, (mtime, mtime))
    return path


def test_the_cache_stays_under_its_limit_least_recently_used_first(world, tmp_path, monkeypatch,
                                                                     capsys):
    """A run past $STYLEFU_CACHE_MAX_MB deletes the least recently *used* files: the model's
    torch copy, the oldest file but read by this run, stays; two older decoys go. `stylefu cache
    status` adds up what is there; `prune --max-mb 0` empties the parts it may delete and keeps
    the model and the downloaded weights."""
    from stylefu.core.engines.torch.vggnet import load_torch_model, torch_weights_file

    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLEFU_CACHE", str(cache))
    load_torch_model(world.model)  # its torch copy, about 52 MB
    copy = torch_weights_file(world.model)
    os.utime(copy, (1000, 1000))  # the oldest file, until the run reads it
    decoys = [sparse(cache / "torch-weights" / "other.pt", 60_000_000, 2000),
              sparse(cache / "gradient" / "other.gradient-relu4_2-0123456789abcdef.onnx",
                     40_000_000, 3000)]
    kept = [sparse(cache / "vgg19-features.onnx", 1000, 0), sparse(cache / "weights" / "w.pth", 1000, 0)]
    out = world.root / "out.png"
    proc = stylefu(run_args(world, out), world.root,
                   {"STYLEFU_CACHE": str(cache), "STYLEFU_CACHE_MAX_MB": "100"})
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and strict_records(stdout)[-1]["event"] == "result", stderr
    assert copy.is_file() and not any(d.exists() for d in decoys)
    sizes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p not in kept)
    assert sizes <= 100e6
    status = cli(capsys, "cache", "status", "--json")
    figures = json.loads(status.out)
    assert status.code == 0 and figures["total_mb"] == round(sizes / 1e6, 1)
    assert figures["parts"]["torch-weights"]["files"] == 1 and figures["limit_mb"] == 2000
    pruned = cli(capsys, "cache", "prune", "--max-mb", "0")
    assert pruned.code == 0 and "removed" in pruned.err
    # Left: what is not the cache's to prune, and the speeds run/eta.py keeps (a few kB).
    assert sorted(p for p in cache.rglob("*") if p.is_file() and p.name != "speed.json") == \
        sorted(kept)
    refused = cli(capsys, "cache", "prune", "--max-mb", "nan")
    assert refused.code == 2 and "--max-mb" in one_error(refused.err)
