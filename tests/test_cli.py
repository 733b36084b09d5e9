"""The `onnxcam` CLI and `explain_images`: outputs, failures, resume, layouts, labels, inspect, methods, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from toy_models import nhwc_cnn, tiny_cnn
from typer.testing import CliRunner

from onnxcam import cli
from onnxcam.errors import InputError
from onnxcam.files import collect_inputs
from onnxcam.jobs.explain import explain_images

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "models" / "torch_exports" / "resnet_op13.onnx"
IMAGES = ROOT / "examples" / "images"
runner = CliRunner()


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _png(path: Path, h: int = 40, w: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    _png(root / "good.png", 40, 30, 1)
    _png(root / "a" / "b" / "deep.png", 50, 70, 2)
    (root / "a" / "random.png").write_bytes(np.random.default_rng(3).integers(0, 256, 500, np.uint8).tobytes())
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "text.jpg").write_text("this is not a jpeg")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


def test_single_image(tmp_path: Path) -> None:
    image = _png(tmp_path / "one.png", 41, 29)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(RESNET), str(image), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cam = np.load(out / "one.png.gradcam.npy")
    assert cam.dtype == np.float32 and cam.shape == (41, 29) and 0 <= cam.min() and cam.max() <= 1
    assert cv2.imread(str(out / "one.png.gradcam.png")).shape == (41, 29, 3)
    (rec,) = _results(out)
    assert rec["status"] == "ok" and rec["method"] == "gradcam" and rec["target"] == rec["predicted"]
    assert rec["paths"] == {"overlay": "one.png.gradcam.png", "map": "one.png.gradcam.npy"}
    report = (out / "report.html").read_text()
    assert "one.png.gradcam.png" in report and (out / "report_files" / "one.png.gradcam.jpg").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith((".tmp", ".partial"))]


def test_folder_with_bad_files_and_resume(tmp_path: Path, mixed_folder: Path) -> None:
    out = tmp_path / "out"
    args = ["explain", str(RESNET), str(mixed_folder), "-o", str(out), "-m", "gradcam,eigencam", "--device", "cpu",
            "-b", "2"]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    for stem in ("good", "a/b/deep"):
        for method in ("gradcam", "eigencam"):
            assert (out / f"{stem}.png.{method}.png").is_file() and (out / f"{stem}.png.{method}.npy").is_file()
    assert np.load(out / "a/b/deep.png.gradcam.npy").shape == (50, 70)
    records = _results(out)
    failed = {Path(r["image"]).name: r["error"] for r in records if r["status"] == "failed"}
    assert set(failed) == {"random.png", "empty.png", "text.jpg"}
    assert "empty" in failed["empty.png"] and "not a readable image" in failed["text.jpg"]
    assert sum(r["status"] == "ok" for r in records) == 4  # 2 images x 2 methods
    assert "failed" in result.output and "Traceback" not in result.output

    before = (out / "good.png.gradcam.npy").stat().st_mtime_ns
    again = runner.invoke(cli.app, [*args, "--resume"])
    assert again.exit_code == 1  # the bad files are tried again and fail again
    statuses = [r["status"] for r in _results(out)]
    assert statuses.count("skipped") == 4 and statuses.count("ok") == 0
    assert (out / "good.png.gradcam.npy").stat().st_mtime_ns == before
    assert "good.png" in (out / "report.html").read_text()

    # An incomplete output (truncated .npy) is redone.
    npy = out / "good.png.eigencam.npy"
    npy.write_bytes(npy.read_bytes()[:-10])
    runner.invoke(cli.app, [*args, "--resume"])
    redone = [r for r in _results(out) if r["image"].endswith("good.png")]
    assert {r["status"] for r in redone} == {"ok"} and np.load(npy).shape == (40, 30)


def test_report_limit(tmp_path: Path) -> None:
    from onnxcam.jobs.explain import Summary, write_report

    _png(tmp_path / "a.png")
    records = [{"image": f"img{i}.png", "status": "ok", "paths": {"overlay": "a.png"}} for i in range(5)]
    records.insert(3, {"image": "bad.png", "status": "failed", "error": "broken"})
    summary = Summary(out=tmp_path, records=records)
    write_report(summary, "t", {}, limit=2)
    page = (tmp_path / "report.html").read_text()
    assert "img1.png" in page and "img2.png" not in page and "broken" in page and "3 of 6 records" in page


def test_resume_after_complete_run_skips_everything(tmp_path: Path) -> None:
    inputs = [_png(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out"
    first = explain_images(RESNET, [tmp_path / "in"], out, device="cpu")
    assert (first.done, first.failed, first.skipped) == (3, 0, 0)
    second = explain_images(RESNET, [str(p) for p in inputs], out, device="cpu", resume=True)
    assert (second.done, second.failed, second.skipped) == (0, 0, 3)


def test_resume_from_files_alone_and_changed_target(tmp_path: Path) -> None:
    _png(tmp_path / "in" / "x.png")
    out = tmp_path / "in" / "out"  # inside the input folder: its overlays must not become inputs
    assert explain_images(RESNET, [tmp_path / "in"], out, device="cpu").done == 1
    assert explain_images(RESNET, [tmp_path / "in"], out, device="cpu").done == 1
    assert explain_images(RESNET, [tmp_path / "in"], out, device="cpu", resume=True).skipped == 1
    (out / "results.jsonl").unlink()  # files alone say nothing of the run that made them: redone
    assert explain_images(RESNET, [tmp_path / "in"], out, device="cpu", resume=True).done == 1
    first = explain_images(RESNET, [tmp_path / "in"], out, device="cpu", target=5)
    assert first.done == 1 and first.records[0]["target"] == 5
    assert explain_images(RESNET, [tmp_path / "in"], out, device="cpu", target=5, resume=True).skipped == 1
    with pytest.raises(InputError, match=r"--resume: this run differs .*targets .*use another --out"):
        explain_images(RESNET, [tmp_path / "in"], out, device="cpu", target=6, resume=True)


def test_subprocess_glob_and_top_k(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "onnxcam.cli", "explain", str(RESNET), str(IMAGES / "0[12]_*.png"),
                           "--out", str(out), "--top-k", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    records = _results(out)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    first = [r for r in records if r["image"].endswith("01_circle.png")]
    assert first[0]["target"] == first[0]["predicted"] and first[1]["target"] != first[0]["target"]
    assert (out / f"01_circle.png.gradcam.c{first[1]['target']}.npy").is_file()
    assert "report:" in proc.stdout


def test_nhwc_model(tmp_path: Path) -> None:
    model = tmp_path / "nhwc.onnx"
    onnx.save(nhwc_cnn(size=16), str(model))
    image = _png(tmp_path / "img.png", 23, 31)
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(model), str(image), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cam = np.load(out / "img.png.gradcam.npy")
    assert cam.shape == (23, 31) and cam.max() > 0


def test_uint8_nhwc_model(tmp_path: Path) -> None:
    """A model fed raw uint8 pixels, channels last (as many TF exports): no normalisation, NHWC from the shape."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Cast", ["img"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["logits"])]
    graph = helper.make_graph(nodes, "u8", [helper.make_tensor_value_info("img", TensorProto.UINT8, ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    path = tmp_path / "u8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    info = json.loads(runner.invoke(cli.app, ["inspect", str(path), "--json"]).output)
    assert info["preprocessing"]["layout"] == "NHWC" and info["preprocessing"]["dtype"] == "uint8"
    image = _png(tmp_path / "img.png", 20, 24)
    summary = explain_images(path, [image], tmp_path / "out", device="cpu")
    assert summary.done == 1, summary.records
    assert np.load(tmp_path / "out" / "img.png.gradcam.npy").shape == (20, 24)


def test_labels_and_targets(tmp_path: Path) -> None:
    image = _png(tmp_path / "img.png")
    names = [f"class <{i}>" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    base = ["explain", str(RESNET), str(image), "-o", str(out), "--device", "cpu", "--labels",
            str(tmp_path / "labels.txt")]
    result = runner.invoke(cli.app, [*base, "--target", "class <7>"])
    assert result.exit_code == 0, result.output
    (rec,) = _results(out)
    assert rec["target"] == 7 and rec["label"] == "class <7>" and rec["predicted_label"] in names
    report = (out / "report.html").read_text()
    assert "class \\u003c7\\u003e" in report and "class <7>" not in report  # escaped in the page's data
    assert runner.invoke(cli.app, [*base, "--target", "3"]).exit_code == 0 and _results(out)[0]["target"] == 3

    (tmp_path / "short.txt").write_text("a\nb\n")
    bad = runner.invoke(cli.app, ["explain", str(RESNET), str(image), "-o", str(out), "--labels",
                                  str(tmp_path / "short.txt")])
    assert bad.exit_code == 2 and "2 labels but the model has 10 classes" in bad.output
    unknown = runner.invoke(cli.app, [*base, "--target", "zebra"])
    assert unknown.exit_code == 2 and "no class labelled 'zebra'" in unknown.output

    # labels from the model's metadata
    proto = onnx.load(str(RESNET))
    helper.set_model_props(proto, {"labels": json.dumps([f"m{i}" for i in range(10)])})
    onnx.save(proto, str(tmp_path / "labelled.onnx"))
    summary = explain_images(tmp_path / "labelled.onnx", [image], tmp_path / "o2", target="m4", device="cpu")
    assert summary.records[0]["target"] == 4 and summary.records[0]["label"] == "m4"


@pytest.mark.parametrize("args, words", [
    (["explain", str(RESNET), str(IMAGES), "--method", "gradcamm"], "unknown method 'gradcamm'"),
    (["explain", str(RESNET), "/no/such/dir"], "is not a file, folder"),
    (["explain", str(RESNET), str(IMAGES), "--target", "1", "--top-k", "2"], "not both"),
    (["explain", str(RESNET), str(IMAGES), "--layer", "nope"], "no tensor named 'nope'"),
    (["explain", str(RESNET), str(IMAGES), "--preset", "imagenett"], "did you mean 'imagenet'"),
    (["explain", str(RESNET), str(IMAGES), "--batch-size", "0"], ""),
    (["explain", "/no/model.onnx", str(IMAGES)], ""),
    (["explain", str(RESNET)], ""),
    (["inspect"], ""),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = runner.invoke(cli.app, [*args, "--out", str(tmp_path / "o")] if args[0] == "explain" and len(args) > 2
                           else args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["explain", str(RESNET), str(IMAGES), "-m", "nope", "--debug", "-o",
                                     str(tmp_path)])
    assert result.exit_code != 0 and type(result.exception).__name__ == "InputError"


def test_inspect_json() -> None:
    result = runner.invoke(cli.app, ["inspect", str(RESNET), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["inputs"][0]["shape"] == ["batch", 3, 64, 64] and info["outputs"][0]["shape"] == ["batch", 10]
    assert info["preprocessing"]["size"] == [64, 64]
    defaults = [layer for layer in info["layers"] if layer["default"]]
    assert [d["name"] for d in defaults] == [info["default_layer"]]
    assert "gradcam" in info["methods"]["working"] and info["methods"]["gradient_error"] is None
    table = runner.invoke(cli.app, ["inspect", str(RESNET)])
    assert table.exit_code == 0 and "default layer" in table.output


def test_inspect_names_missing_gradient(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Atan", ["conv"], ["bent"]),
             helper.make_node("GlobalAveragePool", ["bent"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["logits"])]
    graph = helper.make_graph(nodes, "atan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")])
    path = tmp_path / "atan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    info = json.loads(runner.invoke(cli.app, ["inspect", str(path), "--json"]).output)
    assert "Atan" in info["methods"]["gradient_error"]
    assert "gradcam" not in info["methods"]["working"] and "eigencam" in info["methods"]["working"]


def test_inspect_softmax_model(tmp_path: Path) -> None:
    path = tmp_path / "soft.onnx"
    onnx.save(tiny_cnn(softmax=True, size=8), str(path))
    info = json.loads(runner.invoke(cli.app, ["inspect", str(path), "--json"]).output)
    assert info["score"] == {"output": "probs", "tensor": "logits", "before_softmax": True}
    assert info["preprocessing"]["size"] == [8, 8]


def test_collect_images_names(tmp_path: Path) -> None:
    for root in ("r1", "r2"):
        _png(tmp_path / root / "same" / "a.png")
    (tmp_path / "r1" / "skip.txt").write_text("x")
    jobs = collect_inputs([tmp_path / "r1", tmp_path / "r2", str(tmp_path / "r1" / "**" / "*.png")])
    assert [j.name for j in jobs] == ["same/a.png", "same/a.png~2"]  # the glob's match is a duplicate file, dropped


def test_methods_table() -> None:
    result = runner.invoke(cli.app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "gradcam" in result.output and "eigencam" in result.output


def test_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcam.cli.demo as demo

    if not demo.DEMO_MODEL.is_file():  # the bundled model may not be built in this checkout
        monkeypatch.setattr(demo, "DEMO_MODEL", RESNET)
    result = runner.invoke(cli.app, ["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "report.html").is_file() and "report.html" in result.output
    assert len(_results(tmp_path / "demo")) == len(list(IMAGES.glob("*.png")))


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    image = _png(tmp_path / "p.png")
    explain_images(RESNET, [image], tmp_path / "o", device="cpu")
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # created by open(): 0o666 minus the umask
    for name in ("report.html", "results.jsonl", "p.png.gradcam.png", "p.png.gradcam.npy"):
        assert os.stat(tmp_path / "o" / name).st_mode & 0o777 == os.stat(reference).st_mode & 0o777


def test_method_options_reach_the_method_and_typos_are_refused(tmp_path: Path) -> None:
    demo = ROOT / "models" / "shapes_resnet.onnx"
    image = str(IMAGES / "01_circle.png")
    maps = {}
    for name, extra in (("default", []), ("epsilon", ["--option", "rule=epsilon", "--option", "epsilon=0.5"])):
        out = tmp_path / name
        result = runner.invoke(cli.app, ["explain", str(demo), image, "-m", "relevancecam", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        maps[name] = np.load(out / "01_circle.png.relevancecam.npy")
    assert np.abs(maps["default"] - maps["epsilon"]).max() > 1e-3  # the option changed the rule
    typo = runner.invoke(cli.app, ["explain", str(demo), image, "--option", "rulez=epsilon", "--out",
                                   str(tmp_path / "typo")])
    assert typo.exit_code == 2 and "rulez" in typo.output


def test_task_models_take_resume_and_refuse_top_k_with_the_reason(tmp_path: Path) -> None:
    args = ["explain", str(ROOT / "models" / "shapes_segmenter.onnx"), str(IMAGES / "01_circle.png"),
            "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert runner.invoke(cli.app, args).exit_code == 0
    again = runner.invoke(cli.app, [*args, "--resume"])
    assert again.exit_code == 0 and _results(tmp_path / "o")[0]["status"] == "skipped"
    refused = runner.invoke(cli.app, [*args, "--top-k", "2"])
    assert refused.exit_code == 2 and "top_k explains the k best classes of a classifier" in refused.output


def test_inspect_table_always_shows_the_default_layer() -> None:
    vit = ROOT / "models" / "torch_exports" / "vit_op14.onnx"  # its default is 23 layers from the end
    info = json.loads(runner.invoke(cli.app, ["inspect", str(vit), "--json"]).output)
    assert info["default_layer"] not in [d["name"] for d in info["layers"][-15:]]  # the case this guards
    result = runner.invoke(cli.app, ["inspect", str(vit)], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "│ * │" in line)
    assert info["default_layer"] in row


def test_summary_keeps_failures_and_a_bounded_number_of_records(monkeypatch) -> None:
    import onnxcam.jobs.records as ei

    monkeypatch.setattr(ei, "REPORT_LIMIT", 3)
    summary = ei.Summary()
    for i in range(10):
        summary.add({"status": "failed" if i % 4 == 0 else "ok", "i": i})
    assert summary.total_records == 10
    assert [r["i"] for r in summary.records] == [0, 1, 2, 3, 4, 8]  # every failure, the first 3 others
