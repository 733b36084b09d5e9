"""Multi-scale detectors and Ultralytics exports (models/ultralytics: YOLOv8n detect, segment, classify, pose, obb
made with Ultralytics' own exporter from its yaml, random weights; see models/ultralytics/export.py).

- onnxcam.graph.scales finds the three scales of YOLOv8's head, their feature maps and the rows each one owns; the
  row ranges are checked by the gradients themselves (a row of one scale has zero gradient at coarser scales).
- For a detection from each scale, the gradient of its target at every per-scale feature map matches float64
  finite differences, and Grad-CAM with the per-scale maps as layers gives a non-zero map through the public API.
- onnxcam.targets reads Ultralytics' metadata (task, names, imgsz, stride, kpt_shape): instance segmentation,
  pose and OBB rows are split into box, class scores and extras with the metadata's class count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from layer_gradcheck import layer_gradients

import onnxcam
from onnxcam.errors import InputError
from onnxcam.graph.load import load_model
from onnxcam.graph.scales import Scale, describe_scales, detection_scales, scale_of_row
from onnxcam.images import model_metadata
from onnxcam.methods.postprocess import normalise
from onnxcam.targets import (
    DetectionLayout,
    DetectionTarget,
    decode,
    detection_layout,
    detection_targets,
    guess_task,
    instance_mask,
    ultralytics_info,
    ultralytics_layout,
)

ROOT = Path(__file__).resolve().parent.parent
ULTRALYTICS = ROOT / "models" / "ultralytics"
DETECTORS = {"detect": "yolov8n.onnx", "segment": "yolov8n-seg.onnx", "pose": "yolov8n-pose.onnx",
             "obb": "yolov8n-obb.onnx"}
SHAPES = (ROOT / "models" / "shapes_labels.txt").read_text().split()


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path_factory.getbasetemp() / "onnxcam-cache"))


def _image(seed: int = 0) -> np.ndarray:
    """A preprocessed input as Ultralytics takes it: RGB in [0, 1], NCHW, 128 x 128, static batch 1."""
    return np.random.default_rng(seed).random((1, 3, 128, 128), dtype=np.float32)


def _scales(path: Path) -> list[Scale]:
    model = load_model(path)
    return detection_scales(model, model.graph.output[0].name)


# --- scales ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(DETECTORS))
def test_three_scales_of_yolov8_heads(task: str) -> None:
    scales = _scales(ULTRALYTICS / DETECTORS[task])
    assert [s.stride for s in scales] == [(8, 8), (16, 16), (32, 32)]
    assert [s.grid for s in scales] == [(16, 16), (8, 8), (4, 4)]
    assert [(s.start, s.stop) for s in scales] == [(0, 256), (256, 320), (320, 336)]
    assert all(s.anchors == 1 and s.layout == "NCHW" for s in scales)
    # the neck's outputs (Ultralytics' modules 15, 18, 21: the C2f blocks that Detect reads), not tensors inside
    # the head, whatever head (box, class, mask, keypoint or angle branches) the concat belongs to
    assert [s.feature for s in scales] == [f"/model.{m}/cv2/act/Mul_output_0" for m in (15, 18, 21)]
    assert scale_of_row(scales, 255) is scales[0] and scale_of_row(scales, 256) is scales[1]
    assert scale_of_row(scales, 336) is None
    assert scales[2].cell(320 + 5) == (0, 1, 1)
    lines = describe_scales(scales)
    assert lines[0].startswith("stride 8: grid 16x16, rows 0-255 (256), feature /model.15/")
    assert "rows 320-335 (16)" in lines[2]


def test_no_scales_without_a_multi_scale_head() -> None:
    classifier = load_model(ULTRALYTICS / "yolov8n-cls.onnx")
    assert detection_scales(classifier, classifier.graph.output[0].name) == []
    single = load_model(ROOT / "models" / "shapes_detector.onnx")  # one feature map, one grid of cells
    assert detection_scales(single, single.graph.output[0].name) == []


def _best_rows(path: Path, x: np.ndarray) -> tuple[onnxcam.Explainer, np.ndarray, DetectionLayout, list[int]]:
    """The explainer, one image's output, its layout and the best row of each scale."""
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    out = ex.outputs(x)[0]
    layout = ex.detection_layout(out.shape)
    scores = decode(out, layout).scores
    return ex, out, layout, [s.start + int(np.argmax(scores[s.start:s.stop])) for s in _scales(path)]


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_target_gradients_at_every_scale_match_finite_differences(task: str) -> None:
    """For the best detection of each scale: the gradient of its target (class score) at each per-scale feature
    map matches float64 finite differences; it is non-zero at its own scale and exactly zero at coarser ones
    (which it does not depend on), so the rows really belong to the scales found."""
    path = ULTRALYTICS / DETECTORS[task]
    x = _image(1)
    ex, out, layout, rows = _best_rows(path, x)
    scales = _scales(path)
    features = [s.feature for s in scales]
    for i, row in enumerate(rows):
        target = DetectionTarget(row, layout=layout).bind(out)
        assert target.category is not None and 0 <= target.category < len(SHAPES)
        seed = target.seed(out)[None]
        coarser = features[i + 1:]
        grads = layer_gradients(path, x, features, seed=seed, zero_allowed=coarser, directions=2)
        assert np.abs(grads[features[i]]).max() > 0
        assert all(not grads[f].any() for f in coarser), f"a stride-{scales[i].stride[0]} row depends on a coarser map"


