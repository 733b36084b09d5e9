"""Gradient rules of data-movement ops, checked against finite differences (and onnxruntime's own forward)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import check_model, check_op, make_op_model
from onnx import helper

from onnxcam.errors import GradientError
from onnxcam.graph.builder import Builder
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.gradients import RULES, Node
from onnxcam.graph.reverse.model import GRAD_PREFIX, SEED, gradient_model


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def symbolic(model: onnx.ModelProto, dims: dict[str, Sequence[int | str]]) -> onnx.ModelProto:
    """Give graph inputs symbolic dims (e.g. ['N', 3, 'H', 'W']) so rules take their run-time shape paths."""
    for value in model.graph.input:
        if value.name in dims:
            shape = value.type.tensor_type.shape
            for dim, new in zip(shape.dim, dims[value.name]):
                if isinstance(new, str):
                    dim.Clear()
                    dim.dim_param = new
    return model


def check_symbolic(op_type: str, inputs: dict[str, np.ndarray], dims: dict[str, Sequence[int | str]],
                   constants: dict[str, np.ndarray] | None = None, opset: int = 17, **attrs: Any) -> None:
    model = symbolic(make_op_model(op_type, inputs, constants, opset, **attrs), dims)
    check_model(model, inputs)


def check_adjoint(model: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: str = "x", trials: int = 3,
                  loaded: bool = False) -> None:
    """For an op affine in `wrt`: <seed, f(v) - f(0)> == <grad, v>, with onnxruntime's forward as the reference.

    Used where onnx's reference evaluator lacks the feature (negative pads) or disagrees with onnxruntime (see
    test_resize_linear). `loaded` takes the forward of the model as onnxcam loads it (after opset conversion).
    """
    rng = np.random.default_rng(1)
    built = gradient_model(load_model(model), [wrt], output="y0", probabilities=True)
    providers = ["CPUExecutionProvider"]
    grad_session = ort.InferenceSession(built.model.SerializeToString(), providers=providers)
    forward = ort.InferenceSession((load_model(model) if loaded else model).SerializeToString(), providers=providers)
    base = forward.run(["y0"], {**feeds, wrt: np.zeros_like(feeds[wrt])})[0].astype(np.float64)
    seed = rng.standard_normal(base.shape).astype(np.float32)
    grad = grad_session.run([GRAD_PREFIX + wrt], {**feeds, SEED: seed})[0]
    assert grad.shape == feeds[wrt].shape
    for _ in range(trials):
        v = rng.standard_normal(feeds[wrt].shape).astype(np.float32)
        out = forward.run(["y0"], {**feeds, wrt: v})[0].astype(np.float64) - base
        expected = float(np.sum(seed * out))
        got = float(np.sum(grad.astype(np.float64) * v))
        assert abs(expected - got) <= 1e-4 * (np.abs(seed * out).sum() + 1), (expected, got)


# --- reshapes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [[0, -1, 5], [-1], [2, 0, 5, 4], [6, 1, 20]])
def test_reshape(target: list[int]) -> None:
    check_op("Reshape", {"x": randn(2, 3, 4, 5)}, {"shape": np.array(target)})


def test_reshape_allowzero() -> None:
    check_op("Reshape", {"x": randn(2, 3, 4)}, {"shape": np.array([4, 3, 2])}, opset=14, allowzero=1)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_flatten(axis: int) -> None:
    check_op("Flatten", {"x": randn(2, 3, 2, 2, seed=axis + 5)}, axis=axis)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("axes", [[1], [-1, 1], None])
def test_squeeze(opset: int, axes: list[int] | None) -> None:
    x = randn(2, 1, 3, 1)
    if axes is None:
        check_op("Squeeze", {"x": x}, opset=opset)
    elif opset < 13:
        check_op("Squeeze", {"x": x}, opset=opset, axes=axes)
    else:
        check_op("Squeeze", {"x": x}, {"axes": np.array(axes)}, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [-1, 1], [0, 3]])
def test_unsqueeze(opset: int, axes: list[int]) -> None:
    x = randn(2, 3)
    if opset < 13:
        check_op("Unsqueeze", {"x": x}, opset=opset, axes=axes)
    else:
        check_op("Unsqueeze", {"x": x}, {"axes": np.array(axes)}, opset=opset)


def test_reshape_family_symbolic() -> None:
    check_symbolic("Flatten", {"x": randn(2, 3, 2, 3)}, {"x": ["N", 3, "H", "W"]}, axis=1)
    check_symbolic("Reshape", {"x": randn(2, 3, 2, 3)}, {"x": ["N", 3, "H", "W"]}, {"s": np.array([0, -1])})


# --- Transpose, Concat, Split -----------------------------------------------------------------------------------

@pytest.mark.parametrize("perm", [[0, 1, 2, 3], [3, 1, 0, 2], [2, 0, 3, 1], None])
def test_transpose(perm: list[int] | None) -> None:
    x = randn(2, 3, 4, 1)
    if perm is None:
        check_op("Transpose", {"x": x})
    else:
        check_op("Transpose", {"x": x}, perm=perm)


def test_transpose_symbolic() -> None:
    check_symbolic("Transpose", {"x": randn(2, 3, 2, 4)}, {"x": ["N", 3, "H", "W"]}, perm=[0, 2, 3, 1])


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_concat(axis: int) -> None:
    rng = np.random.default_rng(axis + 10)
    shapes = []
    for _ in range(3):
        shape = [2, 3, 4]
        shape[axis] = int(rng.integers(1, 4))
        shapes.append(shape)
    check_op("Concat", {f"x{i}": randn(*s, seed=i) for i, s in enumerate(shapes)}, axis=axis)


def test_concat_with_constant_and_single_input() -> None:
    check_op("Concat", {"x": randn(2, 3)}, {"c": randn(2, 2, seed=1)}, axis=-1)
    check_op("Concat", {"x": randn(2, 3)}, axis=0)


def test_concat_symbolic() -> None:
    check_symbolic("Concat", {"a": randn(2, 3, 2, 2), "b": randn(2, 3, 1, 2, seed=1)},
                   {"a": ["N", 3, "H", "W"], "b": ["N", 3, "H2", "W"]}, axis=-2)


def split_model(opset: int, outputs: int, split: list[int] | None, axis: int, as_input: bool,
                **attrs: Any) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Split followed by a weighted sum of a subset of its outputs (others carry no gradient)."""
    x = randn(2, 6, 3)
    names = [f"s{i}" for i in range(outputs)]
    split_inputs = ["x"] + (["split"] if as_input and split is not None else [])
    if split is not None and not as_input:
        attrs["split"] = split
    nodes = [helper.make_node("Split", split_inputs, names, axis=axis, **attrs),
             helper.make_node("ReduceSumSquare", [names[-1]], ["r"], keepdims=0),
             helper.make_node("Mul", [names[0], "r"], ["y0"])]
    inits = [onnx.numpy_helper.from_array(np.array(split), "split")] if as_input and split is not None else []
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return model, {"x": x}


