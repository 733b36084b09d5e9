"""The trained demo models in models/ (MobileNet, multi-label ResNet, ViT): metadata, accuracy through onnxruntime
on freshly generated held-out images (the first images of the cards' test seed), and onnxcam's gradients on each.

The cards state the accuracy on 1000 test images; here 200 of them are scored, which must come within three
binomial standard errors of the card (the check is deterministic: same seed, same images, same weights).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcam
from onnxcam.datasets.shapes import CLASSES, generate, make_sample
from onnxcam.graph.catalogue import find_score

MODELS = Path(__file__).resolve().parent.parent / "models"
SINGLE_LABEL = ["shapes_mobilenet", "shapes_vit"]
ALL = [*SINGLE_LABEL, "shapes_multilabel"]
TEST_SEED, COUNT = 2, 200


def _margin(rate: float) -> float:
    """Three standard errors of a rate measured on COUNT images (at least 0.02): how far 200 images may fall
    below the 1000-image figure by sampling alone."""
    return max(0.02, 3 * (rate * (1 - rate) / COUNT) ** 0.5)


def _card(name: str) -> str:
    return (MODELS / f"{name}.md").read_text()


def _card_number(name: str, pattern: str) -> float:
    found = re.search(pattern, _card(name))
    assert found, f"{name}.md states no number matching {pattern!r}"
    return float(found.group(1))


def _metadata(name: str) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(MODELS / f"{name}.onnx")).metadata_props}


def _preprocess(name: str, images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> the model's input, by the formula stored in its metadata."""
    spec = json.loads(_metadata(name)["preprocessing"])
    x = images.astype(np.float32) * np.float32(spec["scale"])
    x = (x - np.float32(spec["mean"])) / np.float32(spec["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def _run(name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _multi(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Two-object images, multi-hot targets and per-image masks (2, H, W), as write_dataset(multi=True) makes."""
    rng = np.random.default_rng(seed)
    images, targets, masks = [], np.zeros((count, len(CLASSES)), np.float32), []
    for i in range(count):
        image, labels, sample_masks, _ = make_sample(rng, 96, multi=True)
        images.append(image)
        targets[i, labels] = 1
        masks.append((labels, sample_masks))
    return np.stack(images), targets, masks


def _mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    aps = []
    for k in range(truth.shape[1]):
        hits = truth[np.argsort(-scores[:, k], kind="stable"), k] > 0
        aps.append((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean())
    return float(np.mean(aps))


@pytest.mark.parametrize("name", ALL)
def test_files_metadata_and_card(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 4 * 2**20, "shipped models must stay small"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = _metadata(name)
    assert json.loads(meta["labels"]) == list(CLASSES)
    assert (MODELS / "shapes_labels.txt").read_text().split() == list(CLASSES)
    spec = json.loads(meta["preprocessing"])
    assert spec["size"] == [96, 96] and spec["layout"] == "NCHW" and len(spec["mean"]) == len(spec["std"]) == 3
    card = _card(name)
    for section in ("## Architecture", "## Input and output", "## Data and training", "## Accuracy"):
        assert section in card, f"{name}.md lacks {section}"


@pytest.mark.parametrize("name", SINGLE_LABEL)
def test_single_label_accuracy_matches_card(name: str) -> None:
    images, labels = generate(COUNT, TEST_SEED)
    logits = _run(name, _preprocess(name, images))
    assert logits.shape == (COUNT, len(CLASSES))
    accuracy = float((logits.argmax(1) == labels).mean())
    stated = _card_number(name, r"Test accuracy on the \d+ held-out images: \*\*([0-9.]+)\*\*")
    assert accuracy >= stated - _margin(stated), f"{name}: {accuracy:.3f} on {COUNT} images, card: {stated:.3f}"


def test_mobilenet_meets_the_single_label_bar() -> None:
    assert _card_number("shapes_mobilenet", r"held-out images: \*\*([0-9.]+)\*\*") >= 0.95


def test_multilabel_outputs_probabilities_and_matches_card() -> None:
    images, targets, _ = _multi(COUNT, TEST_SEED)
    probabilities = _run("shapes_multilabel", _preprocess("shapes_multilabel", images))
    assert probabilities.shape == (COUNT, len(CLASSES))
    assert probabilities.min() >= 0 and probabilities.max() <= 1  # a Sigmoid output, not logits
    stated = _card_number("shapes_multilabel", r"mAP[^*]*\*\*([0-9.]+)\*\*")
    assert _mean_average_precision(probabilities, targets) >= stated - _margin(stated)
    exact = float(((probabilities >= 0.5) == (targets > 0)).all(1).mean())
    stated_exact = _card_number("shapes_multilabel", r"exact match at threshold 0\.5[^*]*\*\*([0-9.]+)\*\*")
    assert exact >= stated_exact - _margin(stated_exact)


def test_multilabel_score_is_the_logits_before_the_sigmoid() -> None:
    model = onnx.load(str(MODELS / "shapes_multilabel.onnx"))
    score, output = find_score(model)
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    assert output == "probabilities" == sigmoid.output[0]
    assert score == sigmoid.input[0]


@pytest.mark.parametrize("name", ["shapes_mobilenet", "shapes_multilabel"])
def test_gradcam_on_the_cnns(name: str) -> None:
    images, _, _ = _multi(2, TEST_SEED)
    explainer = onnxcam.Explainer(str(MODELS / f"{name}.onnx"))
    maps = explainer.explain(_preprocess(name, images), "gradcam", targets=[0, 5])
    assert maps.shape == (2, 96, 96) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() - maps.min() > 0.5


def test_multilabel_gradcam_is_class_discriminative() -> None:
    """On two-object images, the Grad-CAM of each present class puts more energy on its own object's mask than on
    the other object's mask, in most cases."""
    images, _, masks = _multi(12, TEST_SEED + 100)
    x = _preprocess("shapes_multilabel", images)
    explainer = onnxcam.Explainer(str(MODELS / "shapes_multilabel.onnx"))
    wins = 0
    for k in range(2):  # explain the first, then the second object of every image
        targets = [labels[k] for labels, _ in masks]
        maps = explainer.explain(x, "gradcam", targets=targets)
        for m, (_, sample_masks) in zip(maps, masks):
            own, other = sample_masks[k], sample_masks[1 - k]
            wins += int(m[own].mean() > m[other].mean())
    assert wins >= 0.9 * 2 * len(images), f"own object won only {wins} of {2 * len(images)}"


def test_vit_gradients_on_token_tensors() -> None:
    model = onnx.load(str(MODELS / "shapes_vit.onnx"))
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    last_norm1, last_block_out = norms[-3].output[0], norms[-1].input[0]  # per block: norm1, norm2; then final
    images, labels = generate(4, TEST_SEED)
    x = _preprocess("shapes_vit", images)
    result = onnxcam.gradients(str(MODELS / "shapes_vit.onnx"), x, layers=[last_norm1, last_block_out],
                               targets=labels)
    np.testing.assert_allclose(result.scores, _run("shapes_vit", x), rtol=1e-4, atol=1e-4)
    for layer in (last_norm1, last_block_out):
        assert result.activations[layer].shape == result.gradients[layer].shape == (4, 65, 64)
    # The head reads only the CLS token of the last block's output (LayerNorm is per token), so the gradient
    # there is zero on every patch token, while the last block's attention spreads it over the patches before.
    assert np.abs(result.gradients[last_block_out][:, 1:]).max() == 0
    assert np.abs(result.gradients[last_block_out][:, 0]).max() > 0
    assert (np.abs(result.gradients[last_norm1][:, 1:]).sum((1, 2)) > 0).all()


def test_vit_gradcam_on_the_default_token_layer() -> None:
    model = onnx.load(str(MODELS / "shapes_vit.onnx"))
    last_norm1 = [n for n in model.graph.node if n.op_type == "LayerNormalization"][-3].output[0]
    images, labels = generate(2, TEST_SEED)
    explainer = onnxcam.Explainer(str(MODELS / "shapes_vit.onnx"))
    assert explainer.layer == [last_norm1]  # the 64 patch tokens after the CLS token, an 8 x 8 grid
    maps = explainer.explain(_preprocess("shapes_vit", images), "gradcam", targets=labels)
    assert maps.shape == (2, 96, 96) and np.isfinite(maps).all() and maps.max() - maps.min() > 0.5
