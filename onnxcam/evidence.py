"""Evidence for the methods: one model, its sessions (reused across calls) and the runs a method's `needs` call for.

`ModelView` knows a model's input, score, task and layouts from its facts (onnxcam.facts: read from the cache, or
worked out from the parsed model once); `EvidenceBuilder.build`
turns a batch into one `methods.Evidence` per layer with exactly the fields a method names in `needs`: one
gradient, relevance or FullGrad run when it reads those, a plain forward otherwise, and only the callables (head
runs, masked-input scores, input gradients) it declares.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.errors import GradientError, InputError, LayerError
from onnxcam.facts import model_facts, release
from onnxcam.graph.contract import (
    INPUT_TYPES,
    SCALE,
    LrpOptions,
    ModelSource,
    ModelSummary,
    Scale,
    TensorInfo,
    scales_from,
    tensor_infos,
)
from onnxcam.images import Preprocessing, blank_input, model_labels, resolve_preprocessing
from onnxcam.methods import METHODS, Evidence, Method
from onnxcam.runners import ReverseResult, ReverseRunner, Targets, check_input, target_ids
from onnxcam.runtime import Session, cached_session, choose_providers, model_sha256
from onnxcam.targets import (
    ClassifierOutputTarget,
    DetectionLayout,
    Target,
    categories,
    detection_layout,
    guess_task,
    is_target_objects,
    resolve_targets,
    seeds,
    ultralytics_info,
)
from onnxcam.tokens import TOKEN_LAYOUTS, TokenOptions, TokenView, check_batch, runtime_layout, token_view

if TYPE_CHECKING:
    import onnx

# relevancecam's options that shape the relevance model rather than the method's arithmetic
LRP_OPTIONS = ("rule", "alpha", "beta", "epsilon", "bias", "first_layer", "initial")


class ModelView:
    """A model with what every explanation needs: input, score, task, candidate layers, layouts, and its
    onnxruntime sessions (one per need, kept for the object's life; `close` releases them).

    What it knows comes from the model's facts (onnxcam.facts): worked out from the parsed model once, then read
    from the cache, so a warm start parses nothing. `model` is parsed on first use only.
    """

    def __init__(self, model: ModelSource, layer: str | Sequence[str] | None = None,
                 providers: Sequence[str] | None = None, device: str = "auto",
                 output: str | Sequence[str] | None = None,
                 probabilities: bool = False, grid: tuple[int, int] | None = None, extra_tokens: int | None = None,
                 extra_tokens_at: str = "start") -> None:
        self.token_options = TokenOptions(grid, extra_tokens, extra_tokens_at)
        self.token_views: dict[str, TokenView] = {}
        self.source = model if isinstance(model, (str, os.PathLike)) else None
        self.facts = model_facts(model)  # finds the model's facts and rewritten models in the cache
        self.identity = self.facts.identity
        self.requested, self.probabilities = output, probabilities
        self._model: onnx.ModelProto | None = None
        self._scope = f"view {output!r} {probabilities}"  # the questions' scope: a chosen output changes answers
        known = self.ask("survey", self._survey)
        self.notes: list[str] = known["notes"]
        self.tensors: list[TensorInfo] = tensor_infos(known)
        self.score, self.output = known["score"], known["output"]
        self.output_option = known["chosen"]  # the output as the prepared model names it (None: the first)
        # several outputs explained as one (an instance's mask reads detections and prototypes): the first one's
        # shape still says the task and the detection layout
        self.parts: tuple[tuple[int, ...], ...] = tuple(tuple(part) for part in known["parts"])
        self.primary: str = known["primary"] or self.output
        self.layers = [t.name for t in self.tensors if t.spatial and t.op_type]
        if known["default_layer"] is None and layer is None:
            raise LayerError(known["default_layer_problem"])
        # the user named the layer: no automatic choice needed (e.g. shapes hidden behind an If node)
        self.default_layer = known["default_layer"] or (layer if isinstance(layer, str) else list(layer or [""])[0])
        self.providers = choose_providers(device, providers)
        self.input_name: str = known["input_name"]
        info = next(t for t in self.tensors if t.name == self.input_name)
        self.input_shape = info.shape
        self.input_layout = info.layout or "NCHW"
        self.input_type = INPUT_TYPES.get(known["input_elem_type"], "tensor(float)")
        # the explained output's declared shape (of the first of joined outputs: it says the task and classes)
        self.output_shape = next((t.shape for t in self.tensors if t.name == self.primary), None) \
            if self.parts else None if known["output_shape"] is None else tuple(known["output_shape"])
        self._known = known
        self.graph_outputs: list[str] = known["graph_outputs"]
        self.layouts = {t.name: t.layout for t in self.tensors}
        self.scales: list[Scale] = []
        if self.task == "detect":  # a multi-scale head: its per-scale feature maps, one combined map
            self.scales = self._detection_scales()
        if self.task in ("segment", "detect"):  # the last spatial map is the class head itself: take the input
            # that every head (every scale of a multi-scale detector) depends on
            self.default_layer = self.ask("head input", self._shared_head_input) or self.default_layer
        self.default_layers = [s.feature for s in self.scales] or [self.default_layer]
        self.layer = self.resolve_layers(layer) or self.default_layers
        self.sessions: dict[Any, Any] = {}
        self._preprocessing: Preprocessing | None = None

    # --- the parsed model and its facts ---------------------------------------------------------------------------
    @property
    def model(self) -> onnx.ModelProto:
        """The loaded, normalised model (with a detector's raw predictions before NMS exposed, several outputs
        joined into one), parsed on first use: a warm run needs none of it."""
        if self._model is None:
            self._model = self._prepared()[0]
        return self._model

    def ask(self, question: str, compute: Callable[[], Any]) -> Any:
        """The model's stored answer to `question` (asked of this view's model), else `compute()`, stored."""
        return self.facts.ask(f"{self._scope}: {question}", compute)

    def _prepared(self) -> tuple[onnx.ModelProto, str | None, list[str], tuple[tuple[int, ...], ...]]:
        """(the model as explained, the output it names, notes, the joined outputs' shapes per image)."""
        from onnxcam.graph.dense import prefer_pre_nms
        from onnxcam.graph.joined import join_outputs

        model, output = self.facts.model, self.requested
        parts: tuple[tuple[int, ...], ...] = ()
        if output is not None and not isinstance(output, str):
            model, output, parts = join_outputs(model, list(output))
        # a detector with NMS inside: explain the raw predictions before it (notes say so)
        model, output, notes = prefer_pre_nms(model, output)
        return model, output, notes, parts

    def _survey(self) -> dict[str, Any]:
        from onnxcam.graph.survey import survey

        self._model, chosen, notes, parts = self._prepared()
        requested = self.requested
        primary = None if requested is None or isinstance(requested, str) else list(requested)[0]
        return {**survey(self._model, chosen, self.probabilities), "notes": notes, "chosen": chosen,
                "parts": [list(part) for part in parts], "primary": primary}

    @property
    def summary(self) -> ModelSummary:
        """The model's metadata, data inputs, outputs and op types."""
        return self.facts.summary

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.summary.metadata)

    def _shared_head_input(self) -> str | None:
        from onnxcam.graph.dense import shared_head_input

        return shared_head_input(self.model, self.score, self.tensors)

    def _detection_scales(self) -> list[Scale]:
        """The per-scale features of a detector whose rows come from several feature maps (YOLO's three strides),
        each map made on its own and averaged (so a detection from any scale gets its own map); [] otherwise."""
        shape = self.input_shape or ()
        meta = ultralytics_info(self.metadata)
        hw: tuple[int, int] | None = None
        if not all(isinstance(d, int) for d in shape[1:]) and meta is not None and meta.imgsz:
            hw = meta.imgsz  # a dynamic export: its training size
        selected = meta is not None and meta.end2end or bool(self.summary.ops & {"NonMaxSuppression", "TopK"})

        def compute() -> list[dict[str, Any]]:
            from onnxcam.errors import OnnxcamError
            from onnxcam.graph.survey import scales

            try:
                return scales(self.model, self.primary, self.tensors, hw, bool(selected))
            except OnnxcamError:
                return []
        return scales_from(self.ask(f"scales {hw} {bool(selected)}", compute))

    def resolve_layers(self, layer: str | Sequence[str] | None) -> list[str]:
        """Tensor names for what the user named: tensors, or PyTorch module paths the exporter recorded
        ("layer4.1", pytorch-grad-cam's "layer4[-1]"), each resolved to the module's output tensor."""
        if layer is None:
            return []
        names = [layer] if isinstance(layer, str) else list(layer)
        known = {t.name for t in self.tensors}
        if all(name in known for name in names):
            return names
        return list(self.ask(f"layers {names!r}", lambda: self._resolve(names)))

    def _resolve(self, names: list[str]) -> list[str]:
        from onnxcam.graph.names import resolve_layer
        from onnxcam.graph.reverse.model import check_tensors

        resolved = []
        for name in names:
            try:
                resolved.append(resolve_layer(self.model, name, self.modules))
            except LayerError as e:
                try:  # the tensor message first: its close names are what most users meant
                    check_tensors(self.model, [name])
                except LayerError as missing:
                    modules = str(e).partition(";")[2].strip()
                    raise LayerError(f"{missing}" + (f"; as a module path: {modules}" if modules else "")) from None
                raise
        check_tensors(self.model, resolved)
        return resolved

    @functools.cached_property
    def modules(self) -> Any:
        """The PyTorch module paths the exporter recorded (an onnxcam.graph.names.ModuleMap; empty for other
        exporters)."""
        from onnxcam.graph.names import module_map

        return module_map(self.model)

    def module_path(self, tensor: str) -> str | None:
        """The module whose output `tensor` is ("layer4.1"), else the innermost module computing it, else None."""
        def compute() -> str | None:
            from onnxcam.graph.names import enclosing_module, module_path

            return module_path(self.model, tensor, self.modules) or enclosing_module(self.model, tensor, self.modules)
        return self.ask(f"module {tensor}", compute)

    @functools.cached_property
    def task(self) -> str | None:
        """classify / segment / detect / embed: the model's "task" metadata, else guessed from the output's rank."""
        return guess_task(self.output_shape, self.metadata)

    @functools.cached_property
    def model_id(self) -> str:
        """A content hash (sha256) of the model: files fitted to one model (BroadCAM) are refused by another."""
        return model_sha256(self.source) if self.source is not None else self.identity.split(":", 1)[1]

    @functools.cached_property
    def classes(self) -> int | None:
        """The class count of an (N, classes) score output, else None."""
        shape = self.output_shape
        return shape[1] if shape is not None and len(shape) == 2 and isinstance(shape[1], int) else None

    @property
    def quantized(self) -> bool:
        return bool(self._known["quantized"])

    @property
    def batch_limit(self) -> int | None:
        """The fixed batch size of the image input (exports with a static batch, often 1), else None."""
        first = self.input_shape[0] if self.input_shape else None
        return first if isinstance(first, int) and first > 0 else None

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this model's input: set by the caller (the CLI does), else read from the model's
        metadata with the imagenet preset as fallback. Masking methods and metrics fade images to its black."""
        if self._preprocessing is None:
            self._preprocessing = resolve_preprocessing(self.summary, self.input_name, self.input_layout)
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, spec: Preprocessing) -> None:
        self._preprocessing = spec

    def baseline(self) -> np.ndarray:
        """The model input of a black image, broadcastable to a batch (see `preprocessing`)."""
        return blank_input(self.preprocessing)

    def input_size(self, x: np.ndarray) -> tuple[int, int]:
        return (x.shape[2], x.shape[3]) if self.input_layout == "NCHW" else (x.shape[1], x.shape[2])

    def detection_layout(self, shape: Sequence[int], input_size: Sequence[int] | None = None) -> DetectionLayout:
        """The layout of one image's detector output of `shape` for inputs of `input_size` (H, W; default: the
        input's static size): the model's metadata, else guessed."""
        labels = model_labels(self.summary)
        post_nms, nms_classes = self._known["post_nms"], self._known["nms_classes"]
        classes = len(labels) if labels else nms_classes if post_nms is not None else None
        spatial = (self.input_shape or ())[1:3] if self.input_layout == "NHWC" else (self.input_shape or ())[2:4]
        static = tuple(d for d in spatial if isinstance(d, int))
        if input_size is None and len(static) == 2:
            input_size = static
        if self.parts:  # the detections are the first part of the joined output
            layout = detection_layout(self.parts[0], self.metadata, classes, post_nms, input_size)
            return replace(layout, parts=self.parts)
        return detection_layout(shape, self.metadata, classes, post_nms, input_size)

    def check(self, x: Any) -> np.ndarray:
        array = check_input(x, self.input_name, self.input_shape, self.input_type)
        if array.ndim != 4:
            raise InputError(f"x has shape {array.shape}; expected a batch of images (N, C, H, W) or (N, H, W, C)")
        return array

    # --- plain runs -----------------------------------------------------------------------------------------------
    def scores(self, x: np.ndarray) -> np.ndarray:
        """The score tensor (logits by default) for a batch, (N, classes)."""
        x = self.check(x)
        return self.forward_session(()).run([self.score], {self.input_name: x})[0].reshape(len(x), -1)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The score tensor of a batch in the output's own shape (N, ...): logits, segmentation logits, raw
        detections or embeddings (before a final Softmax/Sigmoid, as `scores`)."""
        feeds = {self.input_name: self.check(x)}
        if self.score == self.output:
            return self.forward_session(()).run([self.score], feeds)[0]
        score, out = self.forward_session((self.output,)).run([self.score, self.output], feeds)
        return score.reshape(out.shape)

    def forward_session(self, tensors: tuple[str, ...]) -> Session:
        key = ("forward", tensors)
        if key not in self.sessions:
            wanted = [self.score] + [t for t in tensors if t != self.score]
            self.sessions[key] = cached_session(self.identity, ("expose", wanted), lambda: self._exposed(wanted),
                                                self.providers, source=self.source)
        return self.sessions[key]

    def _exposed(self, tensors: list[str]) -> onnx.ModelProto:
        from onnxcam.graph.reverse.model import expose

        return expose(self.model, tensors)

    def reverse_runner(self, layers: Sequence[str], with_input: bool = False,
                       lrp: LrpOptions | None = None, initial: str = "contrastive") -> ReverseRunner:
        key = ("reverse", tuple(layers), with_input, lrp, initial)
        if key not in self.sessions:
            try:
                self.sessions[key] = ReverseRunner(self.facts.source, list(layers), with_input, self.output_option,
                                                   self.probabilities, providers=self.providers, lrp=lrp,
                                                   initial=initial, identity=self.identity, source=self.source,
                                                   view=(self._known, lambda: self.model, self._scope))
            except GradientError as e:  # the graph knows no method names: the registry says which still work
                free = sorted(m.name for m in METHODS.values() if m.gradient_free)
                raise GradientError(f"{e} ({', '.join(free)})") from None
        return self.sessions[key]

    def head_session(self, layer: str, scaled: bool = False) -> tuple[Session, list[str]]:
        key = ("head", layer, scaled)
        if key not in self.sessions:
            heads: dict[str, Any] = {}  # the cut head, when this run had to cut it

            def cut() -> Any:
                if "head" not in heads:
                    from onnxcam.graph.head import extract_head

                    heads["head"] = extract_head(self.model, layer, self.score, scale=scaled)
                return heads["head"]
            extra = self.ask(f"head inputs {layer} {scaled}", lambda: cut().extra_inputs)
            session = cached_session(self.identity, ("head", layer, self.score, scaled), lambda: _fresh(cut().model),
                                     self.providers, source=self.source)
            self.sessions[key] = (session, list(extra))
        return self.sessions[key]

    def close(self) -> None:
        """Release every onnxruntime session (and the memory they hold); the next call makes them anew."""
        self.sessions.clear()
        release(self.facts)  # the process no longer keeps the parsed model for a next explainer of it

    # --- layouts --------------------------------------------------------------------------------------------------
    def to_nchw(self, layer: str, array: np.ndarray) -> np.ndarray:
        view = self.token_views.get(layer)
        if view is not None and self.layouts.get(layer) in TOKEN_LAYOUTS:
            return view.to_nchw(array)
        if array.ndim != 4:
            raise LayerError(f"layer '{layer}' has shape {array.shape}; CAM methods need a rank-4 feature map "
                             f"(candidates: {', '.join(self.layers[-5:])})")
        return array.transpose(0, 3, 1, 2) if self.layouts.get(layer) == "NHWC" else array

    def from_nchw(self, layer: str, array: np.ndarray, image: int = 0, per_channel: bool = False) -> np.ndarray:
        """Features (B, K, h, w) back in the layer's layout; for token layers with image `image`'s extra tokens, or
        a per-channel scale (B, K, 1, 1) shaped to broadcast over the tokens."""
        view = self.token_views.get(layer)
        if view is not None and self.layouts.get(layer) in TOKEN_LAYOUTS:
            return view.channel_scale(array) if per_channel else view.from_nchw(array, image)
        return array.transpose(0, 2, 3, 1) if self.layouts.get(layer) == "NHWC" else array

    def observe_layout(self, layer: str, activation: np.ndarray, x: np.ndarray) -> None:
        """Layouts the graph leaves open (dynamic exports) from the values; the token grid of this batch."""
        if self.layouts.get(layer) is None:
            self.layouts[layer] = runtime_layout(activation.shape, self.input_size(x))
        if self.layouts.get(layer) in TOKEN_LAYOUTS:
            check_batch(layer, activation, len(x))
            self.token_views[layer] = token_view(layer, str(self.layouts[layer]), activation, self.input_size(x),
                                                 self.token_options)


