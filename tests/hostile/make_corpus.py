"""Build the hostile-file corpus under tests/hostile/: files that must never crash, hang or allocate much.
Run from the repository root: python tests/hostile/make_corpus.py

- models/: each gives one clear error when loaded and explained;
- images/: each gives one clear error from read_image (and fails alone in a batch);
- inputs/: models whose declared input is above the pixel limit, refused when preprocessing is resolved;
- loads/: models that load and inspect normally within a small memory bound (the expectation is a line of output).

Each file's expectation (a regular expression) is in expected.json beside this script, so the tests read it from
the corpus and a new hostile file is one entry here. Large files (a 4 GB sparse PNG, an 8000^2 HDR that really
decodes) are built in a temporary folder by the tests, from the builders here.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from toy_models import tiny_cnn  # noqa: E402


def small_model() -> bytes:
    return tiny_cnn().SerializeToString()


def with_opset(version: int) -> bytes:
    model = tiny_cnn()
    model.opset_import[0].version = version
    return model.SerializeToString()


def graph_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], domains: tuple[str, ...] = ()) -> bytes:
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def head(source: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Conv", [source, "k"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["y"])]


KERNEL = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "k")


def forged_initializer() -> bytes:
    big = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[100_000, 100_000, 1, 1])
    return graph_model(head("x"), [big])


def bad_utf8_name() -> bytes:
    data = small_model()
    marker = b"feat"  # a tensor name in tiny_cnn
    return data.replace(marker, b"f\xe9\xff" + marker[3:], 1)


def wrong_attribute_type() -> bytes:
    model = tiny_cnn()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.attribute.append(helper.make_attribute("transB", "yes"))
    return model.SerializeToString()


def cycle() -> bytes:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]), *head("a")]
    return graph_model(nodes, [KERNEL])


def dangling() -> bytes:
    return graph_model([helper.make_node("Add", ["x", "nowhere"], ["a"]), *head("a")], [KERNEL])


def custom_domain() -> bytes:
    return graph_model([helper.make_node("Mystery", ["x"], ["a"], domain="com.example"), *head("a")], [KERNEL],
                       ("com.example",))


def external_outside() -> bytes:
    model = onnx.load_from_string(small_model())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/passwd")
    return model.SerializeToString()


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def encoded(ext: str, shape: tuple[int, ...] = (24, 32, 3)) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def tiff_bomb() -> bytes:
    data = bytearray(encoded(".tif"))
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    for i in range(count):
        at = offset + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[at:at + 4])
        if tag in (256, 257):
            value = struct.pack(order + ("H" if kind == 3 else "I"), 60_000)
            data[at + 8:at + 8 + len(value)] = value
    return bytes(data)


def tall_bmp() -> bytes:
    """Few pixels (under our limit) but a height above OpenCV's 2^20 rows: OpenCV raises instead of returning."""
    data = bytearray(encoded(".bmp"))
    data[22:26] = struct.pack("<i", 2**20 + 20)
    return bytes(data)


# --- image formats beyond the common ones: every decoder OpenCV has must be size-checked before decoding ----------
def radiance_header(width: int, height: int) -> bytes:
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()


def radiance_rle(width: int, height: int, rgbe: tuple[int, int, int, int] = (128, 64, 32, 129)) -> bytes:
    """A real Radiance HDR of one colour, run-length encoded: about width / 2 bytes a row (8000^2 is 4 MB), so a
    file that decodes to gigabytes is cheap to make."""
    row = bytearray([2, 2, width >> 8, width & 255])
    for value in rgbe:
        left = width
        while left:
            run = min(127, left)
            row += bytes([128 + run, value])
            left -= run
    return radiance_header(width, height) + bytes(row) * height


def with_codestream_size(data: bytes, width: int, height: int, components: int | None = None) -> bytes:
    """A JPEG 2000 file whose codestream SIZ (what OpenJPEG allocates from) declares another size."""
    buf = bytearray(data)
    at = buf.find(b"\xff\x4f\xff\x51")
    buf[at + 8:at + 16] = struct.pack(">II", width, height)
    if components is not None:
        buf[at + 40:at + 42] = struct.pack(">H", components)
    return bytes(buf)


def codestream(jp2: bytes) -> bytes:
    """The bare JPEG 2000 codestream (.j2k) inside a .jp2 file."""
    return jp2[jp2.find(b"\xff\x4f\xff\x51"):]


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """An AVIF whose 'ispe' property declares another size than its AV1 stream."""
    buf = bytearray(data)
    at = buf.find(b"ispe")
    buf[at + 8:at + 16] = struct.pack(">II", width, height)
    return bytes(buf)


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def avif_without_sequence_header() -> bytes:
    """ftyp and an ispe of 64 x 64, but no AV1 data: the real frame size cannot be known before decoding."""
    ispe = box(b"ispe", bytes(4) + struct.pack(">II", 64, 64))
    meta = box(b"meta", bytes(4) + box(b"iprp", box(b"ipco", ispe)))
    return box(b"ftyp", b"avif" + bytes(4) + b"avifmif1") + meta


