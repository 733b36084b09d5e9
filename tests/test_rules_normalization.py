"""Normalisation and softmax rules against float64 finite differences."""

import gradcheck
import numpy as np
import pytest
from gradcheck import check_model, check_op, make_op_model
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode, _batchnorm_training_mode

from onnxcam.errors import GradientError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model

rng = np.random.default_rng(0)


def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float32)


def positive(*shape: int) -> np.ndarray:
    return (rng.random(shape) + 0.5).astype(np.float32)


def lrn64(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """LRN as the spec writes it: channel c sums x^2 over channels c - (size-1)//2 .. c + size//2."""
    before = (size - 1) // 2
    padded = np.pad(x * x, [(0, 0), (before, size - 1 - before)] + [(0, 0)] * (x.ndim - 2))
    window = sum(padded[:, i:i + x.shape[1]] for i in range(size))
    return x / (bias + alpha / size * window) ** beta


class LRN(OpRun):
    """The reference LRN loops over the batch instead of the channels (onnx 1.23); this one follows the spec."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):  # type: ignore[no-untyped-def]
        return (lrn64(x, size, alpha, beta, bias),)


class GroupNormalization(OpRun):
    """The opset-21 function body computes in float32 (stash_type); finite differences need float64.

    Scale and bias have one value per channel (opset 21) or per group (18); when groups == channels they agree.
    """

    op_domain = ""

    def _run(self, x, scale, bias, epsilon=None, num_groups=None, stash_type=None):  # type: ignore[no-untyped-def]
        grouped = x.reshape(x.shape[0], num_groups, -1)
        norm = (grouped - grouped.mean(-1, keepdims=True)) / np.sqrt(grouped.var(-1, keepdims=True) + epsilon)
        if scale.size == x.shape[1]:
            shape = (-1,) + (1,) * (x.ndim - 2)
            return (norm.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape),)
        return ((norm * scale.reshape(-1, 1) + bias.reshape(-1, 1)).reshape(x.shape),)


class BatchNormalization(OpRun):
    """The reference BatchNormalization-9 mixes batch statistics into an inference-only op (onnx 1.23)."""

    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None):  # type: ignore[no-untyped-def]
        if training_mode:
            y, _, _, running_mean, running_var = _batchnorm_training_mode(x, scale, bias, mean, var, momentum, epsilon)
            return y, running_mean, running_var
        return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon),)


@pytest.fixture(autouse=True)
def float64_reference(monkeypatch):
    """Finite differences in this file use the stand-ins above."""
    def evaluator(model, new_ops=()):  # type: ignore[no-untyped-def]
        return ReferenceEvaluator(model, new_ops=[*new_ops, LRN, GroupNormalization, BatchNormalization])
    monkeypatch.setattr(gradcheck, "ReferenceEvaluator", evaluator)


def symbolic(model, dims):  # type: ignore[no-untyped-def]
    """Make the given dims of graph inputs symbolic: dims maps input name -> {axis: dim_param}."""
    for value in model.graph.input:
        for axis, param in dims.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = param
    return model


# --- BatchNormalization --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (2, 3, 4, 4), (2, 2, 2, 3, 2)])
@pytest.mark.parametrize("opset", [13, 15, 21])
def test_batchnorm_inference_all_inputs(shape, opset):
    c = shape[1]
    feeds = {"x": normal(*shape), "s": normal(c), "b": normal(c), "m": normal(c), "v": positive(c)}
    check_op("BatchNormalization", feeds, opset=opset, epsilon=float(rng.choice([1e-5, 1e-3, 0.1])))


def test_batchnorm_inference_constant_statistics():
    """A frozen layer: the input gradient is one per-channel product, with nothing spent on the parameters."""
    c = 5
    constants = {"s": normal(c), "b": normal(c), "m": normal(c), "v": positive(c)}
    check_op("BatchNormalization", {"x": normal(2, c, 3, 3)}, constants, opset=17)
    built = gradient_model(load_model(make_op_model("BatchNormalization", {"x": normal(2, c, 3, 3)}, constants)),
                           ["x"], probabilities=True)
    assert not {"ReduceSum", "Sub"} & {n.op_type for n in built.model.graph.node}


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 3, 2)])
@pytest.mark.parametrize("opset", [15, 18])
def test_batchnorm_training_mode(shape, opset):
    c = shape[1]
    feeds = {"x": normal(*shape, scale=2.0), "s": normal(c), "b": normal(c)}
    constants = {"m": normal(c), "v": positive(c)}
    grads = check_op("BatchNormalization", feeds, constants, opset=opset, outputs=3, training_mode=1,
                     epsilon=1e-3)
    # the batch statistics make the input gradient sum to zero over each channel
    np.testing.assert_allclose(np.moveaxis(grads["x"], 1, 0).reshape(c, -1).sum(1), 0, atol=1e-4)


def test_batchnorm_running_statistics_outputs_have_no_gradient():
    c = 3
    model = make_op_model("BatchNormalization", {"x": normal(4, c)},
                          {"s": normal(c), "b": normal(c), "m": normal(c), "v": positive(c)},
                          opset=15, outputs=3, training_mode=1)
    with pytest.raises(GradientError, match="'op'"):
        gradient_model(load_model(model), ["x"], output="y1", probabilities=True)


# --- InstanceNormalization ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 3, 4), (1, 2, 2, 3, 2)])
@pytest.mark.parametrize("opset", [13, 17, 21])
def test_instancenorm(shape, opset):
    c = shape[1]
    feeds = {"x": normal(*shape, scale=3.0), "s": normal(c), "b": normal(c)}
    check_op("InstanceNormalization", feeds, opset=opset, epsilon=float(rng.choice([1e-5, 1e-2])))


def test_instancenorm_constant_affine():
    check_op("InstanceNormalization", {"x": normal(2, 4, 3, 3)}, {"s": normal(4), "b": normal(4)})


# --- LayerNormalization ------------------------------------------------------------------------------------------

LAYERNORM = [((2, 3, 4), -1, (4,)), ((2, 3, 4), 1, (3, 4)), ((2, 3, 4), -2, (1, 4)), ((3, 5), 0, (3, 5)),
             ((2, 2, 3, 4), 2, (3, 1)), ((2, 3, 4), 2, ())]


@pytest.mark.parametrize("shape,axis,param", LAYERNORM)
@pytest.mark.parametrize("opset", [17, 18, 21])
def test_layernorm(shape, axis, param, opset):
    feeds = {"x": normal(*shape, scale=2.0), "s": normal(*param), "b": normal(*param)}
    check_op("LayerNormalization", feeds, opset=opset, axis=axis, epsilon=float(rng.choice([1e-5, 0.1])))


def test_layernorm_without_bias_default_axis():
    check_op("LayerNormalization", {"x": normal(3, 2, 5), "s": normal(5)}, opset=17)


def test_layernorm_constant_scale():
    check_op("LayerNormalization", {"x": normal(3, 6)}, {"s": normal(6), "b": normal(6)}, opset=18)


@pytest.mark.parametrize("output", ["y0", "y1", "y2"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_layernorm_statistics_outputs(output, axis):
    """Mean and InvStdDev outputs carry gradient too, each alone (the others unused) and with Y."""
    check_op("LayerNormalization", {"x": normal(2, 3, 4, scale=2.0), "s": normal(4)}, {"b": normal(4)},
             opset=17, outputs=3, output=output, axis=axis, epsilon=0.01)


def test_layernorm_all_outputs_used():
    """Y, Mean and InvStdDev feed one score: their gradients add up."""
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "rstd"], axis=-1, name="ln"),
             helper.make_node("Add", ["mean", "rstd"], ["stats"]),
             helper.make_node("Mul", ["y", "stats"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 4)),
                                           helper.make_tensor_value_info("s", TensorProto.FLOAT, (4,))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model, {"x": normal(3, 4, scale=2.0), "s": normal(4)})


# --- GroupNormalization ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,groups", [((2, 6, 3), 3), ((2, 4, 3, 3), 2), ((1, 6, 2, 2), 6), ((3, 4, 5), 1),
                                          ((2, 6, 2, 1, 2), 2)])
@pytest.mark.parametrize("opset", [18, 21])
def test_groupnorm(shape, groups, opset):
    size = groups if opset < 21 else shape[1]
    feeds = {"x": normal(*shape, scale=2.0), "s": normal(size), "b": normal(size)}
    check_op("GroupNormalization", feeds, opset=opset, num_groups=groups, epsilon=float(rng.choice([1e-5, 0.1])))


def test_groupnorm_opset18_per_group_differs_from_21():
    """The same node reads its scale per group at 18 and per channel at 21: check both against the reference."""
    x = normal(2, 4, 3, scale=2.0)
    check_op("GroupNormalization", {"x": x, "s": normal(2), "b": normal(2)}, opset=20, num_groups=2)
    check_op("GroupNormalization", {"x": x, "s": normal(4), "b": normal(4)}, opset=21, num_groups=2)


# --- LRN ---------------------------------------------------------------------------------------------------------


def test_lrn_reference_is_fixed():
    """Guard the float64 stand-in: against onnxruntime's LRN on a case the onnx reference gets wrong."""
    import onnxruntime as ort
    x = normal(2, 5, 3, 3)
    model = make_op_model("LRN", {"x": x}, size=3, alpha=0.5, beta=0.75, bias=1.5)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = gradcheck.ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 3, 3), (1, 7, 4, 1), (2, 3, 1, 2)])  # onnxruntime runs 4-D LRN only
