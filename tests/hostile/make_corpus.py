"""Build the hostile-file corpus under tests/hostile/ (models/ and images/): files that must each give one clear
error, never a crash, a hang or a huge allocation. Run from the repository root: python tests/hostile/make_corpus.py

Each file's expected error (a fragment of the message) is in expected.json beside this script, so the tests read
the expectation from the corpus and a new hostile file is one entry here.
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


MODELS: dict[str, tuple[bytes, str]] = {
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

IMAGES: dict[str, tuple[bytes, str]] = {
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
}


def main() -> None:
    expected: dict[str, dict[str, str]] = {"models": {}, "images": {}}
    for folder, files in (("models", MODELS), ("images", IMAGES)):
        (HERE / folder).mkdir(exist_ok=True)
        for name, (data, message) in files.items():
            (HERE / folder / name).write_bytes(data)
            expected[folder][name] = message
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {len(MODELS)} models and {len(IMAGES)} images under {HERE}")


if __name__ == "__main__":
    main()
