"""`explain --per-layer` (issue 19): one map per explained layer instead of their average, for a multi-scale
detector's per-scale maps and for layers named with --layer; stable file names, its own run for --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from onnxcam import Explainer, cli
from onnxcam.errors import InputError
from onnxcam.images import geometry, map_to_image, preprocess, read_image
from onnxcam.jobs.explain import explain
from onnxcam.report import read_data
from onnxcam.targets import TargetPlan

ROOT = Path(__file__).resolve().parent.parent
YOLO = ROOT / "models" / "ultralytics" / "yolov8n.onnx"
RESNET = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
TWO = [IMAGES / "01_circle.png", IMAGES / "08_ring_triangle.png"]
METHODS = ["gradcam", "eigencam"]
runner = CliRunner()


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _maps(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(out.glob("*.npy"))}


@pytest.fixture(scope="module")
def yolo() -> Explainer:
    return Explainer(YOLO, device="cpu")


def _expected(ex: Explainer, image: Path, method: str, layer: str | None, threshold: float) -> list[np.ndarray]:
    """The maps of an image's detections (those the job picks: score >= threshold, best first, at most two) from
    the Python API, at the image's own size as the job writes them."""
    rgb = read_image(image)
    x = preprocess(rgb, ex.preprocessing)
    out = ex.outputs(x)[0]
    targets = TargetPlan("detect", threshold=threshold, max_detections=2).targets(out, ex.detection_layout(out.shape))
    maps = ex.explain(np.repeat(x, len(targets), axis=0), method, targets=targets, layer=layer)
    place = geometry(rgb.shape[:2], ex.preprocessing)
    return [map_to_image(m, place) for m in maps]


