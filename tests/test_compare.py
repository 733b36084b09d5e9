"""`onnxcam compare` and `onnxcam.compare`: two models explained on the same images, their maps' agreement, the
exit code that gates CI. Uses the committed zoo pairs (models/quantized.md) and variants of them built here with
onnx.helper (a padded class axis, a clipping calibration, a dynamic input size); no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from scipy import stats
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.images import read_image
from onnxcam.jobs.compare import map_agreement

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
RESNET, QDQ = MODELS / "shapes_resnet.onnx", MODELS / "shapes_resnet_int8_qdq.onnx"
CORNER, FP16 = MODELS / "shapes_resnet_corner.onnx", MODELS / "shapes_mobilenet_fp16.onnx"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.png"))
runner = CliRunner()


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]


def _run(*args: object) -> tuple[int, str]:
    result = runner.invoke(cli.app, ["compare", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# --- the statistics -----------------------------------------------------------------------------------------------
def test_map_agreement_matches_scipy_and_hand_counts() -> None:
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(30, 40)), 0).astype(np.float32)  # half zeros: ties for the ranks
    b = np.maximum(a + rng.normal(scale=0.5, size=a.shape), 0).astype(np.float32)
    found = map_agreement(a, b)
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)  # scipy keeps float32 inputs in float32
    assert found["pearson"] == pytest.approx(stats.pearsonr(a64, b64)[0], abs=1e-12)
    assert found["spearman"] == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    top_a, top_b = a.ravel() >= np.sort(a.ravel())[-120], b.ravel() >= np.sort(b.ravel())[-120]  # 10% of 1200
    assert found["iou_top10"] == pytest.approx((top_a & top_b).sum() / (top_a | top_b).sum())

    peak_a, peak_b = np.zeros((10, 20)), np.zeros((10, 20))
    peak_a[2, 3], peak_b[6, 6] = 1.0, 1.0
    moved = map_agreement(peak_a, peak_b, scale=(2.0, 2.0))  # maps shrunk by 2 from the image
    assert moved["peak_distance"] == pytest.approx(10.0)   # 2 * hypot(4, 3)
    assert moved["iou_top10"] == 0.0  # a single positive pixel each: zeros never count as "top"
    same = map_agreement(a, a)
    assert same["pearson"] == same["spearman"] == same["iou_top20"] == 1.0 and same["peak_distance"] == 0.0
    flat = map_agreement(a, np.zeros_like(a))
    assert all(value is None for value in flat.values())


# --- end to end on the committed pairs ----------------------------------------------------------------------------
def test_float32_vs_int8_qdq_agrees_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _run(RESNET, QDQ, *IMAGES[:3], "--out", out)
    assert code == 0, output
    assert "PASS" in output and "Pearson r" in output
    records = _records(out)
    assert [r["name"] for r in records] == [p.name for p in IMAGES[:3]]
    for r in records:
        assert r["status"] == "ok" and r["maps_compared"] and r["passed"] and r["predictions_agree"]
        assert r["pearson"] >= 0.99 and r["spearman"] >= 0.95 and r["iou_top20"] >= 0.8
        assert r["target"] == r["a_predicted"] and r["a_label"] == r["target_label"]
        assert 0.5 < r["a_probability"] <= 1.0 and r["b_target_probability"] is not None
    summary = json.loads((out / "compare.json").read_text())
    assert summary["passed"] and summary["compared"] == 3
    assert summary["layers"]["B"][0].endswith("DequantizeLinear_Output")  # B's own default layer
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 9 and "PASS" in page  # A | B | difference per image
    assert not (out / ".onnxcam.lock").exists() and not (out / "compare.jsonl.partial").exists()


def test_broken_corner_pair_is_flagged_with_exit_1(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _run(RESNET, CORNER, *IMAGES, "--out", out)
    assert code == 1, output
    assert "FAIL" in output and "below 0.5" in output
    records = _records(out)
    below = [r for r in records if r["pearson"] < 0.5]
    assert len(below) >= 3 and all(not r["passed"] for r in below)
    assert min(r["pearson"] for r in records) < 0.1
    # the report shows the least agreeing image first
    worst = min(records, key=lambda r: r["pearson"])
    page = (out / "report.html").read_text()
    first_card = re.search(r'<div class="card[^"]*"><div class="name">([^<]*)<', page)
    assert first_card is not None and first_card.group(1) == worst["image"]


def test_fail_under_gates_on_the_mean(tmp_path: Path) -> None:
    # no per-image threshold (-1): only the mean Pearson r over the eight images (0.38 for the corner pair) gates
    code, output = _run(RESNET, CORNER, *IMAGES, "--out", tmp_path / "a", "--threshold", "-1", "--fail-under", "0.3")
    assert code == 0, output
    code, output = _run(RESNET, CORNER, *IMAGES, "--out", tmp_path / "b", "--threshold", "-1", "--fail-under", "0.6")
    assert code == 1 and "under --fail-under 0.6" in output.replace("\n", " ")
    mean = json.loads((tmp_path / "b" / "compare.json").read_text())["stats"]["pearson"]["mean"]
    assert 0.3 <= mean < 0.6
    assert mean == pytest.approx(np.mean([r["pearson"] for r in _records(tmp_path / "b")]))


# --- variants built here: class counts, clipping calibration, input sizes -----------------------------------------
def _padded_classes(path: Path, extra: int = 2) -> Path:
    """shapes_resnet with `extra` more classes, always scored below every real one (its predictions unchanged)."""
    model = onnx.load(RESNET)
    graph = model.graph
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}_8" if o == old else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([5.0], np.float32), "margin"))
    graph.node.extend([helper.make_node("ReduceMin", [f"{old}_8"], ["low"], keepdims=1, axes=[1]),
                       helper.make_node("Sub", ["low", "margin"], ["pad"]),
                       helper.make_node("Concat", [f"{old}_8"] + ["pad"] * extra, [old], axis=1)])
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8 + extra
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_mismatched_class_counts(tmp_path: Path) -> None:
    padded = _padded_classes(tmp_path / "padded.onnx")
    images = [str(p) for p in IMAGES[:2]]
    result = onnxcam.compare(RESNET, padded, images)
    assert any("A has 8 classes, B 10" in note and "--same-classes" in note for note in result.notes)
    assert result.not_compared == 2 and result.exit_code == 1 and "maps not compared" in result.reasons[0]
    for r in result.records:
        assert not r["maps_compared"] and r["pearson"] is None and r["predictions_agree"] is None
        assert r["b_predicted"] == r["a_predicted"]  # each model's own prediction is still recorded

    same = onnxcam.compare(RESNET, padded, images, same_classes=True)
    assert same.passed and same.compared == 2
    assert all(r["pearson"] > 0.9999 and r["predictions_agree"] for r in same.records)

    # A's target missing in B: said per image, and the run fails
    code, output = _run(padded, RESNET, images[0], "--out", tmp_path / "o", "--same-classes", "--target", "9")
    assert code == 1
    record = _records(tmp_path / "o")[0]
    assert record["target"] == 9 and not record["maps_compared"]
    assert "does not exist in B (8 classes)" in record["notes"][0]


def test_a_calibration_that_clips_everything_gives_flat_maps_said_per_image(tmp_path: Path) -> None:
    model = onnx.load(QDQ)
    for init in model.graph.initializer:  # the pooled features' scale: every value saturates, gradients vanish
        if init.name == "/GlobalAveragePool_output_0_scale":
            init.CopyFrom(numpy_helper.from_array(np.array(1e-7, np.float32), init.name))
    clipped = tmp_path / "clipped.onnx"
    onnx.save(model, clipped)
    out = tmp_path / "out"
    code, output = _run(RESNET, clipped, *IMAGES[:2], "--out", out)
    assert code == 1 and "all-zero" in output
    for r in _records(out):
        assert r["flat"] and not r["passed"] and r["pearson"] is None
        assert any(note.startswith("B's gradcam map is all zero") for note in r["notes"])
    assert "all zero" in (out / "report.html").read_text()


def _dynamic_size(path: Path, size: int) -> Path:
    """shapes_resnet with a free input size and `size` in its preprocessing metadata (its pooling adapts)."""
    model = onnx.load(RESNET)
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "hw"[axis - 2]
    del model.graph.value_info[:]
    for prop in model.metadata_props:
        if prop.key == "preprocessing":
            prop.value = json.dumps({**json.loads(prop.value), "size": [size, size]})
    onnx.save(model, path)
    return path


def test_different_input_sizes_each_model_its_own_preprocessing(tmp_path: Path) -> None:
    bigger = _dynamic_size(tmp_path / "r128.onnx", 128)
    result = onnxcam.compare(RESNET, bigger, [str(IMAGES[0])], threshold=-1.0)
    assert any("A takes 96x96 inputs, B 128x128" in note for note in result.notes)
    record = result.records[0]
    assert record["maps_compared"] and record["pearson"] > 0.5 and result.passed


# --- the Python API and usage errors ------------------------------------------------------------------------------
def test_python_api_with_arrays_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rgbs = [read_image(p) for p in IMAGES[:2]]
    result = onnxcam.compare(RESNET, FP16.with_name("shapes_mobilenet.onnx"), rgbs, method="gradcam++")
    assert [r["image"] for r in result.records] == ["array[0]", "array[1]"]
    assert result.method == "gradcam++" and result.out is None and result.report is None
    assert set(result.stats) == {"pearson", "spearman", "iou_top10", "iou_top20", "peak_distance"}
    assert list(tmp_path.iterdir()) == []
    # two different networks: agreement is measured, not assumed
    assert all(-1.0 <= r["pearson"] <= 1.0 for r in result.records)

    from onnxcam import compare

    fp16 = compare(FP16.with_name("shapes_mobilenet.onnx"), FP16, rgbs)
    assert fp16.passed and min(r["pearson"] for r in fp16.records) > 0.99


def test_import_onnxcam_does_not_load_the_compare_job() -> None:
    code = "import sys, onnxcam; assert 'onnxcam.jobs.compare' not in sys.modules; onnxcam.compare"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "nosuch"], "unknown method"),
    (["--threshold", "2"], "between -1 and 1"),
    (["--layer-b", "nosuch_tensor"], "nosuch_tensor"),
    (["--target", "hexagon"], "hexagon"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = _run(RESNET, QDQ, IMAGES[0], "--out", tmp_path / "o", *args)
    assert code == 2 and message in output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output


def test_the_report_escapes_file_names(tmp_path: Path) -> None:
    hostile = tmp_path / "in" / "<img src=x onerror=alert(1)>&.png"
    hostile.parent.mkdir()
    hostile.write_bytes(IMAGES[0].read_bytes())
    result = onnxcam.compare(RESNET, QDQ, [hostile.parent], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert result.passed and "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;&amp;.png" in page


def test_a_model_that_is_not_a_classifier_is_refused(tmp_path: Path) -> None:
    code, output = _run(RESNET, MODELS / "shapes_segmenter.onnx", IMAGES[0], "--out", tmp_path / "o")
    assert code == 2 and "segment model" in output and "classifiers" in output