@pytest.mark.parametrize("size", [1, 3, 5])
@pytest.mark.parametrize("opset", [13, 17])
def test_lrn(shape, size, opset):
    alpha, beta, bias = float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.3, 1.2)), float(rng.uniform(0.5, 2.0))
    check_op("LRN", {"x": normal(*shape)}, opset=opset, size=size, alpha=alpha, beta=beta, bias=bias)


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size_on_reference_runtime(size):
    """onnxruntime refuses even sizes, where the window is lopsided; run the rewritten model on the reference."""
    x = normal(2, 5, 2, 1)
    model = make_op_model("LRN", {"x": x}, size=size, alpha=0.6, beta=0.8, bias=1.2)
    built = gradient_model(load_model(model), ["x"], probabilities=True)
    seed = normal(*x.shape)
    got = ReferenceEvaluator(built.model, new_ops=[LRN]).run([GRAD_PREFIX + "x"], {"x": x, SEED: seed})[0]
    x64, eps, want = x.astype(np.float64), 1e-6, np.zeros(x.shape)
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = eps
        step = step.reshape(x.shape)
        ahead, behind = (np.sum(seed * lrn64(x64 + d, size, 0.6, 0.8, 1.2)) for d in (step, -step))
        want.flat[i] = (ahead - behind) / (2 * eps)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lrn_default_attributes():
    check_op("LRN", {"x": normal(2, 6, 3, 3, scale=20.0)}, size=5)


