"""The torch-free ResNet builder (models/build_resnet.py) makes models onnxruntime runs and onnxcam understands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcam
from onnxcam.graph.catalogue import default_layer, find_score
from onnxcam.graph.load import load_model

_SCRIPT = Path(__file__).resolve().parent.parent / "models" / "build_resnet.py"
_spec = importlib.util.spec_from_file_location("build_resnet", _SCRIPT)
assert _spec is not None and _spec.loader is not None
build_resnet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_resnet)


@pytest.fixture(scope="module")
def small_resnet18() -> onnx.ModelProto:
    return build_resnet.build_resnet(18, num_classes=10, width=8, seed=3, image_size=64)


def test_runs_in_onnxruntime_with_dynamic_batch(small_resnet18: onnx.ModelProto) -> None:
    model = small_resnet18
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "input" and dims == ["N", 3, 64, 64]
    assert model.graph.output[0].name == "logits"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
        (logits,) = session.run(["logits"], {"input": x})
        assert logits.shape == (batch, 10)
        assert np.all(np.isfinite(logits)) and logits.std() > 1e-3  # random weights, but not degenerate


@pytest.mark.parametrize("depth, blocks, convs", [(18, (2, 2, 2, 2), 20), (50, (3, 4, 6, 3), 53)])
def test_architecture(depth: int, blocks: tuple[int, ...], convs: int) -> None:
    model = build_resnet.build_resnet(depth, num_classes=5, width=4, image_size=32)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == convs  # stem + block convs + 3 downsample convs (4 for Bottleneck stage 1)
    assert ops.count("Add") == sum(blocks) and "BatchNormalization" not in ops
    assert ops[:3] == ["Conv", "Relu", "MaxPool"] and ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    outputs = {n.output[0] for n in model.graph.node}
    assert all(build_resnet.stage_output(depth, s) in outputs for s in (1, 2, 3, 4))


def test_default_layer_is_last_stage_output(small_resnet18: onnx.ModelProto) -> None:
    model = load_model(small_resnet18)
    score, _ = find_score(model)
    assert default_layer(model, score) == build_resnet.stage_output(18, 4) == "layer4.1.relu_1"


def test_gradient_runner_default_layer(small_resnet18: onnx.ModelProto) -> None:
    runner = onnxcam.ReverseRunner(small_resnet18, device="cpu")
    assert runner.default_layer == "layer4.1.relu_1"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    result = runner.run(x)
    assert result.gradients["layer4.1.relu_1"].shape == (2, 64, 2, 2)
