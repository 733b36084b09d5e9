"""Build the deployment variants of the shapes classifiers, for tests, `onnxcam compare` and the README.

From models/shapes_resnet.onnx and models/shapes_mobilenet.onnx, with onnxruntime's quantizer and
onnxconverter-common (dev-only: `pip install onnxconverter-common`):

    shapes_<net>_int8_qdq.onnx      static int8, QDQ format (QuantizeLinear/DequantizeLinear around float ops),
                                    int8 activations, per-channel symmetric int8 weights
    shapes_<net>_int8_qop.onnx      static int8, QOperator format (QLinearConv, com.microsoft QLinearAdd, QGemm,
                                    ...), uint8 activations, per-channel int8 weights
    shapes_<net>_int8_dynamic.onnx  dynamic int8 (DynamicQuantizeLinear, ConvInteger, MatMulInteger): weights
                                    quantised offline, activations per run
    shapes_resnet_fp16.onnx         float16 with float32 input and output (keep_io_types=True)
    shapes_mobilenet_fp16.onnx      float16 throughout, input and output included (keep_io_types=False)
    shapes_resnet_corner.onnx       a deliberately broken float model: the last feature map is multiplied by a
                                    mask that keeps only its top-left quarter before pooling, so the model can
                                    only look at that corner (a divergence for compare tests)

Static quantisation is calibrated (MinMax) on CALIBRATION_IMAGES images of the shapes generator with seed
CALIBRATION_SEED, preprocessed as the models' metadata says; the test and example images are not among them.
The quantizer keeps the models' metadata (labels, preprocessing). Everything is deterministic: a rerun with the
same onnxruntime writes the same files.

    python models/build_quantized.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
NETS = ("resnet", "mobilenet")
CALIBRATION_SEED = 7    # train 1, test 2, examples 3 and 4 (models/train_shapes.py)
CALIBRATION_IMAGES = 128
CORNER = 0.5            # the broken model keeps this fraction of the last feature map's height and width


def calibration_inputs(count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Shapes images as the classifiers' input: float32 (N, 3, 96, 96), (pixel / 255 - mean) / std."""
    from onnxcam.datasets.shapes import generate

    images, _ = generate(count, seed)
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    return ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy()


def _reader(inputs: np.ndarray, name: str = "input"):  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs[i:i + 1] for i in range(len(inputs)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {name: x}

    return Batches()


def quantize_static(source: Path, target: Path, qoperator: bool, inputs: np.ndarray) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))  # shape inference and graph clean-up, as onnxruntime advises
        ort_quantize_static(str(prepared), str(target), _reader(inputs),
                            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8 if qoperator else QuantType.QInt8,
                            weight_type=QuantType.QInt8, per_channel=True)


def quantize_dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        ort_quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)


def to_float16(source: Path, target: Path, keep_io_types: bool) -> None:
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=keep_io_types)
    onnx.save(model, str(target))


def corner_model(source: Path, target: Path, corner: float = CORNER) -> None:
    """The float model with its last feature map (the GlobalAveragePool's input) multiplied by a mask that is 1 on
    the top-left `corner` fraction of rows and columns and 0 elsewhere."""
    model = onnx.load(str(source))
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    pool = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    _, channels, height, width = shapes[pool.input[0]]
    mask = np.zeros((1, 1, height, width), np.float32)
    mask[..., :round(height * corner), :round(width * corner)] = 1.0
    graph.initializer.append(numpy_helper.from_array(mask, "corner_mask"))
    masked = f"{pool.input[0]}_corner"
    position = list(graph.node).index(pool)
    graph.node.insert(position, helper.make_node("Mul", [pool.input[0], "corner_mask"], [masked], name="corner_mask"))
    pool.input[0] = masked
    del graph.value_info[:]
    model.doc_string = (f"shapes_resnet with its last feature map masked to the top-left {corner:.0%} of rows and "
                        "columns before pooling: a deliberately broken model (models/build_quantized.py)")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))


def build(folder: Path = HERE) -> list[Path]:
    inputs = calibration_inputs()
    written = []
    for net in NETS:
        source = folder / f"shapes_{net}.onnx"
        for suffix, qoperator in (("int8_qdq", False), ("int8_qop", True)):
            target = folder / f"shapes_{net}_{suffix}.onnx"
            quantize_static(source, target, qoperator, inputs)
            written.append(target)
        target = folder / f"shapes_{net}_int8_dynamic.onnx"
        quantize_dynamic(source, target)
        written.append(target)
        target = folder / f"shapes_{net}_fp16.onnx"
        to_float16(source, target, keep_io_types=net == "resnet")
        written.append(target)
    target = folder / "shapes_resnet_corner.onnx"
    corner_model(folder / "shapes_resnet.onnx", target)
    written.append(target)
    return written


if __name__ == "__main__":
    for path in build():
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1024:.0f} KiB)")
