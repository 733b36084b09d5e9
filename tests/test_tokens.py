"""Transformer token tensors as CAM layers (onnxcam/tokens.py): grid inference, reshapes both ways, the catalogue's
token layouts (B x T x C, B x C x T, Swin's B x h x w x C), the class-token default layer, and every method on the
committed ViT exports (models/torch_exports/vit_op{14,18}.onnx)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from onnxcam import cli
from onnxcam.datasets.shapes import generate
from onnxcam.errors import InputError, LayerError
from onnxcam.explainer import Explainer
from onnxcam.graph.catalogue import catalogue
from onnxcam.graph.load import load_model
from onnxcam.images import preprocess
from onnxcam.methods.postprocess import normalise
from onnxcam.tokens import TokenGrid, TokenOptions, TokenView, grids, infer_grid, parse_grid, runtime_layout

EXPORTS = Path(__file__).resolve().parent.parent / "models" / "torch_exports"
VIT = {opset: EXPORTS / f"vit_op{opset}.onnx" for opset in (14, 18)}


# --- grid inference -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tokens", "size", "expected"), [
    (17, (32, 32), (4, 4, 1)),        # torchvision ViT of the exports: patch 8, class token
    (197, (224, 224), (14, 14, 1)),   # ViT-B/16
    (198, (224, 224), (14, 14, 2)),   # DeiT: class + distillation tokens
    (261, (224, 224), (16, 16, 5)),   # DINOv2 with 4 registers, patch 14
    (49, (224, 224), (7, 7, 0)),      # Swin's last stage, no class token
    (16, (32, 32), (4, 4, 0)),
    (9, (64, 32), (4, 2, 1)),         # non-square input, patch 16
    (37, (96, 96), (6, 6, 1)),
])
def test_infer_grid(tokens: int, size: tuple[int, int], expected: tuple[int, int, int]) -> None:
    grid = infer_grid(tokens, size)
    assert (grid.h, grid.w, grid.extra) == expected


def test_grids_need_one_patch_size() -> None:
    assert grids(16, (32, 32)) == [(4, 4)]
    assert grids(8, (64, 32)) == [(4, 2)]
    assert grids(8, (32, 32)) == []           # 8 patches make no square-patch grid of a square image
    assert grids(36, (None, None)) == [(6, 6)]  # unknown input size: square grids
    assert grids(1, (32, 32)) == []           # one patch is no map


def test_ambiguous_grid_names_the_fix() -> None:
    # 17 tokens over 96x96: 4x4 patches of 24 after 1 class token, or 3x3 patches of 32 after 8 extra tokens
    with pytest.raises(LayerError, match=r"several grids .*4x4 after 1.*3x3 after 8.*grid=\(h, w\)"):
        infer_grid(17, (96, 96), layer="blocks")
    assert infer_grid(17, (96, 96), TokenOptions(grid=(4, 4))) == TokenGrid(4, 4, 1)
    assert infer_grid(17, (96, 96), TokenOptions(extra_tokens=8)) == TokenGrid(3, 3, 8)


def test_no_grid_and_bad_options() -> None:
    with pytest.raises(LayerError, match="30 tokens.*no grid.*--grid HxW"):
        infer_grid(30, (32, 32))
    with pytest.raises(LayerError, match="does not fit"):
        infer_grid(17, (32, 32), TokenOptions(grid=(5, 5)))
    with pytest.raises(LayerError, match="does not fit"):
        infer_grid(17, (32, 32), TokenOptions(grid=(4, 4), extra_tokens=2))
    with pytest.raises(InputError):
        TokenOptions(extra_tokens_at="middle")
    with pytest.raises(InputError):
        TokenOptions(grid=(0, 4))


def test_runtime_layout_of_layers_withoutstatic_shapes() -> None:
    # dynamic TorchScript exports leave some layers without a static shape; their values' shape decides
    assert runtime_layout((2, 17, 32), (32, 32)) == "BTC"
    assert runtime_layout((2, 32, 16), (32, 32)) == "BCT"
    assert runtime_layout((2, 8, 8, 48), (64, 64)) == "NHWC"   # Swin's final norm
    assert runtime_layout((2, 48, 8, 8), (64, 64)) == "NCHW"
    assert runtime_layout((2, 4, 17, 16), (32, 32)) is None    # (batch, heads, tokens, d): no grid either way


def test_parse_grid() -> None:
    assert parse_grid("14x14") == (14, 14)
    assert parse_grid("7X5") == (7, 5)
    assert parse_grid("12") == (12, 12)
    with pytest.raises(InputError, match="HxW"):
        parse_grid("14by14")


@pytest.mark.parametrize("layout", ["BTC", "BCT"])
@pytest.mark.parametrize("at", ["start", "end"])
def test_view_round_trip(layout: str, at: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((2, 3 * 4 + 2, 5)).astype(np.float32)  # 3x4 grid, 2 extra tokens, 5 channels
    original = tokens if layout == "BTC" else tokens.transpose(0, 2, 1).copy()
    view = TokenView(layout, TokenGrid(3, 4, 2, at), original)
    nchw = view.to_nchw(original)
    patches = tokens[:, 2:] if at == "start" else tokens[:, :12]
    assert nchw.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(nchw[1, :, 1, 2], patches[1, 1 * 4 + 2])  # row-major patches
    for image in (0, 1):
        back = view.from_nchw(nchw[image:image + 1], image)
        np.testing.assert_array_equal(back, original[image:image + 1])
    scale = view.channel_scale(np.ones((3, 5, 1, 1), np.float32))
    assert scale.shape == ((3, 1, 5) if layout == "BTC" else (3, 5, 1))


# --- tiny token models ----------------------------------------------------------------------------------------------
def token_model(kind: str, size: int = 16, patch: int = 4, channels: int = 6, extra: int = 1, at: str = "start",
                classes: int = 3) -> onnx.ModelProto:
    """Patch-embedding conv, then tokens in `kind` layout ("BTC" with `extra` input-dependent class tokens, "BCT",
    "NHWC"), a channel mix, and a head that averages every token (class tokens included) then a linear layer.
    The layer to explain is 'tokens'; its layout comes from the graph, not from a conv."""
    rng = np.random.default_rng(3)
    weights: dict[str, np.ndarray] = {
        "w_patch": rng.standard_normal((channels, 3, patch, patch)).astype(np.float32) / patch,
        "w_mix": rng.standard_normal((channels, channels)).astype(np.float32) / channels ** 0.5,
        "w_head": rng.standard_normal((channels, classes)).astype(np.float32),
        "flat_shape": np.array([0, channels, -1], np.int64),
        "cls": rng.standard_normal((1, max(extra, 1), channels)).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["input", "w_patch"], ["patches"], strides=[patch, patch])]
    if kind == "NHWC":
        nodes += [helper.make_node("Transpose", ["patches"], ["nhwc"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMul", ["nhwc", "w_mix"], ["mixed"]),  # no conv producer: Swin-like
                  helper.make_node("Tanh", ["mixed"], ["tokens"]),
                  helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1, 2], keepdims=0)]
    elif kind == "BCT":
        nodes += [helper.make_node("Reshape", ["patches", "flat_shape"], ["flat"]),
                  helper.make_node("Tanh", ["flat"], ["tokens"]),
                  helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[2], keepdims=0)]
    else:
        # class tokens that depend on the image (their mean plus a learnt offset), so they matter to the score
        nodes += [helper.make_node("Reshape", ["patches", "flat_shape"], ["flat"]),
                  helper.make_node("Transpose", ["flat"], ["seq"], perm=[0, 2, 1]),
                  helper.make_node("ReduceMean", ["seq"], ["seq_mean"], axes=[1], keepdims=1),
                  helper.make_node("Add", ["seq_mean", "cls"], ["cls_tokens"]),
                  helper.make_node("Concat", ["cls_tokens", "seq"] if at == "start" else ["seq", "cls_tokens"],
                                   ["joined"], axis=1),
                  helper.make_node("MatMul", ["joined", "w_mix"], ["mixed"]),
                  helper.make_node("Tanh", ["mixed"], ["tokens"]),
                  helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0)]
    nodes.append(helper.make_node("MatMul", ["pooled", "w_head"], ["logits"]))
    graph = helper.make_graph(nodes, f"tokens_{kind}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _numpy_gradcam(act: np.ndarray, grad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM from NCHW activations and gradients, with the shared conventions (ReLU, min-max, resize)."""
    weights = grad.mean(axis=(2, 3), keepdims=True)
    return normalise((weights * act).sum(axis=1), size)


