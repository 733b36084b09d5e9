"""`onnxcam evaluate` end to end on generated shapes images with the bundled model, and its bad-input messages."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from onnxcam.cli import app
from onnxcam.datasets.shapes import write_dataset
from onnxcam.errors import InputError
from onnxcam.jobs.evaluate import evaluate, parse_metrics, target_region

MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes_resnet.onnx"
FAST = ["--steps", "4", "--road-percentages", "50", "--metric-limit", "road=4", "--batch-size", "8"]
runner = CliRunner()


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bench"), 16, seed=2)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("multi"), 4, seed=3, multi=True)


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["evaluate", str(MODEL), *args])
    return result.exit_code, result.output


def test_evaluate_end_to_end_on_the_shapes_benchmark(bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code, output = _run(str(bench / "images"), "--methods", "gradcam,random", "--out", str(out), *FAST)
    assert code == 0, output
    assert "found beside the data" in output  # labels.csv and masks/ found next to images/
    report = json.loads((out / "evaluation.json").read_text())
    assert report["items"] == 16 and report["labelled"] == 16 and report["with_masks"] == 16
    assert report["activation"] == "softmax"
    assert report["accuracy"] >= 0.8  # the bundled model is ~98 % accurate on this test distribution
    grad, rand = report["results"]["gradcam"], report["results"]["random"]
    assert set(grad) == {"average_drop", "average_increase", "average_gain", "deletion", "insertion", "road_morf",
                         "road_lerf", "pointing_game", "energy_pointing_game", "seconds_per_image"}
    assert grad["pointing_game"]["n"] == 16 and grad["road_morf"]["n"] == 4
    assert grad["average_drop"]["higher_is_better"] is False and grad["insertion"]["higher_is_better"] is True
    for per in (grad, rand):
        assert 0 <= per["deletion"]["mean"] <= 1 and 0 <= per["insertion"]["mean"] <= 1
        assert 0 <= per["energy_pointing_game"]["mean"] <= 100
    # Grad-CAM is more faithful than random channel weights on a trained model
    assert grad["deletion"]["mean"] < rand["deletion"]["mean"]
    assert grad["energy_pointing_game"]["mean"] > rand["energy_pointing_game"]["mean"]
    assert len(report["curves"]["gradcam"]["deletion"]) == 5
    rows = list(csv.DictReader((out / "evaluation.csv").read_text().splitlines()))
    assert [r["method"] for r in rows] == ["gradcam", "random"]
    assert float(rows[0]["pointing_game"]) == pytest.approx(grad["pointing_game"]["mean"], rel=1e-4)
    assert rows[0]["road_lerf_n"] == "4"
    plot = cv2.imread(str(out / "curves.png"))
    assert plot is not None and plot.shape[0] > 200 and plot.shape[1] > 400
    assert (plot < 200).any()  # something was drawn


def test_multi_object_images_explain_each_labelled_class(multi: Path) -> None:
    result = evaluate(MODEL, multi, ["gradcam"], metrics="pg,epg", device="cpu")
    assert result.items == 8 and result.labelled == 8  # two rows (classes) per image
    assert result.results["gradcam"]["pointing_game"]["n"] == 8
    assert "average_drop" not in result.results["gradcam"]
    assert list(result.results["gradcam"]) == ["pointing_game", "energy_pointing_game", "seconds_per_image"]


def test_target_region_uses_the_class_value_or_a_binary_mask() -> None:
    mask = np.array([[0, 1, 3], [3, 0, 0]], np.uint8)
    assert target_region(mask, 2).tolist() == [[False, False, True], [True, False, False]]
    assert not target_region(mask, 5).any()  # a class that is not in a multi-object mask
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    assert target_region(binary, 4).tolist() == [[False, True], [True, False]]


def test_images_without_masks_and_resized_masks_are_said(bench: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(bench / "images", data / "images")
    (data / "masks").mkdir()
    for i, mask in enumerate(sorted((bench / "masks").glob("*.png"))[:6]):
        if i < 2:  # half the size: resized with nearest neighbour
            small = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)[::2, ::2]
            cv2.imwrite(str(data / "masks" / mask.name), small)
        else:
            shutil.copy(mask, data / "masks" / mask.name)
    result = evaluate(MODEL, data / "images", ["gradcam"], metrics="pointing_game", device="cpu", limit=8)
    assert result.results["gradcam"]["pointing_game"]["n"] == 6
    assert any("2 of 8 items have no mask" in n for n in result.notes)
    assert any("2 mask(s) had another size" in n for n in result.notes)
    assert any("no labels csv" in n for n in result.notes)
    assert result.labelled == 0 and result.accuracy is None


def test_labels_csv_with_indices_and_paths_relative_to_data(bench: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,class\nshape_00000.png,2\nshape_00001.png,circle\n")
    result = evaluate(MODEL, bench / "images", ["gradcam"], metrics="ad", labels=labels, limit=3, device="cpu")
    assert result.labelled == 2
    assert any("not in" in n and "predicted class" in n for n in result.notes)


@pytest.mark.parametrize("args, message", [
    (["--metrics", "pointing,accuracy"], "unknown metric 'accuracy'; valid metrics: average_drop"),
    (["--methods", "gradcan"], "unknown method 'gradcan'"),
    (["--method-limit", "scorecam=5"], "not among the evaluated methods"),
    (["--metric-limit", "road=x"], "positive whole number"),
    (["--insertion-start", "grey"], "insertion start must be 'blur' or 'black'"),
    (["--road-percentages", "50,100"], "strictly between 0 and 100"),
    (["--option", "no_such_option=5"], "option(s) no_such_option are accepted by none of the methods"),
])
def test_usage_errors_exit_2_with_one_line(bench: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, output = _run(str(bench / "images"), "--limit", "1", "--out", str(tmp_path / "o"), "--steps", "2", *args)
    assert code == 2, output
    assert message in output


def test_bad_data_and_labels_exit_2(bench: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = _run(str(empty))
    assert code == 2 and "no images found in" in output
    missing = tmp_path / "missing.csv"
    missing.write_text("file,class\nimages/nope.png,circle\n")
    code, output = _run(str(bench / "images"), "--labels", str(missing))
    assert code == 2 and "line 2: image 'images/nope.png' is not among the images" in output
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("file,class\nimages/shape_00000.png,hexagon\n")
    code, output = _run(str(bench / "images"), "--labels", str(unknown))
    assert code == 2 and "line 2: no class labelled 'hexagon'" in output
    headless = tmp_path / "headless.csv"
    headless.write_text("images/shape_00000.png,circle\n")
    code, output = _run(str(bench / "images"), "--labels", str(headless))
    assert code == 2 and "header 'file,class'" in output


def test_parse_metrics_groups_and_aliases() -> None:
    assert parse_metrics("ad,ag") == ["average_drop", "average_gain", "seconds_per_image"]
    assert parse_metrics(["road", "Energy-Pointing-Game"]) == ["road_morf", "road_lerf", "energy_pointing_game",
                                                               "seconds_per_image"]
    with pytest.raises(InputError, match="valid metrics"):
        parse_metrics("nope")


def test_the_dataset_command_writes_a_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxcam.datasets.shapes import main

    main(["--out", str(tmp_path / "d"), "--count", "2", "--seed", "4", "--multi"])
    assert "wrote 2 images" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "masks").glob("*.png"))) == 2
    assert (tmp_path / "d" / "labels.csv").read_text().count("\n") == 5  # header + two objects per image
