"""Image formats recognised from their first bytes, and their pixel size read from the header, before any decoder
runs: a file declaring a huge image is refused before OpenCV allocates it.

Every format OpenCV can decode has a parser here (PNG, JPEG, GIF, BMP, WebP, TIFF and BigTIFF, PNM/PAM/PFM, Sun
raster, Radiance HDR, JPEG 2000, AVIF, OpenEXR); a file in no known format is refused without decoding. Where a
format holds its size in more than one place (WebP's canvas and bitstream, JPEG 2000's jp2 header and codestream,
AVIF's properties and AV1 sequence headers, GIF's screen and frame), the largest is taken, since a decoder may
allocate from either. Parsers read slices of `data` only: bytes, or a FileView that fetches bytes past the part
already read (a TIFF's directory may sit at the end of the file).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

# The head of a file read before its format is known; also the allowance for metadata (EXIF, ICC profiles,
# thumbnails) on top of the pixel data when bounding how much of a file is read.
HEAD_BYTES = 16 << 20


class Data(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, key: slice, /) -> bytes | bytearray: ...


class FileView:
    """A file's bytes: `head` (its start) in memory, anything further read on demand with pread."""

    MAX_READ = 1 << 20  # one slice: header structures are small; a larger request is a forged length

    def __init__(self, fd: int, size: int, head: bytes):
        self.fd, self.size, self.head = fd, size, head

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice, /) -> bytes:
        start, stop, _ = key.indices(self.size)
        if stop <= len(self.head):
            return self.head[start:stop]
        if stop - start > self.MAX_READ:
            raise ValueError("header structure too large")
        return os.pread(self.fd, max(0, stop - start), start)


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    channels: int | None = None  # where the header says and a decoder allocates per channel (JPEG 2000, TIFF)


@dataclass(frozen=True)
class ImageFormat:
    name: str
    # Most bytes one pixel can take in a valid file of this format (deepest pixel type, worst-case compression):
    # with HEAD_BYTES on top, how much of a file is read at most for a declared size.
    bytes_per_pixel: float
    matches: Callable[[bytes], bool]
    parse: Callable[[Data], Header | None]


def _u(data: Data, at: int, size: int, order: str = ">") -> int:
    raw = data[at:at + size]
    if len(raw) != size:
        raise ValueError("truncated header")
    return int.from_bytes(raw, "big" if order == ">" else "little")


def _byte(data: Data, at: int) -> int:
    return _u(data, at, 1)


# --- simple fixed headers ---------------------------------------------------------------------------------------
def _png(data: Data) -> Header | None:
    if data[12:16] != b"IHDR":
        return None
    return Header(_u(data, 16, 4), _u(data, 20, 4))


def _bmp(data: Data) -> Header | None:
    info_size = _u(data, 14, 4, "<")
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return Header(_u(data, 18, 2, "<"), _u(data, 20, 2, "<"))
    width, height = struct.unpack("<ii", data[18:26])
    return Header(abs(width), abs(height))  # a negative height means rows stored top-down


def _sun_raster(data: Data) -> Header | None:
    return Header(_u(data, 4, 4), _u(data, 8, 4))


def _gif(data: Data) -> Header | None:
    """The logical screen and the first frame's extent (a frame may claim to reach past the screen)."""
    width, height = _u(data, 6, 2, "<"), _u(data, 8, 2, "<")
    flags = _byte(data, 10)
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    for _ in range(256):
        block = data[at:at + 1]
        if block == b"\x2c":  # image descriptor: left, top, width, height
            left, top, frame_w, frame_h = struct.unpack("<HHHH", data[at + 1:at + 9])
            return Header(max(width, left + frame_w), max(height, top + frame_h))
        if block != b"\x21":  # trailer, or the file ends before a frame: the screen is all there is
            break
        at += 2  # extension introducer and label, then data sub-blocks up to an empty one
        while (length := _byte(data, at)) != 0:
            at += 1 + length
        at += 1
    return Header(width, height)