@pytest.mark.parametrize("opset, split, as_input, extra", [
    (11, [1, 2, 3], False, {}),
    (13, [3, 1, 2], True, {}),
    (18, [2, 2, 2], True, {}),
    (11, None, False, {}),
    (13, None, False, {}),
    (18, None, False, {"num_outputs": 3}),
])
@pytest.mark.parametrize("axis", [1, -2])
def test_split(opset: int, split: list[int] | None, as_input: bool, extra: dict, axis: int) -> None:
    model, feeds = split_model(opset, 3, split, axis, as_input, **extra)
    check_model(model, feeds)


def test_split_single_output_used() -> None:
    check_op("Split", {"x": randn(4, 3)}, {"s": np.array([1, 3])}, outputs=2, output="y1", opset=13)
    check_op("Split", {"x": randn(4, 6)}, outputs=3, output="y0", opset=18, axis=-1, num_outputs=3)


def test_split_symbolic() -> None:
    model = symbolic(make_op_model("Split", {"x": randn(2, 3, 4, 2)}, opset=18, outputs=2, axis=2,
                                   num_outputs=2), {"x": ["N", 3, "H", "W"]})
    check_model(model, {"x": randn(2, 3, 4, 2)}, output="y1")


# --- Slice ------------------------------------------------------------------------------------------------------

SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None),
    ([0, 1], [100, -1], [1, 2], None),
    ([-1], [-100], [2], [-1]),
    ([3, -2], [0, 0], [-1, 1], [-2, -1]),
    ([-4, 0], [1000, 3], [2, 0], [3, 2]),
    ([5], [-9], [-2], [-3]),
    ([2], [1], [0], None),  # empty
    ([0], [4], [1], [5]),
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICES)
def test_slice(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> None:
    x = randn(3, 4, 6)
    constants = {"starts": np.array(starts), "ends": np.array(ends)}
    names = ["x", "starts", "ends", "axes" if axes is not None else "", "steps" if steps is not None else ""]
    if axes is not None:
        constants["axes"] = np.array(axes)
    if steps is not None:
        constants["steps"] = np.array(steps)
    while names[-1] == "":
        names.pop()
    check_op("Slice", {"x": x}, constants, input_names=names)


def test_slice_run_time_parameters() -> None:
    """starts/steps fed at run time: the index-map path."""
    feeds = {"x": randn(3, 5), "starts": np.array([4, -1]), "steps": np.array([-2, -1])}
    model = make_op_model("Slice", feeds, {"ends": np.array([-100, 0]), "axes": np.array([1, 0])},
                          input_names=["x", "starts", "ends", "axes", "steps"])
    check_model(model, feeds, wrt=["x"])


def test_slice_opset1_attributes() -> None:
    check_op("Slice", {"x": randn(3, 5)}, opset=9, starts=[1, -4], ends=[100, -1], axes=[0, 1])


def test_slice_symbolic() -> None:
    check_symbolic("Slice", {"x": randn(2, 3, 5, 4)}, {"x": ["N", 3, "H", "W"]},
                   {"s": np.array([1, -1]), "e": np.array([-1, 0]), "a": np.array([2, 3]), "st": np.array([1, -2])})
    check_symbolic("Slice", {"x": randn(2, 3, 5, 4)}, {"x": ["N", 3, "H", "W"]},
                   {"s": np.array([1]), "e": np.array([-1]), "a": np.array([-2])})


# --- Gather family ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("index_shape", [(), (3,), (2, 3)])
def test_gather(axis: int, index_shape: tuple[int, ...]) -> None:
    x = randn(3, 4, 5, seed=abs(axis))
    dim = x.shape[axis]
    rng = np.random.default_rng(len(index_shape))
    indices = rng.integers(-dim, dim, index_shape)
    if indices.size > 1:
        indices.flat[0] = indices.flat[-1] - dim if indices.flat[-1] >= 0 else indices.flat[-1]  # a duplicate
    check_op("Gather", {"x": x}, {"i": np.asarray(indices, np.int64)}, axis=axis)


def test_gather_duplicates_accumulate() -> None:
    grads = check_op("Gather", {"x": randn(4, 2)}, {"i": np.array([1, 1, -3, 2])}, axis=0)
    assert grads["x"][0].tolist() == [0.0, 0.0] and np.all(grads["x"][1] != 0)


def test_gather_symbolic() -> None:
    check_symbolic("Gather", {"x": randn(2, 3, 4, 2)}, {"x": ["N", 3, "H", "W"]}, {"i": np.array([[0, -1], [0, 2]])},
                   axis=2)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis: int) -> None:
    x = randn(3, 4, 2)
    shape = list(x.shape)
    shape[axis] = 5
    dim = x.shape[axis]
    indices = np.random.default_rng(axis + 3).integers(-dim, dim, shape)
    if axis >= 0:
        check_op("GatherElements", {"x": x}, {"i": indices}, axis=axis)
    else:  # the reference evaluator mishandles negative axes here
        check_adjoint(make_op_model("GatherElements", {"x": x}, {"i": indices}, axis=axis), {"x": x})


def test_gather_nd() -> None:
    check_op("GatherND", {"x": randn(3, 4, 2)}, {"i": np.array([[0, 1], [2, -1], [0, 1]])})
    with pytest.raises(GradientError, match="batch_dims"):
        check_op("GatherND", {"x": randn(3, 4, 2)}, {"i": np.array([[0], [2], [1]])}, batch_dims=1)


# --- Expand, Tile -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, target", [((3, 1), (2, 3, 4)), ((1, 4), (3, 1)), ((2, 3), (1, 2, 3)),
                                           ((1,), (2, 2))])
