"""Score-CAM family, Ablation-CAM, Recipro-CAM, FullGrad and Smooth Grad-CAM++ against NumPy on a model simple
enough to evaluate by hand, plus an end-to-end run on a small ResNet-18."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.explainer import Explainer
from onnxcam.graph.head import extract_head
from onnxcam.graph.topo import ancestors
from onnxcam.methods import Evidence, get_method

N, C, S, K, CLASSES = 2, 3, 8, 5, 4   # batch, input channels, image size, layer channels, classes
H = S // 2                            # the layer's size: a 2x2 stride-2 convolution


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((K, C, 2, 2)), "b": rng.standard_normal(K) * 0.5,
            "scale": rng.uniform(0.5, 1.5, K), "shift": rng.standard_normal(K) * 0.5,
            "mean": rng.standard_normal(K) * 0.3, "var": rng.uniform(0.5, 2.0, K),
            "fc_w": rng.standard_normal((CLASSES, K)), "fc_b": rng.standard_normal(CLASSES)}


def hand_model(p: dict[str, np.ndarray], bn: bool = False, nhwc: bool = False) -> onnx.ModelProto:
    """[Transpose] -> Conv 2x2/2 ('pre') -> [BatchNormalization] -> Relu ('feat') -> GlobalAveragePool -> Gemm."""
    weights = {"w": p["w"], "fc_w": p["fc_w"], "fc_b": p["fc_b"]}
    nodes = []
    image = "input"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        image = "nchw"
    conv_inputs = [image, "w"] if bn else [image, "w", "b"]
    nodes.append(helper.make_node("Conv", conv_inputs, ["pre"], kernel_shape=[2, 2], strides=[2, 2]))
    if not bn:
        weights["b"] = p["b"]
    else:
        weights.update({"scale": p["scale"], "shift": p["shift"], "mean": p["mean"], "var": p["var"]})
        nodes.append(helper.make_node("BatchNormalization", ["pre", "scale", "shift", "mean", "var"], ["bn"],
                                      epsilon=1e-3))
    nodes += [helper.make_node("Relu", ["bn" if bn else "pre"], ["feat"]),
              helper.make_node("GlobalAveragePool", ["feat"], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    shape: list[str | int] = ["N", S, S, C] if nhwc else ["N", C, S, S]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _f32(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameters as the model stores them (float32), in float64 for the references."""
    return {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}


def np_forward(p: dict[str, np.ndarray], x: np.ndarray, bn: bool = False) -> dict[str, np.ndarray]:
    """The hand model in float64: conv output, BN output, features and logits."""
    x = np.asarray(x, np.float64)
    pre = np.einsum("ncyuxv,kcuv->nkyx", x.reshape(len(x), C, H, 2, H, 2), p["w"])
    if not bn:
        pre = pre + p["b"][None, :, None, None]
    out = {"pre": pre}
    z = pre
    if bn:
        z = (pre - p["mean"][:, None, None]) / np.sqrt(p["var"][:, None, None] + 1e-3) * p["scale"][:, None, None] \
            + p["shift"][:, None, None]
        out["bn"] = z
    out["feat"] = np.maximum(z, 0)
    out["logits"] = out["feat"].mean(axis=(2, 3)) @ p["fc_w"].T + p["fc_b"]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def upsample_align_corners(a: np.ndarray, out: int) -> np.ndarray:
    """torch UpsamplingBilinear2d (align_corners=True), pixel by pixel."""
    h = a.shape[0]
    result = np.empty((out, out))
    for yy in range(out):
        for xx in range(out):
            sy, sx = yy * (h - 1) / (out - 1), xx * (h - 1) / (out - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, h - 1)
            fy, fx = sy - y0, sx - x0
            result[yy, xx] = ((1 - fy) * ((1 - fx) * a[y0, x0] + fx * a[y0, x1])
                              + fy * ((1 - fx) * a[y1, x0] + fx * a[y1, x1]))
    return result


