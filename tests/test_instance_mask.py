"""The instance mask as a target (onnxcam.targets.InstanceMaskTarget) on the committed Ultralytics YOLOv8n-seg export
(models/ultralytics/yolov8n-seg.onnx: output0 (1, 4 + 8 + 32, 336) detections with mask coefficients, output1
(1, 32, 32, 32) prototypes; random weights).

The target is the sum of the instance's mask logits (coefficients . prototypes, before the sigmoid, resized to the
input as Ultralytics' full-resolution masks) inside its box. It reads both outputs, so the explainer joins them
(onnxcam.graph.joined) and the seed has a piece for each:

- the weights of the box sum equal OpenCV's bilinear resize summed over the box (fractional boxes included);
- the value equals that scalar computed from a plain onnxruntime run of the model, and the seed is its gradient
  (directional differences at the output);
- the gradient at the image input, from the rewritten graph, matches float64 finite differences of the same scalar
  computed by a plain forward of the model (onnx's reference evaluator), for a detection whose box crosses the
  image's edge and one inside it;
- joining the outputs changes nothing for the class-score target; the mask target's maps differ from it;
- `onnxcam explain --detection-target mask` gives one map per instance, named by the metadata's names; models
  without prototypes are refused in one line;
- with Ultralytics installed (`/work/venvs/ultra/bin/python -m pytest tests/test_instance_mask.py`), the value
  equals the sum of Ultralytics' own full-resolution mask logits (ultralytics.utils.ops.scale_masks + crop_mask)
  inside the box, and an end-to-end YOLO26-seg exported afresh (selected rows, coefficients after the class) works.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import Erf64, Gelu64, to_float64
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.errors import InputError
from onnxcam.graph.joined import detections_and_prototypes, join_outputs
from onnxcam.graph.load import load_model
from onnxcam.jobs.explain import explain
from onnxcam.targets import (
    DetectionLayout,
    DetectionTarget,
    InstanceMaskTarget,
    TargetPlan,
    bilinear_matrix,
    box_weights,
    decode,
)

ROOT = Path(__file__).resolve().parent.parent
SEG = ROOT / "models" / "ultralytics" / "yolov8n-seg.onnx"
SHAPES = (ROOT / "models" / "shapes_labels.txt").read_text().split()
SIZE = 128
COEFFICIENTS = slice(12, 44)  # rows: 4 box values, 8 class scores, 32 mask coefficients
# stride-8 rows (random weights: boxes 120 px wide around the cell): row 100's box crosses the top-left edge
# (-24, -8, 96, 112), row 136's lies inside (8, 8, 128, 128)
ROWS = (100, 136)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


def _image(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, SIZE, SIZE), dtype=np.float32)


@pytest.fixture(scope="module")
def joined() -> onnxcam.Explainer:
    return onnxcam.Explainer(SEG, output=["output0", "output1"], providers=["CPUExecutionProvider"])


def _mask_sum(output0: np.ndarray, output1: np.ndarray, row: int, box: tuple[float, ...]) -> float:
    """The scalar from the model's own two outputs, written independently: the row's coefficients times the
    prototypes, resized to the input by OpenCV (bilinear), summed over the pixels i with x0 <= i < x1 (and y)."""
    logits = np.tensordot(output0[0, COEFFICIENTS, row].astype(np.float64), output1[0].astype(np.float64), axes=1)
    resized = cv2.resize(logits, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    rows, cols = np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]
    inside = (cols >= box[0]) & (cols < box[2]) & (rows >= box[1]) & (rows < box[3])
    return float(resized[inside].sum())


def test_box_weights_are_opencvs_resize_summed_over_the_box() -> None:
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((24, 40))
    for size, box in [((96, 160), (10.3, 20.7, 70.2, 90.9)), ((96, 160), (-30.0, -5.0, 200.0, 50.5)),
                      ((128, 128), (0.5, 64.0, 127.5, 100.49)), ((50, 70), (33.0, 1.2, 34.8, 40.0))]:
        rows, cols = box_weights(box, size, grid.shape)
        resized = cv2.resize(grid, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        ys, xs = np.arange(size[0])[:, None], np.arange(size[1])[None, :]
        inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
        assert rows @ grid @ cols == pytest.approx(resized[inside].sum(), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(bilinear_matrix(5, 5), np.eye(5))  # same size: the identity
    np.testing.assert_allclose(bilinear_matrix(4, 9).sum(axis=1), 1.0)  # a weighted mean per output pixel


def test_joined_output_and_its_layout(joined: onnxcam.Explainer) -> None:
    assert detections_and_prototypes(SEG) == ("output0", "output1")
    assert detections_and_prototypes(SEG.read_bytes()) == ("output0", "output1")
    with pytest.raises(InputError, match="two outputs"):
        detections_and_prototypes(ROOT / "models" / "ultralytics" / "yolov8n.onnx")
    model, name, parts = join_outputs(load_model(SEG), ["output0", "output1"])
    assert name == joined.output and parts == ((44, 336), (32, 32, 32))
    with pytest.raises(InputError, match="no output 'nope'"):
        join_outputs(model, ["output0", "nope"])
    assert joined.task == "detect" and len(joined.layer) == 3  # the detections' facts: task, three scales
    out = joined.outputs(_image())
    assert out.shape == (1, 44 * 336 + 32 ** 3)
    session = ort.InferenceSession(str(SEG), providers=["CPUExecutionProvider"])
    output0, output1 = session.run(None, {"images": _image()})
    np.testing.assert_array_equal(out[0], np.concatenate([output0.reshape(-1), output1.reshape(-1)]))
    layout = joined.detection_layout(out.shape[1:])
    assert layout.parts == ((44, 336), (32, 32, 32)) and layout.extras == "masks" and layout.input_size == (128, 128)
    np.testing.assert_array_equal(layout.rows(out[0]), output0[0].T)
    np.testing.assert_array_equal(layout.part(out[0], 1), output1[0])


def test_value_and_seed(joined: onnxcam.Explainer) -> None:
    """The value is the scalar computed from the plain outputs; the seed is its gradient at the joined output
    (the scalar is bilinear in coefficients and prototypes: central differences are exact up to rounding)."""
    x = _image()
    out = joined.outputs(x)[0]
    layout = joined.detection_layout(out.shape)
    session = ort.InferenceSession(str(SEG), providers=["CPUExecutionProvider"])
    output0, output1 = session.run(None, {"images": x})
    rng = np.random.default_rng(3)
    for row in ROWS:
        target = InstanceMaskTarget(row, layout=layout).bind(out)
        assert target.box == tuple(decode(out, layout).boxes[row])
        assert target.category == int(np.argmax(output0[0, 4:12, row]))
        assert target(out) == pytest.approx(_mask_sum(output0, output1, row, target.box), rel=1e-6)
        seed = target.seed(out)
        assert seed.shape == out.shape
        assert not seed[:44 * 336].reshape(44, 336)[:12].any()  # nothing at the box and class columns
        assert seed[:44 * 336].reshape(44, 336)[12:, row].any() and seed[44 * 336:].any()
        for _ in range(3):
            v = rng.standard_normal(out.shape)
            eps = 1e-3
            numeric = (target(out + eps * v) - target(out - eps * v)) / (2 * eps)
            assert float(seed.astype(np.float64) @ v) == pytest.approx(numeric, rel=1e-5)


def test_input_gradient_matches_finite_differences_of_the_model(joined: onnxcam.Explainer) -> None:
    """d(mask logits summed in the box) / d image from one run of the rewritten graph (seeded at both outputs
    through the joined one) against float64 central differences of the scalar from a plain forward of the model."""
    x = _image()
    out = joined.outputs(x)[0]
    layout = joined.detection_layout(out.shape)
    reference = ReferenceEvaluator(to_float64(load_model(SEG)), new_ops=[Erf64, Gelu64])
    rng = np.random.default_rng(4)
    for row in ROWS:
        target = InstanceMaskTarget(row, layout=layout).bind(out)
        assert target.box is not None
        result = onnxcam.gradients(joined.model, x, layers=list(joined.layer), targets=target.seed(out)[None],
                                   input_gradient=True, output=joined.output, providers=["CPUExecutionProvider"])
        grad = result.input_gradient.astype(np.float64)
        assert np.abs(grad).max() > 0

        def scalar(image: np.ndarray) -> float:
            output0, output1 = reference.run(["output0", "output1"], {"images": image})  # noqa: B023
            return _mask_sum(output0, output1, row, target.box)  # noqa: B023

        for _ in range(2):
            v = rng.standard_normal(x.shape)
            eps = 1e-6
            numeric = (scalar(x + eps * v) - scalar(x - eps * v)) / (2 * eps)
            analytic = float(np.sum(grad * v))
            assert abs(numeric - analytic) <= 1e-3 * np.linalg.norm(grad) + 1e-9, (row, numeric, analytic)


def test_joining_keeps_the_class_score_target_and_the_mask_target_differs(joined: onnxcam.Explainer) -> None:
    x = _image()
    plain = onnxcam.Explainer(SEG, providers=["CPUExecutionProvider"])
    out, joined_out = plain.outputs(x)[0], joined.outputs(x)[0]
    for row in ROWS:
        score_plain = DetectionTarget(row, layout=plain.detection_layout(out.shape)).bind(out)
        layout = joined.detection_layout(joined_out.shape)
        score_joined = DetectionTarget(row, layout=layout).bind(joined_out)
        assert score_plain.box == score_joined.box and score_plain(out) == score_joined(joined_out)
        mask = InstanceMaskTarget(row, layout=layout).bind(joined_out)
        for method in ("layercam", "hirescam"):
            same = plain.explain(x, method, [score_plain])
            np.testing.assert_allclose(joined.explain(x, method, [score_joined]), same, atol=1e-5)
            by_mask = joined.explain(x, method, [mask])
            assert by_mask.max() > 0 and np.abs(by_mask - same).max() > 0.05


def test_mask_target_needs_both_parts() -> None:
    out = np.zeros((44, 336), np.float32)
    layout = DetectionLayout(True, objectness=False, classes=8, extras="masks", input_size=(128, 128))
    with pytest.raises(InputError, match="output=\\[detections, prototypes\\]"):
        InstanceMaskTarget(0, layout=layout).bind(out)
    with pytest.raises(InputError, match="detection models"):
        TargetPlan("segment", detection_target="mask")
    with pytest.raises(InputError, match="unknown detection target"):
        TargetPlan("detect", detection_target="outline")


def test_explain_job_maps_each_instance(tmp_path: Path) -> None:
    """Every instance gets its own map, captioned with the metadata's names; the run manifest records the joined
    outputs and the target kind; the maps differ from the class-score run's."""
    images = ROOT / "examples" / "images"
    inputs = [images / "08_ring_triangle.png", images / "03_ring.png"]
    runs = {}
    for kind in ("mask", "score"):
        out = tmp_path / kind
        summary = explain(SEG, inputs, out, methods=["layercam"], threshold=0.0, max_detections=3, device="cpu",
                          detection_target=kind)
        assert summary.failed == 0 and summary.done == 2
        runs[kind] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["targets"].get("detection_target") == (None if kind == "score" else "mask")
        assert manifest["explainer"]["output"] == (["output0", "output1"] if kind == "mask" else None)
    masks, scores = runs["mask"], runs["score"]
    assert len(masks) == len(scores) == 6
    for mask, score in zip(masks, scores):
        assert mask["target_kind"].startswith("mask of detection") and mask["label"] in SHAPES
        assert mask["label"] == SHAPES[mask["target"]] and mask["box"] == score["box"]
        assert mask["paths"]["map"].endswith(".npy") and ".d" in mask["paths"]["map"]
        mask_map = np.load(tmp_path / "mask" / mask["paths"]["map"])
        score_map = np.load(tmp_path / "score" / score["paths"]["map"])
        assert mask_map.max() > 0 and np.abs(mask_map - score_map).max() > 0.05