def test_expand(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    check_op("Expand", {"x": randn(*shape)}, {"s": np.array(target)})


def test_expand_symbolic() -> None:
    check_symbolic("Expand", {"x": randn(2, 1, 3, 1)}, {"x": ["N", 1, "H", 1]}, {"s": np.array([1, 3, 1, 2])})


@pytest.mark.parametrize("repeats", [[1, 1, 1], [2, 1, 3], [1, 4, 2]])
def test_tile(repeats: list[int]) -> None:
    check_op("Tile", {"x": randn(2, 3, 2)}, {"r": np.array(repeats)})


def test_tile_symbolic_and_run_time_repeats() -> None:
    check_symbolic("Tile", {"x": randn(2, 3, 2, 1)}, {"x": ["N", 3, "H", "W"]}, {"r": np.array([1, 2, 2, 3])})
    feeds = {"x": randn(2, 3), "r": np.array([2, 2])}
    check_model(make_op_model("Tile", feeds), feeds, wrt=["x"])


# --- Pad --------------------------------------------------------------------------------------------------------

PADS = [[0, 0, 2, 1, 0, 1, 1, 3], [1, 0, 0, 2, 0, 2, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]]


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
@pytest.mark.parametrize("pads", PADS)
def test_pad(mode: str, pads: list[int]) -> None:
    check_op("Pad", {"x": randn(2, 3, 4, 5)}, {"pads": np.array(pads)}, mode=mode)


def test_pad_constant_value() -> None:
    check_op("Pad", {"x": randn(2, 3)}, {"pads": np.array([1, 2, 0, 1]), "v": np.array(1.5, np.float32)})


def test_pad_wrap() -> None:
    check_op("Pad", {"x": randn(2, 3, 4)}, {"pads": np.array([1, 2, 5, 0, 3, 1])}, opset=19, mode="wrap")


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_axes_input(mode: str) -> None:
    check_op("Pad", {"x": randn(2, 3, 4)}, {"pads": np.array([2, 1, 1, 2]), "axes": np.array([-1, 1])},
             input_names=["x", "pads", "", "axes"], opset=18, mode=mode)


def test_pad_opset2_attributes() -> None:
    check_op("Pad", {"x": randn(3, 4)}, opset=2, pads=[1, 2, 0, 1], mode="reflect")
    check_op("Pad", {"x": randn(3, 4)}, opset=2, pads=[1, 0, 2, 1], value=2.0)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_negative(mode: str) -> None:
    """Negative pads crop; onnx's reference evaluator cannot run them, so onnxruntime is the reference."""
    x = randn(3, 5)
    check_adjoint(make_op_model("Pad", {"x": x}, {"pads": np.array([-1, 2, 1, -2])}, mode=mode), {"x": x})


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_pad_run_time_pads(mode: str) -> None:
    feeds = {"x": randn(3, 4), "pads": np.array([1, 0, 2, 3])}
    check_model(make_op_model("Pad", feeds, mode=mode), feeds, wrt=["x"])


def test_pad_symbolic() -> None:
    for mode in ("constant", "reflect"):
        check_symbolic("Pad", {"x": randn(2, 3, 3, 4)}, {"x": ["N", 3, "H", "W"]},
                       {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1])}, mode=mode)


# --- DepthToSpace, SpaceToDepth ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("block", [2, 3])
def test_depth_to_space(mode: str, block: int) -> None:
    check_op("DepthToSpace", {"x": randn(2, 2 * block * block, 2, 3)}, blocksize=block, mode=mode)


@pytest.mark.parametrize("block", [2, 3])
def test_space_to_depth(block: int) -> None:
    check_op("SpaceToDepth", {"x": randn(1, 2, 2 * block, 3 * block)}, blocksize=block)


def test_depth_space_symbolic() -> None:
    check_symbolic("DepthToSpace", {"x": randn(2, 8, 2, 3)}, {"x": ["N", 8, "H", "W"]}, blocksize=2, mode="CRD")
    check_symbolic("SpaceToDepth", {"x": randn(2, 2, 4, 6)}, {"x": ["N", 2, "H", "W"]}, blocksize=2)


# --- Resize -----------------------------------------------------------------------------------------------------

NO_ROI = np.zeros(0, np.float32)
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORDINATES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]