# --- text headers (PNM family, Radiance HDR) --------------------------------------------------------------------
def _tokens(text: bytes, count: int) -> list[int] | None:
    """The first `count` integers of a PNM-style header (whitespace separated, '#' comments to end of line)."""
    values: list[int] = []
    for line in text.split(b"\n"):
        for word in line.split(b"#")[0].split():
            values.append(int(word))
            if len(values) == count:
                return values
    return None


def _pnm(data: Data) -> Header | None:
    values = _tokens(bytes(data[2:4096]), 2)
    return Header(values[0], values[1]) if values else None


def _pfm(data: Data) -> Header | None:
    values = _tokens(bytes(data[2:4096]), 2)
    return Header(values[0], values[1], 3 if data[1:2] == b"F" else 1) if values else None


def _pam(data: Data) -> Header | None:
    fields: dict[bytes, int] = {}
    for line in bytes(data[3:4096]).split(b"\n"):
        words = line.split(b"#")[0].split()
        if words[:1] == [b"ENDHDR"]:
            break
        if len(words) == 2 and words[0] in (b"WIDTH", b"HEIGHT", b"DEPTH"):
            fields[words[0]] = int(words[1])
    if b"WIDTH" not in fields or b"HEIGHT" not in fields:
        return None
    return Header(fields[b"WIDTH"], fields[b"HEIGHT"], fields.get(b"DEPTH"))


def _radiance(data: Data) -> Header | None:
    """Header lines up to an empty one, then the resolution line, e.g. '-Y 480 +X 640' (Y first: rows)."""
    text = data[:65536]
    end = text.find(b"\n\n")
    if end < 0:
        return None
    words = text[end + 2:].split(b"\n", 1)[0].split()
    if len(words) != 4:
        return None
    sizes = {words[0][-1:]: int(words[1]), words[2][-1:]: int(words[3])}
    if set(sizes) != {b"X", b"Y"}:
        return None
    return Header(sizes[b"X"], sizes[b"Y"])


# --- JPEG -------------------------------------------------------------------------------------------------------
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4, C8, CC are tables and reserved


def jpeg_segments(data: Data, limit: int = HEAD_BYTES) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each segment before the scan data, within the first `limit` bytes."""
    at = 2
    while at + 4 <= min(len(data), limit):
        if _byte(data, at) != 0xFF:
            return
        marker = _byte(data, at + 1)
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            at += 2
            continue
        length = _u(data, at + 2, 2)
        yield marker, at + 4, at + 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        at += 2 + length


def _jpeg(data: Data) -> Header | None:
    for marker, start, _end in jpeg_segments(data):
        if marker in _SOF_MARKERS:  # precision(1) height(2) width(2) components(1)
            return Header(_u(data, start + 3, 2), _u(data, start + 1, 2), _byte(data, start + 5))
    return None


# --- TIFF -------------------------------------------------------------------------------------------------------
def tiff_tags(data: Data, wanted: set[int], base: int = 0) -> dict[int, int]:
    """Values of the wanted single-valued integer tags of the first image directory of a TIFF or BigTIFF whose
    header starts at `base` (EXIF blocks are TIFF structures inside other files)."""
    order = "<" if data[base:base + 2] == b"II" else ">"
    big = _u(data, base + 2, 2, order) == 43
    if big:
        directory = base + _u(data, base + 8, 8, order)
        count, entry_size, count_size = _u(data, directory, 8, order), 20, 8
    else:
        directory = base + _u(data, base + 4, 4, order)
        count, entry_size, count_size = _u(data, directory, 2, order), 12, 2
    entries = data[directory + count_size:directory + count_size + entry_size * min(count, 4096)]
    found: dict[int, int] = {}
    for at in range(0, len(entries) - entry_size + 1, entry_size):
        tag, kind = _u(entries, at, 2, order), _u(entries, at + 2, 2, order)
        value_at = at + (12 if big else 8)
        width = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
        if tag in wanted and width is not None and value_at + width <= len(entries):
            found[tag] = _u(entries, value_at, width, order)
    return found


_WIDTH, _LENGTH, _SAMPLES, _TILE_WIDTH, _TILE_LENGTH = 256, 257, 277, 322, 323


def _tiff(data: Data) -> Header | None:
    """The first directory's size; a tile larger than the image counts (OpenCV allocates a whole tile: a 9 x 6
    image with 16000 x 16000 tiles would take 768 MB)."""
    tags = tiff_tags(data, {_WIDTH, _LENGTH, _SAMPLES, _TILE_WIDTH, _TILE_LENGTH})
    if _WIDTH not in tags or _LENGTH not in tags:
        return None
    return Header(max(tags[_WIDTH], tags.get(_TILE_WIDTH, 0)), max(tags[_LENGTH], tags.get(_TILE_LENGTH, 0)),
                  tags.get(_SAMPLES, 1))


# --- WebP -------------------------------------------------------------------------------------------------------
def riff_chunks(data: Data, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, payload start, payload end) of the RIFF chunks in data[start:end] (at most 256)."""
    at = start
    for _ in range(256):
        if at + 8 > min(end, len(data)):
            return
        fourcc, size = bytes(data[at:at + 4]), _u(data, at + 4, 4, "<")
        yield fourcc, at + 8, at + 8 + size
        at += 8 + size + (size & 1)


