"""`onnxcam export`: a model that outputs its own explanation.

The exported file is the model (normalised as `graph.load` does) plus the whole CAM method in standard ONNX ops:
the backward pass from the score to the layer (the same rewriter as every gradient method), the method's channel
or elementwise weighting, ReLU, per-image min-max (a constant map is all zeros, a map with NaN/Inf is all zeros)
and a bilinear Resize that reproduces cv2.resize(INTER_LINEAR) (half-pixel centres, edges clamped, no antialias).
Any ONNX runtime then returns, with every prediction, the map of that prediction: no Python, no onnxcam.

Outputs: the model's own outputs, then `cam` (N, H, W) float32 in [0, 1] and, unless disabled, `cam_class` (N,)
int64, the class explained. The target is the predicted class (in-graph ArgMax of the pre-softmax scores) or an
extra int64 input `target_class` (N,); a target outside 0..classes-1 gives an all-zero `cam` and `cam_class` -1
(the graph never fails at run time on a bad target).

Eigen-CAM / EigenGrad-CAM: ONNX has no SVD, so the first principal component comes from repeated squaring of the
Gram matrix of the centred positions x channels states: `squarings` MatMuls compute Gram^(2^squarings), i.e. that
many power-iteration steps, in float32. The sign follows the NumPy methods' default (eigen_sign="activation"): the
map correlates positively with the channel sum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxcam.errors import InputError, LayerError, ModelError
from onnxcam.graph.builder import Builder
from onnxcam.graph.catalogue import catalogue, default_layer, find_score
from onnxcam.graph.load import ModelSource, default_opset, load_model
from onnxcam.graph.reverse.model import SEED, Reverse, check_tensors, image_input, live_nodes, prepare_reverse
from onnxcam.graph.reverse.walker import backward, depends_on
from onnxcam.graph.topo import ancestors
from onnxcam.methods import get_method
from onnxcam.tokens import TokenOptions, infer_grid

CAM = "cam"
CAM_CLASS = "cam_class"
TARGET_INPUT = "target_class"
METADATA_KEY = "onnxcam.export"
PREFIX = "onnxcam/"         # every node, tensor and initializer the rewriter adds is named so
DEFAULT_SQUARINGS = 12      # Gram^(2^12): 4096 power-iteration steps
# Protobuf cannot serialise a message of 2 GiB or more; weights go to a side file well before that.
EXTERNAL_DATA_ABOVE = 2**31 - 2**26

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
                    "eigengradcam")
EXPORTABLE = (*GRADIENT_METHODS[:-1], "eigencam", "eigengradcam")
CLASS_AGNOSTIC = ("eigencam",)
_WHY_NOT = {
    "perturbation": "it reruns the model on many perturbed inputs or features per image",
    "research": "it needs per-image optimisation, fitted weights, relevance rules or many runs",
    "baseline": "it is a random baseline, not an explanation",
}


@dataclass(frozen=True)
class ExportOptions:
    method: str = "gradcam"
    layer: str | None = None          # None: the explainer's default layer
    target: str = "predicted"         # "predicted" (in-graph ArgMax) or "input" (an int64 input target_class)
    size: str | tuple[int, int] = "input"   # "input", "layer" or (H, W)
    class_output: bool = True         # add the `cam_class` output
    squarings: int = DEFAULT_SQUARINGS
    replace: bool = False             # rebuild an already exported model's explanation instead of refusing it
    grid: tuple[int, int] | None = None          # token layers: as onnxcam.tokens.TokenOptions
    extra_tokens: int | None = None
    extra_tokens_at: str = "start"


@dataclass(frozen=True)
class Exported:
    model: onnx.ModelProto
    method: str
    layer: str
    opset: int
    opset_raised_from: int | None     # the model's own opset when the export had to raise it
    replaced: bool                    # an earlier export's explanation was stripped first
    metadata: dict[str, object]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    external_data: Path | None
    exported: Exported


# --- public ---------------------------------------------------------------------------------------------------------
def export_model(model: ModelSource, out: str | os.PathLike[str], options: ExportOptions = ExportOptions(),
                 external_data: bool | None = None) -> ExportResult:
    """Write the explaining model to `out` (checked with onnx.checker's full check); external_data: None decides by
    size (weights near 2 GiB go to `<out>.data`), True/False forces it."""
    exported = build_export(model, options)
    path = Path(out)
    if isinstance(model, (str, os.PathLike)) and Path(model).resolve() == path.resolve():
        raise InputError(f"--out {path} is the input model itself; write the export to another file")
    side = save_deterministic(exported.model, path, external_data)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"the exported model fails onnx.checker ({first}); please report it with the model") from None
    return ExportResult(path, side, exported)


def build_export(source: ModelSource, options: ExportOptions = ExportOptions()) -> Exported:
    """The explaining model in memory (see the module's docstring)."""
    _check_options(options)
    own_opset = _own_opset(source)
    model = load_model(source)
    replaced = _previous_export(model, options.replace)
    score, chosen = find_score(model)
    b_shapes = Builder(model.graph, default_opset(model))
    score_shape = b_shapes.static_shape(chosen)
    if score_shape is None or len(score_shape) != 2:
        raise ModelError(f"export explains classifiers: output '{chosen}' has shape "
                         f"{'unknown' if score_shape is None else tuple(score_shape)}, not (N, classes)")
    infos = {t.name: t for t in catalogue(model)}
    layer = options.layer or default_layer(model, score, list(infos.values()))
    check_tensors(model, [layer])
    _check_path(model, layer, score, b_shapes, options.method)
    layout = infos[layer].layout if layer in infos else None
    if layout is None:
        raise LayerError(f"layer '{layer}' is no feature map (rank-4 NCHW/NHWC or transformer tokens) with a known "
                         "static shape; pick another layer ('onnxcam inspect' lists them)")

    r = prepare_reverse(model, [layer])
    _drop_seed_input(r.model.graph)
    b = r.builder
    classes, valid = _target(b, r, options.target)
    activations = _as_nchw(b, layer, layout, _image_hw(b, r.model), options)
    gradients = None
    if options.method in GRADIENT_METHODS:
        seed = b.cast_like(b.op("Equal", b.unsqueeze(_class_range(b, r.scores), [0]), b.unsqueeze(classes, [1])),
                           r.scores)
        grads = backward(b, r.forward_nodes, r.score, r.at_score(seed), [layer])
        gradients = _as_nchw(b, grads[layer], layout, _image_hw(b, r.model), options, like=layer)
    raw = METHOD_GRAPHS[options.method](b, activations, gradients, options.squarings)
    cam = _normalise(b, raw)
    cam = _resize(b, cam, _output_size(b, r.model, options.size))
    if valid is not None:  # an out-of-range target: zero map (its seed row was all zeros already)
        cam = b.op("Mul", cam, b.cast_like(b.unsqueeze(valid, [1, 2]), cam))
    b.nodes.append(helper.make_node("Identity", [cam], [CAM], name=f"{PREFIX}out_cam"))
    wanted = {CAM}
    if options.class_output:
        explained = classes if valid is None else b.op("Where", valid, classes, b.const(-1, "int64"))
        b.nodes.append(helper.make_node("Identity", [explained], [CAM_CLASS], name=f"{PREFIX}out_cam_class"))
        wanted.add(CAM_CLASS)
    nodes, initializers = live_nodes(*b.finish(), wanted)
    r.model.graph.node.extend(nodes)
    r.model.graph.initializer.extend(initializers)
    _drop_unused_initializers(r.model.graph)
    _declare_outputs(r.model, options)
    opset = default_opset(r.model)
    metadata: dict[str, object] = {
        "method": options.method, "layer": layer, "version": _version(), "target": options.target,
        "size": list(options.size) if isinstance(options.size, tuple) else options.size,
        "outputs": [CAM] + ([CAM_CLASS] if options.class_output else []),
        "inputs": [TARGET_INPUT] if options.target == "input" else [],
        "score": score, "opset": opset,
    }
    if options.method in ("eigencam", "eigengradcam"):
        metadata["power_iterations"] = 2 ** options.squarings
    raised = own_opset if own_opset is not None and own_opset < opset else None
    if raised is not None:
        metadata["opset_raised_from"] = raised
    _set_metadata(r.model, metadata)
    return Exported(r.model, options.method, layer, opset, raised, replaced, metadata)


def read_export_metadata(model: onnx.ModelProto) -> dict[str, object] | None:
    """What an export added (method, layer, version, ...), or None for a model onnxcam did not export."""
    entry = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    return None if entry is None else dict(json.loads(entry))


def save_deterministic(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> Path | None:
    """Save `model` to `path`; weights to `<name>.data` beside it when asked or when the file would reach protobuf's
    2 GiB limit. The same model gives the same bytes. Returns the side file, if any."""
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.with_name(path.name + ".data")
    if side.exists():
        side.unlink()  # onnx appends to an existing data file
    if external_data is None:
        external_data = _byte_size(model) >= EXTERNAL_DATA_ABOVE
    if not external_data:
        path.write_bytes(model.SerializeToString(deterministic=True))
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=side.name, size_threshold=1024, convert_attribute=False)
    return side


# --- checks ---------------------------------------------------------------------------------------------------------
def _check_options(options: ExportOptions) -> None:
    if options.method not in EXPORTABLE:
        spec = get_method(options.method)  # unknown names: the registry's own error lists them
        why = _WHY_NOT.get(spec.family, "it has no graph form in onnxcam yet")
        raise InputError(f"method '{options.method}' cannot be exported: {why}; exportable methods: "
                         f"{', '.join(EXPORTABLE)}")
    if options.target not in ("predicted", "input"):
        raise InputError(f"target must be 'predicted' or 'input', got '{options.target}'")
    if options.target == "input" and options.method in CLASS_AGNOSTIC:
        raise InputError(f"'{options.method}' does not depend on the class: export it with target 'predicted'")
    if isinstance(options.size, str) and options.size not in ("input", "layer"):
        raise InputError(f"size must be 'input', 'layer' or (H, W), got '{options.size}'")
    if isinstance(options.size, tuple) and (len(options.size) != 2 or min(options.size) < 1):
        raise InputError(f"size must be two positive integers (H, W), got {options.size}")
    if not 1 <= options.squarings <= 30:
        raise InputError(f"squarings must be 1..30 (2^squarings power-iteration steps), got {options.squarings}")
    TokenOptions(options.grid, options.extra_tokens, options.extra_tokens_at)  # validates


def _own_opset(source: ModelSource) -> int | None:
    """The default-domain opset the user's file declares (before load_model upgrades old ones)."""
    try:
        if isinstance(source, onnx.ModelProto):
            return default_opset(source)
        if isinstance(source, bytes):
            return default_opset(onnx.load_model_from_string(source))
        return default_opset(onnx.load_model(str(source), load_external_data=False))
    except Exception:  # load_model reports unreadable files properly
        return None


def _previous_export(model: onnx.ModelProto, replace: bool) -> bool:
    """Refuse an already exported model, or (replace=True) strip its explanation so it is exported afresh."""
    found = read_export_metadata(model)
    if found is None:
        names = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
        taken = [n for n in (CAM, CAM_CLASS, TARGET_INPUT) if n in names]
        if taken:  # not ours: never strip a user's tensors
            raise ModelError(f"the model already has a tensor named '{taken[0]}', which the export adds; rename it "
                             "in the model first")
        return False
    if not replace:
        raise InputError(f"the model is already an onnxcam export (method {found.get('method')} at layer "
                         f"'{found.get('layer')}'); export the original model, or pass --replace to rebuild its "
                         "explanation")
    _strip_export(model)
    return True


def _strip_export(model: onnx.ModelProto) -> None:
    graph = model.graph
    kept_nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
    for node in kept_nodes:  # outputs the rewriter added to forward nodes (MaxPool's Indices)
        while node.output and node.output[-1].startswith(PREFIX):
            node.output.pop()
    del graph.node[:]
    graph.node.extend(kept_nodes)
    for field, drop in ((graph.initializer, lambda t: t.name.startswith(PREFIX)),
                        (graph.value_info, lambda v: v.name.startswith(PREFIX)),
                        (graph.output, lambda v: v.name in (CAM, CAM_CLASS)),
                        (graph.input, lambda v: v.name == TARGET_INPUT),
                        (model.metadata_props, lambda p: p.key == METADATA_KEY)):
            kept = [item for item in field if not drop(item)]  # type: ignore[no-untyped-call]
            del field[:]
            field.extend(kept)


def _check_path(model: onnx.ModelProto, layer: str, score: str, b: Builder, method: str) -> None:
    """The score must depend on the layer, and differentiably so for gradient methods (names the cutting op)."""
    nodes = list(model.graph.node)
    if layer not in ancestors(nodes, score):
        raise LayerError(f"the score '{score}' does not depend on layer '{layer}'; pick a layer before it "
                         "('onnxcam inspect' lists them)")
    if method not in GRADIENT_METHODS:
        return
    reached = depends_on(nodes, {layer}, b)
    if score in reached:
        return
    needed = ancestors(nodes, score)
    cut = next((n for n in nodes if any(i in reached for i in n.input) and any(o in needed for o in n.output)
                and not any(o in reached for o in n.output)), None)
    where = f" at op '{cut.op_type}' (node '{cut.name}')" if cut is not None else ""
    raise LayerError(f"no differentiable path from layer '{layer}' to the score '{score}': the gradient stops{where}; "
                     "pick a layer after it, or export eigencam (no gradient)")


# --- the graph ------------------------------------------------------------------------------------------------------
def _drop_seed_input(graph: onnx.GraphProto) -> None:
    """prepare_reverse adds the seed input; the export builds its seed in-graph instead."""
    kept = [i for i in graph.input if i.name != SEED]
    del graph.input[:]
    graph.input.extend(kept)


def _class_range(b: Builder, scores: str) -> str:
    count = b.op("Gather", b.op("Shape", scores), b.const(1, "int64"))
    return b.op("Range", b.const(0, "int64"), count, b.const(1, "int64"))


def _target(b: Builder, r: Reverse, target: str) -> tuple[str, str | None]:
    """(class per image (N,) int64, validity (N,) bool or None): the predicted class, or the target input."""
    if target == "predicted":
        return b.op("ArgMax", r.scores, axis=1, keepdims=0), None
    batch = _batch_dim(r.model)
    r.model.graph.input.append(helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.INT64, [batch]))
    b.set_shape(TARGET_INPUT, (batch,), onnx.TensorProto.INT64)
    count = b.op("Gather", b.op("Shape", r.scores), b.const(1, "int64"))
    valid = b.op("And", b.op("GreaterOrEqual", TARGET_INPUT, b.const(0, "int64")),
                 b.op("Less", TARGET_INPUT, count))
    return TARGET_INPUT, valid


def _batch_dim(model: onnx.ModelProto) -> int | str:
    dims = next(i for i in model.graph.input if i.name == image_input(model)).type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        return int(dims[0].dim_value)
    return dims[0].dim_param if dims and dims[0].dim_param else "N"


def _image_hw(b: Builder, model: onnx.ModelProto) -> tuple[object, object, str]:
    """(H, W, layout) of the image input (static sizes or None)."""
    name = image_input(model)
    shape = b.static_shape(name) or (None, None, None, None)
    layout = _input_layout(shape)
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return h, w, layout


def _input_layout(shape: Sequence[object]) -> str:
    from onnxcam.graph.catalogue import guess_layout
    return guess_layout(tuple(shape)) or "NCHW"  # type: ignore[arg-type]


def _as_nchw(b: Builder, tensor: str, layout: str, image: tuple[object, object, str], options: ExportOptions,
             like: str | None = None) -> str:
    """The layer (or its gradient) as float32 (N, K, h, w): NHWC transposed, token layers cut to their patch grid."""
    source = like or tensor
    x = tensor if b.elem_type(source) == onnx.TensorProto.FLOAT else b.op("Cast", tensor, to=onnx.TensorProto.FLOAT)
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return b.op("Transpose", x, perm=[0, 3, 1, 2])
    shape = b.static_shape(source)
    token_axis = 1 if layout == "BTC" else 2
    count = shape[token_axis] if shape is not None and len(shape) == 3 else None
    h_in, w_in, _ = image
    if not isinstance(count, int) or not isinstance(h_in, int) or not isinstance(w_in, int):
        raise LayerError(f"token layer '{source}' needs a static token count and input size to export")
    grid = infer_grid(count, (h_in, w_in), TokenOptions(options.grid, options.extra_tokens, options.extra_tokens_at),
                      source)
    start, stop = (grid.extra, count) if grid.at == "start" else (0, grid.h * grid.w)
    patches = b.op("Slice", x, b.ints([start]), b.ints([stop]), b.ints([token_axis]))
    if layout == "BTC":
        patches = b.op("Transpose", patches, perm=[0, 2, 1])
    return b.op("Reshape", patches, b.ints([0, -1, grid.h, grid.w]))


SPATIAL = [2, 3]


def _channel_weighted(b: Builder, weights: str, activations: str) -> str:
    """sum_k w_k A_k for weights (N, K, 1, 1): (N, h, w)."""
    return b.reduce("ReduceSum", b.op("Mul", weights, activations), [1], keepdims=False)


def _elementwise(b: Builder, weighted: str) -> str:
    return b.reduce("ReduceSum", weighted, [1], keepdims=False)


def _gradcam(b: Builder, a: str, g: str | None, _: int) -> str:
    assert g is not None
    return _channel_weighted(b, b.reduce("ReduceMean", g, SPATIAL), a)


def _gradcam_plus_plus(b: Builder, a: str, g: str | None, _: int) -> str:
    """alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6) where g != 0, w = sum(alpha relu(g)): as methods/gradient.py."""
    assert g is not None
    g2 = b.op("Mul", g, g)
    denominator = b.op("Add", b.op("Mul", b.const(np.float32(2)), g2),
                       b.op("Mul", b.reduce("ReduceSum", a, SPATIAL), b.op("Mul", g2, g)))
    alpha = b.op("Div", g2, b.op("Add", denominator, b.const(np.float32(1e-6))))
    alpha = b.op("Where", b.op("Equal", g, b.const(np.float32(0))), b.const(np.float32(0)), alpha)
    return _channel_weighted(b, b.reduce("ReduceSum", b.op("Mul", b.op("Relu", g), alpha), SPATIAL), a)


def _xgradcam(b: Builder, a: str, g: str | None, _: int) -> str:
    assert g is not None
    total = b.op("Add", b.reduce("ReduceSum", a, SPATIAL), b.const(np.float32(1e-7)))
    return _channel_weighted(b, b.reduce("ReduceSum", b.op("Div", b.op("Mul", g, a), total), SPATIAL), a)


def _hirescam(b: Builder, a: str, g: str | None, _: int) -> str:
    assert g is not None
    return _elementwise(b, b.op("Mul", g, a))


def _gradcam_elementwise(b: Builder, a: str, g: str | None, _: int) -> str:
    assert g is not None
    return _elementwise(b, b.op("Relu", b.op("Mul", g, a)))


def _layercam(b: Builder, a: str, g: str | None, _: int) -> str:
    assert g is not None
    return _elementwise(b, b.op("Mul", b.op("Relu", g), a))


def _eigencam(b: Builder, a: str, g: str | None, squarings: int) -> str:
    return _principal_projection(b, a, squarings)


def _eigengradcam(b: Builder, a: str, g: str | None, squarings: int) -> str:
    assert g is not None
    return _principal_projection(b, b.op("Mul", g, a), squarings)


def _principal_projection(b: Builder, stack: str, squarings: int) -> str:
    """Each image's (K, h, w) stack projected on its first principal component over positions -> (N, h, w).

    States S (P positions x K channels) are centred over positions: C. The projection C v1 (v1 the top right
    singular vector) is, up to scale (min-max removes it), the top eigenvector of the smaller Gram matrix, C C^T
    (P x P) or C^T C (K x K) then multiplied by C. Gram^(2^squarings), normalised after each squaring, is then
    close to rank one: its largest column is the eigenvector. The sign makes the map correlate positively with the
    channel sum, as eigen_sign="activation".
    """
    nhw = b.op("Concat", b.shape(stack, 0, 1), b.shape(stack, 2, 4), axis=0)
    flat = b.op("Reshape", stack, b.ints([0, 0, -1]))                       # (N, K, P)
    states = b.op("Transpose", flat, perm=[0, 2, 1])                        # (N, P, K)
    centred = b.op("Sub", states, b.reduce("ReduceMean", states, [1]))
    total = b.reduce("ReduceSum", states, [2], keepdims=False)              # channel sum per position (N, P)
    total = b.op("Sub", total, b.reduce("ReduceMean", total, [1]))
    shape = b.static_shape(stack)
    channels, positions = _static_kp(shape)
    by_positions = channels is not None and positions is not None and positions <= channels
    transposed = b.op("Transpose", centred, perm=[0, 2, 1])                 # (N, K, P)
    gram = b.op("MatMul", centred, transposed) if by_positions else b.op("MatMul", transposed, centred)
    for _ in range(squarings + 1):  # one normalisation before the first squaring
        gram = b.op("Div", gram, b.op("Max", b.reduce("ReduceMax", b.op("Abs", gram), [1, 2]),
                                      b.const(np.float32(1e-30))))
        if _ < squarings:
            gram = b.op("MatMul", gram, gram)
    norms = b.reduce("ReduceL2", gram, [1], keepdims=False)                 # column norms (N, M)
    largest = b.op("ArgMax", norms, axis=1, keepdims=1)
    columns = b.op("Range", b.const(0, "int64"), b.op("Gather", b.op("Shape", norms), b.const(1, "int64")),
                   b.const(1, "int64"))
    pick = b.cast_like(b.op("Equal", b.unsqueeze(columns, [0]), largest), gram)   # one-hot (N, M)
    vector = b.reduce("ReduceSum", b.op("Mul", gram, b.unsqueeze(pick, [1])), [2], keepdims=False)  # (N, M)
    if by_positions:
        projection = vector
    else:
        projection = b.squeeze(b.op("MatMul", centred, b.unsqueeze(vector, [2])), [2])        # (N, P)
    agreement = b.reduce("ReduceSum", b.op("Mul", projection, total), [1])                   # (N, 1)
    sign = b.op("Where", b.op("Less", agreement, b.const(np.float32(0))), b.const(np.float32(-1)),
                b.const(np.float32(1)))
    return b.op("Reshape", b.op("Mul", projection, sign), nhw)


def _static_kp(shape: Sequence[object] | None) -> tuple[int | None, int | None]:
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return None, None
    k, h, w = (int(d) for d in shape[1:])  # type: ignore[call-overload]
    return k, h * w


MethodGraph = Callable[[Builder, str, "str | None", int], str]
METHOD_GRAPHS: dict[str, MethodGraph] = {
    "gradcam": _gradcam, "gradcam++": _gradcam_plus_plus, "xgradcam": _xgradcam, "hirescam": _hirescam,
    "gradcam-elementwise": _gradcam_elementwise, "layercam": _layercam, "eigencam": _eigencam,
    "eigengradcam": _eigengradcam,
}


def _normalise(b: Builder, raw: str) -> str:
    """As methods.postprocess.normalise before its resize: non-finite maps -> zeros, ReLU, per-image min-max
    (a constant map -> zeros)."""
    finite = b.op("Not", b.op("Or", b.op("IsNaN", raw), b.op("IsInf", raw)))
    all_finite = b.op("Equal", b.reduce("ReduceMin", b.op("Cast", finite, to=onnx.TensorProto.FLOAT), [1, 2]),
                      b.const(np.float32(1)))
    zero = b.const(np.float32(0))
    m = b.op("Relu", b.op("Where", all_finite, raw, zero))
    m = b.op("Sub", m, b.reduce("ReduceMin", m, [1, 2]))
    peak = b.reduce("ReduceMax", m, [1, 2])
    positive = b.op("Greater", peak, zero)
    return b.op("Where", positive, b.op("Div", m, b.op("Where", positive, peak, b.const(np.float32(1)))), zero)


def _output_size(b: Builder, model: onnx.ModelProto, size: str | tuple[int, int]) -> str | None:
    """(2,) int64 tensor of the map's (H, W), or None to keep the layer's size."""
    if size == "layer":
        return None
    if isinstance(size, tuple):
        return b.ints(size)
    h, w, layout = _image_hw(b, model)
    if isinstance(h, int) and isinstance(w, int):
        return b.ints([h, w])
    start = 2 if layout == "NCHW" else 1
    return b.shape(image_input(model), start, start + 2)


def _resize(b: Builder, m: str, size: str | None) -> str:
    """Bilinear resize like cv2.resize(INTER_LINEAR): half-pixel centres, clamped edges, no antialias; then clip."""
    if size is not None:
        m4 = b.unsqueeze(m, [1])
        sizes = b.op("Concat", b.shape(m4, 0, 2), size, axis=0)
        resized = b.op("Resize", m4, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
        m = b.squeeze(resized, [1])
    return b.op("Clip", m, b.const(np.float32(0)), b.const(np.float32(1)))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Constant folding leaves the folded intermediates behind; onnxruntime warns about each and they cost bytes."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    used |= {name for node in graph.node for attr in node.attribute for sub in
             ([attr.g] if attr.HasField("g") else list(attr.graphs)) for inner in sub.node for name in inner.input}
    kept = [t for t in graph.initializer if t.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _declare_outputs(model: onnx.ModelProto, options: ExportOptions) -> None:
    batch = _batch_dim(model)
    if isinstance(options.size, tuple):
        hw: list[int | str | None] = list(options.size)
    else:
        hw = ["cam_height", "cam_width"]
        if options.size == "input":
            h, w, _ = _image_hw(Builder(model.graph, default_opset(model)), model)
            hw = [h if isinstance(h, int) else "cam_height", w if isinstance(w, int) else "cam_width"]
    model.graph.output.append(helper.make_tensor_value_info(CAM, onnx.TensorProto.FLOAT, [batch, *hw]))
    if options.class_output:
        model.graph.output.append(helper.make_tensor_value_info(CAM_CLASS, onnx.TensorProto.INT64, [batch]))


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, object]) -> None:
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY,
                                                            value=json.dumps(metadata, sort_keys=True)))


def _version() -> str:
    from onnxcam import __version__
    return __version__


def _byte_size(model: onnx.ModelProto) -> int:
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    try:
        return max(weights, model.ByteSize())
    except Exception:  # protobuf refuses to size a message past its limit
        return weights