def minmax(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min() + 1e-8)


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    p = _params()
    x = np.random.default_rng(7).standard_normal((N, C, S, S)).astype(np.float32)
    return {"p": _f32(p), "x": x, "ex": Explainer(hand_model(p)), "ex_bn": Explainer(hand_model(p, bn=True))}


def evidence(ex: Explainer, x: np.ndarray, method: str, targets: Any, layer: str = "feat") -> Evidence:
    return ex.evidence(x, targets, [layer], method=method)[0]


def run(ex: Explainer, x: np.ndarray, method: str, targets: Any, layer: str = "feat", **options: Any) -> np.ndarray:
    return get_method(method).fn(evidence(ex, x, method, targets, layer), **options)


def _targets(case: dict[str, Any], targets: Any) -> np.ndarray:
    logits = np_forward(case["p"], case["x"])["logits"]
    return logits.argmax(axis=1) if targets is None else np.asarray(targets)


# --- Score-CAM family -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", [None, [1, 3]])
@pytest.mark.parametrize("weighting", ["softmax", "probability"])
def test_scorecam_weights(case: dict[str, Any], targets: Any, weighting: str) -> None:
    p, x = case["p"], case["x"]
    feat = np_forward(p, x)["feat"]
    expected = np.zeros((N, K))
    for i, t in enumerate(_targets(case, targets)):
        scores = np.array([np_forward(p, x[i:i + 1] * minmax(upsample_align_corners(feat[i, k], S)))["logits"][0]
                           for k in range(K)])
        expected[i] = softmax(scores[:, t]) if weighting == "softmax" else softmax(scores)[:, t]
    got = run(case["ex"], x, "scorecam", targets, batch_size=2, scorecam_weights=weighting)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_scorecam_map_and_channel_budget(case: dict[str, Any]) -> None:
    p, x = case["p"], case["x"]
    feat = np_forward(p, x)["feat"]
    weights = run(case["ex"], x, "scorecam", None)
    raw = np.maximum((weights[:, :, None, None] * feat).sum(axis=1), 0)
    expected = [cv2.resize(((m - m.min()) / (m.max() - m.min())).astype(np.float32), (S, S)) for m in raw]
    np.testing.assert_allclose(case["ex"].explain(x, "scorecam"), expected, atol=1e-5)

    budget = run(case["ex"], x, "scorecam", None, channels=2)
    for i, t in enumerate(_targets(case, None)):
        top = np.argsort(-feat[i].mean(axis=(1, 2)))[:2]
        assert set(np.flatnonzero(budget[i])) == set(top)
        logits = [np_forward(p, x[i:i + 1] * minmax(upsample_align_corners(feat[i, k], S)))["logits"][0, t]
                  for k in top]
        np.testing.assert_allclose(budget[i, top], softmax(np.array(logits)), atol=2e-5)


def _torchcam_masks(feat_i: np.ndarray) -> np.ndarray:
    """torchcam: min-max at the layer's size, then bilinear (align_corners=False, as cv2 does when upsampling)."""
    return np.stack([cv2.resize(minmax(a).astype(np.float64), (S, S), interpolation=cv2.INTER_LINEAR) for a in feat_i])


