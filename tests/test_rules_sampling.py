"""GridSample's gradient rule, checked against float64 finite differences.

Two references: onnx's reference evaluator (the spec; tests/gradcheck.py), and onnxruntime's own kernel run in
float64 (the function onnxcam users actually explain). The second is needed for grid gradients: the reference
evaluator rounds unnormalised coordinates to float32, far coarser than a finite-difference step. Sample points
are kept a tenth of a pixel away from where the sampled value has kinks or jumps (integer coordinates for linear
and cubic, half-integers for nearest), where no derivative exists.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import make_op_model, to_float64
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_grid_sample import GridSample as GridSampleReference

from onnxcam.errors import GradientError
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model

PROVIDERS = ["CPUExecutionProvider"]
PADDINGS = ["zeros", "border", "reflection"]
NAMES = {16: {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"},
         20: {"linear": "linear", "nearest": "nearest", "cubic": "cubic"}}


def sample_points(shape: tuple[int, ...], sizes: tuple[int, ...], corners: int, seed: int = 0) -> np.ndarray:
    """A grid (N, *out, r) of normalised positions, half inside the image and the others up to two image sizes
    out, whose pixel coordinates stay 0.1 px away from integers and half-integers."""
    rng = np.random.default_rng(seed)
    grid = np.empty(shape + (len(sizes),), np.float64)
    for j, size in enumerate(reversed(sizes)):  # component 0 addresses the last (innermost) axis
        whole = np.where(rng.random(shape) < 0.5, rng.integers(0, size, shape),
                         rng.integers(-2 * size, 3 * size, shape))
        pixel = whole + rng.uniform(0.1, 0.4, shape) + 0.5 * (rng.random(shape) < 0.5)
        grid[..., j] = 2 * pixel / (size - 1) - 1 if corners else (2 * pixel + 1) / size - 1
    return grid.astype(np.float32)


def grid_sample_model(x: np.ndarray, grid: np.ndarray, opset: int, **attrs: object) -> onnx.ModelProto:
    return make_op_model("GridSample", {"x": x, "grid": grid}, opset=opset, **attrs)


class GridSample64(GridSampleReference):
    """onnx's reference GridSample with float64 pixel coordinates (it rounds them to float32) that also reads
    opset 16's mode names."""

    def _gs_denormalize_coordinates(self, n, dims, align_corners):  # type: ignore[no-untyped-def]
        return np.array([self._gs_denormalize(v, d, align_corners) for v, d in zip(n, dims)], np.float64)

    def _run(self, X, grid, mode=None, padding_mode=None, align_corners=None):  # type: ignore[no-untyped-def]
        mode = mode or self.mode
        return super()._run(X, grid, mode=OPSET20_NAMES.get(mode, mode), padding_mode=padding_mode,
                            align_corners=align_corners)


GridSample64.__name__ = "GridSample"
OPSET20_NAMES = {"bilinear": "linear", "bicubic": "cubic"}


def float64_forward(model: onnx.ModelProto, reference: str, output: str) -> Callable[[dict], np.ndarray]:
    """The model's output in float64, computed by onnxruntime (at opset 20 at least: its CPU GridSample has no
    float64 kernel before) or by onnx's reference evaluator (the spec)."""
    model = to_float64(model)
    if reference == "spec":
        evaluator = ReferenceEvaluator(model, new_ops=[GridSample64])
        return lambda feeds: evaluator.run([output], feeds)[0]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model = model if opset >= 20 else version_converter.convert_version(model, 20)
    session = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    return lambda feeds: session.run([output], feeds)[0]


