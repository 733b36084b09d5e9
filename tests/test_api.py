"""The Python API a pytorch-grad-cam user expects: load_images (and the way back to the originals),
Explainer.preprocess, overlay (show_cam_on_image), save_report, Explainer as a context manager, targets by class
name, any batch size on a fixed-batch model, docstrings with an example, and a cheap `import onnxcam`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam.report import read_data

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
LABELS = ["circle", "square", "triangle", "star", "cross", "ring", "checker", "stripes"]  # the model's metadata


@pytest.fixture(scope="module")
def ex() -> onnxcam.Explainer:
    with onnxcam.Explainer(MODEL, device="cpu") as explainer:
        yield explainer


def test_load_images_gives_the_batch_and_the_way_back(ex: onnxcam.Explainer, tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    cv2.imwrite(str(wide), cv2.resize(cv2.imread(str(IMAGES / "03_ring.png")), (150, 60)))
    batch = onnxcam.load_images([IMAGES / "01_circle.png", wide], ex)
    assert batch.x.shape == (2, 3, 96, 96) and batch.x.dtype == np.float32
    assert [im.shape for im in batch.images] == [(96, 96, 3), (60, 150, 3)] and len(batch) == 2
    assert batch.names == ["01_circle.png", "wide.png"] and batch.preprocessing == ex.preprocessing
    np.testing.assert_array_equal(batch.x, ex.preprocess(batch.images))  # the same as Explainer.preprocess
    maps = ex.explain(batch.x, "gradcam")
    back = batch.to_original(maps)
    assert [m.shape for m in back] == [(96, 96), (60, 150)] and all(0 <= m.min() and m.max() <= 1 for m in back)
    np.testing.assert_allclose(back[1], cv2.resize(maps[1], (150, 60), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    pictures = batch.overlays(maps)
    assert pictures[1].shape == (60, 150, 3) and pictures[1].dtype == np.uint8


def test_load_images_from_a_folder_a_preset_and_errors(tmp_path: Path) -> None:
    batch = onnxcam.load_images(IMAGES, "inception", size=(64, 80))
    assert batch.x.shape == (8, 3, 64, 80) and -1.0 <= batch.x.min() and batch.x.max() <= 1.0
    assert onnxcam.load_images(str(IMAGES / "04_star.png")).x.shape == (1, 3, 224, 224)  # imagenet, 224
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(onnxcam.InputError, match="bad.png"):
        onnxcam.load_images([tmp_path / "bad.png"])
    with pytest.raises(onnxcam.InputError, match="did you mean 'imagenet'"):
        onnxcam.load_images(IMAGES, "imagenett")
    with pytest.raises(onnxcam.InputError, match="preprocessing must be"):
        onnxcam.load_images(IMAGES, 3.5)


def test_overlay_is_show_cam_on_image() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    cam = rng.random((10, 10)).astype(np.float32)
    drawn = onnxcam.overlay(rgb, cam, alpha=0.4)
    up = cv2.resize(cam, (30, 40), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.round(255 * up)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    expected = np.round(0.6 * rgb + 0.4 * heat)
    assert drawn.shape == rgb.shape and drawn.dtype == np.uint8
    assert np.abs(drawn.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(onnxcam.overlay(rgb / 255.0, cam[None], alpha=0.4), drawn)  # float [0, 1]
    gray = onnxcam.overlay(rgb[:, :, 0], cam, colormap="viridis")
    assert gray.shape == (40, 30, 3)
    with pytest.raises(onnxcam.InputError, match=r"\[0, 1\]"):
        onnxcam.overlay(rgb * 2.0, cam)
    with pytest.raises(onnxcam.InputError, match="colour map"):
        onnxcam.overlay(rgb, cam, colormap="rainbow")
    with pytest.raises(onnxcam.InputError, match="one map"):
        onnxcam.overlay(rgb, np.zeros((2, 4, 4)))


def test_save_report_for_maps_made_in_python(ex: onnxcam.Explainer, tmp_path: Path) -> None:
    batch = onnxcam.load_images([IMAGES / "03_ring.png", IMAGES / "04_star.png"], ex)
    scores = ex.scores(batch.x)
    maps = {m: ex.explain(batch.x, m) for m in ("gradcam", "eigencam")}
    report = onnxcam.save_report(tmp_path / "out", batch, maps, scores=scores, labels=ex.labels,
                                 info={"model": MODEL.name}, method_seconds={"gradcam": 0.5})
    assert report == tmp_path / "out" / "report.html"
    data = read_data(report)
    assert data["methods"] == ["gradcam", "eigencam"] and [im[1] for im in data["images"]] == ["03_ring.png",
                                                                                              "04_star.png"]
    for i, image in enumerate(data["images"]):
        k = int(scores[i].argmax())
        ((target, probability, logit, cells),) = image[5]  # no targets given: the predicted class
        assert target == ex.labels[k] and abs(logit - float(scores[i, k])) < 1e-3 and 0.3 < probability <= 1
        assert [c[1] for c in cells] == [f"{image[1]}.gradcam.png", f"{image[1]}.eigencam.png"]
        for cell in cells:
            assert (tmp_path / "out" / cell[1]).is_file()
    page = report.read_text()
    assert "shapes_resnet.onnx" in page and "0.50 s" in page


def test_save_report_groups_repeated_images_into_rows(ex: onnxcam.Explainer, tmp_path: Path) -> None:
    rgb = onnxcam.load_images(IMAGES / "08_ring_triangle.png", ex).images[0]
    x = ex.preprocess([rgb] * 3)
    maps = ex.explain(x, "gradcam", targets=["ring", "triangle", "star"])
    report = onnxcam.save_report(tmp_path / "out", [rgb] * 3, maps, targets=["ring", "triangle", "star"],
                                 scores=ex.scores(x), labels=ex.labels, names=["ring_triangle.png"] * 3)
    (image,) = read_data(report)["images"]
    assert [row[0] for row in image[5]] == ["ring", "triangle", "star"]  # one section, one row per target
    assert [row[3][0][1] for row in image[5]] == [f"ring_triangle.png.t{k}.map.png" for k in range(3)]
    with pytest.raises(onnxcam.InputError, match="3 map maps for 2 images|maps for 2 images"):
        onnxcam.save_report(tmp_path / "bad", [rgb] * 2, maps)


def test_explainer_is_a_context_manager_that_releases_its_sessions() -> None:
    with onnxcam.Explainer(MODEL, device="cpu") as ex:
        x = onnxcam.load_images(IMAGES / "01_circle.png", ex).x
        first = ex.explain(x, "gradcam")
        assert ex.view.sessions  # made on first use and kept
    assert not ex.view.sessions  # released by the with block
    np.testing.assert_array_equal(ex.explain(x, "gradcam"), first)  # usable again: sessions are made anew
    ex.close()


def test_targets_by_class_name(ex: onnxcam.Explainer) -> None:
    x = onnxcam.load_images([IMAGES / "08_ring_triangle.png"] * 2, ex).x
    by_name = ex.explain(x, "gradcam", targets=["ring", "triangle"])
    by_index = ex.explain(x, "gradcam", targets=[LABELS.index("ring"), LABELS.index("triangle")])
    np.testing.assert_array_equal(by_name, by_index)
    assert not np.allclose(by_name[0], by_name[1])
    np.testing.assert_array_equal(ex.explain(x, "gradcam", targets="ring"), by_index[[0, 0]])
    with pytest.raises(onnxcam.InputError, match="did you mean|not a class"):
        ex.explain(x, "gradcam", targets=["rnig", "ring"])


def test_a_fixed_batch_model_takes_any_batch(ex: onnxcam.Explainer, tmp_path: Path) -> None:
    model = onnx.load(str(MODEL))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # an export with batch 1
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "batch1.onnx"
    onnx.save(model, str(fixed))
    x = onnxcam.load_images(sorted(IMAGES.glob("0[1-3]*.png")), ex).x
    with onnxcam.Explainer(fixed, device="cpu") as one:
        assert one.view.batch_limit == 1
        for method in ("gradcam", "scorecam", "ablationcam", "opticam"):
            np.testing.assert_allclose(one.explain(x, method, targets=["ring", 0, 2]),
                                       ex.explain(x, method, targets=["ring", 0, 2]), atol=1e-5)
        np.testing.assert_allclose(one.scores(x), ex.scores(x), atol=1e-5)


def test_help_shows_arguments_shapes_and_an_example() -> None:
    for function in (onnxcam.Explainer, onnxcam.Explainer.explain, onnxcam.load_images, onnxcam.overlay,
                     onnxcam.save_report):
        assert function.__doc__ and len(function.__doc__) > 200, function
    assert "Example" in onnxcam.Explainer.__doc__ and "(N, H, W)" in onnxcam.Explainer.explain.__doc__
    assert "Example" in onnxcam.load_images.__doc__ and "show_cam_on_image" in onnxcam.overlay.__doc__


def test_import_onnxcam_stays_cheap() -> None:
    code = ("import sys, onnxcam; heavy = ['rich', 'typer', 'torch', 'scipy', 'onnxcam.jobs', 'onnxcam.report', "
            "'onnxcam.cli']; print(json.dumps([m for m in heavy if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=True)
    assert json.loads(done.stdout) == []
