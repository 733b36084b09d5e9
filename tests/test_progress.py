"""Progress that moves: the bar advances inside slow methods (Score-CAM's masked batches, Ablation-CAM's channel
chunks, Opti-CAM's iterations), and per-record seconds are measured per method, so a slow method shows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.jobs.explain import explain

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"


def test_the_bar_advances_during_one_slow_scorecam_image(tmp_path: Path) -> None:
    updates: list[tuple[float, float]] = []   # (time, images done)
    finished: list[float] = []
    summary = explain(MODEL, [IMAGES / "04_star.png"], tmp_path / "out", methods=["scorecam"], device="cpu",
                      method_options={"scorecam": {"batch_size": 4}},
                      on_progress=lambda done: updates.append((time.perf_counter(), done)),
                      on_image=lambda _record: finished.append(time.perf_counter()))
    assert summary.done == 1 and len(finished) == 1
    during = [done for when, done in updates if when < finished[0] and 0 < done < 1]
    assert len(during) >= 8, updates  # one update per masked batch of 4 channels, before the image is written
    assert during == sorted(during) and len(set(during)) == len(during)
    assert updates[-1][1] == 1.0


def test_the_cli_bar_is_updated_inside_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxcam.cli import common

    seen: list[float] = []
    original = common.ExplainProgress.on_progress

    def counting(self: common.ExplainProgress, images: float) -> None:
        seen.append(images)
        original(self, images)
        assert self.bar.tasks[0].completed == images  # the bar itself moved

    monkeypatch.setattr(common.ExplainProgress, "on_progress", counting)
    result = CliRunner().invoke(cli.app, ["explain", str(MODEL), str(IMAGES / "04_star.png"), "-m", "ablationcam",
                                          "--option", "batch_size=8", "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len([v for v in seen if 0 < v < 1]) >= 4 and seen[-1] == 1.0


def test_seconds_per_record_are_measured_per_method(tmp_path: Path) -> None:
    images = [IMAGES / "01_circle.png", IMAGES / "05_stripes.png"]
    summary = explain(MODEL, images, tmp_path / "out", methods=["gradcam", "scorecam"], device="cpu")
    records = [r for r in summary.records if r["status"] == "ok"]
    fast = [r["seconds"] for r in records if r["method"] == "gradcam"]
    slow = [r["seconds"] for r in records if r["method"] == "scorecam"]
    assert len(fast) == len(slow) == 2
    assert min(slow) > 3 * max(fast), (fast, slow)  # each record carries its own method's share, not an average
    assert summary.method_seconds["scorecam"] > 3 * summary.method_seconds["gradcam"]


@pytest.mark.parametrize(("method", "options", "least"), [
    ("scorecam", {"batch_size": 8}, 8),
    ("ablationcam", {"batch_size": 8}, 8),
    ("opticam", {"iterations": 6, "early_stop": False}, 6),
    ("gradcam", {}, 1),
])
def test_explainer_reports_progress(method: str, options: dict, least: int) -> None:
    with onnxcam.Explainer(MODEL, device="cpu") as ex:
        x = onnxcam.load_images([IMAGES / "01_circle.png", IMAGES / "03_ring.png"], ex).x
        seen: list[float] = []
        maps = ex.explain(x, method, progress=seen.append, **options)
    assert maps.shape == (2, 96, 96)
    assert len(seen) >= least and seen == sorted(seen) and seen[-1] == 1.0 and 0 <= seen[0]


def test_progress_spans_the_parts_of_a_fixed_batch_model(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(MODEL))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # an export with batch 1
    fixed = tmp_path / "batch1.onnx"
    onnx.save(model, str(fixed))
    with onnxcam.Explainer(fixed, device="cpu") as ex:
        x = onnxcam.load_images(sorted(IMAGES.glob("0[1-3]*.png")), ex).x
        seen: list[float] = []
        maps = ex.explain(x, "gradcam", progress=seen.append)
    assert maps.shape[0] == 3
    np.testing.assert_allclose(seen, [1 / 3, 2 / 3, 1.0])  # one part per image, in order