# --- Softmax, LogSoftmax -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((3, 5), None), ((2, 3, 4), 1), ((2, 3, 4), -2), ((2, 3, 4), 0),
                                        ((4,), 0), ((2, 1, 3, 2), -1)])
@pytest.mark.parametrize("opset", [13, 17, 18])
def test_softmax(op, shape, axis, opset):
    attrs = {} if axis is None else {"axis": axis}
    check_op(op, {"x": normal(*shape, scale=2.0)}, opset=opset, **attrs)


# --- symbolic (dynamic) dims -------------------------------------------------------------------------------------

DYNAMIC = [
    ("BatchNormalization", {"x": (2, 3, 4, 5), "s": (3,), "b": (3,), "m": (3,), "v": (3,)}, {},
     {"x": {0: "N", 2: "H"}}),
    ("BatchNormalization", {"x": (4, 3, 5), "s": (3,), "b": (3,)}, {"training_mode": 1}, {"x": {0: "N", 2: "L"}}),
    ("InstanceNormalization", {"x": (2, 3, 4, 5), "s": (3,), "b": (3,)}, {}, {"x": {0: "N", 2: "H", 3: "W"}}),
    ("LayerNormalization", {"x": (2, 3, 4), "s": (4,), "b": (4,)}, {"axis": -1}, {"x": {0: "N", 1: "T"}}),
    ("LayerNormalization", {"x": (2, 3, 4), "s": (3, 4)}, {"axis": 1}, {"x": {0: "N"}}),
    ("GroupNormalization", {"x": (2, 4, 3, 3), "s": (4,), "b": (4,)}, {"num_groups": 2}, {"x": {0: "N", 3: "W"}}),
    ("LRN", {"x": (2, 5, 3, 4)}, {"size": 3, "alpha": 0.5}, {"x": {0: "N", 1: "C", 2: "H"}}),
    ("Softmax", {"x": (2, 3, 4)}, {"axis": 1}, {"x": {0: "N", 2: "L"}}),
    ("LogSoftmax", {"x": (2, 3, 4)}, {}, {"x": {0: "N", 2: "L"}}),
]


@pytest.mark.parametrize("op,shapes,attrs,dims", DYNAMIC, ids=[f"{d[0]}-{i}" for i, d in enumerate(DYNAMIC)])
def test_symbolic_dims(op, shapes, attrs, dims):
    feeds = {n: (positive(*s) if n == "v" else normal(*s)) for n, s in shapes.items()}
    constants = {}
    outputs = 1
    if attrs.get("training_mode"):
        c = shapes["x"][1]
        constants, outputs = {"m": normal(c), "v": positive(c)}, 3
    model = make_op_model(op, feeds, constants, opset=21, outputs=outputs, **attrs)
    check_model(symbolic(model, dims), feeds)
