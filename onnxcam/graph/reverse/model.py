"""One reverse model: a copy of the model whose single run returns its scores, chosen activations and what a
reverse pass carries back to them: gradients (the gradient rule table) or LRP relevance (the relevance table).

The rewritten model has one extra input, the seed (shaped like the scores). For gradients, row i of the result is
the gradient of sum_k seed[i, k] * score[i, k]; for (N, K) scores a row of zeros selects the predicted class
in-graph, so the default needs no second run. For relevance the seed selects the explained class the same way and
the initial relevance is built from it in-graph:
- "contrastive" (the official Relevance-CAM choice): R[c] = 1, R[j != c] = -1 / classes;
- "score": R = seed * scores (classic LRP: the target logit's value for a one-hot seed);
- "seed": R = seed itself (any initial relevance the caller builds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from onnxcam.errors import InputError, LayerError
from onnxcam.graph.builder import Builder, Shape
from onnxcam.graph.catalogue import find_score
from onnxcam.graph.contract import GRAD_PREFIX as GRAD_PREFIX
from onnxcam.graph.contract import PREFIXES, SCORES, SEED
from onnxcam.graph.contract import RELEVANCE_PREFIX as RELEVANCE_PREFIX
from onnxcam.graph.load import default_opset
from onnxcam.graph.precision import promote_to_float32, reverse_type
from onnxcam.graph.protos import GraphProto, ModelProto, NodeProto, TensorProto, make_node, make_tensor_value_info
from onnxcam.graph.reverse.relevance import LrpOptions, rule_table
from onnxcam.graph.reverse.walker import backward
from onnxcam.graph.topo import elem_types, static_shapes

INITIAL_RELEVANCE = ("contrastive", "score", "seed")


@dataclass
class ReverseModel:
    model: ModelProto
    score: str                      # tensor the reverse pass starts from
    output: str                     # the model output the score stands for
    kind: str = "gradient"          # "gradient" or "relevance": what `values` holds
    seed: str = SEED
    scores: str = SCORES
    activations: dict[str, str] = field(default_factory=dict)   # tensor -> output name
    values: dict[str, str] = field(default_factory=dict)        # tensor -> output name of its gradient/relevance

    @property
    def gradients(self) -> dict[str, str]:
        return self.values


def image_input(model: ModelProto) -> str:
    """The graph input that carries the image: the first float rank-4 input, else the first input."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if not inputs:
        raise LayerError("the model has no inputs")
    for value in inputs:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT and len(tensor_type.shape.dim) == 4:
            return value.name
    return inputs[0].name


def check_tensors(model: ModelProto, names: Sequence[str]) -> None:
    known = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output if o]
    for name in names:
        if name not in known:
            raise LayerError(f"no tensor named '{name}' in the model{_suggest(name, known)}")