def resize(x: np.ndarray, scales: Sequence[float] | None = None, sizes: Sequence[int] | None = None,
           roi: Sequence[float] | None = None, opset: int = 19, **attrs: Any) -> onnx.ModelProto:
    constants = {"roi": np.array(roi or [], np.float32)}
    names = ["x", "roi" if roi is not None else ""]
    if scales is not None:
        constants["scales"] = np.array(scales, np.float32)
        names.append("scales")
    if sizes is not None:
        constants["sizes"] = np.array(sizes, np.int64)
        names += ["", "sizes"] if scales is None else ["sizes"]
    return make_op_model("Resize", {"x": x}, constants, opset, input_names=names, **attrs)


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coordinates", COORDINATES + ["tf_half_pixel_for_nn"])
@pytest.mark.parametrize("scales, sizes", [([1, 1, 2.0, 1.5], None), ([1, 1, 0.75, 0.6], None),
                                           (None, [1, 2, 5, 3])])
def test_resize_nearest(nearest_mode: str, coordinates: str, scales: list[float] | None,
                        sizes: list[int] | None) -> None:
    x = randn(1, 2, 4, 5)
    model = resize(x, scales, sizes, mode="nearest", nearest_mode=nearest_mode,
                   coordinate_transformation_mode=coordinates)
    check_adjoint(model, {"x": x})


@pytest.mark.parametrize("coordinates", COORDINATES)
@pytest.mark.parametrize("scales, sizes", [([1, 1, 2.0, 1.5], None), ([1, 1, 0.5, 0.8], None),
                                           (None, [1, 2, 7, 3]), (None, [1, 2, 1, 6])])
def test_resize_linear(coordinates: str, scales: list[float] | None, sizes: list[int] | None) -> None:
    x = randn(1, 2, 4, 5)
    model = resize(x, scales, sizes, mode="linear", coordinate_transformation_mode=coordinates)
    check_adjoint(model, {"x": x})
    # onnx's reference takes align_corners' output length as in * scale unrounded (7.5 for 5 * 1.5); onnxruntime
    # uses the integer length, so finite differences by the reference only agree when in * scale is whole.
    if coordinates != "align_corners" or sizes is not None:
        check_model(model, {"x": x})


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_matches_reference(mode: str) -> None:
    """Finite differences with onnx's own Resize, for the default modes."""
    x = randn(1, 2, 3, 4)
    check_model(resize(x, [1, 1, 2.0, 1.5], mode=mode), {"x": x})
    check_model(resize(x, None, [1, 2, 5, 2], mode=mode, coordinate_transformation_mode="asymmetric"), {"x": x})


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(mode: str) -> None:
    x = randn(1, 2, 4, 5)
    model = resize(x, None, [1, 2, 5, 4], roi=[0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], mode=mode,
                   coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0)
    check_adjoint(model, {"x": x})


@pytest.mark.parametrize("antialias", [0, 1])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_cubic_and_antialias(mode: str, antialias: int) -> None:
    x = randn(1, 2, 6, 5)
    check_adjoint(resize(x, [1, 1, 0.5, 1.6], mode=mode, antialias=antialias, exclude_outside=antialias), {"x": x})


def test_resize_axes_attribute() -> None:
    x = randn(1, 2, 4, 5)
    check_model(resize(x, [0.75, 1.5], mode="linear", axes=[3, 2]), {"x": x})
    check_adjoint(resize(x, [0.75, 1.5], mode="linear", axes=[-1, 2]), {"x": x})  # reference fails on -1
    check_adjoint(resize(x, None, [7, 3], mode="nearest", axes=[3, -2]), {"x": x})


def test_resize_3d_and_5d() -> None:
    check_model(resize(randn(2, 3, 4), [1, 1.5, 0.5], mode="linear"), {"x": randn(2, 3, 4)})
    x = randn(1, 1, 2, 3, 2)
    check_adjoint(resize(x, [1, 1, 2.0, 1.0, 1.5], mode="linear"), {"x": x})


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_older_opsets(opset: int) -> None:
    """Opset 11 needs roi and an empty scales beside sizes; both are upgraded by the loader."""
    x = randn(1, 2, 3, 4)
    sizes = make_op_model("Resize", {"x": x}, {"roi": NO_ROI, "scales": np.zeros(0, np.float32),
                                               "sizes": np.array([1, 2, 5, 6])}, opset, mode="linear")
    check_model(sizes, {"x": x})
    scales = make_op_model("Resize", {"x": x}, {"roi": NO_ROI, "scales": np.array([1, 1, 2, 1.5], np.float32)},
                           opset, mode="nearest", coordinate_transformation_mode="asymmetric")
    check_model(scales, {"x": x})


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset9(mode: str) -> None:
    """Checked against the loaded model: onnx's converter turns Upsample into a half_pixel Resize, so a linear
    Upsample's forward changes on loading (reported; that is the loader's business, not this rule's)."""
    x = randn(1, 2, 3, 4)
    model = make_op_model("Upsample", {"x": x}, {"scales": np.array([1, 1, 2, 1.5], np.float32)}, 9, mode=mode)
    check_adjoint(model, {"x": x}, loaded=True)