def _by_hand(kind: str, array: np.ndarray, grid: int, extra: int, at: str) -> np.ndarray:
    """The reshape written out for each layout, independently of onnxcam.tokens."""
    n, c = len(array), array.shape[-1] if kind != "BCT" else array.shape[1]
    if kind == "NHWC":
        return array.transpose(0, 3, 1, 2)
    if kind == "BCT":
        return array.reshape(n, c, grid, grid)
    patches = array[:, extra:] if at == "start" else array[:, :grid * grid]
    return patches.reshape(n, grid, grid, c).transpose(0, 3, 1, 2)


@pytest.mark.parametrize(("kind", "extra", "at"), [("BTC", 1, "start"), ("BTC", 2, "end"), ("BCT", 0, "start"),
                                                   ("NHWC", 0, "start")])
def test_gradcam_on_token_layouts_matches_numpy(kind: str, extra: int, at: str) -> None:
    model = token_model(kind, extra=extra, at=at)
    layouts = {t.name: t.layout for t in catalogue(load_model(model))}
    assert layouts["tokens"] == kind
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ex = Explainer(model, layer="tokens", device="cpu", extra_tokens_at=at)
    assert "tokens" in ex.layers
    maps = ex.explain(x, "gradcam", targets=[0, 2])
    res = onnxcam.gradients(model, x, layers=["tokens"], targets=[0, 2])
    act = _by_hand(kind, res.activations["tokens"], 4, extra, at)
    grad = _by_hand(kind, res.gradients["tokens"], 4, extra, at)
    np.testing.assert_allclose(maps, _numpy_gradcam(act, grad, (16, 16)), atol=1e-5)
    assert maps.std() > 0.05