@pytest.mark.parametrize("batch_size", [2, 64])
def test_sscam_weights(case: dict[str, Any], batch_size: int) -> None:
    p, x, std, samples, seed = case["p"], case["x"], 0.5, 3, 11
    feat = np_forward(p, x)["feat"]
    rng = np.random.default_rng(seed)
    expected = np.zeros((N, K))
    for i, t in enumerate(_targets(case, [2, 0])):
        masks, total = _torchcam_masks(feat[i]), np.zeros(K)
        for _ in range(samples):
            noisy = masks + rng.normal(0, std, masks.shape)  # one draw per sample, channels in order
            total += [np_forward(p, x[i:i + 1] * noisy[k])["logits"][0, t] for k in range(K)]
        expected[i] = softmax(total / samples)
    got = run(case["ex"], x, "sscam", [2, 0], num_samples=samples, std=std, seed=seed, batch_size=batch_size)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_iscam_weights(case: dict[str, Any]) -> None:
    p, x, samples = case["p"], case["x"], 4
    feat = np_forward(p, x)["feat"]
    coefficients = np.cumsum(np.arange(1, samples + 1) / samples)  # torchcam's running sum
    expected = np.zeros((N, K))
    for i, t in enumerate(_targets(case, None)):
        masks = _torchcam_masks(feat[i])
        expected[i] = softmax(np.mean([[np_forward(p, c * x[i:i + 1] * masks[k])["logits"][0, t] for k in range(K)]
                                       for c in coefficients], axis=0))
    np.testing.assert_allclose(run(case["ex"], x, "iscam", None, num_samples=samples, batch_size=3), expected,
                               atol=2e-5)


