"""Models with inputs beside the image (onnxcam.inputs): `--input NAME=FILE.npy` and `input_defaults` metadata
folded into the graph, per-image values expanded to the batch, the one-line refusals, and models whose input is
not an image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import tiny_cnn
from typer.testing import CliRunner

from onnxcam import cli
from onnxcam.errors import InputError, ModelError
from onnxcam.images import preprocess, read_image, resolve_preprocessing
from onnxcam.inputs import prepare_model
from onnxcam.jobs.explain import explain

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((ROOT / "examples" / "images").glob("*.png"))
EXPORTS = ROOT / "models" / "exporters"
runner = CliRunner()


def _two_inputs(bias_shape: list[int | str]) -> onnx.ModelProto:
    """tiny_cnn whose logits get a second input added: a constant offset or a per-image one."""
    model = tiny_cnn(size=8, classes=3)
    model.graph.output[0].name = "raw"
    for node in model.graph.node:
        node.output[:] = ["raw" if o == "logits" else o for o in node.output]
    model.graph.node.append(helper.make_node("Add", ["raw", "bias"], ["logits"]))
    model.graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, bias_shape))
    model.graph.output[0].name = "logits"
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_second_input_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    path = _save(_two_inputs([1, 3]), tmp_path / "two.onnx")
    result = runner.invoke(cli.app, ["explain", str(path), str(IMAGES[0]), "--out", str(tmp_path / "out"),
                                     "--device", "cpu"], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert ("error: the model has 2 inputs (input, bias); onnxcam feeds the image to 'input': give the other with "
            "--input NAME=FILE.npy (bias: float32 (1, 3))") in result.output
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_input_values_from_a_file_are_folded_in(tmp_path: Path) -> None:
    path = _save(_two_inputs([1, 3]), tmp_path / "two.onnx")
    bias = np.array([[0.0, 50.0, 0.0]], np.float32)  # makes class 1 win everywhere
    np.save(tmp_path / "bias.npy", bias)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(path), *map(str, IMAGES[:3]), "--out", str(out), "--device",
                                     "cpu", "--input", f"bias={tmp_path / 'bias.npy'}"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["predicted"] for r in records] == [1, 1, 1]
    # the score is the model's own, fed both inputs by onnxruntime
    model = onnx.load(str(path))
    spec = resolve_preprocessing(model, "input", size=8)
    x = preprocess(read_image(IMAGES[0]), spec)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x, "bias": bias})[0]
    assert records[0]["score"] == pytest.approx(float(want[0, 1]), rel=1e-5)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["inputs"]["bias"]["shape"] == [1, 3] and manifest["inputs_from"]["bias"].startswith("file ")
    np.save(tmp_path / "other.npy", bias * 2)
    again = runner.invoke(cli.app, ["explain", str(path), *map(str, IMAGES[:3]), "--out", str(out), "--device",
                                    "cpu", "--input", f"bias={tmp_path / 'other.npy'}", "--resume"])
    assert again.exit_code == 2 and "inputs" in again.output  # another value is another run


def test_a_per_image_input_follows_the_batch(tmp_path: Path) -> None:
    path = _save(_two_inputs(["N", 3]), tmp_path / "per_image.onnx")
    bias = np.array([[0.0, 0.0, 40.0]], np.float32)
    summary = explain(path, IMAGES[:5], tmp_path / "out", device="cpu", batch_size=4, methods=["gradcam", "scorecam"],
                      model_inputs={"bias": bias})
    assert summary.failed == 0
    assert {r["predicted"] for r in summary.records} == {2}


def test_defaults_from_metadata(tmp_path: Path) -> None:
    model = _two_inputs([1, 3])
    helper.set_model_props(model, {"input_defaults": json.dumps({"bias": [[0.0, 0.0, 30.0]]})})
    summary = explain(_save(model, tmp_path / "m.onnx"), IMAGES[:2], tmp_path / "out", device="cpu")
    assert [r["predicted"] for r in summary.records] == [2, 2]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["inputs_from"] == {
        "bias": "model metadata 'input_defaults'"}
    helper.set_model_props(model, {"input_defaults": "{bias: 1"})  # unreadable: as if there were none
    with pytest.raises(InputError, match="give the other with --input"):
        explain(_save(model, tmp_path / "bad.onnx"), IMAGES[:1], tmp_path / "out2", device="cpu")


def test_bad_input_values_say_what_is_wrong(tmp_path: Path) -> None:
    path = _save(_two_inputs([1, 3]), tmp_path / "two.onnx")
    with pytest.raises(InputError, match=r"--input bais: the model has no input of that name \(did you mean "
                                         r"'bias'\?\)"):
        prepare_model(path, {"bais": np.zeros((1, 3))})
    with pytest.raises(InputError, match=r"input 'bias' is float32 \(1, 3\) but an array holds an array of shape "
                                         r"\(3,\)"):
        prepare_model(path, {"bias": np.zeros(3)})
    (tmp_path / "not.npy").write_text("hello")
    with pytest.raises(InputError, match="cannot read it as a .npy array"):
        prepare_model(path, {"bias": tmp_path / "not.npy"})
    with pytest.raises(InputError, match="leave out the image input"):
        prepare_model(path, {"bias": np.zeros((1, 3)), "input": np.zeros((1, 3, 8, 8))})
    result = runner.invoke(cli.app, ["explain", str(path), str(IMAGES[0]), "--out", str(tmp_path / "o"), "--input",
                                     "bias"])
    assert result.exit_code == 2 and "--input takes NAME=VALUE" in result.output


def _text_model() -> onnx.ModelProto:
    """Token ids -> embedding -> mean over the sequence -> logits: not an image model."""
    rng = np.random.default_rng(0)
    weights = {"emb": rng.standard_normal((50, 8)).astype(np.float32),
               "fc_w": rng.standard_normal((2, 8)).astype(np.float32), "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["tokens"]),
             helper.make_node("ReduceMean", ["tokens", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fc_w"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                            ["batch", "sequence"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_a_text_model_is_refused_by_explain_and_inspect(tmp_path: Path) -> None:
    path = _save(_text_model(), tmp_path / "text.onnx")
    said = ("the model's input 'input_ids' is int64 (batch, sequence): onnxcam explains image models, whose input "
            "is a batch of images, float or uint8, (N, C, H, W) or (N, H, W, C); it looks like a text model (token "
            "ids)")
    with pytest.raises(ModelError) as info:
        explain(path, IMAGES[:1], tmp_path / "out", device="cpu")
    assert str(info.value) == said
    for command in (["inspect", str(path)], ["explain", str(path), str(IMAGES[0]), "--out", str(tmp_path / "o")]):
        result = runner.invoke(cli.app, command, env={"COLUMNS": "400"})
        assert result.exit_code == 2 and f"error: {said}" in result.output and "Traceback" not in result.output


def test_inspect_describes_a_model_with_extra_inputs(tmp_path: Path) -> None:
    path = _save(_two_inputs([1, 3]), tmp_path / "two.onnx")
    result = runner.invoke(cli.app, ["inspect", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "inputs: the model has 2 inputs (input, bias)" in result.output


def test_keras_exports_with_normalization_left_as_inputs_run_with_their_values(tmp_path: Path) -> None:
    name = "keras_efficientnet_keras_op15_extra_inputs.onnx"
    entry = json.loads((EXPORTS / "zoo.json").read_text())[name]
    values = {k: np.asarray(v, np.float32) for k, v in entry["extra_inputs"].items()}
    files = {}
    for i, (key, value) in enumerate(values.items()):
        np.save(tmp_path / f"v{i}.npy", value)
        files[key] = tmp_path / f"v{i}.npy"
    summary = explain(EXPORTS / name, IMAGES[:2], tmp_path / "out", device="cpu", model_inputs=files)
    assert summary.failed == 0
    prepared = prepare_model(EXPORTS / name, files)
    model = onnx.load(str(EXPORTS / name))
    image = model.graph.input[0].name
    spec = resolve_preprocessing(model, image)
    assert spec.scale == 1.0  # the Rescaling inside the graph: raw pixels
    x = preprocess(read_image(IMAGES[0]), spec)
    want = ort.InferenceSession(str(EXPORTS / name), providers=["CPUExecutionProvider"]).run(
        None, {image: x, **values})[0]
    got = ort.InferenceSession(prepared.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {image: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the export ends in Softmax: the record's score is the logit before it, its probability the output
    assert summary.records[0]["predicted"] == int(want[0].argmax())
    assert summary.records[0]["probability"] == pytest.approx(float(want[0].max()), rel=1e-4)


def test_an_unbatched_image_input_is_refused_with_the_torchvision_detection_hint(tmp_path: Path) -> None:
    """torchvision's Faster R-CNN / RetinaNet exports take one (C, H, W) image (checked on real exports made with
    torch 2.14 / torchvision 0.29, 76-130 MB, not committed); a small graph of the same signature stands in."""
    from onnxcam.inputs import check_image_input

    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["score"], keepdims=0)], "unbatched",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [3, 64, 64])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"one unbatched image \(C, H, W\).*Faster R-CNN.*before post-processing"):
        check_image_input(model, "images")
    onnx.checker.check_model(model)
