"""The synthetic shapes benchmark (onnxcam.datasets.shapes) and the bundled model trained on it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxcam.datasets import CLASSES, generate, make_sample, write_dataset

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL = MODELS / "shapes_resnet.onnx"
SOLID = ("circle", "square", "triangle", "star", "cross", "ring")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("multi", [False, True])
def test_same_seed_same_arrays(multi: bool) -> None:
    a = make_sample(np.random.default_rng(7), 64, multi=multi)
    b = make_sample(np.random.default_rng(7), 64, multi=multi)
    c = make_sample(np.random.default_rng(8), 64, multi=multi)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(a[0], c[0])
    images, labels = generate(5, seed=3, size=48)
    images2, labels2 = generate(5, seed=3, size=48)
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)


@pytest.mark.parametrize("multi", [False, True])
def test_same_seed_same_files(tmp_path: Path, multi: bool) -> None:
    first = _files(write_dataset(tmp_path / "a", 4, seed=11, size=64, multi=multi))
    second = _files(write_dataset(tmp_path / "b", 4, seed=11, size=64, multi=multi))
    other = _files(write_dataset(tmp_path / "c", 4, seed=12, size=64, multi=multi))
    assert first == second
    assert first != other


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("size", [64, 96])
def test_masks_and_boxes_match_objects(multi: bool, size: int) -> None:
    rng = np.random.default_rng(21 + size + multi)
    for _ in range(40):
        image, labels, masks, boxes = make_sample(rng, size, multi=multi)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert len(labels) == len(masks) == len(boxes) == (2 if multi else 1)
        assert len(set(labels)) == len(labels)
        if multi:
            assert not (masks[0] & masks[1]).any()
        for label, mask, (x0, y0, x1, y1) in zip(labels, masks, boxes):
            ys, xs = np.nonzero(mask)
            assert mask.sum() > 0.01 * size * size, "object should stay visible"
            # The box is the tight box of the visible mask (x1, y1 exclusive) and lies in the image.
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            if CLASSES[label] in SOLID:
                # Inside the mask (away from anti-aliased edges) a solid object is one colour plus noise only.
                inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                if inner.sum() >= 20:
                    assert image[inner].astype(np.float64).std(axis=0).max() < 20


def test_classes_argument() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, labels, _, _ = make_sample(rng, 48, classes=("ring", "star"), multi=True)
        assert sorted(labels) == [0, 1]
    with pytest.raises(ValueError, match="unknown shape class"):
        make_sample(rng, 48, classes=("circle", "hexagon"))


@pytest.mark.parametrize("multi", [False, True])
def test_written_files(tmp_path: Path, multi: bool) -> None:
    count, size = 6, 64
    root = write_dataset(tmp_path, count, seed=5, size=size, multi=multi)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "class"]
    assert len(rows) == 1 + count * (2 if multi else 1)
    boxes = json.loads((root / "boxes.json").read_text())
    assert (root / "classes.txt").read_text().split() == list(CLASSES)
    per_file: dict[str, list[str]] = {}
    for file, name in rows[1:]:
        per_file.setdefault(file, []).append(name)
    assert sorted(per_file) == sorted(boxes) and len(per_file) == count
    for file, names in per_file.items():
        image = cv2.imread(str(root / file), cv2.IMREAD_UNCHANGED)
        assert image.shape == (size, size, 3)
        mask = cv2.imread(str(root / "masks" / Path(file).name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (size, size) and mask.dtype == np.uint8
        assert [o["class"] for o in boxes[file]] == names
        assert set(np.unique(mask)) == {0} | {CLASSES.index(n) + 1 for n in names}
        for obj in boxes[file]:
            assert CLASSES[obj["index"]] == obj["class"]
            ys, xs = np.nonzero(mask == obj["index"] + 1)
            x0, y0, x1, y1 = obj["box"]
            assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1


def _preprocess(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 NCHW, as the model's metadata describes (scale, then mean/std)."""
    assert spec["layout"] == "NCHW" and spec["channel_order"] == "RGB"
    x = images.astype(np.float32) * np.float32(spec["scale"])
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_bundled_model_classifies_new_images() -> None:
    model = onnx.load(str(MODEL))
    assert model.ir_version <= 10 and MODEL.stat().st_size < 2 * 1024 * 1024
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == list(CLASSES)
    assert (MODELS / "shapes_labels.txt").read_text().split() == list(CLASSES)
    spec = json.loads(meta["preprocessing"])
    assert spec["size"] == [96, 96] and spec["scale"] == pytest.approx(1 / 255)
    images, labels = generate(100, seed=20240, size=96)
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    logits = np.concatenate([session.run(["logits"], {"input": _preprocess(images[i:i + 50], spec)})[0]
                             for i in range(0, 100, 50)])
    assert logits.shape == (100, len(CLASSES))
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f} on fresh images"
