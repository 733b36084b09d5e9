"""Image files in, RGB uint8 arrays out, with memory bounded by the pixel limit whatever the file holds.

Order of checks, each before anything large is read or allocated:
1. the path must be a regular file (a FIFO would block, /dev/zero never ends): opened without blocking, then fstat;
2. its first bytes must be a format OpenCV decodes (onnxcam.image_headers), and the header's declared size (and
   channel count) within the limit; a header that cannot be read is refused, never handed to a decoder;
3. at most `declared pixels x the format's worst-case bytes per pixel + 16 MiB` of the file is read: a 4 GB file
   that starts like a small PNG costs 16 MB, and whatever lies past the bound is not what the decoder needs;
4. OpenCV decodes, also under its own pixel limit (set by onnxcam.opencv before cv2 is imported).

Orientation is what every viewer shows: JPEG, PNG and WebP carry EXIF orientation that OpenCV's IMREAD_UNCHANGED
ignores, so it is applied here; OpenCV's TIFF decoder applies a TIFF's orientation tag itself. AVIF's irot/imir
boxes are not applied (OpenCV ignores them too).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from onnxcam.errors import InputError
from onnxcam.image_headers import (
    FORMATS,
    HEAD_BYTES,
    FileView,
    Header,
    ImageFormat,
    jpeg_segments,
    read_header,
    riff_chunks,
    sniff,
    tiff_tags,
)
from onnxcam.opencv import MAX_PIXELS, cv2

MAX_CHANNELS = 4  # OpenCV returns at most 4; some decoders (OpenJPEG) would first allocate every declared one

# EXIF orientation (TIFF tag 274): how the stored pixels must be turned to show the image as meant.
ORIENTATIONS = {1: "as stored", 2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom",
                5: "transposed (mirrored along the main diagonal)", 6: "rotated 90° clockwise",
                7: "transversed (mirrored along the anti-diagonal)", 8: "rotated 90° anticlockwise"}


class ImageError(InputError):
    """One image cannot be used (unreadable, not an image, truncated, too large); the batch goes on."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray        # (H, W, 3) uint8, as displayed (orientation applied)
    format: str            # "PNG", "JPEG", ...
    orientation: int       # the EXIF orientation found, 1..8 (1: none); always already applied to `rgb`

    @property
    def orientation_applied(self) -> str:
        """What was done to the stored pixels, for records: 'as stored', 'rotated 90° clockwise', ..."""
        return ORIENTATIONS[self.orientation]


@dataclass(frozen=True)
class EncodedImage:
    name: str
    format: ImageFormat
    header: Header
    data: bytearray        # the file, or its first `limit` bytes when it is longer than the format allows
    file_size: int

    @property
    def cut(self) -> bool:
        return len(self.data) < self.file_size


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) as viewers show it: EXIF orientation applied; grayscale repeated, alpha
    dropped, 16-bit and float scaled to 8 bits (see to_rgb8)."""
    return decode_image(path, max_pixels).rgb


def decode_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """read_image, also saying which format it was and which EXIF orientation was applied."""
    encoded = read_encoded(path, max_pixels)
    orientation = exif_orientation(encoded.data, encoded.format.name)
    image = _decode(encoded, max_pixels)
    format_name = encoded.format.name
    del encoded  # the file's bytes are not needed past this point: free them before the conversions
    rgb = _to_rgb8(image, owned=True)
    del image
    if format_name != "TIFF":  # OpenCV's TIFF decoder already turned the pixels
        rgb = apply_orientation(rgb, orientation)
    return DecodedImage(rgb, format_name, orientation)


def read_pixels(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The array as OpenCV decodes it (gray, BGR or BGRA; any depth), after every check read_image makes, turned
    as its EXIF orientation says: for masks and label maps, which must be neither scaled nor colour-converted."""
    encoded = read_encoded(path, max_pixels)
    orientation = exif_orientation(encoded.data, encoded.format.name)
    image = _decode(encoded, max_pixels)
    return image if encoded.format.name == "TIFF" else apply_orientation(image, orientation)


