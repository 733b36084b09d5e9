"""`onnxcam.Explainer`: class activation maps for an ONNX model, one session per need, reused across calls."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcam.errors import InputError, LayerError
from onnxcam.gradients import GradientRunner, Targets, check_input, target_ids
from onnxcam.graph.builder import _static_shapes
from onnxcam.graph.catalogue import catalogue, default_layer, find_score
from onnxcam.graph.dense import head_input, nms_classes, prefer_pre_nms, selection_nodes
from onnxcam.graph.head import SCALE, extract_head, pooled_channels
from onnxcam.graph.load import ModelSource, load_model
from onnxcam.graph.rewrite import check_tensors, expose, image_input
from onnxcam.images import Preprocessing, blank_input, model_labels, model_metadata, resolve_preprocessing
from onnxcam.methods import Evidence, get_method
from onnxcam.methods.fullgrad import layer_biases
from onnxcam.methods.heads import linear_head_weights
from onnxcam.methods.postprocess import combine, normalise
from onnxcam.runtime import Session, cached_session, choose_providers, model_identity, model_sha256
from onnxcam.targets import (
    CLASS_ONLY_METHODS,
    ClassifierOutputTarget,
    DetectionLayout,
    Target,
    categories,
    guess_detection_layout,
    guess_task,
    is_target_objects,
    resolve_targets,
    seeds,
)
from onnxcam.tokens import TOKEN_LAYOUTS, TokenOptions, TokenView, check_batch, runtime_layout, token_view


class Explainer:
    """Explain an ONNX image model.

    layer: a tensor name or a list of them (maps are averaged over layers); None picks `default_layer`.
    """

    def __init__(self, model: ModelSource, layer: str | Sequence[str] | None = None,
                 providers: Sequence[str] | None = None, device: str = "auto", output: str | None = None,
                 probabilities: bool = False, grid: tuple[int, int] | None = None, extra_tokens: int | None = None,
                 extra_tokens_at: str = "start") -> None:
        # grid / extra_tokens / extra_tokens_at: token layers of transformers, where inference is ambiguous
        # (onnxcam.tokens): the patch grid (h, w), how many class/distillation/register tokens, "start" or "end"
        self._token_options = TokenOptions(grid, extra_tokens, extra_tokens_at)
        self._token_views: dict[str, TokenView] = {}
        self._source = model if isinstance(model, (str, os.PathLike)) else None
        self.identity = model_identity(model)  # finds rewritten models in the cache (cheap for a file)
        self.model = load_model(model)
        # a detector with NMS inside: explain the raw predictions before it (notes say so)
        self.model, output, self.notes = prefer_pre_nms(self.model, output)
        self.tensors = catalogue(self.model)
        self.score, self.output = find_score(self.model, output, probabilities)
        self._output_option, self._probabilities = output, probabilities
        self.layers = [t.name for t in self.tensors if t.spatial and t.op_type]
        self.default_layer = default_layer(self.model, self.score, self.tensors)
        if self.task in ("segment", "detect"):  # the last spatial map is the class head itself: take its input
            self.default_layer = head_input(self.model, self.score, self.tensors) or self.default_layer
        chosen = [self.default_layer] if layer is None else [layer] if isinstance(layer, str) else list(layer)
        check_tensors(self.model, chosen)
        self.layer = chosen
        self.providers = choose_providers(device, providers)
        self.input_name = image_input(self.model)
        info = next(t for t in self.tensors if t.name == self.input_name)
        self.input_shape = info.shape
        self.input_layout = info.layout or "NCHW"
        self._layouts = {t.name: t.layout for t in self.tensors}
        self._sessions: dict[Any, Any] = {}
        self._preprocessing: Preprocessing | None = None
        self._gradient_runners: dict[tuple[tuple[str, ...], bool], GradientRunner] = {}
        self._heads: dict[str, np.ndarray | None] = {}
        self._pooled_cuts: dict[str, str | None] = {}
        value = next(i for i in self.model.graph.input if i.name == self.input_name)
        self._input_type = {1: "tensor(float)", 11: "tensor(double)", 10: "tensor(float16)", 2: "tensor(uint8)"}.get(
            value.type.tensor_type.elem_type, "tensor(float)")

    # --- public -------------------------------------------------------------------------------------------------
    def explain(self, x: np.ndarray, method: str = "gradcam", targets: Targets = None,
                layer: str | Sequence[str] | None = None, aug_smooth: bool = False, eigen_smooth: bool = False,
                **options: Any) -> np.ndarray:
        """Maps (N, H, W) float32 in [0, 1] at the input's spatial size; x preprocessed, in the model's layout."""
        return self.explain_scored(x, method, targets, layer, aug_smooth, eigen_smooth, **options)[0]

    def explain_scored(self, x: np.ndarray, method: str = "gradcam", targets: Targets = None,
                       layer: str | Sequence[str] | None = None, aug_smooth: bool = False,
                       eigen_smooth: bool = False, **options: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `explain`, plus the scores (N, classes) of x and the class explained per image, from the same run
        (callers that report scores need no second forward pass)."""
        spec = get_method(method)
        layers = self.layer if layer is None else [layer] if isinstance(layer, str) else list(layer)
        if layer is not None:
            check_tensors(self.model, layers)
        x = self._check(x)
        class_objects = isinstance(targets, (list, tuple)) and all(isinstance(t, ClassifierOutputTarget)
                                                                   for t in targets)
        if spec.name in CLASS_ONLY_METHODS and (self.task not in (None, "classify") or
                                                (is_target_objects(targets) and not class_objects)):
            raise InputError(f"method '{spec.name}' explains classes only (it reads the class head or class "
                             "probabilities); use gradcam, hirescam, scorecam, ablationcam or eigencam")
        if aug_smooth and (is_target_objects(targets) or self.task not in (None, "classify")):
            raise InputError("aug_smooth supports classifiers only (flips would move boxes and masks)")
        if aug_smooth:
            return self._augmented(x, method, targets, layers, eigen_smooth, options)
        size = self.input_size(x)
        per_layer = []
        evidences = self._evidence(x, targets, layers, spec.needs, options)
        for evidence in evidences:
            result = spec.fn(evidence, **_options_for(spec.fn, options))
            raw = combine(result, evidence.activations, eigen_smooth, options.get("eigen_sign", "activation"))
            per_layer.append(normalise(raw, size))
        maps = per_layer[0] if len(per_layer) == 1 else normalise(np.mean(per_layer, axis=0), size)
        return maps, evidences[0].scores, evidences[0].targets

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this model's input: set by the caller (the CLI does), else read from the model's
        metadata with the imagenet preset as fallback. Masking methods and metrics fade images to its black."""
        if self._preprocessing is None:
            self._preprocessing = resolve_preprocessing(self.model, self.input_name, self.input_layout)
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, spec: Preprocessing) -> None:
        self._preprocessing = spec

    def baseline(self) -> np.ndarray:
        """The model input of a black image, broadcastable to a batch (see `preprocessing`)."""
        return blank_input(self.preprocessing)

    def input_size(self, x: np.ndarray) -> tuple[int, int]:
        return (x.shape[2], x.shape[3]) if self.input_layout == "NCHW" else (x.shape[1], x.shape[2])

    @functools.cached_property
    def model_id(self) -> str:
        """A content hash (sha256) of the model: files fitted to one model (BroadCAM) are refused by another."""
        return model_sha256(self._source) if self._source is not None else self.identity.split(":", 1)[1]

    @functools.cached_property
    def _biases(self) -> dict[str, np.ndarray]:
        """FullGrad's biased Conv/BN outputs (a walk over the graph): found once, not per batch."""
        return layer_biases(self.model, self.score)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The score tensor (logits by default) for a batch, (N, classes)."""
        session = self._forward_session(())
        values = session.run([self.score], {self.input_name: self._check(x)})
        return values[0].reshape(len(x), -1)

    # --- evidence -----------------------------------------------------------------------------------------------
    def _evidence(self, x: np.ndarray, targets: Targets, layers: list[str], needs: str,
                  options: dict[str, Any] | None = None) -> list[Evidence]:
        # "input_gradient" (FullGrad): also the gradients at every biased Conv/BN output and at the input
        biases = self._biases if needs == "input_gradient" else {}
        input_grad = None
        objects, targets = self._target_seeds(x, targets)  # target objects: their seeds replace `targets`
        if needs in ("gradients", "input_gradient"):
            runner = self._gradient_runner(list(dict.fromkeys([*layers, *biases])), needs == "input_gradient")
            result = runner.run(x, targets)
            input_grad = result.input_gradient
            chosen = result.targets if objects is None else categories(objects)
            assert chosen is not None
            scores = result.scores.reshape(len(x), -1)
            acts, grads = result.activations, result.gradients
            if objects is not None:  # a zero seed is a zero gradient (in-graph, a zero row would mean "argmax")
                flat = ~np.asarray(targets).reshape(len(x), -1).any(axis=1)
                for grad in grads.values():
                    grad[flat] = 0
        elif needs == "relevance":  # Relevance-CAM: LRP relevance at the layers, from the relevance model
            scores, chosen, acts, relevance = self._relevance(x, targets, layers, options or {})
            grads = {}
        else:
            pooled = [p for p in (self._pooled(name) for name in layers) if p]
            wanted = list(dict.fromkeys(layers + pooled))
            values = self._forward_session(tuple(wanted)).run([self.score] + wanted, {self.input_name: x})
            scores = values[0].reshape(len(x), -1)
            ids = target_ids(targets, len(x), scores.shape[1]) if objects is None else categories(objects)
            chosen = scores.argmax(axis=1) if ids is None else ids
            acts = dict(zip(wanted, values[1:]))
            grads = {}
        out = []
        for name in layers:
            if self._layouts.get(name) is None:  # no static shape in the graph (dynamic exports): judge the values
                self._layouts[name] = runtime_layout(acts[name].shape, self.input_size(x))
            if self._layouts.get(name) in TOKEN_LAYOUTS:  # the grid of this batch, and its extra tokens
                check_batch(name, acts[name], len(x))
                self._token_views[name] = token_view(name, str(self._layouts[name]), acts[name], self.input_size(x),
                                                     self._token_options)
            evidence = Evidence(self._nchw(name, acts[name]), self._nchw(name, grads[name]) if grads else None,
                                chosen, scores, x, name, input_size=self.input_size(x),
                                input_layout=self.input_layout, baseline=self.baseline())
            evidence.scores_of = self._scores_of
            evidence.head_scores = self._head_scores_fn(name, x)
            evidence.gradients_of = self._gradients_of_fn(name, chosen, objects)
            if objects is not None:
                evidence.target_objects, evidence.output_shape = objects, np.asarray(targets).shape[1:]
            evidence.input_gradients_of = self._input_gradients_of
            evidence.tensors_of = self._tensors_of_fn(x)
            evidence.graph_outputs = tuple(o.name for o in self.model.graph.output)
            evidence.model_id = self.model_id
            cut = self._pooled(name) if name in acts and not grads and needs != "relevance" else None
            if cut is not None and cut != self.score:  # the pooled vector is the score itself: no head to run
                evidence.extras["channel_ablation"] = self._channel_ablation_fn(cut, acts[cut], x)
            head = self._head_weights(name)
            if head is not None:
                evidence.extras["head_weights"] = head
            if needs == "relevance":
                evidence.extras["relevance"] = self._nchw(name, relevance[name])
            if needs == "input_gradient":
                evidence.extras["input_gradient"] = input_grad  # like x, in the model's layout
                evidence.extras["bias_gradients"] = [(bias, grads[t]) for t, bias in biases.items()]  # Conv: NCHW
            out.append(evidence)
        return out

    def _nchw(self, layer: str, array: np.ndarray) -> np.ndarray:
        view = self._token_views.get(layer)
        if view is not None and self._layouts.get(layer) in TOKEN_LAYOUTS:
            return view.to_nchw(array)
        if array.ndim != 4:
            raise LayerError(f"layer '{layer}' has shape {array.shape}; CAM methods need a rank-4 feature map "
                             f"(candidates: {', '.join(self.layers[-5:])})")
        return array.transpose(0, 3, 1, 2) if self._layouts.get(layer) == "NHWC" else array

    def _from_nchw(self, layer: str, array: np.ndarray, image: int = 0, per_channel: bool = False) -> np.ndarray:
        """Features (B, K, h, w) back in the layer's layout; for token layers with image `image`'s extra tokens, or
        a per-channel scale (B, K, 1, 1) shaped to broadcast over the tokens."""
        view = self._token_views.get(layer)
        if view is not None and self._layouts.get(layer) in TOKEN_LAYOUTS:
            return view.channel_scale(array) if per_channel else view.from_nchw(array, image)
        return array.transpose(0, 2, 3, 1) if self._layouts.get(layer) == "NHWC" else array

    # --- sessions -----------------------------------------------------------------------------------------------
    def _relevance(self, x: np.ndarray, targets: Targets, layers: list[str], options: dict[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Scores, targets, activations and LRP relevance at `layers` from one run of the relevance model built
        with the method's graph options (rule, alpha, beta, epsilon, bias, first_layer, initial)."""
        from onnxcam.graph.relevance import LrpOptions
        from onnxcam.methods.relevance import GRAPH_OPTIONS
        from onnxcam.relevance import RelevanceRunner

        chosen_options = {k: options[k] for k in GRAPH_OPTIONS if k in options}
        initial = chosen_options.pop("initial", "contrastive")
        lrp = LrpOptions(**chosen_options)
        key = ("relevance", tuple(layers), lrp, initial)
        if key not in self._sessions:
            self._sessions[key] = RelevanceRunner(self.model, layers, False, self._output_option, self._probabilities,
                                                  lrp, initial, providers=self.providers, preloaded=True,
                                                  identity=self.identity)
        result = self._sessions[key].run(x, targets)
        assert result.targets is not None
        return result.scores.reshape(len(x), -1), result.targets, result.activations, result.relevance

    def _gradient_runner(self, layers: Sequence[str], input_gradient: bool = False) -> GradientRunner:
        key = (tuple(layers), input_gradient)
        if key not in self._gradient_runners:
            self._gradient_runners[key] = GradientRunner(
                self.model, list(layers), input_gradient, self._output_option, self._probabilities,
                providers=self.providers, preloaded=True, identity=self.identity)
        return self._gradient_runners[key]

    def _forward_session(self, tensors: tuple[str, ...]) -> Session:
        key = ("forward", tensors)
        if key not in self._sessions:
            wanted = [self.score] + [t for t in tensors if t != self.score]
            self._sessions[key] = cached_session(self.identity, ("expose", wanted), lambda: expose(self.model, wanted),
                                                 self.providers, source=self._source)
        return self._sessions[key]

    def _tensors_of_fn(self, x: np.ndarray) -> Any:
        def tensors_of(names: Sequence[str]) -> dict[str, np.ndarray]:
            """Values of any tensors for x: one forward run of the model with them exposed."""
            wanted = list(dict.fromkeys(names))
            values = self._forward_session(tuple(wanted)).run(wanted, {self.input_name: x})
            return dict(zip(wanted, values))
        return tensors_of

    def _scores_of(self, batch: np.ndarray) -> np.ndarray:
        session = self._forward_session(())
        return session.run([self.score], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0].reshape(
            len(batch), -1)

    def _head_scores_fn(self, layer: str, x: np.ndarray) -> Any:
        # a partial, not a closure calling itself: such a closure is a reference cycle, and cycles that hold
        # batches are freed only when the cyclic collector happens to run (memory grew over long runs)
        return functools.partial(self._head_scores, layer, x, {})

    def _head_scores(self, layer: str, x: np.ndarray, extras: dict[int, list[Any]], features: np.ndarray, image: int,
                     scale: np.ndarray | None = None) -> np.ndarray:
        """Scores of the head for a batch of features (B, K, h, w); with `scale` (B, K, 1, 1), of one image's
        features (1, K, h, w) times each scale row, built inside the runtime."""
        session, extra = self._head_session(layer, scale is not None)
        feeds = {layer: np.ascontiguousarray(self._from_nchw(layer, features, image), np.float32)}
        batch = len(features) if scale is None else len(scale)
        if scale is not None:
            feeds[SCALE] = np.ascontiguousarray(self._from_nchw(layer, scale, image, per_channel=True), np.float32)
        if extra:  # the head's inputs from before the layer: one forward per image, not per batch of copies
            if image not in extras:
                extras.clear()
                extras[image] = self._forward_session(tuple(extra)).run(extra, {self.input_name: x[image:image + 1]})
            for name, value in zip(extra, extras[image]):
                # per-image activations go with each row; integer tensors (shapes, gather indices that
                # exporters compute from shapes, e.g. torch's dynamo Swin) are not per image
                per_image = value.shape[:1] == (1,) and np.issubdtype(value.dtype, np.floating)
                feeds[name] = np.repeat(value, batch, axis=0) if per_image else value
        scores = session.run([self.score], feeds)[0]
        if len(scores) != batch and batch > 1:  # the head's shapes were computed for one image: row by row
            return np.concatenate([self._head_scores(layer, x, extras,
                                                     features if scale is not None else features[j:j + 1],
                                                     image, None if scale is None else scale[j:j + 1])
                                   for j in range(batch)])
        return scores.reshape(batch, -1)

    def _channel_ablation_fn(self, cut: str, pooled: np.ndarray, x: np.ndarray) -> Any:
        head_scores = self._head_scores_fn(cut, x)

        def channel_ablation(image: int, keep: np.ndarray) -> np.ndarray:
            """Scores with the layer's channels scaled by each row of keep (B, K), applied after global pooling
            (exact for zeroed channels: the ops before the cut keep channels apart and zeros at zero)."""
            scale = keep.reshape((len(keep),) + pooled.shape[1:]).astype(np.float32)
            return head_scores(pooled[image:image + 1], image, scale)
        return channel_ablation

    def _pooled(self, layer: str) -> str | None:
        if layer not in self._pooled_cuts and self._layouts.get(layer) in TOKEN_LAYOUTS:
            self._pooled_cuts[layer] = None  # token layers: the extra tokens make pooled ablation inexact
        if layer not in self._pooled_cuts:
            self._pooled_cuts[layer] = pooled_channels(self.model, layer, self._layouts.get(layer) or "NCHW")
        return self._pooled_cuts[layer]

    def _head_session(self, layer: str, scaled: bool = False) -> tuple[Session, list[str]]:
        key = ("head", layer, scaled)
        if key not in self._sessions:
            head = extract_head(self.model, layer, self.score, scale=scaled)
            session = cached_session(self.identity, ("head", layer, self.score, scaled), lambda: head.model,
                                     self.providers, source=self._source)
            self._sessions[key] = (session, head.extra_inputs)
        return self._sessions[key]

    def _input_gradients_of(self, batch: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B, classes) and d score[target] / d input for a batch, one run (Opti-CAM's inner step)."""
        result = self._gradient_runner([], input_gradient=True).run(batch, np.asarray(targets, np.int64))
        assert result.input_gradient is not None
        return result.scores.reshape(len(batch), -1), result.input_gradient

    def _gradients_of_fn(self, layer: str, chosen: np.ndarray, objects: list[Target] | None = None) -> Any:
        def gradients_of(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ids: np.ndarray = np.resize(chosen, len(batch)) if len(batch) != len(chosen) else chosen
            if objects is not None:  # each target's gradient at this batch's own outputs (one image per target)
                ids = seeds([objects[i % len(objects)] for i in range(len(batch))], self.outputs(batch))
            result = self._gradient_runner([layer]).run(batch, ids)
            return self._nchw(layer, result.activations[layer]), self._nchw(layer, result.gradients[layer])
        return gradients_of

    # --- targets (onnxcam.targets: segmentation, detection, similarity) ---------------------------------------------
    @functools.cached_property
    def task(self) -> str | None:
        """classify / segment / detect / embed: the model's "task" metadata, else guessed from the output's rank."""
        return guess_task(_static_shapes(self.model.graph).get(self.output), model_metadata(self.model))

    def detection_layout(self, shape: Sequence[int]) -> DetectionLayout:
        """The layout of one image's detector output of `shape`: the model's metadata, else guessed."""
        labels = model_labels(self.model)
        has_nms = any(n.op_type == "NonMaxSuppression" for n in self.model.graph.node)
        post_nms = bool(selection_nodes(self.model, self.output)) if has_nms else None  # known from the graph
        classes = len(labels) if labels else nms_classes(self.model) if has_nms else None
        return guess_detection_layout(shape, classes,
                                      model_metadata(self.model).get("detection"), post_nms)

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The score tensor of a batch in the output's own shape (N, ...): logits, segmentation logits, raw
        detections or embeddings (before a final Softmax/Sigmoid, as `scores`)."""
        feeds = {self.input_name: self._check(x)}
        if self.score == self.output:
            return self._forward_session(()).run([self.score], feeds)[0]
        score, out = self._forward_session((self.output,)).run([self.score, self.output], feeds)
        return score.reshape(out.shape)

    def _target_seeds(self, x: np.ndarray, targets: Targets) -> tuple[list[Target] | None, Targets]:
        """(bound target objects, what the gradient runner takes): their seeds, or class ids for a classifier."""
        if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.floating):
            return None, targets
        if self.task in (None, "classify") and not is_target_objects(targets):
            return None, targets  # the fast path: class ids, or the in-graph argmax
        if self.task in (None, "classify") and isinstance(targets, (list, tuple)) and \
                all(isinstance(t, ClassifierOutputTarget) for t in targets):
            return None, categories(list(targets))
        outputs = self.outputs(x)
        layout = self.detection_layout(outputs.shape[1:]) if self.task == "detect" else None
        objects = resolve_targets(targets, outputs, self.task, layout)
        return (None, targets) if objects is None else (objects, seeds(objects, outputs))

    # --- helpers ------------------------------------------------------------------------------------------------
    def _head_weights(self, layer: str) -> np.ndarray | None:
        """The GAP + linear head's weights after `layer` (for CAM), read once per layer."""
        if layer not in self._heads:
            self._heads[layer] = linear_head_weights(self.model, layer, self.score)
        return self._heads[layer]

    def _check(self, x: Any) -> np.ndarray:
        array = check_input(x, self.input_name, self.input_shape, self._input_type)
        if array.ndim != 4:
            raise InputError(f"x has shape {array.shape}; expected a batch of images (N, C, H, W) or (N, H, W, C)")
        return array

    def _augmented(self, x: np.ndarray, method: str, targets: Targets, layers: list[str], eigen_smooth: bool,
                   options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Test-time augmentation as in pytorch-grad-cam: horizontal flip x intensity factors 0.9, 1, 1.1."""
        scores = self.scores(x)
        ids = target_ids(targets, len(x), scores.shape[1])
        chosen = scores.argmax(axis=1) if ids is None else ids
        width_axis = 3 if self.input_layout == "NCHW" else 2
        maps = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                xt = np.flip(x, axis=width_axis) if flip else x
                m = self.explain(np.ascontiguousarray(xt * factor, x.dtype), method, chosen, layers,
                                 eigen_smooth=eigen_smooth, **options)
                maps.append(np.flip(m, axis=2) if flip else m)
        return normalise(np.mean(maps, axis=0)), scores, chosen


@functools.cache
def _parameters(fn: Any) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters) - {"ev"}


def _options_for(fn: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of `options` that the method's function accepts; unknown options are an error."""
    accepted = _parameters(fn)
    unknown = set(options) - accepted - {"eigen_sign"}  # eigen_sign also steers eigen_smooth, for every method
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(sorted(unknown))} for this method; it accepts: "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    return {k: v for k, v in options.items() if k in accepted}