def _webp_sizes(data: Data, start: int, end: int) -> Iterator[tuple[int, int]]:
    for fourcc, begin, _stop in riff_chunks(data, start, end):
        if fourcc == b"VP8X":  # canvas, 24-bit sizes minus one
            yield _u(data, begin + 4, 3, "<") + 1, _u(data, begin + 7, 3, "<") + 1
        elif fourcc == b"VP8 ":  # frame tag (3), start code (3), 14-bit sizes
            yield _u(data, begin + 6, 2, "<") & 0x3FFF, _u(data, begin + 8, 2, "<") & 0x3FFF
        elif fourcc == b"VP8L":  # signature byte, then 14-bit sizes minus one
            bits = _u(data, begin + 1, 4, "<")
            yield (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif fourcc == b"ANMF":  # frame: offsets in units of 2 px, sizes minus one, then its own chunks
            left, top = 2 * _u(data, begin, 3, "<"), 2 * _u(data, begin + 3, 3, "<")
            yield left + _u(data, begin + 6, 3, "<") + 1, top + _u(data, begin + 9, 3, "<") + 1
            yield from _webp_sizes(data, begin + 16, _stop)


def _webp(data: Data) -> Header | None:
    sizes = list(_webp_sizes(data, 12, min(len(data), HEAD_BYTES)))
    return Header(max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else None


# --- ISO base media boxes (JPEG 2000's jp2, AVIF) ---------------------------------------------------------------
def boxes(data: Data, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in data[start:end] (at most 1024)."""
    at = start
    for _ in range(1024):
        if at + 8 > end:
            return
        size, kind, header = _u(data, at, 4), bytes(data[at + 4:at + 8]), 8
        if size == 1:  # 64-bit size follows the type
            size, header = _u(data, at + 8, 8), 16
        elif size == 0:  # to the end of the enclosing box
            size = end - at
        if size < header:
            return
        yield kind, at + header, min(at + size, end)
        at += size


def _child(data: Data, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in boxes(data, start, end) if k == kind), None)


# --- JPEG 2000 --------------------------------------------------------------------------------------------------
def _codestream(data: Data, at: int) -> Header | None:
    """SIZ right after SOC: image extent minus its offset, and the component count (OpenJPEG allocates each)."""
    if data[at:at + 4] != b"\xff\x4f\xff\x51":
        return None
    width, height = _u(data, at + 8, 4) - _u(data, at + 16, 4), _u(data, at + 12, 4) - _u(data, at + 20, 4)
    return Header(max(width, 0), max(height, 0), _u(data, at + 40, 2))


def _j2k(data: Data) -> Header | None:
    return _codestream(data, 0)


def _jp2(data: Data) -> Header | None:
    """The jp2 header box and the codestream's SIZ; the codestream must be found (OpenJPEG allocates from it)."""
    found: list[Header] = []
    for kind, start, stop in boxes(data, 0, len(data)):
        if kind == b"jp2h" and (ihdr := _child(data, start, stop, b"ihdr")) is not None:
            found.append(Header(_u(data, ihdr[0] + 4, 4), _u(data, ihdr[0], 4), _u(data, ihdr[0] + 8, 2)))
        elif kind == b"jp2c":
            stream = _codestream(data, start)
            return _largest([*found, stream]) if stream is not None else None
    return None


def _largest(found: list[Header]) -> Header | None:
    if not found:
        return None
    channels = [h.channels for h in found if h.channels is not None]
    return Header(max(h.width for h in found), max(h.height for h in found), max(channels) if channels else None)


# --- AVIF: HEIF items and tracks holding AV1 ----------------------------------------------------------------------
class _Bits:
    """A big-endian bit reader over a few bytes (an AV1 sequence header)."""

    def __init__(self, raw: bytes):
        self.raw, self.at = raw, 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            if self.at >> 3 >= len(self.raw):
                raise ValueError("truncated AV1 sequence header")
            value = (value << 1) | (self.raw[self.at >> 3] >> (7 - (self.at & 7)) & 1)
            self.at += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1


def _av1_sequence_size(raw: bytes) -> tuple[int, int]:
    """max_frame_width and max_frame_height of an AV1 sequence header OBU's payload (AV1 spec 5.5): every frame
    of the stream is at most this large, whatever the container's properties say."""
    bits = _Bits(raw)
    bits.read(4)  # seq_profile, still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)
    else:
        decoder_model, delay_bits = 0, 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(64)
            if bits.read(1):
                bits.uvlc()
            decoder_model = bits.read(1)
            if decoder_model:
                delay_bits = bits.read(5) + 1
                bits.read(42)
        initial_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)
            if bits.read(5) > 7:
                bits.read(1)
            if decoder_model and bits.read(1):
                bits.read(2 * delay_bits + 1)
            if initial_delay and bits.read(1):
                bits.read(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _leb128(data: Data, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = _byte(data, at + i)
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, at + i + 1
    raise ValueError("leb128 too long")


def _av1_size(data: Data, start: int, end: int) -> tuple[int, int] | None:
    """The sequence header's frame size among the first OBUs of data[start:end], or None when there is none."""
    at = start
    for _ in range(16):
        if at >= end:
            return None
        header = _byte(data, at)
        kind, extension, has_size = header >> 3 & 15, header >> 2 & 1, header >> 1 & 1
        at += 1 + extension
        size, at = _leb128(data, at) if has_size else (end - at, at)
        if kind == 1:  # OBU_SEQUENCE_HEADER
            return _av1_sequence_size(bytes(data[at:at + min(size, 256)]))
        at += size
    return None


class _AvifScan:
    """Every size an AVIF declares: ispe properties, grid outputs, track and sample-entry sizes, and the AV1
    sequence headers (in av1C boxes, at the start of each AV1 item, at the first chunk of each track)."""

    def __init__(self, data: Data):
        self.data = data
        self.sizes: list[tuple[int, int]] = []
        self.sequences = 0

    def av1(self, start: int, end: int) -> None:
        size = _av1_size(self.data, start, end)
        if size is not None:
            self.sizes.append(size)
            self.sequences += 1

    def meta(self, start: int, end: int) -> None:
        data = self.data
        types: dict[int, bytes] = {}
        locations: dict[int, tuple[int, int, int]] = {}
        idat: int | None = None
        for kind, begin, stop in boxes(data, start + 4, end):  # meta is a full box: version and flags first
            if kind == b"iinf":
                types = _item_types(data, begin, stop)
            elif kind == b"iloc":
                locations = _item_locations(data, begin, stop)
            elif kind == b"idat":
                idat = begin
            elif kind == b"iprp" and (ipco := _child(data, begin, stop, b"ipco")) is not None:
                for prop, p_start, p_stop in boxes(data, ipco[0], ipco[1]):
                    if prop == b"ispe":
                        self.sizes.append((_u(data, p_start + 4, 4), _u(data, p_start + 8, 4)))
                    elif prop == b"av1C":
                        self.av1(p_start + 4, p_stop)
        for item, item_type in types.items():
            if item not in locations or item_type not in (b"av01", b"grid"):
                continue
            method, offset, length = locations[item]
            if method == 1:
                if idat is None:
                    continue
                offset += idat
            end_of_item = min(len(data), offset + (length or len(data)), offset + 4096)
            if item_type == b"av01":
                self.av1(offset, end_of_item)
            else:  # ImageGrid: version, flags (bit 0: 32-bit sizes), rows - 1, columns - 1, output width, height
                wide = 4 if _byte(data, offset + 1) & 1 else 2
                self.sizes.append((_u(data, offset + 4, wide), _u(data, offset + 4 + wide, wide)))

    def tracks(self, start: int, end: int) -> None:
        data = self.data
        for kind, begin, stop in boxes(data, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                self.tracks(begin, stop)
            elif kind == b"tkhd":  # the last 8 bytes: width and height, 16.16 fixed point
                self.sizes.append((_u(data, stop - 8, 4) >> 16, _u(data, stop - 4, 4) >> 16))
            elif kind == b"stsd":
                for entry, e_start, e_stop in boxes(data, begin + 8, stop):
                    if entry == b"av01":  # visual sample entry: sizes at 24, child boxes from 78
                        self.sizes.append((_u(data, e_start + 24, 2), _u(data, e_start + 26, 2)))
                        if (config := _child(data, e_start + 78, e_stop, b"av1C")) is not None:
                            self.av1(config[0] + 4, config[1])
            elif kind in (b"stco", b"co64"):  # the first chunk starts with the first frame
                wide = 4 if kind == b"stco" else 8
                if _u(data, begin + 4, 4) > 0:
                    first = _u(data, begin + 8, wide)
                    self.av1(first, min(len(data), first + 4096))


def _item_types(data: Data, start: int, end: int) -> dict[int, bytes]:
    """item ID -> item type from iinf's infe boxes (versions 2 and 3 carry a type)."""
    count_size = 2 if _byte(data, start) == 0 else 4
    types: dict[int, bytes] = {}
    for kind, begin, _stop in boxes(data, start + 4 + count_size, end):
        version = _byte(data, begin)
        if kind == b"infe" and version >= 2:
            id_size = 2 if version == 2 else 4
            types[_u(data, begin + 4, id_size)] = bytes(data[begin + 6 + id_size:begin + 10 + id_size])
    return types


def _item_locations(data: Data, start: int, end: int) -> dict[int, tuple[int, int, int]]:
    """item ID -> (construction method, offset, length) of its first extent, from iloc (ISO/IEC 14496-12 8.11.3)."""
    version = _byte(data, start)
    sizes, more = _byte(data, start + 4), _byte(data, start + 5)
    offset_size, length_size, base_size = sizes >> 4, sizes & 15, more >> 4
    index_size = more & 15 if version in (1, 2) else 0
    id_size = 4 if version == 2 else 2
    count, at = _u(data, start + 6, id_size), start + 6 + id_size
    found: dict[int, tuple[int, int, int]] = {}
    for _ in range(min(count, 4096)):
        item, at = _u(data, at, id_size), at + id_size
        method = 0
        if version in (1, 2):
            method, at = _u(data, at, 2) & 15, at + 2
        at += 2  # data_reference_index
        base, at = _u(data, at, base_size) if base_size else 0, at + base_size
        extents, at = _u(data, at, 2), at + 2
        for extent in range(extents):
            at += index_size
            offset, at = _u(data, at, offset_size) if offset_size else 0, at + offset_size
            length, at = _u(data, at, length_size) if length_size else 0, at + length_size
            if extent == 0:
                found[item] = (method, base + offset, length)
    return found


def _is_avif(head: bytes) -> bool:
    if head[4:8] != b"ftyp":
        return False
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[at:at + 4] for at in range(16, min(size, 256), 4)]
    return b"avif" in brands or b"avis" in brands


def _avif(data: Data) -> Header | None:
    scan = _AvifScan(data)
    for kind, start, stop in boxes(data, 0, len(data)):
        if kind == b"meta":
            scan.meta(start, stop)
        elif kind == b"moov":
            scan.tracks(start, stop)
    if not scan.sequences:  # no AV1 sequence header: the frame size cannot be known before decoding
        return None
    return Header(max(w for w, _ in scan.sizes), max(h for _, h in scan.sizes))


# --- OpenEXR ----------------------------------------------------------------------------------------------------
def _exr(data: Data) -> Header | None:
    """The data and display windows (box2i: x min, y min, x max, y max) among the first header's attributes."""
    text = data[8:65536]
    at, found = 0, []
    for _ in range(256):
        name_end = text.index(b"\0", at)
        if name_end == at:  # an empty name ends the header
            break
        type_end = text.index(b"\0", name_end + 1)
        size = int.from_bytes(text[type_end + 1:type_end + 5], "little")
        value = text[type_end + 5:type_end + 5 + size]
        if text[at:name_end] in (b"dataWindow", b"displayWindow") and len(value) == 16:
            x0, y0, x1, y1 = struct.unpack("<iiii", value)
            found.append(Header(max(x1 - x0 + 1, 0), max(y1 - y0 + 1, 0)))
        at = type_end + 5 + size
    return _largest(found)


# --- the table --------------------------------------------------------------------------------------------------
FORMATS = [
    ImageFormat("PNG", 9, lambda h: h[:8] == b"\x89PNG\r\n\x1a\n", _png),  # 16-bit RGBA, row filter bytes
    ImageFormat("JPEG", 16, lambda h: h[:3] == b"\xff\xd8\xff", _jpeg),  # 4 components at worst-case Huffman
    ImageFormat("GIF", 2, lambda h: h[:6] in (b"GIF87a", b"GIF89a"), _gif),  # 12-bit LZW codes
    ImageFormat("BMP", 5, lambda h: h[:2] == b"BM", _bmp),  # 32-bit pixels, row padding
    ImageFormat("WebP", 6, lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", _webp),
    ImageFormat("TIFF", 48, lambda h: h[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), _tiff),  # 4 x float64, LZW
    ImageFormat("PNM", 20, lambda h: h[:1] == b"P" and len(h) > 1 and h[1] in b"123456", _pnm),  # ASCII samples
    ImageFormat("PAM", 8, lambda h: h[:2] == b"P7", _pam),
    ImageFormat("PFM", 12, lambda h: h[:2] in (b"PF", b"Pf"), _pfm),
    ImageFormat("Sun raster", 5, lambda h: h[:4] == b"\x59\xa6\x6a\x95", _sun_raster),
    ImageFormat("Radiance HDR", 5, lambda h: h.startswith((b"#?RADIANCE", b"#?RGBE")), _radiance),
    ImageFormat("JPEG 2000", 12, lambda h: h[:12] == b"\0\0\0\x0cjP  \r\n\x87\n", _jp2),
    ImageFormat("JPEG 2000", 12, lambda h: h[:4] == b"\xff\x4f\xff\x51", _j2k),  # a bare codestream (.j2k)
    ImageFormat("AVIF", 8, _is_avif, _avif),
    ImageFormat("OpenEXR", 40, lambda h: h[:4] == b"\x76\x2f\x31\x01", _exr),
]


def sniff(head: bytes) -> ImageFormat | None:
    """The format whose signature `head` starts with, or None."""
    return next((f for f in FORMATS if f.matches(head)), None)


def read_header(image_format: ImageFormat, data: Data) -> Header | None:
    """The header's size, or None when it cannot be read (truncated, forged lengths, unusual layout)."""
    try:
        return image_format.parse(data)
    except (ValueError, IndexError, OverflowError, struct.error, OSError):
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by the image in `data`, or None when its format or size is unknown."""
    image_format = sniff(data[:4096])
    header = read_header(image_format, data) if image_format is not None else None
    return (header.width, header.height) if header is not None else None