# --- reading, bounded -------------------------------------------------------------------------------------------
def read_encoded(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> EncodedImage:
    """The file's bytes up to what its declared size allows, after the checks listed in the module docstring."""
    name = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    with _open_regular_file(path, name) as file:
        size = os.fstat(file.fileno()).st_size
        head = _read_exactly(file, min(size, HEAD_BYTES), name)
        if not head:
            raise ImageError(f"{name} is empty (0 bytes)")
        image_format = sniff(head)
        if image_format is None:
            known = ", ".join(dict.fromkeys(f.name for f in FORMATS))
            raise ImageError(f"{name} is not a readable image (not a format onnxcam decodes: {known})")
        header = read_header(image_format, FileView(file.fileno(), size, head))
        if header is None:
            raise ImageError(f"{name} is truncated or corrupt (its {image_format.name} header does not give the "
                             "image size, which onnxcam checks before decoding)")
        check_header(name, image_format, header, max_pixels)
        data = bytearray(min(size, byte_limit(image_format, header)))
        filled = min(len(head), len(data))
        data[:filled] = head[:filled]
        del head
        filled += _read_into(file, memoryview(data)[filled:], name)
        del data[filled:]  # the file shrank since fstat
    return EncodedImage(name, image_format, header, data, size)


def check_header(name: str, image_format: ImageFormat, header: Header, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a declared size or channel count that decoding would have to allocate beyond the limits."""
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageError(f"{name} declares {header.width}x{header.height} = {pixels:,} pixels, above the limit of "
                         f"{max_pixels:,}; downscale it first")
    if pixels == 0:
        raise ImageError(f"{name} is truncated or corrupt (its {image_format.name} header declares a "
                         f"{header.width}x{header.height} image)")
    if header.channels is not None and header.channels > MAX_CHANNELS:
        raise ImageError(f"{name} has {header.channels} channels; onnxcam reads images with 1 to {MAX_CHANNELS}")


def byte_limit(image_format: ImageFormat, header: Header) -> int:
    """The most bytes a valid file of this format and declared size can need to decode, metadata included."""
    return int(header.width * header.height * image_format.bytes_per_pixel) + HEAD_BYTES


def _open_regular_file(path: str | os.PathLike, name: str) -> BinaryIO:
    """Open without blocking (a FIFO with no writer would hang a plain open) and refuse anything but a file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ImageError(f"cannot read {name}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ImageError(f"{name} is {_file_kind(mode)}, not a regular file; pass image files only")
    return open(fd, "rb", buffering=0)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def _read_exactly(file: BinaryIO, count: int, name: str) -> bytes:
    buffer = bytearray(count)
    filled = _read_into(file, memoryview(buffer), name)
    return bytes(buffer[:filled])


def _read_into(file: BinaryIO, view: memoryview, name: str) -> int:
    filled = 0
    while filled < len(view):
        try:
            got = file.readinto(view[filled:])  # type: ignore[attr-defined]
        except OSError as e:
            raise ImageError(f"cannot read {name}: {e.strerror or e}") from None
        if not got:
            break
        filled += got
    view.release()
    return filled


# --- decoding ---------------------------------------------------------------------------------------------------
def _decode(encoded: EncodedImage, max_pixels: int) -> np.ndarray:
    name, data = encoded.name, encoded.data
    if encoded.format.name == "JPEG" and data.rfind(b"\xff\xd9") < 0:  # OpenCV would decode a grey-filled image
        raise ImageError(f"{name} is a truncated JPEG (no end-of-image marker{_cut_note(encoded)})")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # OpenCV's own limits (width or height above 2^20, its pixel limit) end here
        reason = (str(e).strip().splitlines() or ["decode failed"])[-1].split("error: ")[-1]
        raise ImageError(f"{name} is corrupt or too large for OpenCV ({reason})") from None
    if image is None or image.size == 0:
        raise ImageError(f"{name} is truncated or corrupt (OpenCV could not decode this {encoded.format.name}"
                         f"{_cut_note(encoded)})")
    if image.shape[0] * image.shape[1] > max_pixels:  # a decoder that disagrees with the header
        raise ImageError(f"{name} has {image.shape[0] * image.shape[1]:,} pixels, above the limit of {max_pixels:,}")
    return image


def _cut_note(encoded: EncodedImage) -> str:
    if not encoded.cut:
        return ""
    h = encoded.header
    return (f"; the file has {encoded.file_size:,} bytes, more than a {h.width}x{h.height} {encoded.format.name} "
            f"can need, so only the first {len(encoded.data):,} were read")


# --- orientation ------------------------------------------------------------------------------------------------
def exif_orientation(data: bytes | bytearray, format_name: str) -> int:
    """The EXIF orientation (1..8) of a JPEG (APP1), PNG (eXIf before the pixels), WebP (EXIF chunk) or TIFF
    (tag 274); 1 when there is none or it cannot be read."""
    block: bytes | bytearray | None = None
    try:
        if format_name == "TIFF":
            block = data
        elif format_name == "JPEG":
            block = next((bytes(data[s + 6:e]) for m, s, e in jpeg_segments(data)
                          if m == 0xE1 and data[s:s + 6] == b"Exif\0\0"), None)
        elif format_name == "PNG":
            block = _png_exif(data)
        elif format_name == "WebP":
            block = next((bytes(data[s:e]) for kind, s, e in riff_chunks(data, 12, len(data)) if kind == b"EXIF"),
                         None)
            if block is not None and block.startswith(b"Exif\0\0"):  # some writers keep the JPEG-style prefix
                block = block[6:]
        value = tiff_tags(block, {274}).get(274, 1) if block else 1
    except (ValueError, IndexError, OverflowError):
        return 1
    return value if value in ORIENTATIONS else 1


def _png_exif(data: bytes | bytearray) -> bytes | None:
    at = 8
    for _ in range(1024):
        if at + 8 > len(data):
            return None
        length, kind = int.from_bytes(data[at:at + 4], "big"), bytes(data[at + 4:at + 8])
        if kind == b"eXIf":
            return bytes(data[at + 8:at + 8 + length])
        if kind in (b"IDAT", b"IEND"):  # viewers only honour eXIf placed before the pixels
            return None
        at += 12 + length
    return None


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels (H, W, ...) turned as EXIF `orientation` says, so they show as the viewer shows them."""
    turned = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }[orientation if orientation in ORIENTATIONS else 1](image)
    return np.ascontiguousarray(turned)


# --- conversion -------------------------------------------------------------------------------------------------
def to_rgb8(image: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (gray, BGR or BGRA; 8/16-bit, other integers or float) as RGB uint8.

    16-bit is divided by 257. Float and other integer pixels: NaN and +-Inf become 0 (black), values are multiplied
    by 255 when every finite pixel is at most 1 (a 0..1 image) and taken as 0..255 otherwise, then clipped to
    0..255: one NaN or Inf pixel never changes the rest of the image."""
    return _to_rgb8(image, owned=False)


def _to_rgb8(image: np.ndarray, owned: bool) -> np.ndarray:
    """`owned`: the caller drops `image` afterwards, so it may be converted in place (no second full-size copy)."""
    if image.dtype == np.uint16:
        image, owned = cv2.convertScaleAbs(image, alpha=1 / 257), True
    elif image.dtype != np.uint8:
        image, owned = _float_to_uint8(image, owned), True
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if owned and image.shape[2] == 3 and image.flags.c_contiguous:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)


_CHUNK = 1 << 22  # elements converted at a time: temporaries stay at a few MB whatever the image size


def _float_to_uint8(image: np.ndarray, owned: bool) -> np.ndarray:
    """See to_rgb8. Works in place, a chunk at a time, on a float32 array the caller drops (a 40-megapixel float
    RGB image is 480 MB: no second copy, no full-size masks)."""
    pixels = image if owned and image.dtype == np.float32 else image.astype(np.float32)
    flat = np.ascontiguousarray(pixels).reshape(-1)
    top = -np.inf
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        np.nan_to_num(part, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        top = max(top, float(part.max()))
    scale = np.float32(255.0 if top <= 1.0 else 1.0)
    out = np.empty(pixels.shape, np.uint8)
    out_flat = out.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        part *= scale
        np.clip(part, 0, 255, out=part)
        out_flat[start:start + _CHUNK] = part
    return out