def check_gradients(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: list[str], output: str = "y0",
                    reference: str = "onnxruntime", rtol: float = 2e-4, eps: float = 1e-6,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Every element of the rewritten model's gradients (float32, onnxruntime) against central differences of the
    float64 forward."""
    rng = np.random.default_rng(seed)
    built = gradient_model(load_model(model), wrt, output=output, probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=PROVIDERS)
    forward = float64_forward(model, reference, output)
    feeds64 = {k: v.astype(np.float64) for k, v in feeds.items()}
    weights = rng.standard_normal(forward(feeds64).shape)

    def score(name: str, value: np.ndarray) -> float:
        return float(np.sum(weights * forward({**feeds64, name: value})))

    got = session.run([GRAD_PREFIX + n for n in wrt], {**feeds, SEED: weights.astype(np.float32)})
    for name, grad in zip(wrt, got):
        x = feeds64[name]
        fd = np.zeros_like(x)
        for i in range(x.size):
            step = np.zeros(x.size)
            step[i] = eps
            fd.flat[i] = (score(name, x + step.reshape(x.shape)) - score(name, x - step.reshape(x.shape))) / (2 * eps)
        scale = max(np.abs(fd).max(), 1e-3)
        np.testing.assert_allclose(grad, fd, rtol=rtol * 10, atol=rtol * scale, err_msg=f"gradient of {name}")
    return dict(zip(wrt, got))


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- every mode x padding x align_corners, 4-D --------------------------------------------------------------------

@pytest.mark.parametrize("opset", [16, 20])
@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("corners", [0, 1])
def test_grid_sample_2d(opset: int, mode: str, padding: str, corners: int) -> None:
    x = randn(2, 3, 4, 5)
    grid = sample_points((2, 3, 4), (4, 5), corners, seed=opset + corners)
    model = grid_sample_model(x, grid, opset, mode=NAMES[opset][mode], padding_mode=padding, align_corners=corners)
    grads = check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"])
    assert np.abs(grads["x"]).max() > 0.1
    if mode == "nearest":  # piecewise constant in the grid
        np.testing.assert_array_equal(grads["grid"], 0)
    else:
        assert np.abs(grads["grid"]).max() > 0.1


SPEC_AGREES = [(mode, padding) for mode in ("linear", "nearest", "cubic") for padding in PADDINGS
               if (mode, padding) != ("cubic", "border")]


@pytest.mark.parametrize("mode,padding", SPEC_AGREES)
@pytest.mark.parametrize("corners", [0, 1])
def test_grid_sample_matches_the_spec_reference(mode: str, padding: str, corners: int) -> None:
    """The same gradients against onnx's reference GridSample, so the rule (and onnxruntime's kernel) follow the
    spec. Cubic with border padding is left out: the reference clamps the coordinate before it picks the taps,
    onnxruntime (like PyTorch) clamps each tap, and the two differ within two pixels outside the image; the rule
    follows onnxruntime, which is what runs (test_cubic_border_follows_onnxruntime)."""
    x = randn(1, 2, 3, 4, seed=1)
    grid = sample_points((1, 2, 3), (3, 4), corners, seed=5)
    model = grid_sample_model(x, grid, 16, mode=NAMES[16][mode], padding_mode=padding, align_corners=corners)
    check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"], reference="spec")


def test_cubic_border_follows_onnxruntime() -> None:
    """Where the spec reference and onnxruntime part ways, the rule's gradient is onnxruntime's and not the
    reference's (so test_grid_sample_2d covers cubic border padding)."""
    x = randn(1, 1, 4, 4, seed=2)
    grid = np.array([[[[-1.1, 0.05], [0.3, 1.15]]]], np.float32)  # just outside the left, then the bottom edge
    model = grid_sample_model(x, grid, 16, mode="bicubic", padding_mode="border")
    check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"])
    with pytest.raises(AssertionError):
        check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"], reference="spec")


# --- volumetric (opset 20) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("corners", [0, 1])
def test_grid_sample_3d(mode: str, padding: str, corners: int) -> None:
    x = randn(1, 2, 3, 4, 3, seed=2)
    grid = sample_points((1, 2, 2, 3), (3, 4, 3), corners, seed=3)
    model = grid_sample_model(x, grid, 20, mode=mode, padding_mode=padding, align_corners=corners)
    check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"])


# --- shapes only known at run time, and float64 models ----------------------------------------------------------------

def test_symbolic_shapes() -> None:
    x = randn(2, 3, 5, 4, seed=4)
    grid = sample_points((2, 3, 2), (5, 4), 0, seed=6)
    model = grid_sample_model(x, grid, 16, padding_mode="reflection")
    for value, dims in zip(model.graph.input, (["N", 3, "H", "W"], ["N", "h", "w", 2])):
        for dim, new in zip(value.type.tensor_type.shape.dim, dims):
            if isinstance(new, str):
                dim.Clear()
                dim.dim_param = new
    check_gradients(model, {"x": x, "grid": grid}, ["x", "grid"])


def test_float64_model_keeps_its_precision() -> None:
    """A double model gets a double backward pass: it matches finite differences to ~1e-9."""
    x = randn(1, 2, 4, 4, seed=7)
    grid = sample_points((1, 3, 3), (4, 4), 1, seed=8)
    model = to_float64(grid_sample_model(x, grid, 20, mode="cubic", padding_mode="border", align_corners=1))
    feeds = {"x": x.astype(np.float64), "grid": grid.astype(np.float64)}
    built = gradient_model(load_model(model), ["x", "grid"], output="y0", probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=PROVIDERS)
    forward = ort.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    seed = np.random.default_rng(0).standard_normal((1, 2, 3, 3))
    dx, dgrid = session.run([GRAD_PREFIX + "x", GRAD_PREFIX + "grid"], {**feeds, SEED: seed})
    assert dx.dtype == np.float64 and dgrid.dtype == np.float64
    eps = 1e-6
    for grad, name in ((dx, "x"), (dgrid, "grid")):
        direction = np.random.default_rng(1).standard_normal(feeds[name].shape)
        plus = forward.run(["y0"], {**feeds, name: feeds[name] + eps * direction})[0]
        minus = forward.run(["y0"], {**feeds, name: feeds[name] - eps * direction})[0]
        fd = float(np.sum(seed * (plus - minus))) / (2 * eps)
        assert abs(fd - float(np.sum(grad * direction))) < 1e-7 * max(1.0, abs(fd))