def webp_canvas(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(
        3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def gif_screen(width: int, height: int, frame: tuple[int, int] | None = None) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    if frame is None:
        return screen + b"\x3b"
    return screen + b"\x2c" + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x44\x01\x00\x3b"


def exr_header(width: int, height: int) -> bytes:
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    attributes = b"".join(name + b"\0box2i\0" + struct.pack("<I", 16) + window
                          for name in (b"dataWindow", b"displayWindow"))
    return b"\x76\x2f\x31\x01" + struct.pack("<I", 2) + attributes + b"\0"


def bigtiff_header(width: int, height: int) -> bytes:
    entries = b"".join(struct.pack("<HHQQ", tag, 16, 1, value) for tag, value in ((256, width), (257, height)))
    return b"II+\0" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + entries + bytes(8)


def tiff_file(pixels: np.ndarray, tags: dict[int, tuple[int, list[int]]] | None = None,
              directory_last: bool = False) -> bytes:
    """An uncompressed little-endian TIFF of `pixels` ((H, W) or (H, W, C); uint8, uint16 or float) in one strip,
    written by hand so tests can add any tag (Orientation 274, tiles 322-325...): `tags` maps tag -> (type 3 SHORT or
    4 LONG, values). The directory comes first, or after the pixels (as many writers put it) if `directory_last`."""
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    data = pixels.tobytes()
    fields = {256: (4, [width]), 257: (4, [height]), 258: (3, [pixels.dtype.itemsize * 8] * samples),
              259: (3, [1]), 262: (3, [2 if samples >= 3 else 1]), 273: (4, [0]), 277: (3, [samples]),
              278: (4, [height]), 279: (4, [len(data)]), 339: (3, [3 if pixels.dtype.kind == "f" else 1] * samples)}
    fields.update(tags or {})
    values = {tag: struct.pack(f"<{len(v)}{'H' if kind == 3 else 'I'}", *v) for tag, (kind, v) in fields.items()}
    directory_size = 2 + 12 * len(fields) + 4
    extra_size = sum(len(raw) + len(raw) % 2 for raw in values.values() if len(raw) > 4)
    if directory_last:  # header, pixels, directory, its out-of-line values
        pixels_at, directory_at = 8, 8 + len(data)
    else:  # header, directory, its values, pixels
        directory_at = 8
        pixels_at = 8 + directory_size + extra_size
    extra_at = directory_at + directory_size
    extra, entries = b"", b""
    for tag in sorted(fields):
        kind, raw = fields[tag][0], values[tag]
        if tag == 273 and len(fields[tag][1]) == 1:
            raw = struct.pack("<I", pixels_at)
        if len(raw) > 4:
            entries += struct.pack("<HHII", tag, kind, len(fields[tag][1]), extra_at + len(extra))
            extra += raw + bytes(len(raw) % 2)
        else:
            entries += struct.pack("<HHI", tag, kind, len(fields[tag][1])) + raw.ljust(4, b"\0")
    directory = struct.pack("<H", len(fields)) + entries + bytes(4) + extra
    body = data + directory if directory_last else directory + data
    return b"II*\0" + struct.pack("<I", directory_at) + body


def tiff_tile_bomb() -> bytes:
    """A 9 x 6 image in 16000 x 16000 tiles: OpenCV would allocate one whole tile (768 MB)."""
    small = np.zeros((6, 9, 3), np.uint8)
    return tiff_file(small, {322: (4, [16000]), 323: (4, [16000]), 324: (4, [0]), 325: (4, [162])})


def av1_larger_than_ispe() -> bytes:
    """A real 8000 x 8000 AVIF (one colour: 1 KB) whose ispe says 64 x 64: libavif decodes the AV1 frame at its
    own size (877 MB), so the AV1 sequence header's size must be checked too."""
    ok, buf = cv2.imencode(".avif", np.full((8000, 8000, 3), 90, np.uint8), [cv2.IMWRITE_AVIF_SPEED, 10])
    assert ok
    return with_ispe(buf.tobytes(), 64, 64)


def fold_bomb() -> bytes:
    """321 bytes: ConstantOfShape of an initializer [500000000]; folding it at load time would take 2 GB."""
    shape = numpy_helper.from_array(np.array([500_000_000], np.int64), "shape")
    zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=zero),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["a"]),
             *head("a")]
    return graph_model(nodes, [shape, KERNEL])


def huge_input(size: int) -> bytes:
    return tiny_cnn(batch=1, size=size).SerializeToString()


