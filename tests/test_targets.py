"""onnxcam.targets on the committed task models: seeds against finite differences, maps against the benchmark's
ground truth (segmentation region, detection box, similar object), the CLI per task, and NMS graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.datasets.shapes import make_sample
from onnxcam.errors import InputError
from onnxcam.explainer import Explainer
from onnxcam.targets import (
    ClassifierOutputTarget,
    DetectionLayout,
    DetectionTarget,
    SemanticSegmentationTarget,
    SimilarityTarget,
    box_iou,
    decode,
    detection_targets,
    guess_detection_layout,
    guess_task,
    resize_mask,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SEGMENTER, DETECTOR = MODELS / "shapes_segmenter.onnx", MODELS / "shapes_detector.onnx"
EMBEDDER, CLASSIFIER = MODELS / "shapes_embedder.onnx", MODELS / "shapes_resnet.onnx"
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
runner = CliRunner()


def _x(images: np.ndarray) -> np.ndarray:
    return ((images / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, list[int], np.ndarray, np.ndarray]]:
    """Held-out benchmark images (seed 2, the models' test seed): 8 two-object and 8 single-object."""
    rng = np.random.default_rng(2)
    return [make_sample(rng, 96, multi=i < 8) for i in range(16)]


def _numeric_seed(target, output: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    flat = output.astype(np.float64).reshape(-1)
    grad = np.zeros_like(flat)
    for k in np.flatnonzero(np.ones_like(flat)):
        up, down = flat.copy(), flat.copy()
        up[k] += eps
        down[k] -= eps
        grad[k] = (target(up.reshape(output.shape)) - target(down.reshape(output.shape))) / (2 * eps)
    return grad.reshape(output.shape)


# --- seeds: the target's gradient at the output ---------------------------------------------------------------------
def test_seeds_match_finite_differences_for_each_target_kind() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=8)
    assert np.allclose(ClassifierOutputTarget(3).seed(logits), _numeric_seed(ClassifierOutputTarget(3), logits))
    seg = rng.normal(size=(3, 4, 5))
    target = SemanticSegmentationTarget(1, rng.random((4, 5)) > 0.5)
    assert np.allclose(target.seed(seg), _numeric_seed(target, seg), atol=1e-6)
    for layout in (DetectionLayout(attributes_first=True, objectness=True),
                   DetectionLayout(attributes_first=False, objectness=False)):
        attrs = 4 + layout.objectness + 3
        raw = rng.random((attrs, 6) if layout.attributes_first else (6, attrs))
        det = DetectionTarget(2, layout=layout).bind(raw)
        assert np.allclose(det.seed(raw), _numeric_seed(det, raw), atol=1e-6)
    e, r = rng.normal(size=16), rng.normal(size=16)
    sim = SimilarityTarget(r)
    assert np.allclose(sim.seed(e), _numeric_seed(sim, e), atol=1e-6)
    assert sim(e) == pytest.approx(e @ r / np.linalg.norm(e) / np.linalg.norm(r))


def test_detection_seed_through_the_model_equals_finite_differences(samples) -> None:
    """d score / d input from one seeded backward run = the central difference of the score along a direction."""
    x = _x(np.stack([samples[0][0]]))
    ex = Explainer(DETECTOR)
    target = detection_targets(ex.outputs(x)[0], ex.detection_layout(ex.outputs(x).shape[1:]))[0]
    seed = target.seed(ex.outputs(x)[0])[None]
    res = onnxcam.gradients(DETECTOR, x, layers=[], targets=seed, input_gradient=True)
    direction = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    eps = 1e-2
    value = [target(ex.outputs(x + s * eps * direction)[0]) for s in (1, -1)]
    numeric = (value[0] - value[1]) / (2 * eps)
    analytic = float((res.input_gradient.astype(np.float64) * direction).sum())
    assert analytic == pytest.approx(numeric, rel=0.05, abs=1e-4)


def test_segmentation_target_value_and_predicted_region() -> None:
    ex = Explainer(SEGMENTER)
    assert ex.task == "segment" and "u1" in ex.default_layer  # the head's input, not the logits themselves
    rng = np.random.default_rng(2)
    image, labels, masks, _ = make_sample(rng, 96)
    out = ex.outputs(_x(image[None]))[0]
    bound = SemanticSegmentationTarget(labels[0] + 1).bind(out)
    assert np.array_equal(bound.mask, out.argmax(0) == labels[0] + 1)
    assert bound(out) == pytest.approx(float(out[labels[0] + 1][bound.mask].sum()), rel=1e-5)
    # a mask file at another size is resized to the output's
    half = SemanticSegmentationTarget(labels[0] + 1, masks[0][::2, ::2]).bind(out)
    assert half.mask.shape == (96, 96) and abs(int(half.mask.sum()) - int(masks[0].sum())) < 0.1 * masks[0].sum()


# --- maps land on the ground truth ----------------------------------------------------------------------------------
def _pointing(cam: np.ndarray, region: np.ndarray, margin: int = 3) -> bool:
    """Pointing game: the map's maximum lies in the region (grown by `margin` pixels, as the usual 15 px at 224)."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    ys, xs = np.nonzero(region)
    return bool(len(xs)) and np.min(np.maximum(np.abs(ys - y), np.abs(xs - x))) <= margin


def test_detection_maps_land_in_their_boxes(samples) -> None:
    """Every detection scoring >= 0.3 that overlaps a ground-truth object (IoU >= 0.3, any class: the small
    detector localises well but confuses classes, see models/shapes_detector.md): the map's maximum lies in that
    object's ground-truth box."""
    ex = Explainer(DETECTOR)
    images = np.stack([s[0] for s in samples])
    outputs = ex.outputs(_x(images))
    layout = ex.detection_layout(outputs.shape[1:])
    rows, wanted, truths = [], [], []
    for i, (_image, _labels, _masks, boxes) in enumerate(samples):
        for target in detection_targets(outputs[i], layout, threshold=0.3):
            overlaps = box_iou(np.asarray(target.box), boxes)
            best = int(np.argmax(overlaps))
            if overlaps[best] < 0.3:
                continue  # a false detection: no ground truth to point at
            rows.append(i)
            wanted.append(target)
            x0, y0, x1, y1 = boxes[best]
            truth = np.zeros((96, 96), bool)
            truth[y0:y1, x0:x1] = True
            truths.append(truth)
    assert len(wanted) >= 16  # most of the 24 objects are found
    for method, rate in (("gradcam", 0.75), ("gradcam++", 0.9)):
        maps = ex.explain(_x(images[rows]), method, targets=wanted)
        hits = [_pointing(m, t) for m, t in zip(maps, truths)]
        assert np.mean(hits) >= rate, (method, np.mean(hits))


def test_segmentation_maps_land_in_the_class_region(samples) -> None:
    """Target: the top object's mask (as --mask gives it) and the class the model predicts most inside it (the
    small segmenter confuses classes, see models/shapes_segmenter.md). The map's maximum lies on the object."""
    ex = Explainer(SEGMENTER)
    images = np.stack([s[0] for s in samples])
    outputs = ex.outputs(_x(images))
    targets, regions = [], []
    for (_image, labels, masks, _boxes), output in zip(samples, outputs):
        inside = output.argmax(0)[masks[-1]]
        inside = inside[inside > 0]
        category = int(np.bincount(inside).argmax()) if inside.size else labels[-1] + 1
        targets.append(SemanticSegmentationTarget(category, masks[-1]))
        regions.append(masks[-1])
    for method, rate in (("gradcam", 0.8), ("hirescam", 0.9), ("layercam", 0.9)):
        maps = ex.explain(_x(images), method, targets=targets)
        hits = [_pointing(m, r) for m, r in zip(maps, regions)]
        assert np.mean(hits) >= rate, (method, np.mean(hits))


def test_similarity_map_moves_to_the_object_like_the_reference(samples) -> None:
    """Two-object images with classes a and b; references: single-object images of a and of b. The map for the
    reference of a puts more of its mass on object a than the map for b does, and vice versa (the embedding of
    both objects is close to both references, so where the map goes is what tells them apart)."""
    ex = Explainer(EMBEDDER)
    rng = np.random.default_rng(7)

    def reference_of(category: int) -> np.ndarray:
        while True:
            ref, ref_labels, _, _ = make_sample(rng, 96)
            if ref_labels[0] == category:
                return ex.outputs(_x(ref[None]))[0]

    wins = []
    for image, labels, masks, _ in samples[:8]:
        cams = ex.explain(_x(np.repeat(image[None], 2, axis=0)), "gradcam",
                          targets=[SimilarityTarget(reference_of(c)) for c in labels])
        share = [[(cam * mask).sum() / cam.sum() for mask in masks] for cam in cams]
        wins.append(share[0][0] > share[1][0] and share[1][1] > share[0][1])
    assert np.mean(wins) >= 0.75, wins


def test_perturbation_methods_score_target_objects(samples) -> None:
    ex = Explainer(SEGMENTER)
    x = _x(np.stack([samples[8][0]]))
    target = SemanticSegmentationTarget(None)  # the most frequent predicted class, over its predicted region
    for method in ("scorecam", "ablationcam"):
        cam = ex.explain(x, method, targets=[target], batch_size=64)
        assert cam.shape == (1, 96, 96) and np.isfinite(cam).all() and 0.9 < cam.max() <= 1.0
    evidence = ex.evidence(x, [target], ex.layer, method="ablationcam")[0]
    bound = evidence.target_objects[0]
    outputs = ex.outputs(np.concatenate([x, x * 0.5]))
    assert np.allclose(evidence.target_scores(outputs.reshape(2, -1), 0), [bound(o) for o in outputs], rtol=1e-5)
    with pytest.raises(InputError, match="class targets"):
        ex.explain(x, "scorecam", targets=[target], scorecam_weights="probability")


def test_class_targets_keep_the_fast_path_and_match_ints() -> None:
    x = _x(np.stack([make_sample(np.random.default_rng(3), 96)[0]]))
    ex = Explainer(CLASSIFIER)
    a = ex.explain(x, "gradcam", targets=[ClassifierOutputTarget(2)])
    b = ex.explain(x, "gradcam", targets=[2])
    assert np.array_equal(a, b)


def test_embedding_needs_a_reference() -> None:
    ex = Explainer(EMBEDDER)
    assert ex.task == "embed"
    with pytest.raises(InputError, match="reference"):
        ex.explain(np.zeros((1, 3, 96, 96), np.float32))


# --- layouts and decoders -------------------------------------------------------------------------------------------
def test_layout_guesses_and_decoders() -> None:
    assert guess_task((1, 9, 96, 96)) == "segment" and guess_task((1, 10)) == "classify"
    assert guess_task((1, 64), {"task": "embedding"}) == "embed"
    assert guess_detection_layout((8400, 84)) == DetectionLayout(False, True)            # YOLOv5 style
    assert guess_detection_layout((84, 8400), classes=80) == DetectionLayout(True, False)  # YOLOv8 style
    assert guess_detection_layout((25200, 85), classes=80) == DetectionLayout(False, True)
    assert guess_detection_layout((100, 6)).post_nms and guess_detection_layout((100, 7)).post_nms
    assert not guess_detection_layout((100, 6), post_nms=False).post_nms
    post = np.array([[10, 10, 30, 40, 0.9, 2], [50, 50, 60, 70, 0.8, 1], [12, 11, 31, 41, 0.3, 2]], float)
    layout = guess_detection_layout(post.shape)
    found = decode(post, layout)
    assert np.array_equal(found.classes, [2, 1, 2]) and found.boxes[0].tolist() == [10, 10, 30, 40]
    assert [t.index for t in detection_targets(post, layout, threshold=0.5)] == [0, 1]
    # post-NMS rows move when the input changes: the target follows its box, by IoU and class
    target = DetectionTarget(0, layout=layout).bind(post)
    moved = post[[1, 0, 2]]
    assert target(moved) == pytest.approx(0.9) and target.seed(moved)[1, 4] == 1.0
    raw = np.zeros((4, 7))  # cx, cy, w, h, obj, 2 classes: two overlapping cells of one object, one other
    raw[0] = [20, 20, 10, 10, 0.9, 0.9, 0.1]
    raw[1] = [21, 20, 10, 10, 0.8, 0.9, 0.1]
    raw[2] = [60, 60, 10, 10, 0.9, 0.1, 0.8]
    kept = detection_targets(raw, DetectionLayout(False, True), threshold=0.5)
    assert [t.index for t in kept] == [0, 2] and kept[0].box == (15.0, 15.0, 25.0, 25.0)
    assert resize_mask(np.eye(4, dtype=bool), (8, 8)).sum() == 16


# --- NMS inside the graph -------------------------------------------------------------------------------------------
def _nms_model() -> onnx.ModelProto:
    """conv -> raw (1, 64, 6) = 4 box values + 2 class scores per cell -> NonMaxSuppression -> picked scores."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["feat"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["act"]),
        helper.make_node("Conv", ["act", "w2"], ["head"]),
        helper.make_node("Reshape", ["head", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["raw"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["raw", "s0", "s4", "axis2"], ["boxes"]),
        helper.make_node("Slice", ["raw", "s4", "s6", "axis2"], ["cls"]),
        helper.make_node("Sigmoid", ["cls"], ["prob"]),
        helper.make_node("Transpose", ["prob"], ["scores"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["selected"]),
        helper.make_node("GatherND", ["scores", "selected"], ["picked"]),
    ]
    inits = [w, numpy_helper.from_array(rng.normal(size=(6, 6, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 6, 64], np.int64), "shape")]
    inits += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in
              (("s0", 0), ("s4", 4), ("s6", 6), ("axis2", 2), ("max_out", 5))]
    inits += [numpy_helper.from_array(np.array([v], np.float32), n) for n, v in (("iou", 0.5), ("thr", 0.0))]
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("picked", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_nms_in_graph_explains_the_raw_predictions() -> None:
    ex = Explainer(_nms_model())
    assert ex.output == "raw" and ex.task == "detect" and "NonMaxSuppression" in ex.notes[0]
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    layout = ex.detection_layout(ex.outputs(x).shape[1:])
    assert not layout.post_nms and not layout.objectness and not layout.attributes_first
    cam = ex.explain(x, "gradcam", targets=[DetectionTarget(5, layout=layout)])
    assert cam.shape == (1, 8, 8) and np.isfinite(cam).all()


# --- CLI ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_images(tmp_path_factory) -> Path:
    from onnxcam.datasets.shapes import write_dataset

    return write_dataset(tmp_path_factory.mktemp("shapes"), 3, 2, multi=True)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_cli_segmentation(task_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    result = runner.invoke(cli.app, ["explain", str(SEGMENTER), str(task_images / "images"), "-o", str(out),
                                     "-t", "star"])
    assert result.exit_code in (0, 1), result.output
    mask = task_images / "masks" / "multi_00000.png"
    result = runner.invoke(cli.app, ["explain", str(SEGMENTER), str(task_images / "images" / "multi_00000.png"),
                                     "-o", str(out / "mask"), "--mask", str(mask), "-m", "gradcam,scorecam"])
    assert result.exit_code == 0, result.output
    recs = _records(out / "mask")
    assert [r["task"] for r in recs] == ["segment", "segment"]
    assert (out / "mask" / "multi_00000.png.scorecam.png").is_file()


def test_cli_detection_threshold_draws_boxes(task_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "det"
    result = runner.invoke(cli.app, ["explain", str(DETECTOR), str(task_images / "images"), "-o", str(out),
                                     "--threshold", "0.3"])
    assert result.exit_code == 0, result.output
    recs = _records(out)
    assert recs and all(r["task"] == "detect" and len(r["box"]) == 4 for r in recs)
    assert len(recs) >= 3  # two objects per image, most found
    result = runner.invoke(cli.app, ["explain", str(DETECTOR), str(task_images / "images" / "multi_00000.png"),
                                     "-o", str(out / "one"), "--box", "0"])
    assert result.exit_code == 0, result.output
    assert _records(out / "one")[0]["target_kind"].startswith("detection 0")


def test_cli_embedding_with_reference(task_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    reference = task_images / "images" / "multi_00001.png"
    result = runner.invoke(cli.app, ["explain", str(EMBEDDER), str(task_images / "images"), "-o", str(out),
                                     "--reference", str(reference)])
    assert result.exit_code == 0, result.output
    recs = _records(out)
    assert len(recs) == 3 and recs[1]["target_score"] == pytest.approx(1.0, abs=1e-4)
    result = runner.invoke(cli.app, ["explain", str(EMBEDDER), str(reference), "-o", str(out / "x")])
    assert result.exit_code == 2 and "reference" in result.output


def test_cli_nms_model_says_what_it_explains(task_images: Path, tmp_path: Path) -> None:
    path = tmp_path / "nms.onnx"
    onnx.save(_nms_model(), str(path))
    result = runner.invoke(cli.app, ["explain", str(path), str(task_images / "images" / "multi_00000.png"),
                                     "-o", str(tmp_path / "out"), "--box", "3"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "NonMaxSuppression" in said and "raw predictions 'raw'" in said
    assert _records(tmp_path / "out")[0]["task"] == "detect"


def test_rtdetr_selected_queries_are_read_as_rows() -> None:
    """Ultralytics' RT-DETR export writes end2end False but outputs 300 selected queries (x0, y0, x1, y1, score,
    class): the layout says so instead of expecting 4 + 80 class columns; a raw head of 4 + 80 columns stays raw."""
    from onnxcam.targets import ultralytics_info, ultralytics_layout

    names = "{" + ", ".join(f"{i}: 'c{i}'" for i in range(80)) + "}"
    info = ultralytics_info({"task": "detect", "names": names, "end2end": "False", "imgsz": "[160, 160]",
                             "stride": "32", "author": "Ultralytics"})
    assert info is not None
    assert ultralytics_layout(info, (300, 6)).post_nms
    assert not ultralytics_layout(info, (84, 525)).post_nms


def test_a_seed_array_on_a_detector_says_what_to_pass() -> None:
    """A float seed names no class of a detector's (N, attributes, boxes) output: the explainer says to pass target
    objects (a seed's gradient is onnxcam.gradients' job, and that works)."""
    ex = Explainer(str(MODELS / "shapes_detector.onnx"), device="cpu")
    x = np.zeros((1, 3, 96, 96), np.float32) if ex.input_shape[1] == 3 else None
    assert x is not None
    seed = np.zeros(ex.outputs(x).shape, np.float32)
    seed.reshape(-1)[7] = 1.0
    with pytest.raises(InputError, match="pass target objects"):
        ex.explain(x, "gradcam", targets=seed)
    grads = onnxcam.gradients(str(MODELS / "shapes_detector.onnx"), x, targets=seed, device="cpu")
    assert all(np.isfinite(g).all() for g in grads.gradients.values())