def _suggest(name: str, known: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; run 'onnxcam inspect' to list layers"


def expose(model: ModelProto, tensors: Sequence[str]) -> ModelProto:
    """A copy of `model` with `tensors` added to its outputs (forward only)."""
    check_tensors(model, tensors)
    out = ModelProto()
    out.CopyFrom(model)
    types, shapes = elem_types(out.graph), static_shapes(out.graph)
    _add_outputs(out, {t: (types.get(t, TensorProto.FLOAT), shapes.get(t)) for t in tensors})
    return out


@dataclass
class Reverse:
    """A copy of the model ready for a reverse pass from its score (gradients or relevance)."""
    model: ModelProto
    builder: Builder
    forward_nodes: list[NodeProto]
    score: str          # the tensor the walker starts from (before a Softmax/Sigmoid)
    chosen: str         # the score output users see
    scores: str         # the score reshaped like `chosen`
    selection: str      # the seed input, zero rows replaced in-graph by the predicted class

    def at_score(self, seed: str) -> str:
        """A seed built like `scores`, reshaped to the walker's `score` (keeps the users' scores 2-D)."""
        return seed if self.score == self.chosen else self.builder.op("Reshape", seed,
                                                                      self.builder.op("Shape", self.score))

    def targets(self, layers: Sequence[str], with_input: bool) -> list[str]:
        return list(dict.fromkeys(list(layers) + ([image_input(self.model)] if with_input else [])))


def prepare_reverse(model: ModelProto, layers: Sequence[str], output: str | None = None,
                    probabilities: bool = False) -> Reverse:
    check_tensors(model, layers)
    rewritten = ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    score, chosen = find_score(rewritten, output, probabilities)
    b = Builder(graph, default_opset(rewritten))
    forward_nodes = list(graph.node)
    scores = b.op("Identity", score) if score == chosen else b.op("Reshape", score, b.op("Shape", chosen))
    b.set_shape(scores, b.static_shape(chosen), b.elem_type(chosen))
    return Reverse(rewritten, b, forward_nodes, score, chosen, scores, _effective_seed(b, scores, graph, chosen))


def reverse_model(model: ModelProto, layers: Sequence[str], with_input: bool = False,
                  output: str | None = None, probabilities: bool = False, lrp: LrpOptions | None = None,
                  initial: str = "contrastive") -> ReverseModel:
    """Add the reverse pass from the score to `layers` (and to the image input with `with_input`): gradients, or
    with `lrp` the relevance of that rule table, starting from the `initial` relevance."""
    kind = "gradient" if lrp is None else "relevance"
    if kind == "relevance" and initial not in INITIAL_RELEVANCE:
        raise InputError(f"unknown initial relevance '{initial}'; use one of {', '.join(INITIAL_RELEVANCE)}")
    r = prepare_reverse(model, layers, output, probabilities)
    wrt = r.targets(layers, with_input)
    if lrp is None:
        carried = backward(r.builder, r.forward_nodes, r.score, r.at_score(r.selection), wrt)
    else:
        start = _initial_relevance(r.builder, r.selection, r.scores, initial)
        carried = backward(r.builder, r.forward_nodes, r.score, r.at_score(start), wrt, rule_table(lrp),
                           kind="relevance")
    result = ReverseModel(r.model, r.score, r.chosen, kind)
    result.activations = {name: name for name in wrt}
    result.values = finish_outputs(r.builder, r.model, r.scores, r.chosen, carried, PREFIXES[kind])
    return result


def gradient_model(model: ModelProto, layers: Sequence[str], input_gradient: bool = False,
                   output: str | None = None, probabilities: bool = False) -> ReverseModel:
    """`reverse_model` for gradients (the common case, kept short for tests and tools)."""
    return reverse_model(model, layers, input_gradient, output, probabilities)


def finish_outputs(b: Builder, rewritten: ModelProto, scores: str, chosen: str, computed: dict[str, str],
                   prefix: str) -> dict[str, str]:
    """Expose the scores, each tensor in `computed` and what was computed for it (as <prefix><tensor>) as graph
    outputs, keeping only the emitted nodes that reach them; returns tensor -> output name."""
    names = {name: prefix + name for name in computed}
    b.nodes.extend(make_node("Identity", [computed[n]], [names[n]], name=f"onnxcam/out_{prefix}{n}")
                   for n in computed)
    b.nodes.append(make_node("Identity", [scores], [SCORES], name="onnxcam/out_scores"))
    nodes, initializers = live_nodes(*b.finish(), {SCORES, *names.values()})
    nodes, initializers = promote_to_float32(nodes, initializers, b._types)  # float16 models: float32 backward
    rewritten.graph.node.extend(nodes)
    rewritten.graph.initializer.extend(initializers)
    outputs = {SCORES: (reverse_type(b.elem_type(chosen)), b.static_shape(chosen))}
    for name in computed:
        outputs[name] = (b.elem_type(name), b.static_shape(name))
        outputs[names[name]] = (reverse_type(b.elem_type(name)), b.static_shape(name))
    _add_outputs(rewritten, outputs)
    return names


def live_nodes(nodes: list[NodeProto], initializers: list[TensorProto],
               outputs: set[str]) -> tuple[list[NodeProto], list[TensorProto]]:
    """Drop emitted nodes whose results reach no output (rules also emit gradients for weights, and
    onnxruntime would compute those: it does not eliminate dead nodes)."""
    live = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(out in live for out in node.output):
            kept.append(node)
            live.update(node.input)
    return kept[::-1], [t for t in initializers if t.name in live]


def _effective_seed(b: Builder, scores: str, graph: GraphProto, like: str) -> str:
    """The seed input; for rank-2 scores, rows of zeros become the one-hot of the predicted class."""
    shape = b.static_shape(like)
    elem_type = b.elem_type(like)
    # Only the rank is declared: onnx's inferred sizes can disagree with onnxruntime's (ceil-mode pooling,
    # SAME ConvTranspose), and a wrong declared size would make onnxruntime reject every seed.
    dims: list[int | str | None] | None = [f"onnxcam_seed_{i}" for i in range(len(shape))] if shape is not None \
        else None
    graph.input.append(make_tensor_value_info(SEED, elem_type, dims))
    b.set_shape(SEED, tuple(dims) if dims is not None else None, elem_type)
    if shape is None or len(shape) != 2:
        return SEED
    predicted = b.op("ArgMax", scores, axis=1, keepdims=1)
    classes = b.op("Range", b.const(0, "int64"), b.op("Gather", b.op("Shape", scores), b.const(1, "int64")),
                   b.const(1, "int64"))
    one_hot = b.cast_like(b.op("Equal", b.unsqueeze(classes, [0]), predicted), SEED)
    empty_row = b.op("Equal", b.reduce("ReduceMax", b.op("Abs", SEED), [1], keepdims=True), b.scalar_like(0, SEED))
    return b.op("Add", SEED, b.op("Mul", one_hot, b.cast_like(empty_row, SEED)))


def _add_outputs(model: ModelProto, names: dict[str, tuple[int, Shape | None]]) -> None:
    """Add graph outputs (name -> element type, static shape) that are not outputs yet."""
    existing = {o.name for o in model.graph.output}
    for name, (elem_type, shape) in names.items():
        if name not in existing:
            dims = [None] * len(shape) if shape is not None else None  # rank only, for the same reason
            model.graph.output.append(make_tensor_value_info(name, elem_type, dims))
            existing.add(name)


def _initial_relevance(b: Builder, selection: str, scores: str, initial: str) -> str:
    if initial == "seed":
        return selection
    if initial == "score":
        return b.op("Mul", selection, scores)
    # contrastive: sel * (1 + 1/K) - 1/K, i.e. 1 at the target and -1/K elsewhere for a one-hot row
    shape = b.static_shape(scores)
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
        share = b.scalar_like(1.0 / shape[1], selection)
    else:
        classes = b.op("Gather", b.op("Shape", scores), b.const(-1, "int64"))
        share = b.op("Reciprocal", b.cast_like(classes, selection))
    return b.op("Sub", b.op("Mul", selection, b.op("Add", share, b.scalar_like(1.0, selection))), share)
