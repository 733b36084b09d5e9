"""RT-DETR as Ultralytics exports it (models/ultralytics/rtdetr.onnx: rtdetr-l.yaml narrowed, random weights, made by
models/ultralytics/export.py): 300 selected queries (cx, cy, w, h as fractions of the input, score, class).

- The layout knows the boxes are normalised (the metadata's head, or the RT-DETR shape family) and `decode` gives
  them in input pixels; a layout that does not know the input size, or whose "normalised" boxes are not fractions,
  is refused in one line.
- Ultralytics' RT-DETR predictor stretches images to imgsz (no letterbox); onnxcam's preprocessing does the same.
- The box an explain run records for the best query is the query's box in the image's pixels; with Ultralytics
  installed (`/work/venvs/ultra/bin/python -m pytest tests/test_rtdetr.py`) it equals what Ultralytics' own
  predictor decodes from the same file, within a pixel, and so does the preprocessed input.

Gradient methods stop at RT-DETR's GridSample (no rule yet), so the runs use gradient-free methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam.errors import InputError
from onnxcam.images import model_metadata, preprocess, read_image, resolve_preprocessing
from onnxcam.jobs.explain import explain
from onnxcam.targets import (
    DetectionLayout,
    decode,
    detection_layout,
    detection_targets,
    ultralytics_info,
    ultralytics_layout,
)

ROOT = Path(__file__).resolve().parent.parent
RTDETR = ROOT / "models" / "ultralytics" / "rtdetr.onnx"
SIZE = 160  # the export's imgsz


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A portrait, not square (so stretching and letterboxing differ), as PNG (one decoder for everyone)."""
    bgr = cv2.imread(str(ROOT / "examples" / "photos" / "grace_hopper.jpg"))
    path = tmp_path_factory.mktemp("rtdetr") / "hopper.png"
    cv2.imwrite(str(path), bgr[40:500, 20:400])  # 380 wide, 460 high
    return path


def _meta() -> dict[str, str]:
    return model_metadata(onnx.load(str(RTDETR), load_external_data=False))


def _names(count: int) -> str:
    return "{" + ", ".join(f"{i}: 'c{i}'" for i in range(count)) + "}"


def test_the_export_is_rtdetr_with_normalised_selected_queries() -> None:
    meta = _meta()
    info = ultralytics_info(meta)
    assert info is not None and info.detr and not info.end2end and meta["head"] == "RTDETRDecoder"
    layout = detection_layout((300, 6), meta)
    assert layout == DetectionLayout(False, objectness=False, box="cxcywh", post_nms=True, classes=8,
                                     normalised=True)
    ex = onnxcam.Explainer(RTDETR, providers=["CPUExecutionProvider"])
    assert ex.task == "detect"
    assert ex.detection_layout((300, 6)).input_size == (SIZE, SIZE)  # the static input's size by default
    assert ex.detection_layout((300, 6), (320, 224)).input_size == (320, 224)


