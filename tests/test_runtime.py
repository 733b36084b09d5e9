"""Provider choice and the on-disk cache of rewritten models."""

import numpy as np
import pytest
from toy_models import tiny_cnn

import onnxcam
from onnxcam.errors import OnnxcamError
from onnxcam.runtime import cache_dir, choose_providers, cuda_usable


def test_cpu_and_explicit_providers():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(OnnxcamError, match="unknown device"):
        choose_providers("tpu")


def test_auto_asks_for_cuda_only_when_it_can_load():
    providers = choose_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == cuda_usable()
    if not cuda_usable():
        with pytest.raises(OnnxcamError, match="--device cpu"):
            choose_providers("cuda")


def test_rewritten_models_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    onnxcam.gradients(tiny_cnn(), x, layers="feat")
    first = sorted(tmp_path.glob("*.onnx"))
    assert len(first) == 1
    stamp = first[0].stat().st_mtime_ns
    onnxcam.gradients(tiny_cnn(), x, layers="feat")  # same model and request: reused, not rewritten
    assert sorted(tmp_path.glob("*.onnx")) == first and first[0].stat().st_mtime_ns == stamp
    onnxcam.gradients(tiny_cnn(), x, layers="scaled")  # another request: another file
    onnxcam.gradients(tiny_cnn(classes=4), x, layers="feat")  # another model: another file
    assert len(list(tmp_path.glob("*.onnx"))) == 3
    assert not list(tmp_path.glob(".*tmp"))  # writes are atomic: no temporary files left


def test_unwritable_cache_still_works(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ONNXCAM_CACHE", str(blocked / "cache"))
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    assert onnxcam.gradients(tiny_cnn(), x, layers="feat").scores.shape == (1, 5)


def test_runtime_failures_are_one_line_errors():
    """A dynamic-size model that only works at one size: onnxruntime's failure becomes a one-line error."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Relu", ["x"], ["feat"]), helper.make_node("Reshape", ["feat", "shape"], ["flat"]),
             helper.make_node("ReduceSum", ["flat", "axes"], ["logits"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([-1, 3, 4, 16], np.int64), "shape"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    runner = onnxcam.ReverseRunner(model, layers="feat", device="cpu")
    good = runner.run(np.ones((1, 3, 8, 8), np.float32), np.ones((1, 3), np.float32))
    assert good.gradients["feat"].shape == (1, 3, 8, 8)
    with pytest.raises(OnnxcamError, match="onnxruntime failed to run the model") as info:
        runner.run(np.ones((1, 3, 5, 5), np.float32), np.ones((1, 3), np.float32))
    assert "\n" not in str(info.value)