def _per_scale_gradcam(path: Path, x: np.ndarray, target: DetectionTarget, out: np.ndarray,
                       scales: list[Scale]) -> np.ndarray:
    """The combination proposed for multi-scale layers, in NumPy: each scale's Grad-CAM map (sum_k mean(dS/dA_k)
    A_k) ReLU'd, min-max normalised and resized to the input on its own, then the pixelwise mean, normalised
    again (pytorch-grad-cam's rule for several target layers). A scale the detection does not depend on gives a
    zero map, which the final normalisation cancels."""
    res = onnxcam.gradients(path, x, layers=[s.feature for s in scales], targets=target.seed(out)[None])
    maps = []
    for s in scales:
        a, g = res.activations[s.feature], res.gradients[s.feature]
        maps.append(normalise(np.einsum("nk,nkhw->nhw", g.mean(axis=(2, 3)), a), x.shape[2:]))
    return normalise(np.mean(maps, axis=0), x.shape[2:])


@pytest.mark.parametrize("task", sorted(DETECTORS))
def test_gradcam_at_the_per_scale_layers_is_non_zero_for_every_scale(task: str) -> None:
    """Through the public API, layer=[the per-scale maps]: a non-zero map for the best detection of every scale,
    equal to the proposed combination computed in NumPy; for a stride-8 detection it is its own scale's map."""
    path = ULTRALYTICS / DETECTORS[task]
    x = _image(2)
    ex, out, layout, rows = _best_rows(path, x)
    scales = _scales(path)
    per_scale = onnxcam.Explainer(path, layer=[s.feature for s in scales], providers=["CPUExecutionProvider"])
    for i, row in enumerate(rows):
        target = DetectionTarget(row, layout=layout).bind(out)
        maps = per_scale.explain(x, "gradcam", targets=[target])
        assert maps.shape == (1, 128, 128) and maps.max() > 0, f"{task}: zero map for a stride-{scales[i].stride}"
        np.testing.assert_allclose(maps, _per_scale_gradcam(path, x, target, out, scales), atol=1e-5)
        if i == 0:  # no gradient at the coarser maps: the combination is the stride-8 map (stretched to [0, 1]
            # again: resizing after the min-max leaves its peak a little under 1)
            alone = per_scale.explain(x, "gradcam", targets=[target], layer=scales[0].feature)
            np.testing.assert_allclose(maps, normalise(alone, x.shape[2:]), atol=1e-5)


def test_single_layer_default_misses_finer_scales() -> None:
    """Why per-scale layers: at the stride-32 map alone a stride-8 detection has no gradient at all."""
    path = ULTRALYTICS / "yolov8n.onnx"
    x = _image(3)
    ex, out, layout, rows = _best_rows(path, x)
    coarse = _scales(path)[2].feature
    target = DetectionTarget(rows[0], layout=layout).bind(out)
    res = onnxcam.gradients(path, x, layers=[coarse], targets=target.seed(out)[None])
    assert not res.gradients[coarse].any()


