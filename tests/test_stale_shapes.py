"""Stale shape annotations: a file onnxruntime runs is a file onnxcam rewrites.

Exporters can leave `value_info` that contradicts the graph (jax2onnx: NHWC shapes on tensors that are NCHW by then,
rank-0 shapes on BatchNormalization outputs). onnxruntime merges such annotations leniently; onnxcam infers shapes
from the graph and drops the annotations that conflict (onnxcam.graph.load), so its rules and layouts see the shapes
a run gives. Checked on a hand-made model and on jax2onnx exports (models/jax_exports, the committed files always;
a fresh export when jax2onnx is installed:
`/work/venvs/jax/bin/python -m pytest tests/test_stale_shapes.py`, a venv with jax, flax and jax2onnx).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from layer_gradcheck import layer_gradients, run_shapes
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.graph.load import load_model
from onnxcam.graph.topo import static_shapes as _static_shapes

JAX_EXPORTS = Path(__file__).resolve().parent.parent / "models" / "jax_exports"
# tensors whose jax2onnx annotation is stale (NHWC shapes on NCHW tensors)
JAX_STALE = ("relu_out_0", "add_out_0")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


def stale_model() -> onnx.ModelProto:
    """Conv -> MaxPool -> Relu -> Add(bias) -> mean -> Gemm, whose Conv and MaxPool outputs are annotated in NHWC order
    and whose Relu output as a scalar: all wrong, all run by onnxruntime. (Pooling before the ReLU: windows of
    tied zeros are not differentiable, finite differences could not check them.)"""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((1, 6, 1, 1)).astype(np.float32), "bias"),
               numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["r"]),
             helper.make_node("Add", ["r", "bias"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "fc"], ["y"], transB=1)]

    def info(name: str, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "stale", [info("x", [1, 3, 10, 8])], [info("y", [1, 4])], weights,
                              value_info=[info("c", [1, 10, 8, 6]), info("p", [1, 5, 4, 6]), info("r", [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _check_file(path: Path, stale: tuple[str, ...], caplog: pytest.LogCaptureFixture) -> None:
    """Annotations after loading agree with a run; the stale ones were reported; gradients at the default layer
    and at the stale tensors match finite differences; Grad-CAM gives a map at the stale tensors."""
    with caplog.at_level(logging.DEBUG, logger="onnxcam"):
        loaded = load_model(path)
    for name in stale:
        assert any(f"'{name}'" in r.getMessage() for r in caplog.records), f"no note on dropping {name}"
    shapes = _static_shapes(loaded.graph)
    for name, actual in run_shapes(path).items():
        assert shapes.get(name) == actual, f"{name}: onnxcam says {shapes.get(name)}, a run gives {actual}"

    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal([int(d) for d in ex.input_shape]).astype(np.float32)  # type: ignore[union-attr]
    layer_gradients(path, x, [ex.default_layer, *stale])
    for name in stale:
        maps = ex.explain(x, "gradcam", layer=name)
        assert maps.shape == (1, *ex.input_size(x)) and maps.max() > 0


def test_onnxruntime_runs_the_hand_made_model(tmp_path: Path) -> None:
    path = tmp_path / "stale.onnx"
    onnx.save(stale_model(), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 3, 10, 8), np.float32)})[0].shape == (1, 4)


def test_hand_made_stale_annotations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stale.onnx"
    onnx.save(stale_model(), str(path))
    _check_file(path, ("c", "p", "r"), caplog)


def test_stale_graph_output_annotation(tmp_path: Path) -> None:
    """A graph output annotated with the wrong size (which onnxruntime also merges leniently)."""
    model = stale_model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
    path = tmp_path / "stale_output.onnx"
    onnx.save(model, str(path))
    assert _static_shapes(load_model(path).graph)["y"] == (1, 4)
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 3, 10, 8)).astype(np.float32)
    assert ex.explain(x, "gradcam", targets=[3]).shape == (1, 10, 8)


def test_annotations_inference_cannot_reach_are_kept() -> None:
    """Consistent annotations fill what inference leaves open (a symbolic dim it could not name)."""
    model = stale_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", 6, 10, 8]))
    assert _static_shapes(load_model(model).graph)["c"] == ("batch", 6, 10, 8)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_committed_jax2onnx_exports(layout: str, caplog: pytest.LogCaptureFixture) -> None:
    _check_file(JAX_EXPORTS / f"jax_cnn_{layout}.onnx", JAX_STALE, caplog)


@pytest.mark.parametrize("nchw", [False, True])
def test_fresh_jax2onnx_export(nchw: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("jax2onnx")
    spec = importlib.util.spec_from_file_location("jax_export", JAX_EXPORTS / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "fresh.onnx"
    onnx.save(module.build(nchw, seed=3), str(path))
    _check_file(path, JAX_STALE, caplog)
