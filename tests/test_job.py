"""The one explain job: names keep the input's suffix, --resume continues only the same run (run.json) and matches
records by input path, every task goes through the same worker, one run per output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.errors import InputError
from onnxcam.jobs.explain import explain
from onnxcam.jobs.lock import LOCK

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "models" / "shapes_resnet.onnx"
MOBILENET = ROOT / "models" / "shapes_mobilenet.onnx"
IMAGES = ROOT / "examples" / "images"


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.imread(str(src))
    assert cv2.imwrite(str(dst), image)
    return dst


def test_same_stem_other_suffixes_and_an_added_file_keep_their_own_results(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _copy(IMAGES / "01_circle.png", root / "x.png")
    _copy(IMAGES / "02_triangle.png", root / "x.jpg")
    out = tmp_path / "out"
    first = explain(RESNET, [root], out, device="cpu")
    assert first.done == 2
    by_name = {r["name"]: r for r in _records(out)}
    assert set(by_name) == {"x.png", "x.jpg"}
    _copy(IMAGES / "03_ring.png", root / "x.bmp")  # added between runs: sorts before both
    again = explain(RESNET, [root], out, device="cpu", resume=True)
    assert (again.done, again.skipped) == (1, 2)
    records = {r["name"]: r for r in _records(out)}
    for name in ("x.png", "x.jpg"):  # each result still belongs to its own file
        assert records[name]["status"] == "skipped" and records[name]["image"].endswith(name)
        assert records[name]["predicted"] == by_name[name]["predicted"]
        assert records[name]["paths"]["map"] == f"{name}.gradcam.npy"
    assert records["x.bmp"]["status"] == "ok" and records["x.bmp"]["predicted_label"] == "ring"
    assert (out / "x.bmp.gradcam.npy").is_file()


@pytest.mark.parametrize("change, expected", [
    ({"model": MOBILENET}, "model sha256"),
    ({"layer": "/stage2/stage2.1/Relu_1_output_0"}, "layers"),
    ({"method_options": {"gradcam": {}}, "methods": ["gradcam", "eigencam"]}, "methods"),
    ({"preset": "raw255"}, "preprocessing"),
    ({"target": 3}, "targets"),
])
def test_resume_refuses_another_run_and_names_the_difference(tmp_path: Path, change: dict, expected: str) -> None:
    out = tmp_path / "out"
    explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", methods=["gradcam"])
    options = {"device": "cpu", "methods": ["gradcam"], **{k: v for k, v in change.items() if k != "model"}}
    with pytest.raises(InputError, match=rf"--resume: this run differs from the one in .*run\.json: .*{expected}"):
        explain(change.get("model", RESNET), [IMAGES / "01_circle.png"], out, resume=True, **options)
    # without --resume the new run simply replaces the manifest
    explain(change.get("model", RESNET), [IMAGES / "01_circle.png"], out, **options)
    assert json.loads((out / "run.json").read_text())["methods"] == options["methods"]


def test_a_method_option_change_is_a_different_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", methods=["layercam"])
    with pytest.raises(InputError, match="method options"):
        explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", methods=["layercam"], resume=True,
                method_options={"layercam": {"eigen_sign": "none"}})


def test_a_run_killed_before_its_manifest_starts_afresh_and_foreign_results_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    summary = explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", resume=True)  # nothing there yet
    assert summary.done == 1 and (out / "run.json").is_file()
    (out / "run.json").unlink()  # results without a manifest: what made them is unknown
    with pytest.raises(InputError, match="no readable run.json"):
        explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", resume=True)


def test_forged_records_never_bring_in_files_from_outside_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu")
    secret = tmp_path / "secret.png"
    _copy(IMAGES / "04_star.png", secret)
    lines = _records(out)
    lines[0]["paths"] = {"overlay": "../secret.png", "map": "01_circle.png.gradcam.npy"}
    (out / "results.jsonl").write_text(json.dumps(lines[0]) + "\n")
    summary = explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu", resume=True)
    assert summary.done == 1 and summary.skipped == 0  # the forged record is not trusted: the image is redone
    assert "secret" not in (out / "report.html").read_text()


def test_one_run_per_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(f"{os.getppid()} {os.uname().nodename}\n")  # a live process holds it
    with pytest.raises(InputError, match=rf"another onnxcam run \(process {os.getppid()}\) is writing"):
        explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu")
    (out / LOCK).write_text(f"999999999 {os.uname().nodename}\n")  # a killed run's lock: taken over
    assert explain(RESNET, [IMAGES / "01_circle.png"], out, device="cpu").done == 1
    assert not (out / LOCK).exists()


@pytest.mark.parametrize("model, options", [
    ("shapes_segmenter.onnx", {}),
    ("shapes_detector.onnx", {"threshold": 0.2, "max_detections": 3}),
    ("shapes_embedder.onnx", {"reference": IMAGES / "01_circle.png"}),
])
def test_every_task_resumes_and_takes_method_options(tmp_path: Path, model: str, options: dict) -> None:
    out = tmp_path / "out"
    args = {"device": "cpu", "methods": ["gradcam", "layercam"], "batch_size": 3,
            "method_options": {"layercam": {"eigen_sign": "activation"}}, **options}
    first = explain(ROOT / "models" / model, [IMAGES], out, **args)
    assert first.failed == 0 or model == "shapes_detector.onnx"
    maps = {p.name: np.load(p) for p in out.glob("*.npy")}
    assert maps and all(np.isfinite(m).all() for m in maps.values())
    # kill-like: drop half of the records from the log, as if the run had died there, then resume
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").unlink()
    (out / "results.jsonl.partial").write_text("\n".join(lines[:len(lines) // 2]) + "\n")
    again = explain(ROOT / "models" / model, [IMAGES], out, resume=True, **args)
    assert again.skipped > 0 and again.done + again.failed > 0
    for name, value in maps.items():
        np.testing.assert_allclose(np.load(out / name), value, atol=1e-6)


def test_a_given_layer_is_used_when_no_default_can_be_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """When the graph hides every feature map's shape (an exporter's If, data-dependent reshapes) there is no
    default layer: the message says to pass one, and passing one works instead of repeating the message."""
    from toy_models import tiny_cnn

    import onnxcam.graph.survey as survey
    from onnxcam import Explainer
    from onnxcam.errors import LayerError

    def no_default(*args: object, **kwargs: object) -> str:
        raise LayerError("the model has no spatial feature map ...: pass --layer with a tensor name")

    monkeypatch.setenv("ONNXCAM_CACHE", str(tmp_path / "cache"))  # facts of this model made afresh
    monkeypatch.setattr(survey, "default_layer", no_default)
    with pytest.raises(LayerError, match="pass --layer"):
        Explainer(tiny_cnn(), device="cpu")
    ex = Explainer(tiny_cnn(), layer="feat", device="cpu")
    assert ex.layer == ["feat"] and ex.explain(np.ones((1, 3, 8, 8), np.float32), "gradcam").shape == (1, 8, 8)