@pytest.mark.parametrize("kind", ["BTC", "BCT"])
def test_head_gets_tokens_back(kind: str) -> None:
    """Ablation-CAM and ReciproCAM feed NCHW features to the head: the inverse reshape puts the extra tokens back,
    so the unmodified features give the model's scores, and a zeroed channel matches NumPy's head."""
    model = token_model(kind, extra=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ex = Explainer(model, layer="tokens", device="cpu")
    ev = ex.evidence(x, None, ["tokens"], method="ablationcam")[0]
    assert ev.head_scores is not None and ev.activations.shape == (2, 6, 4, 4)
    raw = ex.view.token_views["tokens"].original
    w_head = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_head"))
    for i in (0, 1):
        np.testing.assert_allclose(ev.head_scores(ev.activations[i:i + 1], i)[0], ev.scores[i], rtol=1e-5, atol=1e-5)
        keep = np.ones((2, 6, 1, 1), np.float32)
        keep[1, 4] = 0.0
        scaled = ev.head_scores(ev.activations[i:i + 1], i, keep)
        tokens = raw[i] if kind == "BTC" else raw[i].T  # (T, C)
        ablated = tokens.copy()
        ablated[:, 4] = 0.0  # the channel is zeroed in every token, the class token included
        np.testing.assert_allclose(scaled[0], ev.scores[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scaled[1], ablated.mean(axis=0) @ w_head, rtol=1e-5, atol=1e-5)


def test_ambiguous_model_needs_the_grid() -> None:
    model = token_model("BTC", size=96, patch=24, extra=1)  # 17 tokens over 96x96: 4x4 + 1 or 3x3 + 8
    x = np.random.default_rng(4).standard_normal((1, 3, 96, 96)).astype(np.float32)
    with pytest.raises(LayerError, match="several grids"):
        Explainer(model, layer="tokens", device="cpu").explain(x, "gradcam")
    by_grid = Explainer(model, layer="tokens", device="cpu", grid=(4, 4)).explain(x, "gradcam")
    by_count = Explainer(model, layer="tokens", device="cpu", extra_tokens=1).explain(x, "gradcam")
    np.testing.assert_array_equal(by_grid, by_count)


@pytest.mark.parametrize("method", ["eigencam", "scorecam", "ablationcam", "reciprocam", "layercam", "gradcam++"])
def test_methods_on_swin_and_bct_layers(method: str) -> None:
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for kind in ("NHWC", "BCT"):
        maps = Explainer(token_model(kind), layer="tokens", device="cpu").explain(x, method)
        assert maps.shape == (2, 16, 16) and np.isfinite(maps).all() and maps.max() <= 1.0


# --- the committed ViT exports --------------------------------------------------------------------------------------
def test_vit_candidates_and_default_layer() -> None:
    defaults = {14: "/encoder/layers/encoder_layer_1/ln_1/Add_1_output_0", 18: "layer_norm_2"}
    for opset, path in VIT.items():
        ex = Explainer(path, device="cpu")
        # the output of the last block's first LayerNorm: pytorch-grad-cam's recommended blocks[-1].norm1
        assert ex.default_layer == defaults[opset]
        layouts = {t.name: t.layout for t in ex.tensors}
        assert layouts[ex.default_layer] == "BTC"
        assert sum(layouts[name] == "BTC" for name in ex.layers) > 20


def test_vit_default_layer_reaches_the_class_token() -> None:
    """Why the default is not the last token tensor: after the last attention only the class token reaches the
    score, so gradients at the patch tokens of the final LayerNorm are exactly zero."""
    ref = np.load(EXPORTS / "vit.npz")
    res = onnxcam.gradients(VIT[18], ref["x"], layers=["layer_norm_4", "layer_norm_2"], targets=ref["target"])
    assert np.abs(res.gradients["layer_norm_4"][:, 1:]).max() == 0.0
    assert np.abs(res.gradients["layer_norm_2"][:, 1:]).max() > 1e-3


def attention_model(read: str) -> onnx.ModelProto:
    """Patch embedding + class token, one pre-norm attention block, a final LayerNorm and a head reading the class
    token with `read` ("gather": x[:, 0]; "slice": x[:, :1]) or averaging every token ("mean")."""
    rng = np.random.default_rng(7)
    c = 8
    weights: dict[str, np.ndarray] = {name: rng.standard_normal((c, c)).astype(np.float32) / c ** 0.5
                                      for name in ("wq", "wk", "wv")}
    weights |= {"w_patch": rng.standard_normal((c, 3, 4, 4)).astype(np.float32) / 4,
                "flat_shape": np.array([0, c, -1], np.int64), "cls": rng.standard_normal((1, 1, c)).astype(np.float32),
                "gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32),
                "w_head": rng.standard_normal((c, 3)).astype(np.float32), "zero": np.array(0, np.int64),
                "starts": np.array([0], np.int64), "ends": np.array([1], np.int64), "axes": np.array([1], np.int64),
                "flat2": np.array([0, c], np.int64)}
    nodes = [helper.make_node("Conv", ["input", "w_patch"], ["patches"], strides=[4, 4]),
             helper.make_node("Reshape", ["patches", "flat_shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["seq"], perm=[0, 2, 1]),
             helper.make_node("ReduceMean", ["seq"], ["seq_mean"], axes=[1], keepdims=1),
             helper.make_node("Add", ["seq_mean", "cls"], ["cls_token"]),
             helper.make_node("Concat", ["cls_token", "seq"], ["stream"], axis=1),
             helper.make_node("LayerNormalization", ["stream", "gamma", "beta"], ["ln1"], axis=-1),
             *[helper.make_node("MatMul", ["ln1", w], [w[1]]) for w in ("wq", "wk", "wv")],
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["logits_qk"]),
             helper.make_node("Softmax", ["logits_qk"], ["attn"], axis=-1),
             helper.make_node("MatMul", ["attn", "v"], ["mixed"]),
             helper.make_node("Add", ["stream", "mixed"], ["stream2"]),
             helper.make_node("LayerNormalization", ["stream2", "gamma", "beta"], ["final"], axis=-1)]
    if read == "gather":
        nodes.append(helper.make_node("Gather", ["final", "zero"], ["pooled"], axis=1))
    elif read == "slice":
        nodes += [helper.make_node("Slice", ["final", "starts", "ends", "axes"], ["first"]),
                  helper.make_node("Reshape", ["first", "flat2"], ["pooled"])]
    else:
        nodes.append(helper.make_node("ReduceMean", ["final"], ["pooled"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "w_head"], ["logits"]))
    graph = helper.make_graph(nodes, f"attention_{read}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(("read", "expected"), [("gather", "ln1"), ("slice", "ln1"), ("mean", "final")])
def test_class_token_default_layer(read: str, expected: str) -> None:
    model = attention_model(read)
    ex = Explainer(model, device="cpu")
    assert ex.default_layer == expected
    x = np.random.default_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    res = onnxcam.gradients(model, x, layers=[expected, "final"], targets=[0, 1])
    assert np.abs(res.gradients[expected][:, 1:]).max() > 1e-4  # the patch tokens reach the score from there
    if read != "mean":
        assert np.abs(res.gradients["final"][:, 1:]).max() == 0.0  # ...and not from after the last attention
    assert ex.explain(x, "gradcam").std() > 0.01


def test_cnn_default_ignores_token_shaped_head_outputs() -> None:
    """Without attention, a (B, boxes, values) tensor after the last conv map (a detector's raw output) is listed
    but is not the default layer: that stays the conv map."""
    model = token_model("BTC")  # conv -> reshape -> transpose -> ... -> tokens: no attention anywhere
    ex = Explainer(model, device="cpu")
    assert "tokens" in ex.layers
    assert ex.default_layer == "patches"


def test_attention_heads_are_refused() -> None:
    """(heads * batch, d, T) keys look like B x C x T tokens in the graph; their batch axis gives them away."""
    ref = np.load(EXPORTS / "vit.npz")
    ex = Explainer(VIT[18], layer="val_172", device="cpu")
    with pytest.raises(LayerError, match="not the batch of 2 images"):
        ex.explain(ref["x"], "gradcam")


VIT_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam", "eigencam",
               "eigengradcam", "scorecam", "ablationcam", "reciprocam", "fullgrad", "smoothgradcam++"]


def test_every_method_on_vit() -> None:
    ref = np.load(EXPORTS / "vit.npz")
    x, targets = ref["x"], list(ref["target"])
    ex14, ex18 = Explainer(VIT[14], device="cpu"), Explainer(VIT[18], device="cpu")
    for method in VIT_METHODS:
        maps = ex18.explain(x, method, targets=targets)
        assert maps.shape == (2, 32, 32), method
        assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0, method
        assert maps.std() > 0.01, method
        if method in ("gradcam", "eigencam", "ablationcam"):  # two exporters, one model: the same maps
            np.testing.assert_allclose(ex14.explain(x, method, targets=targets), maps, atol=1e-4, err_msg=method)


def test_vit_gradcam_matches_numpy_reshape() -> None:
    ref = np.load(EXPORTS / "vit.npz")
    res = onnxcam.gradients(VIT[18], ref["x"], layers=["layer_norm_2"], targets=ref["target"])
    act, grad = res.activations["layer_norm_2"], res.gradients["layer_norm_2"]  # (2, 17, 32), class token first

    def grid(a: np.ndarray) -> np.ndarray:  # pytorch-grad-cam's ViT reshape_transform
        return a[:, 1:, :].reshape(2, 4, 4, 32).transpose(0, 3, 1, 2)

    maps = Explainer(VIT[18], device="cpu").explain(ref["x"], "gradcam", targets=list(ref["target"]))
    np.testing.assert_allclose(maps, _numpy_gradcam(grid(act), grid(grad), (32, 32)), atol=1e-5)


SHAPES_VIT = EXPORTS.parent / "shapes_vit.onnx"


@pytest.mark.skipif(not SHAPES_VIT.exists(), reason="models/shapes_vit.onnx is made by models/train_vit.py")
def test_trained_shapes_vit() -> None:
    """The trained ViT (CLS first, 8x8 grid over 96x96, conv stem): default layer and every method on benchmark
    images; the maps are checked for form only (the model's accuracy is modest, see its card)."""
    ex = Explainer(SHAPES_VIT, device="cpu")
    assert ex.default_layer == "/blocks/blocks.3/norm1/LayerNormalization_output_0"  # pytorch-grad-cam's norm1
    images, labels = generate(4, seed=2)
    x = np.concatenate([preprocess(image, ex.preprocessing) for image in images])
    for method in ("gradcam", "layercam", "eigencam", "scorecam", "ablationcam", "reciprocam"):
        maps = ex.explain(x, method, targets=[int(c) for c in labels])
        assert maps.shape == (4, 96, 96) and np.isfinite(maps).all(), method
    res = onnxcam.gradients(SHAPES_VIT, x, layers=[ex.default_layer], targets=labels)
    assert np.abs(res.gradients[ex.default_layer][:, 1:]).max() > 0  # patch tokens reach the CLS token from here


def test_cli_grid_option(tmp_path: Path) -> None:
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.random.default_rng(6).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["explain", str(VIT[18]), str(image), "--out", str(out), "--grid", "4x4",
                                          "--extra-tokens", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert np.load(out / "a.png.gradcam.npy").shape == (40, 40)
    bad = CliRunner().invoke(cli.app, ["explain", str(VIT[18]), str(image), "--out", str(tmp_path / "bad"),
                                       "--grid", "5x5", "--device", "cpu"])
    assert bad.exit_code != 0
    assert "does not fit" in bad.output