def test_resize_symbolic() -> None:
    x = randn(2, 3, 3, 4)
    check_model(symbolic(resize(x, [1, 1, 2.0, 0.5], mode="linear"), {"x": ["N", 3, "H", "W"]}), {"x": x})
    model = symbolic(resize(x, None, [2, 3, 5, 6], mode="nearest"), {"x": ["N", 3, "H", "W"]})
    check_adjoint(model, {"x": x})


@pytest.mark.parametrize("dims", [["N", 3, "H", "W"], ["N", 3, None, None]])
def test_resize_run_time_sizes(dims: list[str | int | None]) -> None:
    """Sizes computed in the graph (as exporters write them): axes not provably kept take the run-time path."""
    feeds = {"x": randn(2, 3, 3, 4), "hw": np.array([5, 2])}
    nodes = [helper.make_node("Shape", ["x"], ["nc"], start=0, end=2),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y0"], mode="linear")]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims),
              helper.make_tensor_value_info("hw", onnx.TensorProto.INT64, [2])]
    graph = helper.make_graph(nodes, "resize", inputs, [helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT,
                                                                                        None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_model(model, feeds, wrt=["x"])


def test_resize_unsupported_policy() -> None:
    x = randn(1, 1, 2, 2)
    with pytest.raises(GradientError, match="keep_aspect_ratio_policy"):
        check_model(resize(x, None, [1, 1, 4, 6], mode="linear", keep_aspect_ratio_policy="not_larger"), {"x": x})


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_rule_directly(mode: str) -> None:
    """An Upsample never survives loading (opset >= 16), so run its rule by hand against onnxruntime's Upsample-9."""
    x = randn(1, 2, 3, 4)
    scales = np.array([1, 1, 2, 1.5], np.float32)
    forward = make_op_model("Upsample", {"x": x}, {"scales": scales}, 9, mode=mode)
    session = ort.InferenceSession(forward.SerializeToString(), providers=["CPUExecutionProvider"])
    out_shape = session.run(None, {"x": x})[0].shape
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape),
                                        helper.make_tensor_value_info("g", onnx.TensorProto.FLOAT, out_shape)],
                              [], [onnx.numpy_helper.from_array(scales, "scales")])
    b = Builder(graph, 17)
    (grad,) = RULES["Upsample"].fn(b, Node(forward.graph.node[0]), ["g"])
    assert grad is not None
    nodes, inits = b.finish()
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    graph.output.append(helper.make_tensor_value_info(grad, onnx.TensorProto.FLOAT, None))
    backward = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = randn(*out_shape, seed=3)
    result = ort.InferenceSession(backward.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "g": g})[0]
    v = randn(*x.shape, seed=4)
    np.testing.assert_allclose(np.sum(result * v), np.sum(g * session.run(None, {"x": v})[0]), rtol=1e-5)


def unranked(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the input's shape altogether, as when shape inference gives up inside an exported model."""
    model.graph.input[0].type.tensor_type.ClearField("shape")
    return model


@pytest.mark.parametrize("op, constants, attrs", [
    ("Gather", {"i": np.array([[1, -1], [1, 0]])}, {"axis": -2}),
    ("Tile", {"r": np.array([1, 2, 3])}, {}),
    ("Slice", {"s": np.array([-1]), "e": np.array([0]), "a": np.array([1]), "st": np.array([-1])}, {}),
    ("Concat", {"c": randn(2, 1, 4)}, {"axis": -2}),
    ("Pad", {"p": np.array([0, 1, 2, 0, 2, 1])}, {"mode": "reflect"}),
    ("Resize", {"roi": NO_ROI, "s": np.array([1, 2.0, 0.5], np.float32)}, {"mode": "linear"}),
    ("ReduceSum", {"a": np.array([-1])}, {"keepdims": 0}),
])
def test_unknown_rank(op: str, constants: dict[str, np.ndarray], attrs: dict) -> None:
    x = randn(2, 3, 4)
    check_model(unranked(make_op_model(op, {"x": x}, constants, **attrs)), {"x": x})