def test_boxes_are_scaled_to_the_input_pixels() -> None:
    """decode: cx, cy, w, h fractions -> corners in input pixels (x and w by the width, y and h by the height)."""
    out = onnxcam.Explainer(RTDETR, providers=["CPUExecutionProvider"]).outputs(
        np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32))[0]
    assert out.shape == (300, 6)
    assert 0 <= out[:, :4].min() and out[:, :4].max() <= 1  # sigmoid boxes
    layout = detection_layout(out.shape, _meta(), input_size=(SIZE, 2 * SIZE))  # W = 2 H: the axes must not swap
    found = decode(out, layout)
    cx, cy, w, h = (out[:, k].astype(np.float64) for k in range(4))
    expected = np.stack([(cx - w / 2) * 2 * SIZE, (cy - h / 2) * SIZE, (cx + w / 2) * 2 * SIZE, (cy + h / 2) * SIZE],
                        axis=1)
    np.testing.assert_allclose(found.boxes, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(found.scores, out[:, 4])
    np.testing.assert_array_equal(found.classes, out[:, 5].astype(np.int64))
    best = detection_targets(out, layout)[0]
    assert best.index == int(np.argmax(out[:, 4])) and best.box == tuple(expected[best.index])


def test_normalised_boxes_need_the_input_size_and_must_be_fractions() -> None:
    out = np.zeros((3, 6), np.float32)
    out[:, :4] = [0.5, 0.5, 0.2, 0.4]
    layout = DetectionLayout(False, objectness=False, box="cxcywh", post_nms=True, normalised=True)
    with pytest.raises(InputError, match="fractions of the input size"):
        decode(out, layout)
    np.testing.assert_allclose(decode(out, layout.at_input((100, 50))).boxes[0], [20, 30, 30, 70])
    out[1, :4] = [80, 60, 30, 20]  # pixels, although the metadata says fractions
    with pytest.raises(InputError, match="from 0.2 to 80"):
        decode(out, layout.at_input((100, 50)))


def test_onnxcam_metadata_can_say_boxes_are_normalised() -> None:
    """Any detector: onnxcam's own "detection" metadata entry (JSON) says so; selected rows default to corners."""
    meta = {"detection": json.dumps({"layout": "boxes_first", "objectness": False, "normalised": True})}
    layout = detection_layout((50, 4 + 3), meta, input_size=(64, 32))
    assert layout.normalised and not layout.post_nms and layout.box == "cxcywh"
    rows = np.zeros((50, 7), np.float32)
    rows[0] = [0.5, 0.25, 0.5, 0.5, 0.1, 0.9, 0.0]
    found = decode(rows, layout)
    np.testing.assert_allclose(found.boxes[0], [8, 0, 24, 32])
    selected = detection_layout((10, 6), {"detection": json.dumps({"post_nms": True})})
    assert selected.box == "xyxy" and not selected.normalised


def test_rtdetr_is_known_without_its_head_metadata() -> None:
    """Exports from before Ultralytics wrote "head": the description's model name, else the shape family
    (selected rows of 6 while the metadata says end2end False); YOLO's own layouts are unchanged."""
    base = {"task": "detect", "names": _names(80), "stride": "32", "author": "Ultralytics", "imgsz": "[640, 640]",
            "end2end": "False"}
    named = ultralytics_info({**base, "description": "Ultralytics rtdetr-x model trained on coco.yaml"})
    assert named is not None and named.detr
    # earlier exports give every query's class scores: (300, 4 + classes), boxes first, still fractions
    raw = ultralytics_layout(named, (300, 84))
    assert raw.normalised and not raw.post_nms and not raw.attributes_first and raw.classes == 80
    unnamed = ultralytics_info({**base, "description": "Ultralytics YOLOv8n model"})
    assert unnamed is not None and not unnamed.detr
    assert ultralytics_layout(unnamed, (300, 6)).normalised  # the RT-DETR shape family
    yolo = ultralytics_layout(unnamed, (84, 8400))
    assert not yolo.normalised and yolo.attributes_first
    end2end = ultralytics_info({**base, "end2end": "True", "description": "Ultralytics YOLO26n model"})
    assert end2end is not None
    e2e = ultralytics_layout(end2end, (300, 6))
    assert e2e.post_nms and e2e.box == "xyxy" and not e2e.normalised
    with pytest.raises(InputError, match="RT-DETR output"):
        ultralytics_layout(named, (300, 50))


def test_preprocessing_stretches_like_its_predictor() -> None:
    model = onnx.load(str(RTDETR), load_external_data=False)
    spec = resolve_preprocessing(model, "images", "NCHW")
    assert spec.resize == "stretch" and spec.size == (SIZE, SIZE) and spec.interpolation == "bilinear"
    assert spec.scale == pytest.approx(1 / 255) and not spec.bgr


def _run(photo: Path, out: Path) -> tuple[list[dict], np.ndarray]:
    summary = explain(RTDETR, [photo], out, methods=["eigencam", "scorecam"], device="cpu")
    assert summary.failed == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    spec = resolve_preprocessing(onnx.load(str(RTDETR), load_external_data=False), "images", "NCHW")
    x = preprocess(read_image(photo), spec)
    return records, x


def test_recorded_box_is_the_best_query_in_image_pixels(photo: Path, tmp_path: Path) -> None:
    records, x = _run(photo, tmp_path / "out")
    out = onnxcam.Explainer(RTDETR, providers=["CPUExecutionProvider"]).outputs(x)[0]
    best = int(np.argmax(out[:, 4]))
    cx, cy, w, h = out[best, :4].astype(np.float64)
    width, height = 380, 460  # stretched: a fraction of the input is the same fraction of the image
    expected = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    expected = [min(max(v, 0.0), float(limit)) for v, limit in zip(expected, (width, height) * 2)]
    assert [r["method"] for r in records] == ["eigencam", "scorecam"]
    for record in records:
        np.testing.assert_allclose(record["box"], expected, atol=0.051)  # recorded to 0.1 px
        assert record["target"] == int(out[best, 5]) and record["target_score"] == pytest.approx(out[best, 4])
        assert np.load(tmp_path / "out" / record["paths"]["map"]).shape == (height, width)
    assert np.load(tmp_path / "out" / records[0]["paths"]["map"]).max() > 0


def test_recorded_box_matches_ultralytics_predictor(photo: Path, tmp_path: Path) -> None:
    """Ultralytics' RT-DETR predictor on the same PNG: the same input tensor, and the box of its best detection
    equals the one onnxcam records, within a pixel."""
    pytest.importorskip("ultralytics")
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import RTDETR as UltralyticsRTDETR

    model = UltralyticsRTDETR(str(RTDETR))
    results = model.predict(str(photo), imgsz=SIZE, conf=0.0, device="cpu", verbose=False)
    theirs = results[0].boxes
    best = int(theirs.conf.argmax())
    their_box = theirs.xyxy[best].numpy().astype(np.float64)
    records, x = _run(photo, tmp_path / "out")
    predictor_input = model.predictor.preprocess([cv2.imread(str(photo))]).numpy()
    np.testing.assert_allclose(x, predictor_input, atol=1e-6)
    assert records[0]["target"] == int(theirs.cls[best])
    assert records[0]["target_score"] == pytest.approx(float(theirs.conf[best]), abs=1e-5)
    np.testing.assert_allclose(records[0]["box"], np.clip(their_box, 0, [380, 460, 380, 460]), atol=1.0)
