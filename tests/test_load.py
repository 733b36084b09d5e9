"""Model loading: normalisation steps and clear errors for bad files."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import tiny_cnn

import onnxcam
from onnxcam.errors import ModelError
from onnxcam.graph.load import MIN_OPSET, default_opset, load_model


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a model")
    with pytest.raises(ModelError, match="not a valid ONNX model|not an ONNX model"):
        load_model(path)


def test_truncated_file(tmp_path):
    data = tiny_cnn().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_external_data_loads_and_user_file_untouched(tmp_path):
    model = tiny_cnn()
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    before = path.read_bytes(), (tmp_path / "ext.data").read_bytes()
    loaded = load_model(path)
    weights = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(weights["fc_w"], numpy_helper.to_array(tiny_cnn().graph.initializer[1]))
    assert (path.read_bytes(), (tmp_path / "ext.data").read_bytes()) == before
    x = np.random.default_rng(0).random((2, 3, 8, 8), np.float32)
    result = onnxcam.gradients(path, x)
    assert result.scores.shape == (2, 5)


def test_missing_external_data(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(tiny_cnn(), str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    os.remove(tmp_path / "w.data")
    with pytest.raises(ModelError, match="external data file 'w.data'.*missing"):
        load_model(path)


def test_external_data_outside_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = inner / "ext.onnx"
    onnx.save(tiny_cnn(), str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.data"
    (tmp_path / "w.data").write_bytes((inner / "w.data").read_bytes())
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="outside"):
        load_model(path)


def test_unknown_domain():
    model = tiny_cnn()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ModelError, match="unknown domain 'com.example'"):
        load_model(model)


def test_dangling_input():
    model = tiny_cnn()
    model.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ModelError, match="'nowhere'"):
        load_model(model)


def test_cycle():
    model = tiny_cnn()
    model.graph.node[0].input[0] = "feat"  # scale reads relu's output, relu reads scale's output
    with pytest.raises(ModelError, match="cycle"):
        load_model(model)


def test_unsorted_nodes_are_sorted():
    model = tiny_cnn()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    loaded = load_model(model)
    assert [n.name for n in loaded.graph.node] == ["scale", "relu", "pool", "fc"]


def test_old_ir_initializers_as_inputs():
    model = tiny_cnn(opset=9, ir_version=3)
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    loaded = load_model(model)
    assert [i.name for i in loaded.graph.input] == ["input"]
    assert default_opset(loaded) >= MIN_OPSET
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    result = onnxcam.gradients(model, x)
    assert result.gradients[result_default(model)].shape == x.shape


def result_default(model):
    return onnxcam.ReverseRunner(model, device="cpu").default_layer


@pytest.mark.parametrize("opset", [9, 11, 13, 15])
def test_old_opsets_are_upgraded_and_differentiate(opset):
    """Unsqueeze/ReduceMean with attribute axes (opset < 13) survive the upgrade; gradients stay right."""
    rng = np.random.default_rng(opset)
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]) if opset < 13 else
        helper.make_node("Unsqueeze", ["x", "ax"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["y"], axes=[0, 2], keepdims=0),
    ]
    inits = [] if opset < 13 else [numpy_helper.from_array(np.array([0], np.int64), "ax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=6)
    loaded = load_model(model)
    assert default_opset(loaded) >= MIN_OPSET
    x = rng.standard_normal((2, 3)).astype(np.float32)
    seed = rng.standard_normal((2,)).astype(np.float32)
    result = onnxcam.ReverseRunner(model, layers=["x"], device="cpu").run(x, seed)
    expected = seed[:, None] * (x > 0) / 3.0
    np.testing.assert_allclose(result.gradients["x"], expected, rtol=1e-6)


def test_opset_of_user_model_unchanged():
    model = tiny_cnn(opset=11)
    load_model(model)
    assert default_opset(model) == 11


@pytest.mark.parametrize("op,opset", [("Upsample", 9), ("Resize", 10)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 1.5], [1, 1, 1.7, 2.5]])
def test_upgraded_resize_keeps_its_values(op, opset, mode, scales):
    """The version converter drops the old x / scale coordinate mapping; the loader restores it."""
    import onnxruntime as ort

    node = helper.make_node(op, ["x", "s"], ["y"], mode=mode)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(scales, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=6)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    after = ort.InferenceSession(load_model(model).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def _constant_subgraph_model() -> onnx.ModelProto:
    """Shape arithmetic as exporters write it: Constant nodes in every attribute form, then ops on constants only,
    ending in a Reshape of the image input."""
    ints = helper.make_tensor("v", TensorProto.INT64, [3], [2, 3, 4])
    nodes = [
        helper.make_node("Constant", [], ["c_tensor"], value=ints),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[1, 1, 1]),
        helper.make_node("Constant", [], ["c_int"], value_int=5),
        helper.make_node("Constant", [], ["c_float"], value_float=2.5),
        helper.make_node("Constant", [], ["c_floats"], value_floats=[0.5, -1.5]),
        helper.make_node("Identity", ["c_tensor"], ["ident"]),
        helper.make_node("Mod", ["ident", "c_ints"], ["mod"]),
        helper.make_node("Sub", ["ident", "mod"], ["sub"]),
        helper.make_node("Cast", ["c_float"], ["cast"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["cast", "axis0"], ["unsq"]),
        helper.make_node("Concat", ["sub", "unsq"], ["concat"], axis=0),
        helper.make_node("Shape", ["c_floats"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=helper.make_tensor("z", 1, [1], [3.0])),
        helper.make_node("Gather", ["concat", "c_int_index"], ["gathered"], axis=0),
        helper.make_node("Slice", ["concat", "start", "end"], ["sliced"]),
        helper.make_node("Transpose", ["grid"], ["grid_t"], perm=[1, 0]),
        helper.make_node("Reshape", ["x", "target_shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array([1], np.int64), "c_int_index"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([2], np.int64), "end"),
             numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "grid"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "target_shape")]
    graph = helper.make_graph(nodes, "shape_math", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constants_fold_to_what_onnx_reference_evaluator_computes():
    from onnx.reference import ReferenceEvaluator

    model = _constant_subgraph_model()
    folded_names = [o for n in model.graph.node if n.op_type != "Reshape" for o in n.output]
    loaded = load_model(model)
    assert [n.op_type for n in loaded.graph.node] == ["Reshape"]
    values = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in folded_names)
    reference = ReferenceEvaluator(exposed).run(folded_names, {"x": np.zeros((1, 3, 4), np.float32)})
    for name, expected in zip(folded_names, reference):
        assert values[name].dtype == np.asarray(expected).dtype, name
        np.testing.assert_array_equal(values[name], expected, err_msg=name)


def test_loading_a_torch_export_never_imports_onnx():
    """Constant folding, shape inference and the rest of load_model need none of the onnx package (its import
    costs 0.5 s): shapes_vit, a TorchScript export, holds 91 Constant nodes."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import sys; from onnxcam.graph.load import load_model; "
            f"m = load_model({str(root / 'models' / 'shapes_vit.onnx')!r}); "
            "print(sum(n.op_type == 'Constant' for n in m.graph.node), 'onnx' in sys.modules, "
            "'ml_dtypes' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False", "False"]


def test_external_data_that_ends_early_is_refused(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(tiny_cnn(), str(path), save_as_external_data=True, location="w.data", size_threshold=0)
    data = tmp_path / "w.data"
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(ModelError, match="cannot read external data.*ends before tensor"):
        load_model(path)