def test_a_detector_writes_one_map_per_scale_equal_to_that_layer_alone(yolo: Explainer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = explain(YOLO, TWO, out, methods=METHODS, threshold=0.0, max_detections=2, device="cpu",
                      per_layer=True, explainer=yolo)
    assert summary.failed == 0 and summary.done == 2
    scales = yolo.view.scales
    assert len(scales) == 3 and list(yolo.layer) == [s.feature for s in scales]
    records = _records(out)
    assert len(records) == 2 * len(METHODS) * 2 * 3  # images x methods x detections x scales
    for image in TWO:
        for method in METHODS:
            for k, scale in enumerate(scales):
                expected = _expected(yolo, image, method, scale.feature, 0.0)
                for d, want in enumerate(expected):
                    stem = f"{image.name}.{method}.d{d}.L{k}"
                    np.testing.assert_allclose(np.load(out / f"{stem}.npy"), want, atol=1e-5)
                    rec = next(r for r in records if r["paths"]["map"] == f"{stem}.npy")
                    assert (rec["layer"], rec["layer_index"], rec["layer_label"]) == \
                        (scale.feature, k, f"stride {scale.stride[0]}")
                    assert rec["layer_module"] == yolo.module_path(scale.feature) and rec["method"] == method
                    assert (out / f"{stem}.png").is_file()
    assert json.loads((out / "run.json").read_text())["per_layer"] is True
    columns = read_data(out / "report.html")["methods"]
    assert columns == [f"{m} @ stride {s}" for m in METHODS for s in (8, 16, 32)]

    # without the flag: one averaged map per detection, named as before
    plain = tmp_path / "plain"
    explain(YOLO, TWO, plain, methods=METHODS, threshold=0.0, max_detections=2, device="cpu", explainer=yolo)
    records = _records(plain)
    assert len(records) == 2 * len(METHODS) * 2
    assert all("layer_index" not in r and r["layer"] == ", ".join(yolo.layer) for r in records)
    for image in TWO:
        for method in METHODS:
            for d, want in enumerate(_expected(yolo, image, method, None, 0.0)):
                np.testing.assert_allclose(np.load(plain / f"{image.name}.{method}.d{d}.npy"), want, atol=1e-5)
    assert not list(plain.glob("*.L0.*"))
    assert read_data(plain / "report.html")["methods"] == METHODS


def test_a_classifier_with_two_named_layers_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(RESNET), *map(str, TWO), "-o", str(out), "--device", "cpu",
                                     "-m", "gradcam,layercam", "--layer", "stage2,stage3", "--per-layer"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert len(records) == len(TWO) * 2 * 2  # images x methods x layers
    ex = Explainer(RESNET, layer=["stage2", "stage3"], device="cpu")
    for image in TWO:
        rgb = read_image(image)
        x = preprocess(rgb, ex.preprocessing)
        for method in ("gradcam", "layercam"):
            for k, tensor in enumerate(ex.layer):
                stem = f"{image.name}.{method}.L{k}"
                rec = next(r for r in records if r["paths"]["map"] == f"{stem}.npy")
                assert (rec["layer"], rec["layer_module"], rec["layer_label"]) == (tensor, f"stage{k + 2}",
                                                                                   f"stage{k + 2}")
                want = ex.explain(x, method, targets=[rec["target"]], layer=tensor)[0]
                np.testing.assert_allclose(np.load(out / f"{stem}.npy"),
                                           map_to_image(want, geometry(rgb.shape[:2], ex.preprocessing)), atol=1e-5)
    # every map of an image explains the same (predicted) class
    assert len({(r["name"], r["target"]) for r in records}) == len(TWO)
    assert read_data(out / "report.html")["methods"] == [f"{m} @ stage{k}" for m in ("gradcam", "layercam")
                                                          for k in (2, 3)]


def test_a_per_layer_run_resumes_to_the_same_files(yolo: Explainer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = {"methods": ["gradcam"], "threshold": 0.0, "max_detections": 2, "device": "cpu", "per_layer": True,
            "batch_size": 3, "explainer": yolo}
    images = sorted(IMAGES.glob("0[1-5]*.png"))
    first = explain(YOLO, images, out, **args)
    assert first.done == len(images)
    maps = _maps(out)
    assert len(maps) == len(images) * 2 * 3
    # kill-like: the log ends after three images, as if the run had died there; of those, one lost a file and
    # one the record of one of its maps: both are redone, the first is kept
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").unlink()
    lost = f"{images[2].name}.gradcam.d0.L1.npy"
    kept = [line for line in lines[:3 * 2 * 3] if json.loads(line)["paths"]["map"] != lost]
    (out / "results.jsonl.partial").write_text("\n".join(kept) + "\n")
    (out / f"{images[1].name}.gradcam.d1.L2.npy").unlink()
    for name in maps:
        if not name.startswith(tuple(image.name for image in images[:3])):
            (out / name).unlink()
    again = explain(YOLO, images, out, resume=True, **args)
    assert (again.skipped, again.done) == (1, len(images) - 1)
    assert _maps(out).keys() == maps.keys()
    for name, value in maps.items():
        np.testing.assert_allclose(np.load(out / name), value, atol=1e-6)
    assert _records(out) and [r["paths"] for r in _records(out)] == [json.loads(line)["paths"] for line in lines]


def test_resume_with_the_flag_toggled_is_another_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    explain(RESNET, TWO, out, layer=["stage2", "stage3"], device="cpu")
    with pytest.raises(InputError, match=r"--resume: this run differs from the one in .*run\.json: "
                                         r"per layer false -> true; use another --out or drop --resume"):
        explain(RESNET, TWO, out, layer=["stage2", "stage3"], device="cpu", per_layer=True, resume=True)
    # a manifest written before the flag existed is a run without it
    manifest = json.loads((out / "run.json").read_text())
    del manifest["per_layer"]
    (out / "run.json").write_text(json.dumps(manifest))
    assert explain(RESNET, TWO, out, layer=["stage2", "stage3"], device="cpu", resume=True).skipped == 2
    result = runner.invoke(cli.app, ["explain", str(RESNET), *map(str, TWO), "-o", str(out), "--device", "cpu",
                                     "--layer", "stage2,stage3", "--per-layer", "--resume"])
    assert result.exit_code == 2 and "per layer false -> true" in result.output


@pytest.mark.parametrize("model, options", [
    ("shapes_segmenter.onnx", {}),
    ("shapes_embedder.onnx", {"reference": IMAGES / "02_triangle.png"}),
])
def test_segmentation_and_embeddings_get_a_map_per_layer(tmp_path: Path, model: str, options: dict) -> None:
    path = ROOT / "models" / model
    layers = Explainer(path, device="cpu").layers[-2:]  # the two last candidate feature maps
    averaged = explain(path, TWO, tmp_path / "averaged", layer=layers, device="cpu", **options)
    split = explain(path, TWO, tmp_path / "split", layer=layers, device="cpu", per_layer=True, **options)
    assert averaged.failed == split.failed == 0
    assert sorted(_maps(tmp_path / "split")) == sorted(f"{image.name}.gradcam.L{k}.npy" for image in TWO
                                                       for k in (0, 1))
    assert sorted(_maps(tmp_path / "averaged")) == sorted(f"{image.name}.gradcam.npy" for image in TWO)
    for rec in _records(tmp_path / "split"):  # each layer's own map differs from the other's
        assert rec["layer"] == layers[rec["layer_index"]]
    for image in TWO:
        a, b = (np.load(tmp_path / "split" / f"{image.name}.gradcam.L{k}.npy") for k in (0, 1))
        assert a.max() > 0 and b.max() > 0 and not np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("method, aug_smooth", [("gradcam", False), ("scorecam", False), ("gradcam++", True)])
def test_explain_scored_per_layer_is_each_layers_own_map(method: str, aug_smooth: bool) -> None:
    """Explainer.explain_scored(per_layer=True): one run, each layer's map as explain(layer=that layer) gives it,
    and the same scores and classes; the average of the layers is what per_layer=False returns."""
    ex = Explainer(RESNET, layer=["stage2", "stage3"], device="cpu")
    x = np.random.default_rng(3).standard_normal((2, 3, 96, 96)).astype(np.float32)
    kwargs = {"channels": 16} if method == "scorecam" else {}
    maps, scores, chosen = ex.explain_scored(x, method, aug_smooth=aug_smooth, per_layer=True, **kwargs)
    assert maps.shape == (2, 2, 96, 96)
    for k, layer in enumerate(["stage2", "stage3"]):
        alone, alone_scores, alone_chosen = ex.explain_scored(x, method, layer=layer, aug_smooth=aug_smooth,
                                                              **kwargs)
        np.testing.assert_allclose(maps[:, k], alone, atol=1e-5)
        np.testing.assert_array_equal(chosen, alone_chosen)
        np.testing.assert_allclose(scores, alone_scores, rtol=1e-5, atol=1e-5)
    assert not np.allclose(maps[:, 0], maps[:, 1])
