"""The rewritten model: only standard ops, dynamic shapes, the score, the seed, layer errors, head extraction."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import nhwc_cnn, tiny_cnn

import onnxcam
from onnxcam.errors import GradientError, LayerError
from onnxcam.graph.catalogue import catalogue, default_layer, find_score
from onnxcam.graph.head import extract_head
from onnxcam.graph.load import load_model
from onnxcam.graph.reverse.model import gradient_model

rng = np.random.default_rng(0)


def image(batch=2, size=8):
    return rng.random((batch, 3, size, size), np.float32)


def test_rewritten_model_is_standard_and_loads_with_defaults():
    built = gradient_model(load_model(tiny_cnn()), ["feat"], input_gradient=True)
    assert {n.domain for n in built.model.graph.node} <= {"", "ai.onnx"}
    onnx.checker.check_model(built.model)
    ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_dynamic_batch_and_size_stay_dynamic():
    runner = onnxcam.ReverseRunner(tiny_cnn(batch="N", size="S"), layers=["feat"], with_input=True,
                                   device="cpu")
    dims = runner.session.get_inputs()[0].shape
    assert isinstance(dims[0], str) and isinstance(dims[2], str)
    for batch, size in [(1, 8), (3, 11)]:
        result = runner.run(image(batch, size))
        assert result.gradients["feat"].shape == (batch, 3, size, size)
        assert result.input_gradient.shape == (batch, 3, size, size)


def test_gradient_matches_analytic_for_linear_head():
    """tiny_cnn: logits = W mean_hw(relu(s * x)) + b, so d logit_c / d feat = W[c] / (H W) everywhere."""
    model = tiny_cnn()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = image()
    result = onnxcam.gradients(model, x, layers="feat", targets=[4, 1])
    for i, c in enumerate([4, 1]):
        expected = np.broadcast_to(weights["fc_w"][c][:, None, None] / 64, (3, 8, 8))
        np.testing.assert_allclose(result.gradients["feat"][i], expected, rtol=1e-6)
    np.testing.assert_array_equal(result.targets, [4, 1])


def test_default_seed_is_predicted_class():
    runner = onnxcam.ReverseRunner(tiny_cnn(), layers=["feat"], device="cpu")
    x = image(4)
    default = runner.run(x)
    explicit = runner.run(x, default.scores.argmax(axis=1))
    np.testing.assert_array_equal(default.targets, default.scores.argmax(axis=1))
    np.testing.assert_allclose(default.gradients["feat"], explicit.gradients["feat"])


def test_softmax_model_differentiates_logits_by_default():
    x = image()
    plain = onnxcam.gradients(tiny_cnn(), x, layers="feat", targets=2)
    soft = onnxcam.gradients(tiny_cnn(softmax=True), x, layers="feat", targets=2)
    np.testing.assert_allclose(soft.scores, plain.scores, rtol=1e-6)
    np.testing.assert_allclose(soft.gradients["feat"], plain.gradients["feat"], rtol=1e-6)
    probs = onnxcam.gradients(tiny_cnn(softmax=True), x, layers="feat", targets=2, probabilities=True)
    np.testing.assert_allclose(probs.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(probs.gradients["feat"], plain.gradients["feat"])


def test_softmax_before_flatten_keeps_scores_two_dimensional():
    """Softmax over (N, K, 1, 1) then Flatten, as some exports do: the score is the logits, reshaped to (N, K)."""
    model = tiny_cnn()
    graph = model.graph
    graph.node[-1].output[0] = "logits2d"
    graph.node.extend([
        helper.make_node("Unsqueeze", ["logits2d", "ax23"], ["logits4d"]),
        helper.make_node("Softmax", ["logits4d"], ["probs4d"], axis=1),
        helper.make_node("Flatten", ["probs4d"], ["probs"])])
    graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"))
    graph.output[0].name = "probs"
    loaded = load_model(model)
    assert find_score(loaded) == ("logits4d", "probs")
    x = image()
    result = onnxcam.gradients(model, x, layers="feat", targets=[0, 3])
    reference = onnxcam.gradients(tiny_cnn(), x, layers="feat", targets=[0, 3])
    assert result.scores.shape == (2, 5)
    np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-6)
    np.testing.assert_allclose(result.gradients["feat"], reference.gradients["feat"], rtol=1e-6)


def test_unknown_layer_suggests_close_names():
    with pytest.raises(LayerError, match="did you mean 'feat'"):
        onnxcam.gradients(tiny_cnn(), image(), layers="faet")


def test_missing_rule_names_op_node_and_alternatives():
    model = tiny_cnn()
    model.graph.node[1].op_type = "Det"  # no rule: it must be named (the model is never run)
    with pytest.raises(GradientError, match=r"'Det' \(node 'relu', output 'feat'\).*needs no gradient"):
        onnxcam.gradients(model, image(), layers="scaled")
    # the graph names no method; the explainer adds the registry's gradient-free ones
    with pytest.raises(GradientError, match=r"'Det'.*eigencam.*scorecam"):
        onnxcam.Explainer(model, layer="scaled", device="cpu").explain(image(), "gradcam")


def test_no_spatial_tensor_is_a_clear_error():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                           [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(LayerError, match="no spatial feature map"):
        onnxcam.gradients(model, rng.random((1, 10), np.float32))


def test_catalogue_layouts_and_default_layer_for_nhwc_input():
    """An NHWC model (input Transpose, as tf2onnx writes): layers after the transpose are NCHW."""
    model = load_model(nhwc_cnn())
    layouts = {t.name: t.layout for t in catalogue(model)}
    assert layouts["img"] == "NHWC" and layouts["act"] == "NCHW" and layouts["gap"] is None
    assert default_layer(model, "logits") == "act"


def test_head_extraction_runs_only_the_rest():
    model = load_model(tiny_cnn())
    head = extract_head(model, "feat", "logits")
    assert [n.op_type for n in head.model.graph.node] == ["ReduceMean", "Gemm"]
    assert head.extra_inputs == []
    x = image()
    full = onnxcam.gradients(model, x, layers="feat")
    session = ort.InferenceSession(head.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"feat": full.activations["feat"]})[0], full.scores, rtol=1e-6)


def test_head_with_skip_connection_has_extra_input():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Add", ["b", "a"], ["c"]), helper.make_node("Tanh", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    head = extract_head(model, "b", "y")
    assert head.extra_inputs == ["a"]
    assert [n.op_type for n in head.model.graph.node] == ["Add", "Tanh"]


def test_no_dead_nodes_are_emitted():
    """onnxruntime runs unused nodes too, so nothing the walker emits may be dead (e.g. weight gradients)."""
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "models" / "torch_exports").glob("*_op1[38].onnx"))[:4]:
        model = load_model(path)
        built = gradient_model(model, [default_layer(model, find_score(model)[0])], input_gradient=True)
        graph = built.model.graph
        consumed = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n.name for n in graph.node if n.name.startswith("onnxcam/") and not set(n.output) & consumed]
        assert not dead, f"{path.name}: dead nodes {dead[:5]}"
        emitted_weights = {t.name for t in graph.initializer if t.name.startswith("onnxcam/")}
        assert emitted_weights <= consumed


def test_scaled_head_equals_scaled_copies():
    """extract_head(scale=True): one image's features times a batch of channel masks, built in the runtime."""
    model = load_model(nhwc_cnn())
    plain = ort.InferenceSession(extract_head(model, "act", "logits").model.SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    scaled_head = extract_head(model, "act", "logits", scale=True)
    scaled = ort.InferenceSession(scaled_head.model.SerializeToString(), providers=["CPUExecutionProvider"])
    features = rng.random((1, 6, 16, 16)).astype(np.float32)
    masks = (rng.random((5, 6, 1, 1)) > 0.5).astype(np.float32)
    expected = plain.run(None, {"act": features * masks})[0]
    got = scaled.run(None, {"act": features, scaled_head.scale: masks})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
