"""Class names (onnxcam.labels): files in every format, names carried in metadata by real exporters, the built-in
ImageNet-1k list, numeric labels against indices, and the source said once per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import tiny_cnn
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.errors import InputError
from onnxcam.jobs.explain import explain
from onnxcam.labels import (
    find_labels,
    imagenet_labels,
    metadata_labels,
    metadata_problems,
    model_labels,
    read_labels,
    resolve_target,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "images" / "01_circle.png"
RESNET = ROOT / "models" / "shapes_resnet.onnx"
runner = CliRunner()


def _with_metadata(model: onnx.ModelProto, **props: str) -> onnx.ModelProto:
    helper.set_model_props(model, props)
    return model


def _classifier(classes: int) -> onnx.ModelProto:
    """input (N, 3, 8, 8) -> Conv 1x1 -> Relu ('feat') -> GlobalAveragePool -> Flatten -> Gemm to `classes`."""
    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32),
               "fc_w": rng.standard_normal((classes, 4)).astype(np.float32),
               "fc_b": rng.standard_normal(classes).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("Relu", ["conv"], ["feat"]),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# --- files ----------------------------------------------------------------------------------------------------------
def test_label_files_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("cat\ndog\n\n")
    assert read_labels(tmp_path / "l.txt") == ["cat", "dog"]
    (tmp_path / "list.json").write_text(json.dumps(["cat", "dog"]))
    assert read_labels(tmp_path / "list.json") == ["cat", "dog"]
    (tmp_path / "dict.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_labels(tmp_path / "dict.json") == ["cat", "dog"]
    (tmp_path / "header.csv").write_text("index,name\n1,dog\n0,cat\n")
    assert read_labels(tmp_path / "header.csv") == ["cat", "dog"]
    (tmp_path / "plain.csv").write_text("0,cat\n1,\"dog, large\"\n")
    assert read_labels(tmp_path / "plain.csv") == ["cat", "dog, large"]
    (tmp_path / "names.csv").write_text("name\ncat\ndog\n")
    assert read_labels(tmp_path / "names.csv") == ["cat", "dog"]
    (tmp_path / "swapped.csv").write_text("name,id\ndog,1\ncat,0\n")
    assert read_labels(tmp_path / "swapped.csv") == ["cat", "dog"]


def test_bad_label_files_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "gap.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(InputError, match="do not cover the class indices 0..1"):
        read_labels(tmp_path / "gap.json")
    (tmp_path / "bad.csv").write_text("a,b\nc,d\n")
    with pytest.raises(InputError, match="rows 'index,name'"):
        read_labels(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="cannot read labels file"):
        read_labels(tmp_path / "missing.txt")


def test_a_labels_file_of_the_wrong_length_names_both_numbers(tmp_path: Path) -> None:
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(InputError, match="has 3 labels but the model has 8 classes"):
        explain(RESNET, [IMAGE], tmp_path / "out", labels=tmp_path / "three.txt", device="cpu")
    result = runner.invoke(cli.app, ["explain", str(RESNET), str(IMAGE), "--out", str(tmp_path / "cli"),
                                     "--labels", str(tmp_path / "three.txt"), "--device", "cpu"])
    assert result.exit_code == 2 and "has 3 labels but the model has 8 classes" in result.output
    assert "Traceback" not in result.output


# --- metadata -------------------------------------------------------------------------------------------------------
def test_names_in_every_metadata_spelling() -> None:
    ultralytics = _with_metadata(tiny_cnn(classes=3), names="{0: 'person', 1: 'bicycle', 2: 'car'}")
    assert metadata_labels(ultralytics) == (["person", "bicycle", "car"], "names")
    paddle = _with_metadata(tiny_cnn(classes=4), character="0\n90\n180\n270")
    assert model_labels(paddle) == ["0", "90", "180", "270"]
    deepness = _with_metadata(tiny_cnn(classes=2), class_names='{"0": "background", "1": "field"}')
    assert model_labels(deepness) == ["background", "field"]
    listed = _with_metadata(tiny_cnn(classes=2), classes="['a', 'b']")
    assert model_labels(listed) == ["a", "b"]


def test_unreadable_or_miscounted_metadata_is_said_once_and_skipped() -> None:
    model = _with_metadata(tiny_cnn(classes=2), labels="{not json", names="{0: 'a', 1: 'b'}")
    found = find_labels(None, model, 2)
    assert found.names == ["a", "b"] and found.source == "model metadata 'names' (2 classes)"
    problems = metadata_problems(model, 2)
    assert len(problems) == 1 and "'labels'" in problems[0] and "going on without it" in problems[0]
    # rapidocr's recogniser: 6623 characters for 6625 classes (CTC blank and space added by the package)
    ocr = _with_metadata(tiny_cnn(classes=5), character="a\nb\nc")
    assert find_labels(None, ocr, 5).names is None
    assert metadata_problems(ocr, 5) == ["the model's metadata 'character' has 3 names but the model has 5 classes; "
                                         "going on without it"]


def test_the_builtin_imagenet_names_cover_1000_and_1001_classes() -> None:
    names = imagenet_labels(1000)
    assert names is not None and len(names) == len(set(names)) == 1000
    assert (names[0], names[262], names[999]) == ("tench", "Brabancon griffon", "toilet tissue")
    with_background = imagenet_labels(1001)
    assert with_background is not None and with_background[0] == "background" and with_background[263] == names[262]
    assert imagenet_labels(10) is None
    found = find_labels(None, _classifier(1000), 1000)
    assert found.names == names and found.source.startswith("built-in ImageNet-1k names (the model has 1000 classes")
    ex = onnxcam.Explainer(_classifier(1001), device="cpu")
    assert ex.labels is not None and ex.labels[0] == "background" and "background first" in ex.labels_source


def test_a_1000_class_run_names_its_classes(tmp_path: Path) -> None:
    path = tmp_path / "imagenet_like.onnx"
    onnx.save(_classifier(1000), path)
    result = runner.invoke(cli.app, ["explain", str(path), str(IMAGE), "--out", str(tmp_path / "out"), "--device",
                                     "cpu", "--size", "8", "-t", "goldfish"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "labels: built-in ImageNet-1k names" in result.output
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert (record["target"], record["label"]) == (1, "goldfish")
    assert record["predicted_label"] == imagenet_labels(1000)[record["predicted"]]  # type: ignore[index]
    assert record["labels_source"].startswith("built-in ImageNet-1k")


# --- targets --------------------------------------------------------------------------------------------------------
def test_numeric_labels_win_over_indices_and_hash_forces_an_index() -> None:
    labels = ["0", "90", "180", "270"]
    notes: list[str] = []
    assert resolve_target("180", labels, 4, notes) == 2
    assert notes == ["target '180' is the label of class 2; pass '#180' for class index 180"]
    assert resolve_target("#2", labels, 4) == 2
    notes.clear()
    assert resolve_target("3", labels, 4, notes) == 3 and notes == ["target '3' is no label; read as class index 3 "
                                                                    "('270')"]
    with pytest.raises(InputError, match=r"target class 180 is out of range \(the model has 4 classes: 0..3; its "
                                         r"labels are 0, 90, 180, 270\)"):
        resolve_target("#180", labels, 4)
    with pytest.raises(InputError, match="'#' must be followed by a class index"):
        resolve_target("#x", labels, 4)
    assert resolve_target("Dog", ["cat", "dog"], 2) == 1
    with pytest.raises(InputError, match="did you mean 'dog'"):
        resolve_target("dgo", ["cat", "dog"], 2)
    with pytest.raises(InputError, match="pass --class-names FILE"):
        resolve_target("dog", None, 2)


def test_numeric_labels_in_a_run(tmp_path: Path) -> None:
    path = tmp_path / "orientation.onnx"
    onnx.save(_with_metadata(tiny_cnn(classes=4, size=8), character="0\n90\n180\n270"), path)
    result = runner.invoke(cli.app, ["explain", str(path), str(IMAGE), "--out", str(tmp_path / "a"), "--device",
                                     "cpu", "-t", "180"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "target '180' is the label of class 2; pass '#180' for class index 180" in result.output
    assert "labels: model metadata 'character' (4 classes)" in result.output
    record = json.loads((tmp_path / "a" / "results.jsonl").read_text().splitlines()[0])
    assert (record["target"], record["label"]) == (2, "180")
    result = runner.invoke(cli.app, ["explain", str(path), str(IMAGE), "--out", str(tmp_path / "b"), "--device",
                                     "cpu", "-t", "#1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "results.jsonl").read_text().splitlines()[0])["label"] == "90"


def test_the_api_takes_names_and_settable_labels() -> None:
    ex = onnxcam.Explainer(tiny_cnn(classes=3, size=8), device="cpu")
    assert ex.labels is None and ex.labels_source.startswith("none")
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(InputError, match="set Explainer.labels"):
        ex.explain(x, targets=["b", "c"])
    ex.labels = ["a", "b", "c"]
    np.testing.assert_array_equal(ex.explain(x, targets=["b", "c"]), ex.explain(x, targets=[1, 2]))
    with pytest.raises(InputError, match="has 2 labels but the model has 3 classes"):
        ex.labels = ["a", "b"]