def test_scorecam_nhwc_input_matches_nchw(case: dict[str, Any]) -> None:
    ex_nhwc = Explainer(hand_model(_params(), nhwc=True))
    assert ex_nhwc.input_layout == "NHWC"
    x_nhwc = np.ascontiguousarray(case["x"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(run(ex_nhwc, x_nhwc, "scorecam", [0, 1]), run(case["ex"], case["x"], "scorecam", [0, 1]),
                               atol=1e-6)
    np.testing.assert_allclose(ex_nhwc.explain(x_nhwc, "fullgrad", targets=[0, 1]),
                               case["ex"].explain(case["x"], "fullgrad", targets=[0, 1]), atol=1e-5)


# --- Ablation-CAM and Recipro-CAM -------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", [None, [3, 2]])
def test_ablationcam_weights(case: dict[str, Any], targets: Any) -> None:
    p, x = case["p"], case["x"]
    out = np_forward(p, x)
    expected = np.zeros((N, K))
    for i, t in enumerate(_targets(case, targets)):
        # zeroing channel k removes exactly fc_w[t, k] * mean(A_k) from the logit
        expected[i] = p["fc_w"][t] * out["feat"][i].mean(axis=(1, 2)) / out["logits"][i, t]
    np.testing.assert_allclose(run(case["ex"], x, "ablationcam", targets, batch_size=2), expected, rtol=1e-4,
                               atol=1e-5)
    budget = run(case["ex"], x, "ablationcam", targets, channels=3)
    assert (np.count_nonzero(budget, axis=1) <= 3).all()
    np.testing.assert_allclose(budget[budget != 0], expected[budget != 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "exact"])
def test_reciprocam_maps(case: dict[str, Any], mode: str) -> None:
    p, x = case["p"], case["x"]
    feat = np_forward(p, x)["feat"]
    kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
    expected = np.zeros((N, H, H))
    for i, t in enumerate(_targets(case, None)):
        for r in range(H):
            for c in range(H):
                # weight that lands inside the map: the pooled feature is A[:, r, c] * mass / (H * H)
                mass = 1.0 if mode == "exact" else sum(kernel[dr + 1, dc + 1] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                                                       if 0 <= r + dr < H and 0 <= c + dc < H)
                logits = p["fc_w"] @ (feat[i, :, r, c] * mass / (H * H)) + p["fc_b"]
                expected[i, r, c] = softmax(logits)[t]
    np.testing.assert_allclose(run(case["ex"], x, "reciprocam", None, mode=mode, batch_size=5), expected, atol=1e-6)


# --- FullGrad and Smooth Grad-CAM++ -----------------------------------------------------------------------------
def _scale(t: np.ndarray, how: str) -> np.ndarray:
    """pytorch-grad-cam's scale_accross_batch_and_channels (how="channel") or the authors' per-layer postprocess,
    each channel resized to the input with cv2, then summed over channels."""
    axes = (2, 3) if how == "channel" else (1, 2, 3)
    t = t - t.min(axis=axes, keepdims=True)
    t = t / (t.max(axis=axes, keepdims=True) + 1e-7)
    return np.array([[cv2.resize(c.astype(np.float32), (S, S)) for c in image] for image in t]).sum(axis=1)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("how", ["channel", "layer"])
def test_fullgrad_maps(case: dict[str, Any], bn: bool, how: str) -> None:
    p, x = case["p"], case["x"]
    out = np_forward(p, x, bn)
    ts = _targets(case, [1, 2])
    # d logit_t / d (input of Relu) = fc_w[t, k] / (H * H) where it is positive
    g_z = (p["fc_w"][ts][:, :, None, None] / (H * H)) * (out["bn" if bn else "pre"] > 0)
    bn_gain = p["scale"] / np.sqrt(p["var"] + 1e-3) if bn else np.ones(K)
    g_pre = g_z * bn_gain[None, :, None, None]
    g_x = np.einsum("nkyx,kcuv->ncyuxv", g_pre, p["w"]).reshape(N, C, S, S)
    bias = p["shift"] - p["mean"] * bn_gain if bn else p["b"]
    expected = _scale(np.abs(g_x * x), how) + _scale(np.abs(g_z * bias[None, :, None, None]), how)
    ex = case["ex_bn" if bn else "ex"]
    np.testing.assert_allclose(run(ex, x, "fullgrad", [1, 2], fullgrad_scale=how), expected, rtol=1e-4, atol=1e-4)


def test_fullgrad_finds_biases_on_the_resnet(resnet: Explainer) -> None:
    from onnxcam.graph.head import biased_outputs as layer_biases

    biases = layer_biases(resnet.model, resnet.score)
    convs = [n.output[0] for n in resnet.model.graph.node if n.op_type == "Conv"]
    assert list(biases) == convs and len(convs) == 20
    assert all(b.shape == (next(t for t in resnet.model.graph.initializer if t.name == f"{c}.bias").dims[0],)
               for c, b in biases.items())


def test_smoothgradcampp_weights(case: dict[str, Any]) -> None:
    p, x, std, samples, seed = case["p"], case["x"], 0.4, 3, 5
    ts = _targets(case, [0, 3])
    rng = np.random.default_rng(seed)
    grads = []
    for _ in range(samples):
        noisy = (x + rng.normal(0, std, x.shape)).astype(np.float32)
        # layer 'pre' (before the Relu): the gradient changes with the noise
        grads.append(p["fc_w"][ts][:, :, None, None] / (H * H) * (np_forward(p, noisy)["pre"] > 0))
    g = np.array(grads)
    d1, d2, d3 = g.mean(0), (g ** 2).mean(0), (g ** 3).mean(0)
    acts = np_forward(p, x)["pre"]
    alpha = np.where(d2 != 0, d2 / (2 * d2 + acts.sum(axis=(2, 3), keepdims=True) * d3 + 1e-7), 0)
    expected = (alpha * np.maximum(d1, 0)).sum(axis=(2, 3))
    got = run(case["ex"], x, "smoothgradcam++", [0, 3], layer="pre", num_samples=samples, std=std, seed=seed)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


# --- end to end on a small ResNet-18 ----------------------------------------------------------------------------
_SCRIPT = Path(__file__).resolve().parent.parent / "models" / "build_resnet.py"


@pytest.fixture(scope="module")
def resnet() -> Explainer:
    spec = importlib.util.spec_from_file_location("build_resnet", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Explainer(module.build_resnet(18, num_classes=10, width=8, seed=3, image_size=64))


@pytest.mark.parametrize("method, options", [
    ("scorecam", {}), ("scorecam", {"channels": 16, "scorecam_weights": "probability"}),
    ("sscam", {"num_samples": 2}), ("iscam", {"num_samples": 2}), ("ablationcam", {}), ("reciprocam", {}),
    ("reciprocam", {"mode": "exact"}), ("fullgrad", {}), ("smoothgradcam++", {}),
])
def test_resnet_end_to_end(resnet: Explainer, method: str, options: dict[str, Any]) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    maps = resnet.explain(x, method, **options)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and all(m.max() > 0 for m in maps)


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_layer_perturbations_run_only_the_head(resnet: Explainer, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = "layer3.1.relu_1"   # mid-network, so the head is a real subgraph (layer4 + pooling + fc)
    forward_calls: list[tuple[str, ...]] = []
    original = resnet.view.forward_session

    def counted(tensors: tuple[str, ...]) -> Any:
        forward_calls.append(tensors)
        return original(tensors)
    monkeypatch.setattr(resnet.view, "forward_session", counted)
    monkeypatch.setattr(resnet._evidence, "_scores_of",
                        lambda batch: pytest.fail("the full model ran on a perturbation"))
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    maps = resnet.explain(x, method, layer=layer)
    assert maps.shape == (1, 64, 64) and maps.max() > 0
    assert forward_calls == [(layer,)]  # the evidence's one forward pass; perturbations go through the head
    session, extra = resnet.view.head_session(layer, scaled=method == "ablationcam")
    expected_inputs = [layer, "onnxcam_scale"] if method == "ablationcam" else [layer]
    assert [i.name for i in session.get_inputs()] == expected_inputs and extra == []
    head = extract_head(resnet.model, layer, resnet.score).model
    before = ancestors(list(resnet.model.graph.node), layer)
    assert head.graph.node and not any(out in before for node in head.graph.node for out in node.output)


def test_scorecam_scores_each_distinct_mask_once():
    """Constant channels all mask the image to zero, repeated channels repeat a mask, IS-CAM's zero masks are the
    same at every sample: each distinct masked input runs once, with the result of one run per mask."""
    from onnxcam.methods import Evidence
    from onnxcam.methods.perturbation import _score_weights, _torchcam_masks, iscam, scorecam

    rng = np.random.default_rng(5)
    acts = rng.random((1, 8, 3, 3))
    acts[0, [1, 3, 4]] = 0.0
    acts[0, 5] = 2.5
    acts[0, 6], acts[0, 7] = acts[0, 0], acts[0, 2]  # repeated channels
    weights = rng.standard_normal((4, 3 * 8 * 8))
    seen = []

    def scores_of(batch):  # a fixed linear "model" over the pixels, in NumPy
        seen.append(len(batch))
        return batch.reshape(len(batch), -1).astype(np.float64) @ weights.T

    ev = Evidence(acts, np.array([2]), np.zeros((1, 4)), rng.random((1, 3, 8, 8)), "l", input_size=(8, 8))
    ev.scores_of = scores_of
    got = scorecam(ev, batch_size=1)
    assert sum(seen) == 3  # channels 0 and 2 (and their copies), plus one run for the four constant ones
    expected = []
    for k in range(8):
        up = _bilinear_align_corners(acts[0, k], 8)
        mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
        expected.append(float(scores_of((ev.x[0] * mask)[None])[0, 2]))
    e = np.exp(np.array(expected) - max(expected))
    np.testing.assert_allclose(got[0], e / e.sum(), rtol=1e-5)  # masked inputs are float32
    seen.clear()
    got = iscam(ev, num_samples=2, batch_size=8)
    assert sum(seen) == 2 * 2 + 1  # the zero mask of the constant channels runs once for both samples
    seen.clear()

    def masks(i, ks, sample):
        return _torchcam_masks(ev, i, ks) * ((sample + 1) * (sample + 2) / 4)
    unshared = _score_weights(ev, masks, 2, 3, None, "softmax", share=False)
    assert sum(seen) == 2 * 8
    np.testing.assert_array_equal(got, unshared)


def test_ablationcam_skips_channels_that_are_zero():
    """Zeroing a channel that is zero everywhere changes nothing, and its weight multiplies zeros: not run."""
    from onnxcam.methods import Evidence
    from onnxcam.methods.perturbation import ablationcam

    rng = np.random.default_rng(6)
    acts = rng.random((2, 5, 2, 2)).astype(np.float32)
    acts[0, [1, 4]] = 0.0
    fc = rng.standard_normal((3, 5))
    rows = []

    def head_scores(features, image, keep):  # GAP + linear head in NumPy
        rows.append(len(keep))
        return (features.mean(axis=(2, 3)) * keep[:, :, 0, 0]) @ fc.T

    scores = acts.mean(axis=(2, 3)) @ fc.T
    ev = Evidence(acts, np.array([0, 2]), scores, np.zeros((2, 3, 4, 4), np.float32), "l", input_size=(4, 4))
    ev.head_scores = head_scores
    got = ablationcam(ev, batch_size=2)
    assert sum(rows) == 3 + 5
    targets = [0, 2]
    expected = np.array([[fc[t, k] * acts[i, k].mean() / scores[i, t] for k in range(5)]
                         for i, t in enumerate(targets)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_head_inputs_from_before_the_layer_run_once_per_image(resnet: Explainer, monkeypatch: pytest.MonkeyPatch):
    """Inside a residual block the head also needs the block's input: one forward per image gives it, however
    many batches of ablated copies run."""
    layer = "layer4.0.relu"   # the first conv of block 0: the head needs the downsample branch's input too
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    ev = resnet.evidence(x, None, [layer], method="ablationcam")[0]
    ev.channel_ablation = None  # through the head itself
    calls: list[tuple[str, ...]] = []
    original = resnet.view.forward_session

    def counted(tensors: tuple[str, ...]) -> Any:
        calls.append(tensors)
        return original(tensors)
    monkeypatch.setattr(resnet.view, "forward_session", counted)
    weights = get_method("ablationcam").fn(ev, batch_size=4)
    assert resnet.view.head_session(layer)[1] and len(calls) == 2  # two images, 16 batches each
    calls.clear()
    np.testing.assert_allclose(get_method("ablationcam").fn(ev, batch_size=64), weights, rtol=1e-4, atol=1e-6)


def _bilinear_align_corners(m, size):
    src = np.arange(size) * (m.shape[0] - 1) / (size - 1)
    low = np.minimum(np.floor(src).astype(int), m.shape[0] - 2)
    frac = src - low
    rows = m[low] * (1 - frac)[:, None] + m[low + 1] * frac[:, None]
    return rows[:, low] * (1 - frac)[None] + rows[:, low + 1] * frac[None]


def test_ablation_after_global_pooling_equals_ablating_the_layer(resnet: Explainer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """At the last stage the head starts with global average pooling: zeroing a channel there is exact."""
    layer = resnet.default_layer
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    ev = resnet.evidence(x, [1, 2], [layer], method="ablationcam")[0]
    assert ev.channel_ablation is not None  # the fast path is taken on this model
    fast = get_method("ablationcam").fn(ev)
    ev.channel_ablation = None
    slow = get_method("ablationcam").fn(ev)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)


def test_pooled_cut_needs_a_channelwise_path() -> None:
    from toy_models import nhwc_cnn, tiny_cnn

    from onnxcam.graph.head import pooled_channels
    from onnxcam.graph.load import load_model

    assert pooled_channels(load_model(nhwc_cnn()), "act", "NCHW") == "flat"  # Relu -> GAP -> Flatten
    assert pooled_channels(load_model(nhwc_cnn()), "conv", "NCHW") == "flat"  # through the Relu
    assert pooled_channels(load_model(tiny_cnn()), "feat", "NCHW") == "pooled"  # ReduceMean over H, W
    assert pooled_channels(load_model(tiny_cnn()), "scaled", "NCHW") == "pooled"
    assert pooled_channels(load_model(nhwc_cnn()), "nchw", "NCHW") is None  # a Conv follows: no cut