def models() -> dict[str, tuple[bytes, str]]:
    return {
        "empty.onnx": (b"", "not a valid ONNX model|not an ONNX model"),
        "random_bytes.onnx": (np.random.default_rng(1).bytes(4096), "not a valid ONNX model|not an ONNX model"),
        "truncated.onnx": (small_model()[: len(small_model()) * 2 // 3], "not a valid ONNX model|not an ONNX model"),
        "png_renamed.onnx": (encoded(".png"), "not a valid ONNX model|not an ONNX model"),
        "forged_initializer.onnx": (forged_initializer(), "declares shape"),
        "bad_utf8_name.onnx": (bad_utf8_name(), "not valid UTF-8"),
        "wrong_attribute_type.onnx": (wrong_attribute_type(), "attribute 'transB'"),
        "cycle.onnx": (cycle(), "cycle"),
        "dangling_input.onnx": (dangling(), "nowhere"),
        "custom_domain.onnx": (custom_domain(), "com.example"),
        "opset_99.onnx": (with_opset(99), "opset 99"),
        "opset_1.onnx": (with_opset(1), "opset 1"),
        "external_outside.onnx": (external_outside(), "outside"),
    }


def images() -> dict[str, tuple[bytes, str]]:
    return {
        "zero_bytes.png": (b"", "empty"),
        "text.jpg": (b"this is not an image\n" * 10, "not a readable image"),
        "random.png": (np.random.default_rng(2).bytes(2048), "not a readable image"),
        "truncated.png": (encoded(".png")[:200], "truncated or corrupt"),
        "truncated.jpg": (encoded(".jpg")[:300], "truncated"),
        "truncated.webp": (encoded(".webp")[:60], "truncated or corrupt"),
        "truncated.bmp": (encoded(".bmp")[:100], "truncated or corrupt"),
        "truncated.tif": (encoded(".tif")[:100], "truncated or corrupt|not a readable image"),
        "bmp_too_tall.bmp": (tall_bmp(), "too large for OpenCV|above the limit"),
        "bomb.png": (png_header(100_000, 100_000), "above the limit"),
        "bomb.tif": (tiff_bomb(), "above the limit"),
        "bomb.ppm": (b"P6\n70000 70000\n255\n" + bytes(64), "above the limit"),
        "bomb.bmp": (b"BM" + bytes(16) + struct.pack("<ii", 80_000, 80_000) + bytes(40), "above the limit"),
        "hdr_renamed.png": (radiance_header(8000, 8000) + bytes(64), "above the limit"),
        "bomb.hdr": (radiance_header(12_000, 12_000) + bytes(64), "above the limit"),
        "bomb.jp2": (with_codestream_size(encoded(".jp2", (64, 64, 3)), 20_000, 20_000), "above the limit"),
        "bomb.j2k": (codestream(with_codestream_size(encoded(".jp2", (64, 64, 3)), 20_000, 20_000)), "above the limit"),
        "components.jp2": (with_codestream_size(encoded(".jp2", (64, 64, 3)), 64, 64, 16_384), "16384 channels"),
        "bomb.avif": (with_ispe(encoded(".avif", (64, 64, 3)), 20_000, 20_000), "above the limit"),
        "av1_larger_than_ispe.avif": (av1_larger_than_ispe(), "above the limit"),
        "no_av1_header.avif": (avif_without_sequence_header(), "header does not give the image size"),
        "bomb.webp": (webp_canvas(16_384, 16_384), "above the limit"),
        "bomb.gif": (gif_screen(65_535, 65_535), "above the limit"),
        "frame_outside_screen.gif": (gif_screen(16, 16, (65_535, 65_535)), "above the limit"),
        "bomb.pfm": (b"PF\n10000 10000\n-1\n" + bytes(64), "above the limit"),
        "bomb.pam": (b"P7\nWIDTH 10000\nHEIGHT 10000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(64),
                     "above the limit"),
        "bomb.ras": (struct.pack(">8I", 0x59A66A95, 10_000, 10_000, 24, 0, 1, 0, 0) + bytes(64), "above the limit"),
        "bomb.exr": (exr_header(10_000, 10_000), "above the limit"),
        "bigtiff_bomb.tif": (bigtiff_header(100_000, 100_000), "above the limit"),
        "tile_bomb.tif": (tiff_tile_bomb(), "above the limit"),
        "zero_width.png": (png_header(0, 64), "truncated or corrupt"),
        "heic_not_decoded.png": (box(b"ftyp", b"heic" + bytes(4) + b"mif1heic") + bytes(64), "not a readable image"),
    }


# Models whose declared input is above the pixel limit: refused when preprocessing is resolved, before anything
# is allocated for an image.
def inputs() -> dict[str, tuple[bytes, str]]:
    return {
        "input_20000.onnx": (huge_input(20_000), "20000x20000 = 400,000,000 pixels per image, above the limit"),
        "input_100000.onnx": (huge_input(100_000), "above the limit"),
    }


# Models that load and inspect normally, within a small memory bound: the expectation is a line of `inspect`.
def loads() -> dict[str, tuple[bytes, str]]:
    return {
        "fold_bomb.onnx": (fold_bomb(), "default layer"),
    }



def main() -> None:
    expected: dict[str, dict[str, str]] = {"models": {}, "images": {}, "inputs": {}, "loads": {}}
    for folder, build in (("models", models), ("images", images), ("inputs", inputs), ("loads", loads)):
        files = build()
        (HERE / folder).mkdir(exist_ok=True)
        for name, (data, message) in files.items():
            (HERE / folder / name).write_bytes(data)
            expected[folder][name] = message
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {sum(map(len, expected.values()))} files under {HERE}")


if __name__ == "__main__":
    main()