# --- refusals ---------------------------------------------------------------------------------------------------------

def test_unknown_mode_is_refused_in_one_line() -> None:
    x, grid = randn(1, 1, 3, 3), sample_points((1, 2, 2), (3, 3), 0)
    model = grid_sample_model(x, grid, 16)
    model.graph.node[0].attribute.append(helper.make_attribute("mode", "lanczos"))
    with pytest.raises(GradientError, match="GridSample node 'op': mode 'lanczos'"):
        gradient_model(model, ["x"], output="y0", probabilities=True)


# --- inside a model: Grad-CAM through a deformable sampling step ----------------------------------------------------

def deformable_model(seed: int = 0) -> onnx.ModelProto:
    """conv -> relu ("feat") -> GridSample at positions predicted from the same features (offsets added to a base
    grid, as deformable attention does) -> global average pool -> linear head with 4 classes."""
    rng = np.random.default_rng(seed)
    h = w = 8

    def init(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value.astype(np.float32), name)

    ys, xs = np.meshgrid(np.linspace(-0.9, 0.9, 6), np.linspace(-0.9, 0.9, 6), indexing="ij")
    base = np.stack([xs, ys], axis=-1)[None]  # (1, 6, 6, 2)
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("Conv", ["feat", "w_off", "b_off"], ["offsets_map"], pads=[0, 0, 0, 0], strides=[1, 1]),
        helper.make_node("AveragePool", ["offsets_map"], ["offsets_small"], kernel_shape=[3, 3], strides=[1, 1]),
        helper.make_node("Tanh", ["offsets_small"], ["offsets_t"]),
        helper.make_node("Transpose", ["offsets_t"], ["offsets"], perm=[0, 2, 3, 1]),
        helper.make_node("Mul", ["offsets", "reach"], ["shift"]),
        helper.make_node("Add", ["base", "shift"], ["grid"]),
        helper.make_node("GridSample", ["feat", "grid"], ["sampled"], mode="bilinear", padding_mode="zeros"),
        helper.make_node("GlobalAveragePool", ["sampled"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], transB=1),
    ]
    inits = [init("w1", rng.standard_normal((6, 3, 3, 3)) * 0.5), init("b1", rng.standard_normal(6) * 0.1),
             init("w_off", rng.standard_normal((2, 6, 1, 1)) * 0.5), init("b_off", np.zeros(2)),
             init("reach", np.array(0.3)), init("base", base),
             init("w2", rng.standard_normal((4, 6))), init("b2", rng.standard_normal(4) * 0.1)]
    graph = helper.make_graph(nodes, "deformable", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                  [None, 3, h, w])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_gradcam_through_grid_sample() -> None:
    import onnxcam

    model = deformable_model()
    x = np.random.default_rng(3).random((2, 3, 8, 8)).astype(np.float32)
    maps = onnxcam.Explainer(model, layer="feat", device="cpu").explain(x, "gradcam", targets=[1, 2])
    assert maps.shape == (2, 8, 8) and maps.max() == pytest.approx(1.0) and maps.std() > 0.01
    # the layer's gradient (through both the sampled values and the predicted positions) matches the model's
    check_gradients(model, {"image": x[:1]}, ["image"], output="logits", reference="spec", rtol=5e-4)


def test_many_samples_per_pixel_add_up_on_every_run() -> None:
    """Thousands of samples land on each pixel; every run's input gradient equals a float64 scatter-add by hand.
    (onnxruntime's multithreaded ScatterND with reduction="add" loses updates to races on such inputs; the rule
    uses ScatterElements, whose kernel does not.)"""
    rng = np.random.default_rng(0)
    x = rng.random((1, 64, 16, 16)).astype(np.float32)
    grid = (rng.random((1, 64, 64, 2)) * 2 - 1).astype(np.float32)
    model = grid_sample_model(x, grid, 16)  # bilinear, zeros, align_corners=0
    built = gradient_model(load_model(model), ["x"], output="y0", probabilities=True)
    session = ort.InferenceSession(built.model.SerializeToString(), providers=PROVIDERS)
    seed = rng.standard_normal((1, 64, 64, 64)).astype(np.float32)
    expected = np.zeros(x.shape)
    px, py = (((grid[0, ..., k].astype(np.float64) + 1) * 16 - 1) / 2 for k in (0, 1))
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        cx, cy = np.floor(px) + dx, np.floor(py) + dy
        weight = (1 - np.abs(px - cx)) * (1 - np.abs(py - cy))
        inside = (cx >= 0) & (cx < 16) & (cy >= 0) & (cy < 16)
        for c in range(64):
            np.add.at(expected[0, c], (cy[inside].astype(int), cx[inside].astype(int)), (weight * seed[0, c])[inside])
    for _ in range(5):
        got = session.run([GRAD_PREFIX + "x"], {"x": x, "grid": grid, SEED: seed})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