class EvidenceBuilder:
    """Builds `Evidence` from a `ModelView`: one run per batch, plus what the method declares it needs."""

    def __init__(self, view: ModelView) -> None:
        self.view = view
        self._heads: dict[str, np.ndarray | None] = {}
        self._pooled_cuts: dict[str, str | None] = {}

    @functools.cached_property
    def _biases(self) -> dict[str, np.ndarray]:
        """FullGrad's biased Conv/BN outputs (a walk over the graph): found once, not per batch."""
        from onnxcam.graph.head import biased_outputs

        return biased_outputs(self.view.model, self.view.score)

    def build(self, x: np.ndarray, targets: Targets, layers: list[str], method: Method,
              options: dict[str, Any] | None = None) -> list[Evidence]:
        """One Evidence per layer for `method`; `options` are the method's (relevancecam reads its rule's)."""
        v, needs = self.view, set(method.needs)
        objects, targets = self._target_seeds(x, targets)  # target objects: their seeds replace `targets`
        carried: dict[str, np.ndarray] = {}
        result: ReverseResult | None = None
        if method.run in ("gradient", "relevance", "fullgrad"):
            biases = self._biases if method.run == "fullgrad" else {}
            runner = v.reverse_runner(list(dict.fromkeys([*layers, *biases])), method.run == "fullgrad",
                                      *self._lrp(options or {}) if method.run == "relevance" else (None, ))
            result = runner.run(x, targets)
            scores, acts, carried = result.scores.reshape(len(x), -1), result.activations, result.values
            if result.targets is None and objects is None:  # a raw seed on an output that is not (N, classes)
                raise InputError(f"a seed array explains no class of output '{v.output}' {v.output_shape}; pass "
                                 "target objects (onnxcam.targets: DetectionTarget, SemanticSegmentationTarget, ...), "
                                 "or use onnxcam.gradients for the gradient of a seed")
            chosen = result.targets if objects is None else categories(objects)
            if objects is not None:  # a zero seed is a zero gradient (in-graph, a zero row would mean "argmax")
                flat = ~np.asarray(targets).reshape(len(x), -1).any(axis=1)
                for value in carried.values():
                    value[flat] = 0
        else:
            pooled = [p for p in (self._pooled(name) for name in layers) if p]  # tiny, and one session for all
            wanted = list(dict.fromkeys(layers + pooled))
            values = v.forward_session(tuple(wanted)).run([v.score] + wanted, {v.input_name: x})
            scores = values[0].reshape(len(x), -1)
            ids = target_ids(targets, len(x), scores.shape[1]) if objects is None else categories(objects)
            chosen = scores.argmax(axis=1) if ids is None else ids
            acts = dict(zip(wanted, values[1:]))
        assert chosen is not None
        out = []
        for name in layers:
            v.observe_layout(name, acts[name], x)
            ev = Evidence(v.to_nchw(name, acts[name]), chosen, scores, x, name, v.input_size(x), v.input_layout)
            if objects is not None:
                ev.target_objects, ev.output_shape = objects, np.asarray(targets).shape[1:]
            if method.run in ("gradient", "relevance"):
                setattr(ev, "gradients" if method.run == "gradient" else "relevance", v.to_nchw(name, carried[name]))
            if method.run == "fullgrad":
                assert result is not None
                ev.input_gradient = result.input_values  # like x, in the model's layout
                ev.bias_gradients = [(bias, carried[t]) for t, bias in self._biases.items()]  # Conv: NCHW
            for field in needs:
                maker = self._makers.get(field)
                if maker is not None:
                    setattr(ev, field, maker(self, name, x, chosen, objects, acts))
            out.append(ev)
        return out

    # --- what methods may ask for (field -> maker) ----------------------------------------------------------------
    def _head_weights(self, layer: str, *_: Any) -> np.ndarray | None:
        """The GAP + linear head's weights after `layer` (for CAM), read once per layer."""
        if layer not in self._heads:
            from onnxcam.graph.head import linear_head_weights

            self._heads[layer] = linear_head_weights(self.view.model, layer, self.view.score)
        return self._heads[layer]

    def _baseline(self, *_: Any) -> np.ndarray:
        return self.view.baseline()

    def _model_id(self, *_: Any) -> str:
        return self.view.model_id

    def _graph_outputs(self, *_: Any) -> tuple[str, ...]:
        return tuple(self.view.graph_outputs)

    def _scores_of_fn(self, *_: Any) -> Callable[[np.ndarray], np.ndarray]:
        return self._scores_of

    def _scores_of(self, batch: np.ndarray) -> np.ndarray:
        v = self.view
        step = v.batch_limit or max(1, len(batch))  # a fixed-batch model scores masked inputs in parts
        parts = [np.ascontiguousarray(batch[i:i + step], np.float32) for i in range(0, len(batch), step)]
        return np.concatenate([v.forward_session(()).run([v.score], {v.input_name: part})[0].reshape(len(part), -1)
                               for part in parts])

    def _tensors_of_fn(self, layer: str, x: np.ndarray, *_: Any) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
        return functools.partial(self._tensors_of, x)

    def _tensors_of(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Values of any tensors for x: one forward run of the model with them exposed."""
        wanted = list(dict.fromkeys(names))
        values = self.view.forward_session(tuple(wanted)).run(wanted, {self.view.input_name: x})
        return dict(zip(wanted, values))

    def _head_scores_fn(self, layer: str, x: np.ndarray, *_: Any) -> Callable[..., np.ndarray]:
        # a partial, not a closure calling itself: such a closure is a reference cycle, and cycles that hold
        # batches are freed only when the cyclic collector happens to run (memory grew over long runs)
        return functools.partial(self._head_scores, layer, x, {})

    def _head_scores(self, layer: str, x: np.ndarray, extras: dict[int, list[Any]], features: np.ndarray, image: int,
                     scale: np.ndarray | None = None) -> np.ndarray:
        """Scores of the head for a batch of features (B, K, h, w); with `scale` (B, K, 1, 1), of one image's
        features (1, K, h, w) times each scale row, built inside the runtime."""
        v = self.view
        batch = len(features) if scale is None else len(scale)
        if batch > 1 and v.batch_limit == 1:  # exported for one image (Ultralytics' static exports): row by row
            return self._head_rows(layer, x, extras, features, image, scale)
        session, extra = v.head_session(layer, scale is not None)
        feeds = {layer: np.ascontiguousarray(v.from_nchw(layer, features, image), np.float32)}
        if scale is not None:
            feeds[SCALE] = np.ascontiguousarray(v.from_nchw(layer, scale, image, per_channel=True), np.float32)
        if extra:  # the head's inputs from before the layer: one forward per image, not per batch of copies
            if image not in extras:
                extras.clear()
                extras[image] = v.forward_session(tuple(extra)).run(extra, {v.input_name: x[image:image + 1]})
            for name, value in zip(extra, extras[image]):
                # per-image activations go with each row; integer tensors (shapes, gather indices that
                # exporters compute from shapes, e.g. torch's dynamo Swin) are not per image
                per_image = value.shape[:1] == (1,) and np.issubdtype(value.dtype, np.floating)
                feeds[name] = np.repeat(value, batch, axis=0) if per_image else value
        scores = session.run([v.score], feeds)[0]
        if len(scores) != batch and batch > 1:  # the head's shapes were computed for one image: row by row
            return self._head_rows(layer, x, extras, features, image, scale)
        return scores.reshape(batch, -1)

    def _head_rows(self, layer: str, x: np.ndarray, extras: dict[int, list[Any]], features: np.ndarray, image: int,
                   scale: np.ndarray | None) -> np.ndarray:
        rows = len(features) if scale is None else len(scale)
        return np.concatenate([self._head_scores(layer, x, extras, features if scale is not None else features[j:j + 1],
                                                 image, None if scale is None else scale[j:j + 1])
                               for j in range(rows)])

    def _channel_ablation_fn(self, layer: str, x: np.ndarray, chosen: np.ndarray, objects: Any,
                             acts: dict[str, np.ndarray]) -> Callable[[int, np.ndarray], np.ndarray] | None:
        cut = self._pooled(layer)
        if cut is None or cut == self.view.score or cut not in acts:  # no pooled cut, or the pooled vector is
            return None                                                 # the score itself: no head to run
        return functools.partial(self._channel_ablation, self._head_scores_fn(cut, x), acts[cut])

    @staticmethod
    def _channel_ablation(head_scores: Callable[..., np.ndarray], pooled: np.ndarray, image: int,
                          keep: np.ndarray) -> np.ndarray:
        """Scores with the layer's channels scaled by each row of keep (B, K), applied after global pooling
        (exact for zeroed channels: the ops before the cut keep channels apart and zeros at zero)."""
        scale = keep.reshape((len(keep),) + pooled.shape[1:]).astype(np.float32)
        return head_scores(pooled[image:image + 1], image, scale)

    def _input_gradients_of_fn(self, *_: Any) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return self._input_gradients_of

    def _input_gradients_of(self, batch: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B, classes) and d score[target] / d input for a batch, one run (Opti-CAM's inner step)."""
        step = self.view.batch_limit or max(1, len(batch))  # a fixed-batch model: in parts
        if len(batch) > step:
            parts = [self._input_gradients_of(batch[i:i + step], targets[i:i + step])
                     for i in range(0, len(batch), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        result = self.view.reverse_runner([], with_input=True).run(batch, np.asarray(targets, np.int64))
        assert result.input_values is not None
        return result.scores.reshape(len(batch), -1), result.input_values

    def _gradients_of_fn(self, layer: str, x: np.ndarray, chosen: np.ndarray, objects: list[Target] | None,
                         *_: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return functools.partial(self._gradients_of, layer, chosen, objects)

    def _gradients_of(self, layer: str, chosen: np.ndarray, objects: list[Target] | None,
                      batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = self.view
        ids: np.ndarray = np.resize(chosen, len(batch)) if len(batch) != len(chosen) else chosen
        if objects is not None:  # each target's gradient at this batch's own outputs (one image per target)
            ids = seeds([objects[i % len(objects)] for i in range(len(batch))], v.outputs(batch))
        result = v.reverse_runner([layer]).run(batch, ids)
        return v.to_nchw(layer, result.activations[layer]), v.to_nchw(layer, result.values[layer])

    _makers: dict[str, Callable[..., Any]] = {
        "head_weights": _head_weights, "baseline": _baseline, "model_id": _model_id, "graph_outputs": _graph_outputs,
        "scores_of": _scores_of_fn, "tensors_of": _tensors_of_fn, "head_scores": _head_scores_fn,
        "channel_ablation": _channel_ablation_fn, "input_gradients_of": _input_gradients_of_fn,
        "gradients_of": _gradients_of_fn,
    }

    # --- helpers --------------------------------------------------------------------------------------------------
    def _pooled(self, layer: str) -> str | None:
        v = self.view
        if layer not in self._pooled_cuts and v.layouts.get(layer) in TOKEN_LAYOUTS:
            self._pooled_cuts[layer] = None  # token layers: the extra tokens make pooled ablation inexact
        if layer not in self._pooled_cuts:
            layout = v.layouts.get(layer) or "NCHW"

            def compute() -> str | None:
                from onnxcam.graph.head import pooled_channels

                return pooled_channels(v.model, layer, layout)
            self._pooled_cuts[layer] = v.ask(f"pooled {layer} {layout}", compute)
        return self._pooled_cuts[layer]

    @staticmethod
    def _lrp(options: dict[str, Any]) -> tuple[LrpOptions, str]:
        chosen = {k: options[k] for k in LRP_OPTIONS if k in options}
        initial = chosen.pop("initial", "contrastive")
        return LrpOptions(**chosen), initial

    def _target_seeds(self, x: np.ndarray, targets: Targets) -> tuple[list[Target] | None, Targets]:
        """(bound target objects, what the reverse runner takes): their seeds, or class ids for a classifier."""
        v = self.view
        if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.floating):
            return None, targets
        if v.task in (None, "classify") and not is_target_objects(targets):
            return None, targets  # the fast path: class ids, or the in-graph argmax
        if v.task in (None, "classify") and isinstance(targets, (list, tuple)) and \
                all(isinstance(t, ClassifierOutputTarget) for t in targets):
            return None, categories(list(targets))
        outputs = v.outputs(x)
        layout = v.detection_layout(outputs.shape[1:], v.input_size(x)) if v.task == "detect" else None
        objects = resolve_targets(targets, outputs, v.task, layout)
        return (None, targets) if objects is None else (objects, seeds(objects, outputs))


def _fresh(model: Any) -> Any:
    """A copy of a ModelProto: cached_session may take the model it is built apart (moving its weights into the
    cache) and build it again when the cache turns out unwritable."""
    copy = type(model)()
    copy.CopyFrom(model)
    return copy