def test_cli_detection_target_mask(tmp_path: Path) -> None:
    image = ROOT / "examples" / "images" / "03_ring.png"
    result = runner.invoke(cli.app, ["explain", str(SEG), str(image), "--detection-target", "mask", "-m", "eigencam",
                                     "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert record["target_kind"].startswith("mask of detection") and record["label"] in SHAPES
    detector = ROOT / "models" / "ultralytics" / "yolov8n.onnx"
    result = runner.invoke(cli.app, ["explain", str(detector), str(image), "--detection-target", "mask",
                                     "-o", str(tmp_path / "out2")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "two outputs" in said and "'output0' (1, 12, 336)" in said and "Traceback" not in said


def test_value_matches_ultralytics_mask_logits(joined: onnxcam.Explainer) -> None:
    """Ultralytics' own full-resolution masks (the retina path: scale_masks, then crop_mask), kept as logits:
    summed over the box they are the target's value. Run in the export venv:
    `/work/venvs/ultra/bin/python -m pytest tests/test_instance_mask.py -k ultralytics`."""
    pytest.importorskip("ultralytics")
    import torch
    from ultralytics.utils import ops

    x = _image(6)
    out = joined.outputs(x)[0]
    layout = joined.detection_layout(out.shape)
    session = ort.InferenceSession(str(SEG), providers=["CPUExecutionProvider"])
    output0, output1 = session.run(None, {"images": x})
    for row in (*ROWS, 300):
        target = InstanceMaskTarget(row, layout=layout).bind(out)
        assert target.box is not None
        logits = torch.from_numpy(output0[0, COEFFICIENTS, row][None]) @ torch.from_numpy(output1[0]).view(32, -1)
        full = ops.scale_masks(logits.view(1, 1, 32, 32), (SIZE, SIZE))[0]
        cropped = ops.crop_mask(full, torch.tensor([target.box], dtype=torch.float32))
        assert target(out) == pytest.approx(float(cropped.sum()), rel=1e-4)
    assert onnx.load(str(SEG), load_external_data=False).metadata_props  # the export's metadata is there


def test_end_to_end_segmenter_ultralytics(tmp_path: Path) -> None:
    """YOLO26-seg exported afresh (Ultralytics installed): an end-to-end head whose 300 selected rows are x0, y0,
    x1, y1, score, class, then the 32 coefficients. The mask target reads the coefficients after the class, its
    value is the box sum from the plain outputs, and a job maps each instance."""
    pytest.importorskip("ultralytics")
    import importlib.util

    spec = importlib.util.spec_from_file_location("ultralytics_export", ROOT / "models" / "ultralytics" / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.forbid_network()
    path = module.export("segment", tmp_path, out=tmp_path, family="26", source="yolo26-seg.yaml", target="seg26.onnx")
    assert not module._attempts
    ex = onnxcam.Explainer(path, output=list(detections_and_prototypes(path)), providers=["CPUExecutionProvider"])
    x = _image(2)
    out = ex.outputs(x)[0]
    layout = ex.detection_layout(out.shape)
    assert layout.post_nms and layout.parts == ((300, 38), (32, 32, 32))
    assert layout.extra_columns(38) == slice(6, 38)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output0, output1 = session.run(None, {"images": x})
    target = InstanceMaskTarget(0, layout=layout).bind(out)
    assert target.box is not None and target.category == int(output0[0, 0, 5])
    logits = np.tensordot(output0[0, 0, 6:].astype(np.float64), output1[0].astype(np.float64), axes=1)
    resized = cv2.resize(logits, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.arange(SIZE)[:, None], np.arange(SIZE)[None, :]
    box = target.box
    inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
    assert target(out) == pytest.approx(float(resized[inside].sum()), rel=1e-6)
    summary = explain(path, [ROOT / "examples" / "images" / "03_ring.png"], tmp_path / "out", methods=["layercam"],
                      detection_target="mask", threshold=0.0, max_detections=2, device="cpu")
    assert summary.failed == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["target_kind"].startswith("mask of detection") for r in records)
