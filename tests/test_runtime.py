"""Provider choice and the on-disk cache of rewritten models."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from toy_models import tiny_cnn

import onnxcam
from onnxcam.errors import OnnxcamError
from onnxcam.runners import ReverseRunner as GradientRunner
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


def _graphs(cache: Path) -> list[Path]:
    return sorted(cache.glob("models/*/*.onnx"))


def test_rewritten_models_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    onnxcam.clear_cache()  # sessions other tests left in this process would serve the calls below
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    onnxcam.gradients(tiny_cnn(), x, layers="feat")
    first = _graphs(tmp_path)
    assert len(first) == 1
    stamp = first[0].stat().st_mtime_ns
    onnxcam.clear_cache()
    onnxcam.gradients(tiny_cnn(), x, layers="feat")  # same model and request: reused, not rewritten
    assert _graphs(tmp_path) == first and first[0].stat().st_mtime_ns == stamp
    onnxcam.gradients(tiny_cnn(), x, layers="scaled")  # another request: another file
    onnxcam.gradients(tiny_cnn(classes=4), x, layers="feat")  # another model: another file
    assert len(_graphs(tmp_path)) == 3
    assert not list(tmp_path.rglob(".*tmp")) and not list(tmp_path.rglob(".scratch*"))  # nothing half-written


def test_unwritable_cache_still_works(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ONNXCAM_CACHE", str(blocked / "cache"))
    onnxcam.clear_cache()
    x = np.random.default_rng(0).random((1, 3, 8, 8), np.float32)
    assert onnxcam.gradients(tiny_cnn(), x, layers="feat").scores.shape == (1, 5)


def test_functional_api_reuses_its_sessions(tmp_path, monkeypatch):
    """onnxcam.gradients / onnxcam.relevance in a loop: the runner (model parse, rewrite, session) is made once
    per model file and request; a re-exported file, another request or clear_cache() makes a new one."""
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path / "cache"))
    onnxcam.clear_cache()
    path = tmp_path / "model.onnx"
    onnx.save(tiny_cnn(), str(path))
    x = np.random.default_rng(0).random((2, 3, 8, 8), np.float32)
    made = []
    original = GradientRunner.__init__

    def counting(self, *args, **kwargs):  # the real constructor, counted
        made.append(args)
        original(self, *args, **kwargs)
    monkeypatch.setattr(GradientRunner, "__init__", counting)
    first = onnxcam.gradients(path, x, layers="feat")
    again = onnxcam.gradients(str(path), x, layers="feat", targets=[1, 2])
    assert len(made) == 1
    np.testing.assert_array_equal(first.activations["feat"], again.activations["feat"])
    assert again.targets.tolist() == [1, 2]
    onnxcam.gradients(path, x, layers="scaled")
    assert len(made) == 2
    onnx.save(tiny_cnn(classes=4), str(path))  # re-exported: a new model
    assert onnxcam.gradients(path, x, layers="feat").scores.shape == (2, 4) and len(made) == 3
    onnxcam.clear_cache()
    onnxcam.gradients(path, x, layers="feat")
    assert len(made) == 4
    relevance = [onnxcam.relevance(path, x, layers="feat") for _ in range(2)]
    np.testing.assert_array_equal(relevance[0].relevance["feat"], relevance[1].relevance["feat"])


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


def test_cached_model_path_and_make_session_share_the_weights(tmp_path, monkeypatch):
    """The path-returning API: a graph-only file whose session maps the cache's weights file."""
    from onnxcam.graph.load import load_model
    from onnxcam.graph.reverse.model import gradient_model
    from onnxcam.runtime import cached_model, make_session

    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path))
    model = load_model(Path(__file__).parent.parent / "models" / "shapes_resnet.onnx")
    layer = "/stage3/stage3.1/Relu_1_output_0"
    path = cached_model("shapes-gradients", lambda: gradient_model(model, [layer]).model)
    assert path.stat().st_size < 100_000 and (path.parent / "weights.bin").stat().st_size > 500_000
    assert cached_model("shapes-gradients", lambda: pytest.fail("built twice")) == path
    cached, plain = make_session(path, ["CPUExecutionProvider"]), make_session(
        gradient_model(model, [layer]).model, ["CPUExecutionProvider"])
    assert cached.weights is not None and plain.weights is None
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    feeds = {"input": x, "onnxcam_seed": np.zeros((2, 8), np.float32)}
    names = [o.name for o in plain.get_outputs()]
    for a, b in zip(cached.run(names, feeds), plain.run(names, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