# --- Ultralytics metadata and layouts -------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["detect", "segment", "classify", "pose", "obb"])
def test_ultralytics_metadata(task: str) -> None:
    name = {"classify": "yolov8n-cls.onnx", **DETECTORS}[task]
    meta = model_metadata(onnx.load(str(ULTRALYTICS / name), load_external_data=False))
    info = ultralytics_info(meta)
    assert info is not None and info.task == task
    assert info.names == (("person",) if task == "pose" else tuple(SHAPES))
    assert info.imgsz == (128, 128) and not info.end2end
    assert info.stride == (1 if task == "classify" else 32)
    assert info.kpt_shape == ((17, 3) if task == "pose" else None)
    output_rank = 2 if task == "classify" else 3
    assert guess_task([1] * output_rank, meta) == ("classify" if task == "classify" else "detect")


def test_other_metadata_is_not_ultralytics() -> None:
    assert ultralytics_info({"task": "detect"}) is None
    assert ultralytics_info({"task": "segmentation", "names": "{0: 'a'}", "stride": "8"}) is None
    assert guess_task([1, 9, 96, 96], {"task": "segment"}) == "segment"  # semantic segmentation stays so


@pytest.mark.parametrize(("task", "extras", "width"), [("detect", "", 12), ("segment", "masks", 44),
                                                      ("pose", "keypoints", 56), ("obb", "angle", 13)])
def test_ultralytics_layouts(task: str, extras: str, width: int) -> None:
    path = ULTRALYTICS / DETECTORS[task]
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    assert ex.task == "detect"
    out = ex.outputs(_image(4))[0]
    assert out.shape == (width, 336)
    layout = ex.detection_layout(out.shape)
    classes = 1 if task == "pose" else len(SHAPES)
    assert (layout.attributes_first, layout.objectness, layout.classes, layout.extras) == (True, False, classes,
                                                                                          extras)
    assert layout.class_columns(width) == slice(4, 4 + classes)
    assert layout.extra_columns(width) == slice(4 + classes, width)
    found = decode(out, layout)
    assert found.classes.max() < classes  # mask coefficients, keypoints, angles are never classes
    rows = layout.rows(out)
    np.testing.assert_allclose(found.scores, rows[:, 4:4 + classes].max(axis=1), rtol=1e-6)
    targets = detection_targets(out, layout, threshold=float(np.sort(found.scores)[-5]))
    assert targets and all(t.category is not None and t.category < classes for t in targets)


def test_metadata_that_does_not_fit_the_output_is_an_error() -> None:
    meta = model_metadata(onnx.load(str(ULTRALYTICS / "yolov8n-pose.onnx")))
    info = ultralytics_info(meta)
    assert info is not None
    with pytest.raises(InputError, match=r"task pose, 1 names.*\(55, 336\)"):
        ultralytics_layout(info, (55, 336))
    with pytest.raises(InputError, match="task detect, 8 names"):
        detection_layout((14, 336), {**model_metadata(onnx.load(str(ULTRALYTICS / "yolov8n.onnx")))})


def test_end2end_rows_are_final_detections() -> None:
    """YOLOv10/YOLO26 heads (end2end in the metadata) give (boxes, x0 y0 x1 y1 score class [+ extras])."""
    meta = {**model_metadata(onnx.load(str(ULTRALYTICS / "yolov8n-seg.onnx"))), "end2end": "True"}
    layout = detection_layout((300, 38), meta)
    assert layout.post_nms and layout.extras == "masks"
    rows = np.zeros((300, 38), np.float32)
    rows[7, :6] = [10, 20, 50, 60, 0.9, 3]
    found = decode(rows, layout)
    assert found.classes[7] == 3 and found.scores[7] == pytest.approx(0.9)


