"""`onnxcam.Explainer`: class activation maps for an ONNX model: evidence -> method -> combine / normalise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxcam.errors import InputError
from onnxcam.evidence import EvidenceBuilder, ModelView
from onnxcam.graph.contract import ModelSource
from onnxcam.images import Preprocessing
from onnxcam.labels import find_labels
from onnxcam.methods import Evidence, Method, get_method
from onnxcam.methods.postprocess import combine, normalise
from onnxcam.runners import Targets, target_ids
from onnxcam.targets import CLASS_ONLY_METHODS, ClassifierOutputTarget, DetectionLayout, is_target_objects

Progress = Callable[[float], None]  # called with the fraction of an explain call done, 0..1


class Explainer:
    """Explain an ONNX image model with any method of `onnxcam.methods`.

    model: a path, bytes or a loaded onnx.ModelProto. layer: a tensor name, a PyTorch module path the exporter
    recorded ("layer4.1", "layer4[-1]"), or a list of them (maps are averaged over layers); None picks
    `default_layer`. device: auto, cpu, cuda or tensorrt (or `providers`, onnxruntime's list). output /
    probabilities: which output to explain (several: explained as one, each flattened per image and
    concatenated, e.g. an instance segmentation model's detections and mask prototypes for
    `targets.InstanceMaskTarget`) and whether to differentiate after its Softmax/Sigmoid. grid / extra_tokens /
    extra_tokens_at: token layers of transformers where inference is ambiguous: the patch grid (h, w), the number
    of class/distillation/register tokens, "start" or "end".

    Sessions are made on first use and kept; use the explainer as a context manager (or call `close`) to release
    them. Example::

        with onnxcam.Explainer("resnet50.onnx") as ex:
            x = ex.preprocess([rgb_image])            # (1, 3, 224, 224) float32, the model's own layout
            maps = ex.explain(x, "gradcam++", targets=["tabby"])   # (1, 224, 224) in [0, 1]
    """

    def __init__(self, model: ModelSource, layer: str | Sequence[str] | None = None,
                 providers: Sequence[str] | None = None, device: str = "auto",
                 output: str | Sequence[str] | None = None,
                 probabilities: bool = False, grid: tuple[int, int] | None = None, extra_tokens: int | None = None,
                 extra_tokens_at: str = "start") -> None:
        self.view = ModelView(model, layer, providers, device, output, probabilities, grid, extra_tokens,
                              extra_tokens_at)
        self._evidence = EvidenceBuilder(self.view)
        self._labels: tuple[list[str] | None, str] | None = None
        self.options = {"layer": layer, "device": device, "output": output, "probabilities": probabilities,
                        "grid": grid, "extra_tokens": extra_tokens, "extra_tokens_at": extra_tokens_at}

    # --- the model's facts (see ModelView) ------------------------------------------------------------------------
    model = property(lambda self: self.view.model, doc="The loaded, normalised onnx.ModelProto (parsed on first use).")
    summary = property(lambda self: self.view.summary, doc="The model's metadata, data inputs, outputs, op types.")
    metadata = property(lambda self: self.view.metadata, doc="The model's metadata (key -> value).")
    tensors = property(lambda self: self.view.tensors, doc="Every tensor's catalogue entry (shape, layout, op).")
    score = property(lambda self: self.view.score, doc="The tensor differentiated (before a final Softmax).")
    output = property(lambda self: self.view.output, doc="The model output explained.")
    notes = property(lambda self: self.view.notes, doc="What onnxcam decided about the model (e.g. NMS skipped).")
    layers = property(lambda self: self.view.layers, doc="Candidate spatial tensors, in graph order.")
    default_layer = property(lambda self: self.view.default_layer, doc="The layer chosen automatically.")
    layer = property(lambda self: self.view.layer, doc="The layers explained by default (a list).")
    providers = property(lambda self: self.view.providers, doc="onnxruntime's execution providers in use.")
    input_name = property(lambda self: self.view.input_name, doc="The image input's name.")
    input_shape = property(lambda self: self.view.input_shape, doc="The image input's declared shape.")
    input_layout = property(lambda self: self.view.input_layout, doc="NCHW or NHWC.")
    task = property(lambda self: self.view.task, doc="classify, segment, detect or embed.")
    model_id = property(lambda self: self.view.model_id, doc="A content hash of the model.")
    classes = property(lambda self: self.view.classes, doc="The class count of an (N, classes) output, else None.")

    @property
    def identity(self) -> str:
        """What the cache of rewritten models knows this model by (runtime.model_identity)."""
        return self.view.identity

    @identity.setter
    def identity(self, value: str) -> None:
        self.view.identity = value

    def module_path(self, tensor: str) -> str | None:
        """The PyTorch module a tensor belongs to, where the exporter recorded it ("layer4.1"), else None."""
        return self.view.module_path(tensor)

    @property
    def labels(self) -> list[str] | None:
        """Class names (targets may name them): set by the caller, else the model's metadata (labels, names,
        character, ...), else ImageNet-1k names for 1000 or 1001 classes; None when nothing names them."""
        return self._found_labels()[0]

    @labels.setter
    def labels(self, names: Sequence[str] | None) -> None:
        found = find_labels(list(names), self.view.summary, self.classes) if names is not None else None
        self._labels = None if found is None else (found.names, found.source)

    @property
    def labels_source(self) -> str:
        """Where `labels` came from, in words."""
        return self._found_labels()[1]

    def _found_labels(self) -> tuple[list[str] | None, str]:
        if self._labels is None:
            found = find_labels(None, self.view.summary, self.classes)
            self._labels = (found.names, found.source)
        return self._labels

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this model's input (model metadata, else the imagenet preset); settable."""
        return self.view.preprocessing

    @preprocessing.setter
    def preprocessing(self, spec: Preprocessing) -> None:
        self.view.preprocessing = spec

    def baseline(self) -> np.ndarray:
        """The model input of a black image, broadcastable to a batch (see `preprocessing`)."""
        return self.view.baseline()

    def input_size(self, x: np.ndarray) -> tuple[int, int]:
        return self.view.input_size(x)

    def detection_layout(self, shape: Sequence[int], input_size: Sequence[int] | None = None) -> DetectionLayout:
        """The layout of one image's detector output of `shape` for inputs of `input_size` (H, W; default: the
        input's static size; normalised boxes are scaled to it): the model's metadata, else guessed."""
        return self.view.detection_layout(shape, input_size)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The score tensor (logits by default) for a batch, (N, classes)."""
        return np.concatenate([self.view.scores(part) for part in self._chunks(x)])

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """The score tensor of a batch in the output's own shape (N, ...) (before a final Softmax/Sigmoid)."""
        return np.concatenate([self.view.outputs(part) for part in self._chunks(x)])

    def close(self) -> None:
        """Release the onnxruntime sessions (they are made again if the explainer is used afterwards)."""
        self.view.close()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- explaining -----------------------------------------------------------------------------------------------
    def explain(self, x: np.ndarray, method: str = "gradcam", targets: Targets | Sequence[str] = None,
                layer: str | Sequence[str] | None = None, aug_smooth: bool = False, eigen_smooth: bool = False,
                progress: Progress | None = None, **options: Any) -> np.ndarray:
        """Maps (N, H, W) float32 in [0, 1] at the input's spatial size.

        x: a preprocessed batch (N, C, H, W) or (N, H, W, C), the model's own layout (see `preprocess`).
        targets: None (each image's predicted class), a class index or name, one per image, or onnxcam.targets
        objects (segmentation regions, detections, similarity). options: the method's own (`onnxcam methods`).
        progress: called with the fraction of the call done (0..1) as slow methods (Score-CAM family,
        Ablation-CAM, Opti-CAM, ...) go through their masked batches, channel chunks or iterations.
        """
        return self.explain_scored(x, method, targets, layer, aug_smooth, eigen_smooth, progress, **options)[0]

    def explain_scored(self, x: np.ndarray, method: str = "gradcam", targets: Targets | Sequence[str] = None,
                       layer: str | Sequence[str] | None = None, aug_smooth: bool = False,
                       eigen_smooth: bool = False, progress: Progress | None = None, per_layer: bool = False,
                       **options: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `explain`, plus the scores (N, classes) of x and the class explained per image, from the same run
        (callers that report scores need no second forward pass). per_layer: maps (N, layers, H, W), each layer's
        own (as `explain(layer=that layer)`), from the same run, instead of their average."""
        spec = get_method(method)
        method_options = spec.accepts(options)
        layers = self.layer if layer is None else self.view.resolve_layers(layer)
        x = np.asarray(x)
        targets = self._by_name(targets)
        self._check_method(spec, targets, aug_smooth)
        slices = self._slices(len(x))
        parts = [self._explain_part(self.view.check(x[s]), spec, _slice_targets(targets, s, len(x)), layers,
                                    aug_smooth, eigen_smooth, method_options, _share(progress, k, len(slices)),
                                    per_layer)
                 for k, s in enumerate(slices)]
        if len(parts) == 1:
            return parts[0]
        maps, scores, chosen = zip(*parts)
        return np.concatenate(maps), np.concatenate(scores), np.concatenate(chosen)

    def evidence(self, x: np.ndarray, targets: Targets = None, layers: str | Sequence[str] | None = None,
                 method: str = "gradcam", **options: Any) -> list[Evidence]:
        """What `method` sees for x: one `Evidence` per layer (activations, targets, scores and the fields the
        method names in its `needs`). For inspecting or writing methods of your own."""
        chosen = self.layer if layers is None else self.view.resolve_layers(layers)
        return self._evidence.build(self.view.check(x), self._by_name(targets), chosen, get_method(method), options)

    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """RGB uint8 images (H, W, 3), any sizes, as one model-ready batch (see `preprocessing`)."""
        from onnxcam.images import preprocess

        batch = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
        return np.concatenate([preprocess(np.asarray(image), self.preprocessing) for image in batch])

    # --- internals ------------------------------------------------------------------------------------------------
    def _explain_part(self, x: np.ndarray, spec: Method, targets: Any, layers: list[str], aug_smooth: bool,
                      eigen_smooth: bool, options: dict[str, Any], progress: Progress | None = None,
                      per_layer: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if aug_smooth and per_layer:  # each layer's augmented map: one augmentation loop per layer
            parts = [self._augmented(x, spec.name, targets, [layer], eigen_smooth, options,
                                     _share(progress, k, len(layers))) for k, layer in enumerate(layers)]
            return np.stack([p[0] for p in parts], axis=1), parts[0][1], parts[0][2]
        if aug_smooth:
            return self._augmented(x, spec.name, targets, layers, eigen_smooth, options, progress)
        size = self.input_size(x)
        maps_of_layers = []
        evidences = self._evidence.build(x, targets, layers, spec, options)
        sign = options.get("eigen_sign", "activation")
        own = spec.accepts(options, strict=False, own=True)  # eigen_sign also steers eigen_smooth, for every method
        for k, ev in enumerate(evidences):
            ev.progress = _share(progress, k, len(evidences))
            raw = combine(spec.fn(ev, **own), ev.activations, eigen_smooth, sign)
            maps_of_layers.append(normalise(raw, size))
            ev.done(1.0)
        if per_layer:
            return np.stack(maps_of_layers, axis=1), evidences[0].scores, evidences[0].targets
        maps = maps_of_layers[0] if len(maps_of_layers) == 1 else normalise(np.mean(maps_of_layers, axis=0), size)
        return maps, evidences[0].scores, evidences[0].targets

    def _check_method(self, spec: Method, targets: Any, aug_smooth: bool) -> None:
        class_objects = isinstance(targets, (list, tuple)) and all(isinstance(t, ClassifierOutputTarget)
                                                                   for t in targets)
        if spec.name in CLASS_ONLY_METHODS and (self.task not in (None, "classify") or
                                                (is_target_objects(targets) and not class_objects)):
            raise InputError(f"method '{spec.name}' explains classes only (it reads the class head or class "
                             "probabilities); use gradcam, hirescam, scorecam, ablationcam or eigencam")
        if aug_smooth and (is_target_objects(targets) or self.task not in (None, "classify")):
            raise InputError("aug_smooth supports classifiers only (flips would move boxes and masks)")

    def _by_name(self, targets: Any) -> Any:
        """Class names among the targets become indices (the model's labels name them)."""
        names = [targets] if isinstance(targets, str) else list(targets) if isinstance(targets, (list, tuple)) else []
        if not any(isinstance(t, str) for t in names):
            return targets
        labels = self.labels
        if labels is None:
            raise InputError("targets given by name, but the model carries no class names; set Explainer.labels or "
                             "pass class indices")
        from onnxcam.labels import resolve_target

        ids = [resolve_target(t, labels, self.classes) if isinstance(t, str) else t for t in names]
        return ids[0] if isinstance(targets, str) else ids

    def _slices(self, n: int) -> list[slice]:
        """The batch split to the model's fixed batch size, where it has one (exports with batch 1)."""
        limit = self.view.batch_limit
        step = n if limit is None or limit >= n else limit
        return [slice(i, i + step) for i in range(0, n, max(1, step))] or [slice(0, 0)]

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        return [x[s] for s in self._slices(len(x))]

    def _augmented(self, x: np.ndarray, method: str, targets: Targets, layers: list[str], eigen_smooth: bool,
                   options: dict[str, Any], progress: Progress | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Test-time augmentation as in pytorch-grad-cam: horizontal flip x intensity factors 0.9, 1, 1.1."""
        scores = self.scores(x)
        ids = target_ids(targets, len(x), scores.shape[1])
        chosen = scores.argmax(axis=1) if ids is None else ids
        width_axis = 3 if self.input_layout == "NCHW" else 2
        maps: list[np.ndarray] = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                xt = np.flip(x, axis=width_axis) if flip else x
                m = self.explain(np.ascontiguousarray(xt * factor, x.dtype), method, chosen, layers,
                                 eigen_smooth=eigen_smooth, progress=_share(progress, len(maps), 6), **options)
                maps.append(np.flip(m, axis=2) if flip else m)
        return normalise(np.mean(maps, axis=0)), scores, chosen


def _share(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """Part `part` of `parts` equal parts of a call's progress (fixed-batch slices, layers, augmentations)."""
    if progress is None:
        return None
    report = progress
    return lambda fraction: report((part + fraction) / parts)


def _slice_targets(targets: Any, part: slice, n: int) -> Any:
    """The targets of a part of the batch: per-image targets are sliced, shared ones (None, one int) kept."""
    if targets is None or np.isscalar(targets) or part == slice(0, n):
        return targets
    if isinstance(targets, np.ndarray) or (isinstance(targets, (list, tuple)) and len(targets) == n):
        return targets[part]
    return targets
