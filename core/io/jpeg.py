"""Whether a JPEG's data holds every block its header promises.

A JPEG cut short and closed with an end marker (FF D9) decodes without a word through Pillow,
which hides libjpeg's "premature end of data" warning: a baseline file's missing blocks come out
flat grey 128, a progressive file's as a plausible picture of lower quality. `cut_short` tells:

- progressive: every component's 64 coefficients must reach full precision (successive
  approximation down to bit 0) in the scans present; a cut drops the later scans. A cut inside
  the last scan (the last bit of some coefficients) is not seen.
- sequential (baseline): every component must be in a scan, and the last scan must hold all its
  MCUs, which a small walk of the entropy-coded data counts (Huffman symbols per block, restart
  markers, byte stuffing). The walk runs only when the decoded picture's last MCU holds a pixel
  of exactly grey 128 (every MCU after a cut does), or when the file has several scans, so a
  valid photo costs a marker scan; with restart markers only the last interval is walked.

Files this does not read (lossless, arithmetic coding, hierarchical, damaged headers) are left
to libjpeg: `cut_short` answers False.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman coded
_PROGRESSIVE = 0xC2
_OTHER_FRAMES = {0xC3, *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
# What ends a scan's entropy-coded data: FF followed by anything but 00 (stuffing) or a restart
# marker (D0-D7).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")


class _Unread(Exception):
    """A file this module does not judge (left to libjpeg)."""


@dataclass
class _Scan:
    components: list[tuple[int, int, int]]  # (component id, DC table, AC table)
    ss: int
    se: int
    ah: int
    al: int
    data: bytes  # the entropy-coded data, restart markers included, stuffing not removed
    tables: dict  # (class, id) -> (code lengths, symbols), as defined when the scan started
    restart: int


@dataclass
class _Frame:
    progressive: bool
    width: int = 0
    height: int = 0
    sampling: dict = field(default_factory=dict)  # component id -> (h, v)
    scans: list = field(default_factory=list)


def _parse(data: bytes) -> _Frame:
    if data[:2] != b"\xff\xd8":
        raise _Unread
    frame, tables, restart, pos = None, {}, 0, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        payload, pos = data[pos + 4:pos + 2 + length], pos + 2 + length
        if marker in _SEQUENTIAL or marker == _PROGRESSIVE:
            if frame is not None or payload[0] != 8:  # a second frame, or 12-bit samples
                raise _Unread
            frame = _Frame(marker == _PROGRESSIVE, int.from_bytes(payload[3:5], "big"),
                           int.from_bytes(payload[1:3], "big"))
            for i in range(payload[5]):
                cid, hv = payload[6 + 3 * i], payload[7 + 3 * i]
                frame.sampling[cid] = (hv >> 4, hv & 15)
        elif marker in _OTHER_FRAMES:
            raise _Unread
        elif marker == 0xC4:  # DHT: one or more tables
            i = 0
            while i + 17 <= len(payload):
                lengths = payload[i + 1:i + 17]
                count = sum(lengths)
                tables[payload[i] >> 4, payload[i] & 15] = (lengths, payload[i + 17:i + 17 + count])
                i += 17 + count
        elif marker == 0xDD:  # DRI
            restart = int.from_bytes(payload[:2], "big")
        elif marker == 0xDA:  # SOS, then the entropy-coded data up to the next marker
            if frame is None:
                raise _Unread
            n = payload[0]
            components = [(payload[1 + 2 * i], payload[2 + 2 * i] >> 4, payload[2 + 2 * i] & 15)
                          for i in range(n)]
            ss, se, a = payload[1 + 2 * n], payload[2 + 2 * n], payload[3 + 2 * n]
            end = _SCAN_END.search(data, pos)
            stop = end.start() if end else len(data)
            frame.scans.append(_Scan(components, ss, se, a >> 4, a & 15, data[pos:stop],
                                     dict(tables), restart))
            pos = stop
    if frame is None or not frame.width or not frame.height:
        raise _Unread
    return frame


def _lookup(lengths: bytes, symbols: bytes) -> list:
    """A 16-bit lookup table: the next 16 bits of data -> (code length, symbol); None: no code."""
    table: list = [None] * 65536
    code = i = 0
    for length in range(1, 17):
        for _ in range(lengths[length - 1]):
            span = 1 << (16 - length)
            start = code << (16 - length)
            if start + span > 65536 or i >= len(symbols):
                raise _Unread  # an impossible table: libjpeg's to judge
            table[start:start + span] = [(length, symbols[i])] * span
            code, i = code + 1, i + 1
        code <<= 1
    return table


def _holds_mcus(segment: bytes, count: int, blocks: list) -> bool:
    """Whether the entropy-coded `segment` (no marker inside) holds `count` MCUs of `blocks`
    ((DC table, AC table) per block): every Huffman symbol decoded, values skipped."""
    segment = segment.replace(b"\xff\x00", b"\xff")
    nbits = 8 * len(segment)
    if not nbits:
        return count == 0
    bits = format(int.from_bytes(segment, "big"), f"0{nbits}b") + "0" * 16
    pos = 0
    try:
        for _ in range(count):
            for dc, ac in blocks:
                length, size = dc[int(bits[pos:pos + 16], 2)]
                pos += length + size
                k = 1
                while k < 64:
                    length, rs = ac[int(bits[pos:pos + 16], 2)]
                    pos += length + (rs & 15)
                    if rs & 15:
                        k += (rs >> 4) + 1
                    elif rs == 0xF0:  # sixteen zeros
                        k += 16
                    else:  # end of block
                        break
            if pos > nbits:
                return False
    except (TypeError, ValueError):  # a code no table has, or the bits ran out
        return False
    return True


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _scan_complete(frame: _Frame, scan: _Scan) -> bool:
    hmax = max(h for h, _ in frame.sampling.values())
    vmax = max(v for _, v in frame.sampling.values())
    luts: dict = {}

    def lut(kind: int, index: int) -> list:
        if (kind, index) not in luts:
            if (kind, index) not in scan.tables:
                raise _Unread
            luts[kind, index] = _lookup(*scan.tables[kind, index])
        return luts[kind, index]

    if len(scan.components) == 1:  # non-interleaved: one block per MCU, the component's grid
        cid, dc, ac = scan.components[0]
        h, v = frame.sampling[cid]
        columns = _ceil(_ceil(frame.width * h, hmax), 8)
        rows = _ceil(_ceil(frame.height * v, vmax), 8)
        blocks = [(lut(0, dc), lut(1, ac))]
    else:
        columns, rows = _ceil(frame.width, 8 * hmax), _ceil(frame.height, 8 * vmax)
        blocks = [(lut(0, dc), lut(1, ac)) for cid, dc, ac in scan.components
                  for _ in range(frame.sampling[cid][0] * frame.sampling[cid][1])]
    mcus = columns * rows
    segments = _RESTART.split(scan.data)
    if not scan.restart:
        return _holds_mcus(segments[0], mcus, blocks)
    intervals = _ceil(mcus, scan.restart)
    if len(segments) < intervals:  # a cut drops the intervals after it, restart markers too
        return False
    return _holds_mcus(segments[intervals - 1], mcus - scan.restart * (intervals - 1), blocks)


def _last_mcu_grey(image, frame: _Frame) -> bool:
    """Whether the decoded `image`'s last MCU (bottom right) holds a pixel of exactly grey 128
    (what libjpeg decodes a missing MCU to; its inner pixels even with chroma upsampled)."""
    if image.mode not in ("L", "RGB"):
        return True  # CMYK and others: not judged by their pixels, walked
    if len(frame.sampling) == 1:
        width = height = 8
    else:
        width = 8 * max(h for h, _ in frame.sampling.values())
        height = 8 * max(v for _, v in frame.sampling.values())
    x0, y0 = (image.width - 1) // width * width, (image.height - 1) // height * height
    region = np.asarray(image.crop((x0, y0, image.width, image.height)))
    if region.ndim == 2:
        region = region[..., None]
    return bool((region == 128).all(axis=-1).any())


def cut_short(data: bytes, image) -> bool:
    """True when the JPEG file `data`, decoded by Pillow as `image` (loaded), misses MCUs or scans
    its header promises: cut short, whatever closes it."""
    try:
        frame = _parse(data)
        if frame.progressive:
            return not _progressive_complete(frame)
        covered = {cid for scan in frame.scans for cid, _, _ in scan.components}
        if not frame.scans or covered != set(frame.sampling):
            return True
        if len(frame.scans) == 1 and not _last_mcu_grey(image, frame):
            return False
        return not _scan_complete(frame, frame.scans[-1])
    except (_Unread, IndexError, KeyError, ValueError, ZeroDivisionError):
        return False  # headers this module does not read: libjpeg has judged them


def _progressive_complete(frame: _Frame) -> bool:
    """Whether the scans bring every component's 64 coefficients down to bit 0."""
    precision = {cid: [None] * 64 for cid in frame.sampling}
    for scan in frame.scans:
        for cid, _, _ in scan.components:
            for k in range(scan.ss, min(scan.se, 63) + 1):
                precision[cid][k] = scan.al
    return all(bit == 0 for bits in precision.values() for bit in bits)
