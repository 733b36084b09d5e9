"""BroadCAM: the ridge fit, the maps on the shapes benchmark, the fit file and its refusals, the CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxcam import cli
from onnxcam.datasets.shapes import write_dataset
from onnxcam.errors import InputError
from onnxcam.explainer import Explainer
from onnxcam.images import preprocess, read_image
from onnxcam.jobs.fit_broadcam import fit_broadcam, fit_weights, read_dataset, ridge, stage_layers
from onnxcam.methods.broadcam import BroadcamFit
from onnxcam.metrics import pointing_game

MODEL = Path(__file__).resolve().parent.parent / "models" / "shapes_resnet.onnx"
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("broadcam")
    write_dataset(root / "train", 100, 11)
    write_dataset(root / "test", 40, 12)
    return root / "train", root / "test"


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(MODEL, device="cpu")


@pytest.fixture(scope="module")
def fitted(explainer: Explainer, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    files, targets, names = read_dataset(explainer, data[0])
    fit = fit_broadcam(explainer, files, targets, labels=names)
    return fit.save(tmp_path_factory.mktemp("fit") / "broadcam.npz")


@pytest.mark.parametrize("n, k", [(60, 12), (8, 30)])  # primal and dual systems
def test_ridge_matches_least_squares_on_the_augmented_system(n: int, k: int) -> None:
    rng = np.random.default_rng(n)
    x, y, penalty = rng.normal(size=(n, k)), rng.normal(size=(n, 3)), 2.5
    stacked_x = np.vstack([x, np.sqrt(penalty) * np.eye(k)])
    stacked_y = np.vstack([y, np.zeros((k, 3))])
    expected = np.linalg.lstsq(stacked_x, stacked_y, rcond=None)[0]
    np.testing.assert_allclose(ridge(x, y, penalty), expected, rtol=1e-9, atol=1e-10)


def test_fit_weights_map_back_to_raw_features() -> None:
    # W and the intercept on raw features predict what the ridge on standardised features predicts
    rng = np.random.default_rng(0)
    features = rng.gamma(2.0, size=(40, 6)) * np.array([1, 10, 0.1, 5, 2, 1])
    targets = np.eye(3)[rng.integers(0, 3, 40)]
    weights, intercept = fit_weights(features, targets, 5.0)
    z = (features - features.mean(0)) / features.std(0)
    expected = z @ ridge(z, targets - targets.mean(0), 5.0) + targets.mean(0)
    np.testing.assert_allclose(features @ weights.T + intercept, expected, atol=1e-10)


def test_stage_layers_are_the_last_map_of_each_resolution(explainer: Explainer) -> None:
    assert stage_layers(explainer) == [f"/stage{i}/stage{i}.1/Relu_1_output_0" for i in (1, 2, 3)]


def test_fit_file_round_trip(fitted: Path, explainer: Explainer) -> None:
    fit = BroadcamFit.load(fitted)
    assert fit.classes == 8 and fit.images == 100 and fit.ridge == 50.0
    assert fit.channels == [16, 32, 64] and fit.weights.shape == (8, 112)
    assert fit.labels[0] == "circle" and fit.model_id == explainer.model_id


def test_maps_localise_the_labelled_object(fitted: Path, explainer: Explainer, data: tuple[Path, Path]) -> None:
    files, targets, _ = read_dataset(explainer, data[1])
    x = np.concatenate([preprocess(read_image(f), explainer.preprocessing) for f in files])
    classes = targets.argmax(axis=1)
    masks = np.stack([cv2.imread(str(f.parent.parent / "masks" / f.name), cv2.IMREAD_GRAYSCALE) for f in files])
    regions = masks == (classes + 1)[:, None, None]
    maps = explainer.explain(x, "broadcam", classes, fit=fitted)
    assert maps.shape == (len(files), 96, 96) and 0 <= maps.min() and maps.max() <= 1
    hits = np.nanmean(pointing_game(maps, regions))
    chance = regions.mean()  # a uniformly random point lands on the object this often
    assert chance < 0.2 and hits > 0.5, (hits, chance)


def test_another_model_is_refused(fitted: Path, tmp_path: Path) -> None:
    other = onnx.load(str(MODEL))
    other.doc_string = "a different model"
    path = tmp_path / "other.onnx"
    onnx.save(other, str(path))
    x = np.zeros((1, 3, 96, 96), np.float32)
    with pytest.raises(InputError, match="another model"):
        Explainer(path, device="cpu").explain(x, "broadcam", fit=fitted)


def test_missing_fit_option_is_explained(explainer: Explainer) -> None:
    with pytest.raises(InputError, match="fit broadcam"):
        explainer.explain(np.zeros((1, 3, 96, 96), np.float32), "broadcam")


def _labels(folder: Path, rows: list[str]) -> Path:
    path = folder / "bad.csv"
    path.write_text("file,class\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_bad_labels_are_refused(explainer: Explainer, data: tuple[Path, Path]) -> None:
    train = data[0]
    with pytest.raises(InputError, match="missing.png"):
        read_dataset(explainer, train, _labels(train, ["images/missing.png,circle"]))
    with pytest.raises(InputError, match="out of range"):
        read_dataset(explainer, train, _labels(train, ["images/shape_00000.png,9"]))
    with pytest.raises(InputError, match="at least as many images as classes"):
        read_dataset(explainer, train, _labels(train, [f"images/shape_0000{i}.png,{i}" for i in range(3)]))


def test_cli_fit_then_explain(data: tuple[Path, Path], tmp_path: Path) -> None:
    fit = tmp_path / "fit.npz"
    result = runner.invoke(cli.app, ["fit", "broadcam", str(MODEL), str(data[0]), "--ridge", "20", "--out", str(fit),
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert BroadcamFit.load(fit).ridge == 20.0
    image = data[1] / "images" / "shape_00000.png"
    out = tmp_path / "out"
    result = runner.invoke(cli.app, ["explain", str(MODEL), str(image), "--method", "broadcam", "--fit", str(fit),
                                     "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = np.load(out / "shape_00000.png.broadcam.npy")
    assert saved.shape == (96, 96) and saved.max() == pytest.approx(1.0)


def test_cli_refusals_exit_with_2(data: tuple[Path, Path], fitted: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(MODEL))
    proto.doc_string = "a different model"
    onnx.save(proto, str(other))
    image = data[1] / "images" / "shape_00000.png"
    result = runner.invoke(cli.app, ["explain", str(other), str(image), "--method", "broadcam", "--fit", str(fitted),
                                     "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert result.exit_code == 2 and "another model" in result.output
    bad = _labels(data[0], ["images/nothere.png,circle"])
    result = runner.invoke(cli.app, ["fit", "broadcam", str(MODEL), str(data[0]), "--ground-truth", str(bad),
                                     "--out", str(tmp_path / "f.npz"), "--device", "cpu"])
    assert result.exit_code == 2 and "nothere.png" in result.output and "deprecated" not in result.output
    # the flag's earlier name, as evaluate's: still read, with a warning
    result = runner.invoke(cli.app, ["fit", "broadcam", str(MODEL), str(data[0]), "--labels", str(bad),
                                     "--out", str(tmp_path / "f.npz"), "--device", "cpu"])
    assert result.exit_code == 2 and "nothere.png" in result.output
    assert "'fit broadcam --labels' is deprecated; use --ground-truth" in result.output


def test_transformer_token_layers_are_refused_and_not_defaults() -> None:
    vit = Explainer(MODEL.parent / "torch_exports" / "vit_op18.onnx")
    tokens = [t.name for t in vit.tensors if t.layout in ("BTC", "BCT")]
    assert tokens and not set(stage_layers(vit)) & set(tokens)
    from onnxcam.errors import LayerError
    from onnxcam.jobs.fit_broadcam import _layouts

    with pytest.raises(LayerError, match="token tensor"):
        _layouts(vit, tokens[-1:])