def test_oriented_boxes_decode_to_their_axis_aligned_bounds() -> None:
    layout = DetectionLayout(True, objectness=False, classes=2, extras="angle")
    out = np.zeros((4 + 2 + 1, 2), np.float32)
    out[:4, 0], out[4:6, 0], out[6, 0] = [50, 40, 20, 10], [0.2, 0.7], math.pi / 2  # turned a quarter: 10 x 20
    out[:4, 1], out[4:6, 1], out[6, 1] = [50, 40, 20, 10], [0.9, 0.1], 0.0
    found = decode(out, layout)
    np.testing.assert_allclose(found.boxes[0], [45, 30, 55, 50], atol=1e-5)
    np.testing.assert_allclose(found.boxes[1], [40, 35, 60, 45], atol=1e-5)
    assert list(found.classes) == [1, 0]


def test_instance_masks_from_prototypes() -> None:
    """The two outputs of YOLOv8-seg: a detection's 32 coefficients combine the 32 prototypes into its mask."""
    path = ULTRALYTICS / "yolov8n-seg.onnx"
    model = load_model(path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out, prototypes = session.run(None, {"images": _image(5)})
    assert prototypes.shape == (1, 32, 32, 32)
    layout = detection_layout(out.shape[1:], model_metadata(model))
    best = detection_targets(out[0], layout)[0]
    rows = layout.rows(out[0])
    coefficients = rows[best.index, layout.extra_columns(rows.shape[1])]
    assert coefficients.shape == (32,)
    assert best.box is not None
    mask = instance_mask(coefficients, prototypes[0], best.box, (128, 128))
    assert mask.shape == (128, 128) and mask.dtype == bool
    x0, y0, x1, y1 = best.box
    rows_in, cols_in = np.nonzero(mask)
    assert (cols_in >= x0).all() and (cols_in < x1).all()
    assert (rows_in >= y0).all() and (rows_in < y1).all()
    logits = np.tensordot(coefficients, prototypes[0], axes=1)  # at the prototypes' 32 x 32: 4 input pixels each
    whole = instance_mask(coefficients, prototypes[0], (0, 0, 128, 128), (128, 128))
    assert abs(whole.mean() - (logits > 0).mean()) < 0.05
    with pytest.raises(InputError, match="coefficients"):
        instance_mask(coefficients[:5], prototypes[0], best.box, (128, 128))


# --- dynamic sizes ----------------------------------------------------------------------------------------------------
def test_scales_of_a_model_with_dynamic_sizes_at_a_given_input_size() -> None:
    """Exports with dynamic sizes (dynamic=True) have no static row count: the scales are found on the same graph
    at the input size the caller runs it at."""
    model = onnx.load(str(ULTRALYTICS / "yolov8n.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        dims[axis].Clear()
        dims[axis].dim_param = name
    del model.graph.value_info[:]
    model.graph.output[0].type.tensor_type.ClearField("shape")
    loaded = load_model(model)
    assert detection_scales(loaded, "output0") == []
    scales = detection_scales(loaded, "output0", input_hw=(128, 128))
    assert [(s.start, s.stop, s.stride) for s in scales] == [(0, 256, (8, 8)), (256, 320, (16, 16)),
                                                             (320, 336, (32, 32))]


def _nudenet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained YOLOv8n detector inside the `nudenet` wheel (dynamic batch and size, 320 x 320 by its metadata):
    from ONNXCAM_NUDENET (the .onnx or the wheel), or downloaded with pip when ONNXCAM_NETWORK_TESTS=1."""
    import os
    import subprocess
    import sys
    import zipfile

    given = os.environ.get("ONNXCAM_NUDENET")
    if given:
        source = Path(given)
    elif os.environ.get("ONNXCAM_NETWORK_TESTS") == "1":
        folder = tmp_path_factory.mktemp("nudenet")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "nudenet", "--no-deps", "-d", str(folder)],
                              capture_output=True, timeout=300)
        wheels = sorted(folder.glob("nudenet-*.whl"))
        if done.returncode or not wheels:
            pytest.skip("could not download the nudenet wheel")
        source = wheels[0]
    else:
        pytest.skip("set ONNXCAM_NUDENET=/path/to/320n.onnx (or the wheel), or ONNXCAM_NETWORK_TESTS=1")
    if source.suffix == ".whl":
        target = tmp_path_factory.mktemp("nudenet_model") / "320n.onnx"
        with zipfile.ZipFile(source) as wheel:
            target.write_bytes(wheel.read("nudenet/320n.onnx"))
        source = target
    return source


def test_nudenet_detector(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 19's model: at 320 x 320 rows 0-1599 come from stride 8, 1600-1999 from 16, 2000-2099 from 32; the
    best detection of each scale on the example images gets a non-zero Grad-CAM map at the per-scale layers, and a
    stride-8 one has no gradient at all at the old default (inside the stride-32 class head)."""
    path = _nudenet_model(tmp_path_factory)
    model = load_model(path)
    meta = model_metadata(model)
    info = ultralytics_info(meta)
    assert info is not None and info.imgsz == (320, 320) and len(info.names) == 18
    scales = detection_scales(model, "output0", input_hw=(320, 320))
    assert [(s.start, s.stop, s.stride) for s in scales] == [(0, 1600, (8, 8)), (1600, 2000, (16, 16)),
                                                             (2000, 2100, (32, 32))]
    features = [s.feature for s in scales]
    ex = onnxcam.Explainer(path, layer=features, providers=["CPUExecutionProvider"])
    images = sorted((ROOT / "examples" / "images").glob("*.png"))[:3]
    for image in images:
        rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
        x = (cv2.resize(rgb, (320, 320)).astype(np.float32) / 255).transpose(2, 0, 1)[None].copy()
        out = ex.outputs(x)[0]
        layout = ex.detection_layout(out.shape)
        assert layout.classes == 18
        scores = decode(out, layout).scores
        for s in scales:
            row = s.start + int(np.argmax(scores[s.start:s.stop]))
            target = DetectionTarget(row, layout=layout).bind(out)
            maps = ex.explain(x, "gradcam", targets=[target])
            assert maps.max() > 0, f"{image.name}: zero map for the best stride-{s.stride[0]} detection"
        fine = DetectionTarget(int(np.argmax(scores[:1600])), layout=layout).bind(out)
        old_default = "/model.22/cv3.2/cv3.2.1/act/Mul_output_0"
        res = onnxcam.gradients(path, x, layers=[old_default], targets=fine.seed(out)[None])
        assert not res.gradients[old_default].any()


# --- an anchor-based head (YOLOv5's output convention) --------------------------------------------------------------
def test_anchor_based_head_rows_and_cells() -> None:
    """models/multiscale/anchor_yolo.onnx: three anchors per cell, rows boxes-first with objectness. Each row's
    gradient at its scale's feature map sits at exactly the cell `Scale.cell` names (the head is a 1x1 conv)."""
    path = ROOT / "models" / "multiscale" / "anchor_yolo.onnx"
    scales = _scales(path)
    assert [(s.start, s.stop, s.grid, s.anchors) for s in scales] == [
        (0, 768, (16, 16), 3), (768, 960, (8, 8), 3), (960, 1008, (4, 4), 3)]
    assert [s.feature.split("/")[1] for s in scales] == ["lat3", "out4", "out5"]  # the neck's outputs
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    x = _image(6)
    out = ex.outputs(x)[0]
    layout = ex.detection_layout(out.shape)
    assert (layout.attributes_first, layout.objectness) == (False, True)
    features = [s.feature for s in scales]
    for s in scales:
        for row in (s.start, s.start + 37, s.stop - 1):
            target = DetectionTarget(row, layout=layout).bind(out)
            res = onnxcam.gradients(path, x, layers=features, targets=target.seed(out)[None])
            grad = np.abs(res.gradients[s.feature][0]).sum(axis=0)
            _, y, x_cell = s.cell(row)
            assert grad[y, x_cell] > 0 and np.count_nonzero(grad) == 1, f"row {row}: gradient not at cell {y, x_cell}"
            assert all(not res.gradients[f].any() for f in features[features.index(s.feature) + 1:])
    layer_gradients(path, x, features, seed=DetectionTarget(800, layout=layout).bind(out).seed(out)[None],
                    zero_allowed=features[2:])


def test_instance_masks_match_ultralytics() -> None:
    """Against Ultralytics' own full-resolution mask decoding (ultralytics.utils.ops.process_mask_native), run in
    the export venv: `/work/venvs/ultra/bin/python -m pytest tests/test_detect_scales.py -k ultralytics`."""
    pytest.importorskip("ultralytics")
    import onnxruntime as ort
    import torch
    from ultralytics.utils import ops

    path = ULTRALYTICS / "yolov8n-seg.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out, prototypes = session.run(None, {"images": _image(7)})
    layout = detection_layout(out.shape[1:], model_metadata(onnx.load(str(path))))
    rows = layout.rows(out[0])
    found = decode(out[0], layout)
    chosen = [int(i) for i in np.argsort(-found.scores)[:5]] + [3, 300, 40]
    boxes = np.clip(found.boxes[chosen], 0, 128)  # Ultralytics clips boxes to the image before cropping
    # random weights predict image-sized boxes: crop with fractional ones too
    boxes[-3:] = [[10.3, 20.7, 70.2, 90.9], [0.5, 64.0, 127.5, 100.49], [33.0, 1.2, 34.8, 120.0]]
    coefficients = rows[chosen][:, layout.extra_columns(rows.shape[1])]
    theirs = ops.process_mask_native(torch.from_numpy(prototypes[0]), torch.from_numpy(coefficients),
                                     torch.from_numpy(boxes.astype(np.float32)), (128, 128)).numpy() > 0
    ours = np.stack([instance_mask(c, prototypes[0], b, (128, 128)) for c, b in zip(coefficients, boxes)])
    assert ours.shape == theirs.shape
    assert (ours != theirs).mean() < 1e-3, f"{(ours != theirs).sum()} pixels differ"


def _ultralytics_exporter() -> Any:
    """models/ultralytics/export.py as a module, with the network forbidden (skips without Ultralytics)."""
    pytest.importorskip("ultralytics")
    import importlib.util

    spec = importlib.util.spec_from_file_location("ultralytics_export", ULTRALYTICS / "export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.forbid_network()
    return module


@pytest.mark.parametrize(("family", "source"), [("v5", "yolov5.yaml"), ("v9", "yolov9t.yaml"),
                                                ("v10", "yolov10n.yaml"), ("11", "yolo11.yaml"),
                                                ("26", "yolo26.yaml")])
def test_other_ultralytics_families(family: str, source: str, tmp_path: Path) -> None:
    """YOLOv5u, v9, v10, 11 and 26 detectors exported afresh (Ultralytics installed: the export venv): three
    scales, and the rows of the finest have no gradient at the coarser maps."""
    module = _ultralytics_exporter()
    path = module.export("detect", tmp_path, out=tmp_path, family=family, source=source, target=f"{family}.onnx")
    assert not module._attempts
    model = load_model(path)
    end2end = ultralytics_info(model_metadata(model)).end2end  # type: ignore[union-attr]
    scales = detection_scales(model, "output0", selected=end2end)
    assert [(s.start, s.stop, s.stride) for s in scales] == [(0, 256, (8, 8)), (256, 320, (16, 16)),
                                                             (320, 336, (32, 32))]
    x = _image(8)
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    out = ex.outputs(x)[0]
    layout = ex.detection_layout(out.shape)
    assert layout.classes == len(SHAPES) and layout.post_nms == end2end
    features = [s.feature for s in scales]
    if end2end:  # rows are the 300 best candidates: the best one's gradient reaches its own scale
        target = detection_targets(out, layout)[0]
        res = onnxcam.gradients(path, x, layers=features, targets=target.seed(out)[None])
        assert any(res.gradients[f].any() for f in features)
        return
    row = int(np.argmax(decode(out, layout).scores[:256]))
    target = DetectionTarget(row, layout=layout).bind(out)
    res = onnxcam.gradients(path, x, layers=features, targets=target.seed(out)[None])
    assert res.gradients[features[0]].any()
    assert not res.gradients[features[1]].any() and not res.gradients[features[2]].any()


def test_nms_inside_the_graph(tmp_path: Path) -> None:
    """An Ultralytics export with NMS inside (nms=True): onnxcam explains the raw predictions before it, and their
    rows still split into the three scales (the exposed tensor is declared by rank only; its sizes are known)."""
    module = _ultralytics_exporter()
    path = module.export("detect", tmp_path, out=tmp_path, target="nms.onnx", nms=True)
    ex = onnxcam.Explainer(path, providers=["CPUExecutionProvider"])
    assert ex.notes and "NonMaxSuppression" in ex.notes[0]
    scales = detection_scales(ex.model, ex.output)
    assert [(s.start, s.stop) for s in scales] == [(0, 256), (256, 320), (320, 336)]


def test_explain_an_ultralytics_export_with_no_flags(tmp_path: Path) -> None:
    """The committed YOLOv8n (static batch 1, metadata as Ultralytics writes it): letterbox and class names from
    the metadata, the three scales as layers, every detection's map non-zero and its box inside the photo."""
    import json

    from onnxcam.jobs.explain import explain

    model = Path(__file__).resolve().parent.parent / "models" / "ultralytics" / "yolov8n.onnx"
    images = Path(__file__).resolve().parent.parent / "examples" / "images"
    out = tmp_path / "out"
    summary = explain(model, [images], out, threshold=0.0, max_detections=2, batch_size=3, device="cpu")
    assert summary.failed == 0 and summary.done == len(list(images.glob("*.png")))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "run.json").read_text())
    assert len(manifest["layers"]) == 3 and manifest["preprocessing"].get("resize") == "letterbox"
    names = {r["label"] for r in records}
    assert names and None not in names  # the metadata's names
    for record in records:
        assert np.load(out / record["paths"]["map"]).max() > 0
        assert len(record["box"]) == 4



@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_head_re_running_methods_on_a_static_batch_of_one(method: str, tmp_path: Path) -> None:
    """Exports with a static batch of one (Ultralytics' are) take one image: Ablation-CAM and ReciproCAM re-run the
    head for many variants of one image's features, which then go row by row (onnxruntime refused the batch
    before). The maps are the dynamic-batch model's. (The committed YOLOv8n has random weights whose outputs do
    not move with its features, so the trained shapes detector, pinned to batch 1, shows it.)"""
    model = onnx.load(str(ROOT / "models" / "shapes_detector.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_value = 1
    pinned = tmp_path / "shapes_detector_batch1.onnx"
    onnx.save(model, str(pinned))
    static = onnxcam.Explainer(str(pinned), device="cpu")
    dynamic = onnxcam.Explainer(str(ROOT / "models" / "shapes_detector.onnx"), device="cpu")
    assert static.view.batch_limit == 1 and dynamic.view.batch_limit is None
    x = static.preprocess([cv2.cvtColor(cv2.imread(str(ROOT / "examples" / "images" / "08_ring_triangle.png")),
                                        cv2.COLOR_BGR2RGB)])
    maps = static.explain(x, method)
    assert maps.max() > maps.min()
    np.testing.assert_allclose(maps, dynamic.explain(x, method), atol=1e-5)


def test_inspect_shows_the_scales_and_their_rows() -> None:
    """`onnxcam inspect` names each scale's feature map, stride and the output rows it owns; the default layer of a
    multi-scale detector is the set of those maps."""
    import json

    from typer.testing import CliRunner

    from onnxcam import cli

    path = ULTRALYTICS / DETECTORS["detect"]
    result = CliRunner().invoke(cli.app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    scales = _scales(path)
    assert [s["feature"] for s in info["scales"]] == [s.feature for s in scales] == info["default_layers"]
    assert [tuple(s["rows"]) for s in info["scales"]] == [(s.start, s.stop) for s in scales]
    assert info["scales"][-1]["rows"][1] == 336 and [s["stride"] for s in info["scales"]] == [[8, 8], [16, 16],
                                                                                                 [32, 32]]
    text = CliRunner().invoke(cli.app, ["inspect", str(path)]).output
    assert "rows 0-255" in text and "stride 32" in text
