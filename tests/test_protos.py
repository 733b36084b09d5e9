"""onnxcam.graph.protos: onnx's own messages and C++ inference without `import onnx`, and helpers that build the
same protobufs as onnx.helper / onnx.numpy_helper (compared byte for byte, or value for value)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.graph import protos

ROOT = Path(__file__).resolve().parent.parent
NATIVE = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
          np.uint64, np.bool_, np.complex64, np.complex128]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_graph_code_imports_without_onnx_and_onnx_reuses_its_classes():
    out = _python("""
import sys
import onnxcam.graph.load, onnxcam.graph.reverse.model, onnxcam.graph.survey
from onnxcam.graph import protos
print("before", "onnx" in sys.modules, "ml_dtypes" in sys.modules)
import onnx
print("same", onnx.ModelProto is protos.ModelProto, onnx.TensorProto is protos.TensorProto,
      onnx.onnx_ml_pb2 is sys.modules["onnx.onnx_ml_pb2"],
      onnx.onnx_cpp2py_export is sys.modules["onnx.onnx_cpp2py_export"])
graph = protos.make_graph([protos.make_node("Relu", ["x"], ["y"])], "g",
                          [protos.make_tensor_value_info("x", protos.TensorProto.FLOAT, [1, 3])],
                          [protos.make_tensor_value_info("y", protos.TensorProto.FLOAT, [None, None])])
model = protos.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
onnx.checker.check_model(model)
print("inferred", onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim[1].dim_value)
""")
    assert "before False False" in out
    assert "same True True True True" in out
    assert "inferred 3" in out


def test_after_onnx_the_same_classes_are_used():
    assert protos.ModelProto is onnx.ModelProto and protos.NodeProto is onnx.NodeProto
    assert protos.IR_VERSION == onnx.IR_VERSION
    assert protos.opset_version() == onnx.defs.onnx_opset_version()
    assert protos.onnx_version() == onnx.__version__


@pytest.mark.parametrize("dtype", NATIVE, ids=lambda d: np.dtype(d).name)
def test_arrays_round_trip_as_onnx_does(dtype):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((2, 3, 4)) * 100)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal((2, 3, 4))
    array = values.astype(dtype)
    ours = protos.from_array(array, "w")
    assert ours.SerializeToString() == numpy_helper.from_array(array, "w").SerializeToString()
    back = protos.to_array(ours)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    # the typed fields (float_data, int32_data...) that exporters write instead of raw bytes
    typed = helper.make_tensor("w", helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, array.ravel(),
                               raw=False)
    assert not typed.HasField("raw_data")
    np.testing.assert_array_equal(protos.to_array(typed), numpy_helper.to_array(typed))
    assert protos.to_array(typed).dtype == numpy_helper.to_array(typed).dtype


def test_scalars_empty_and_big_endian_arrays():
    for array in (np.array(3.5, np.float32), np.zeros((0, 4), np.int64), np.arange(6, dtype=">i4").reshape(2, 3),
                  np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))):
        ours = protos.from_array(array)
        native = array.astype(array.dtype.newbyteorder("="))  # onnx refuses big-endian arrays; ours swaps them
        assert ours.SerializeToString() == numpy_helper.from_array(native).SerializeToString()
        np.testing.assert_array_equal(protos.to_array(ours), array)


def test_types_numpy_lacks_go_through_onnx():
    bfloat16 = helper.make_tensor("b", TensorProto.BFLOAT16, [3], [1.0, -2.5, 0.25])
    np.testing.assert_array_equal(protos.to_array(bfloat16).astype(np.float32), [1.0, -2.5, 0.25])
    assert protos.np_dtype(TensorProto.BFLOAT16) == helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
    strings = numpy_helper.from_array(np.array(["a", "bc"], dtype=object))
    assert list(protos.to_array(strings)) == list(numpy_helper.to_array(strings))
    assert protos.type_name(TensorProto.UINT4) == "UINT4"


ATTRIBUTES = [1, np.int64(-4), True, 2.5, np.float32(0.5), "mode", b"raw", [1, 2, 3], [1.0, 2], [0.5, 1.5],
              ["a", "b"], (3, 4), helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]),
              [helper.make_tensor("t", TensorProto.INT64, [1], [7])],
              helper.make_graph([], "g", [], []), helper.make_tensor_type_proto(TensorProto.FLOAT, [2])]


@pytest.mark.parametrize("value", ATTRIBUTES, ids=lambda v: type(v).__name__)
def test_attributes_match_onnx_helper(value):
    ours = protos.make_attribute("a", value)
    assert ours.SerializeToString() == helper.make_attribute("a", value).SerializeToString()
    expected = helper.get_attribute_value(ours)
    assert protos.attribute_value(ours) == expected


def test_attributes_onnx_cannot_type_are_refused():
    for value in ([], [1, "a"], object()):
        with pytest.raises((ValueError, TypeError)):
            protos.make_attribute("a", value)


def test_nodes_values_graphs_and_models_match_onnx_helper():
    node_args = ("Conv", ["x", "w"], ["y"])
    attrs = {"strides": [1, 1], "pads": None, "group": 1, "auto_pad": "NOTSET"}
    ours = protos.make_node(*node_args, name="conv", domain="", **attrs)
    theirs = helper.make_node(*node_args, name="conv", domain="", **attrs)
    assert ours.SerializeToString() == theirs.SerializeToString()
    for shape in (None, [], [1, "batch", None, 7]):
        assert protos.make_tensor_value_info("v", TensorProto.FLOAT, shape).SerializeToString() == \
            helper.make_tensor_value_info("v", TensorProto.FLOAT, shape).SerializeToString()
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])]
    init = [numpy_helper.from_array(np.ones(2, np.float32), "w")]
    graph = protos.make_graph([ours], "g", inputs, outputs, init)
    assert graph.SerializeToString() == helper.make_graph([theirs], "g", inputs, outputs, init).SerializeToString()
    opsets = [helper.make_opsetid("", 17)]
    assert protos.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString() == \
        helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
    assert protos.make_model(graph).SerializeToString() == helper.make_model(graph).SerializeToString()
    tensor = protos.make_tensor("s", TensorProto.INT64, [2], [0, -1])
    np.testing.assert_array_equal(numpy_helper.to_array(tensor), [0, -1])


def test_shape_inference_and_version_conversion_are_onnx_own():
    model = onnx.load(str(ROOT / "models" / "shapes_resnet.onnx"))
    ours, theirs = protos.infer_shapes(model, data_prop=True), onnx.shape_inference.infer_shapes(model, data_prop=True)
    assert ours.SerializeToString() == theirs.SerializeToString()
    assert len(ours.graph.value_info) > 0
    old = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]), opset_imports=[helper.make_opsetid("", 11)])
    converted = protos.convert_version(old, 16)
    assert converted.SerializeToString() == onnx.version_converter.convert_version(old, 16).SerializeToString()
    with pytest.raises(Exception):  # noqa: B017  (onnx raises its C++ InferenceError)
        protos.infer_shapes(helper.make_model(helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["c"])], "g",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
             helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])), strict_mode=True)
