"""What to explain: a class, a segmentation region, one detection or the similarity to a reference embedding.

A target is a scalar function t(output) of one image's model output (the output without its batch axis). The
gradient of t with respect to any layer is the model's backward pass seeded with dt/d(output) at the forward
output, so each target gives both:

- `target(output) -> float`: its value (for perturbation methods, which rescore modified inputs), and
- `target.seed(output) -> array like output`: dt/d(output), fed to the rewritten graph's seed input.

Targets whose meaning depends on the clean forward output (the predicted region of a class, the class of a
chosen box) are fixed with `bind(output)` once, before any perturbation, so every rescoring asks the same question.
The class names match pytorch-grad-cam's (`ClassifierOutputTarget`, `SemanticSegmentationTarget`) so code moves
over with an import change.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from onnxcam.errors import InputError

TASKS = ("classify", "segment", "detect", "embed")
# what a detection's target is: its class score (DetectionTarget) or its instance mask (InstanceMaskTarget)
DETECTION_TARGETS = ("score", "mask")
# Methods that read a class head or class probabilities: meaningless for other targets.
CLASS_ONLY_METHODS = frozenset({"cam", "broadcam", "opticam"})


class Target:
    """Base of the target objects: `__call__` gives the value, `seed` its gradient at the output."""

    category: int | None = None
    box: tuple[float, float, float, float] | None = None   # x0, y0, x1, y1 in input pixels, for overlays

    def __call__(self, output: np.ndarray) -> float:
        raise NotImplementedError

    def seed(self, output: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bind(self, output: np.ndarray) -> Target:
        """This target with everything that depends on the clean output fixed (default: itself)."""
        return self

    def values(self, outputs: np.ndarray) -> np.ndarray:
        """Values (B,) for a batch of outputs (B, ...) of modified inputs."""
        return np.array([self(o) for o in outputs], np.float64)

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class ClassifierOutputTarget(Target):
    """The logit of `category` (classification)."""

    category: int | None

    def __call__(self, output: np.ndarray) -> float:
        return float(np.asarray(output).reshape(-1)[self._index()])

    def seed(self, output: np.ndarray) -> np.ndarray:
        seed = np.zeros(np.size(output), np.float32)
        seed[self._index()] = 1.0
        return seed.reshape(np.shape(output))

    def values(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, np.float64).reshape(len(outputs), -1)[:, self._index()]

    def _index(self) -> int:
        if self.category is None:
            raise InputError("ClassifierOutputTarget needs a category")
        return int(self.category)

    def describe(self) -> str:
        return f"class {self.category}"


@dataclass
class SemanticSegmentationTarget(Target):
    """Sum of `category`'s logits over a boolean mask (segmentation output (classes, H, W), channels first).

    mask: (H, W) at the output's spatial size or any other size (resized, nearest neighbour); None = the pixels
    where `category` is the predicted class (fixed by `bind` from the clean output).
    """

    category: int | None
    mask: np.ndarray | None = None

    def bind(self, output: np.ndarray) -> SemanticSegmentationTarget:
        output = _segmentation_output(output)
        category = self.category if self.category is not None else _dominant_class(output)
        if category < 0 or category >= output.shape[0]:
            raise InputError(f"segmentation class {category} is out of range: the output has {output.shape[0]} "
                             f"classes (0..{output.shape[0] - 1})")
        mask = output.argmax(axis=0) == category if self.mask is None else resize_mask(self.mask, output.shape[1:])
        return SemanticSegmentationTarget(category, mask)

    def __call__(self, output: np.ndarray) -> float:
        bound = self._bound(output)
        return float((_segmentation_output(output)[bound.category] * bound.mask).sum())

    def seed(self, output: np.ndarray) -> np.ndarray:
        bound = self._bound(output)
        seed = np.zeros(_segmentation_output(output).shape, np.float32)
        seed[bound.category] = bound.mask
        return seed.reshape(np.shape(output))

    def _bound(self, output: np.ndarray) -> SemanticSegmentationTarget:
        fixed = self.category is not None and self.mask is not None and self.mask.shape == np.shape(output)[-2:]
        return self if fixed else self.bind(output)

    def describe(self) -> str:
        pixels = int(np.sum(self.mask)) if self.mask is not None else "predicted"
        return f"class {self.category} over {pixels} pixels"


# --- detection ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionLayout:
    """How one image's detector output is laid out.

    post_nms False (raw predictions, one per anchor/cell): rows of 4 box values, then an objectness when
    `objectness`, then one score per class; `attributes_first` when the output is (attributes, boxes) (YOLOv8
    style) rather than (boxes, attributes) (YOLOv5 style). box: "cxcywh" (the default) or "xyxy".
    post_nms True: rows of 4 box values (`box`: "xyxy", the default, for NMS outputs and end-to-end heads, "cxcywh"
    for RT-DETR's selected queries), score, class (and a 7th column, the batch index, ignored).
    classes: how many class scores follow (None: every remaining column); after them come `extras`:
    "masks" (instance segmentation: mask coefficients, e.g. YOLOv8-seg's 32), "keypoints" (pose: x, y, visibility
    per keypoint) or "angle" (oriented boxes: one rotation in radians; the box then is the rotated box's
    cx, cy, w, h and `decode` gives its axis-aligned bounds).
    normalised: the box values are fractions of the input's width and height (RT-DETR), not input pixels;
    `decode` scales them by `input_size` (H, W), which must then be known (`at_input`).
    parts: the output explained joins several model outputs (each flattened per image, in order): their shapes
    per image, the detections first (instance segmentation: then the mask prototypes); empty when the output is
    the detections alone.
    """

    attributes_first: bool = False
    objectness: bool = True
    box: str = ""  # "": the usual form of the rows, corners for post_nms rows, else centre and size
    post_nms: bool = False
    classes: int | None = None
    extras: str = ""
    normalised: bool = False
    input_size: tuple[int, int] | None = None
    parts: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.box:
            object.__setattr__(self, "box", "xyxy" if self.post_nms else "cxcywh")

    def at_input(self, size: Sequence[int] | None) -> DetectionLayout:
        """This layout for inputs of `size` (H, W): where normalised boxes are scaled to and masks are cropped."""
        return self if size is None else replace(self, input_size=(int(size[0]), int(size[1])))

    def rows(self, output: np.ndarray) -> np.ndarray:
        """One image's output as (boxes, attributes)."""
        output = self.part(output, 0) if self.parts else np.asarray(output)
        if output.ndim != 2:
            raise InputError(f"a detection output per image must be 2-D (boxes x attributes), got {output.shape}")
        return output.T if self.attributes_first else output

    def part(self, output: np.ndarray, index: int) -> np.ndarray:
        """Part `index` of one image's joined output, in its own shape."""
        flat = np.asarray(output).reshape(-1)
        sizes = [int(np.prod(shape)) for shape in self.parts]
        if flat.size != sum(sizes):
            raise InputError(f"the joined output has {flat.size} values per image; its parts "
                             f"{', '.join(str(tuple(s)) for s in self.parts)} hold {sum(sizes)}")
        start = sum(sizes[:index])
        return flat[start:start + sizes[index]].reshape(self.parts[index])

    def output_seed(self, row_seeds: np.ndarray, *more: np.ndarray) -> np.ndarray:
        """A seed shaped like one image's output from a seed of its rows (boxes, attributes) and, for a joined
        output, seeds of its other parts in order (zeros where not given)."""
        detections = row_seeds.T if self.attributes_first else row_seeds
        if not self.parts:
            return detections
        pieces = [detections.reshape(-1)] + [np.asarray(m, np.float32).reshape(-1) for m in more]
        pieces += [np.zeros(int(np.prod(shape)), np.float32) for shape in self.parts[len(pieces):]]
        return np.concatenate(pieces).astype(np.float32)

    def class_offset(self) -> int:
        return 5 if self.objectness else 4

    def class_columns(self, attributes: int) -> slice:
        """The columns of the class scores in rows of `attributes` values."""
        offset = self.class_offset()
        return slice(offset, attributes if self.classes is None else min(attributes, offset + self.classes))

    def extra_columns(self, attributes: int) -> slice:
        """The columns after the class scores (mask coefficients, keypoints, angle); empty when there are none.
        Selected rows (post_nms) keep them after the box, score and class."""
        if self.post_nms:
            return slice(6 if self.extras else attributes, attributes)
        return slice(self.class_columns(attributes).stop, attributes)


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray     # (B, 4) x0, y0, x1, y1
    scores: np.ndarray    # (B,) class score (x objectness)
    classes: np.ndarray   # (B,) int


def decode(output: np.ndarray, layout: DetectionLayout) -> Detections:
    """Every prediction of one image's output: boxes as corners in input pixels, the best class and its score."""
    rows = layout.rows(output).astype(np.float64)
    boxes = _in_pixels(rows[:, :4], layout)
    if layout.post_nms:
        return Detections(_corners(boxes, layout.box), rows[:, 4], rows[:, 5].astype(np.int64))
    columns = layout.class_columns(rows.shape[1])
    if columns.stop <= columns.start or (layout.classes is not None and columns.stop - columns.start < layout.classes):
        wanted = "at least one" if layout.classes is None else str(layout.classes)
        raise InputError(f"detection rows have {rows.shape[1]} values; the layout needs 4 box values"
                         f"{' + objectness' if layout.objectness else ''} + {wanted} class score(s)")
    classes = rows[:, columns]
    best = classes.argmax(axis=1)
    scores = classes[np.arange(len(rows)), best] * (rows[:, 4] if layout.objectness else 1.0)
    if layout.extras == "angle":
        return Detections(_rotated_bounds(boxes, rows[:, columns.stop]), scores, best)
    return Detections(_corners(boxes, layout.box), scores, best)


# how far outside [0, 1] a normalised box value may stray (boxes overhanging the image) before the claim that the
# boxes are fractions of the input is taken to be wrong
_NORMALISED_SLACK = 0.5


def _in_pixels(boxes: np.ndarray, layout: DetectionLayout) -> np.ndarray:
    """The 4 box values of each row in input pixels: normalised ones (x and w by the width, y and h by the
    height) scaled by the layout's input size."""
    if not layout.normalised:
        return boxes
    if layout.input_size is None:
        raise InputError("this detector's boxes are fractions of the input size, which the layout does not know; "
                         "take the layout from Explainer.detection_layout(shape, input_size) or "
                         "layout.at_input((H, W))")
    finite = boxes[np.isfinite(boxes)]
    if finite.size and (finite.min() < -_NORMALISED_SLACK or finite.max() > 1 + _NORMALISED_SLACK):
        raise InputError(f"the model's metadata says its boxes are fractions of the input size, but its output "
                         f"has box values from {finite.min():.4g} to {finite.max():.4g}; fix the metadata "
                         "(onnxcam 'detection': normalised false) if its boxes are in pixels")
    height, width = layout.input_size
    return boxes * np.array([width, height, width, height], np.float64)


@dataclass
class DetectionTarget(Target):
    """The score of detection `index` (a row of the raw output: class score x objectness where the model has one).

    category: the class to score (None: the row's best class, fixed by `bind`). For post-NMS outputs, whose rows
    reorder when the input changes, the value is that of the row of the same class that overlaps the bound box
    most (IoU >= `iou`), 0 when none does.
    """

    index: int
    category: int | None = None
    layout: DetectionLayout = DetectionLayout()
    box: tuple[float, float, float, float] | None = None
    iou: float = 0.5

    def bind(self, output: np.ndarray) -> DetectionTarget:
        found = decode(output, self.layout)
        if not 0 <= self.index < len(found.scores):
            raise InputError(f"box index {self.index} is out of range: the output has {len(found.scores)} "
                             f"predictions (0..{len(found.scores) - 1})")
        category = int(found.classes[self.index]) if self.category is None else self.category
        box = tuple(float(v) for v in found.boxes[self.index])
        return replace(self, category=category, box=box)  # type: ignore[arg-type]

    def __call__(self, output: np.ndarray) -> float:
        row = self._row(output)
        return 0.0 if row is None else self._score(self.layout.rows(output)[row])

    def seed(self, output: np.ndarray) -> np.ndarray:
        rows = self.layout.rows(output)
        seed = np.zeros(rows.shape, np.float32)
        row = self._row(output)
        if row is not None:
            values, category = rows[row], self._category(rows[row])
            if self.layout.post_nms:
                seed[row, 4] = 1.0
            else:
                # d(cls * obj) = obj dcls + cls dobj
                column = self.layout.class_offset() + category
                seed[row, column] = values[4] if self.layout.objectness else 1.0
                if self.layout.objectness:
                    seed[row, 4] = values[column]
        return self.layout.output_seed(seed)

    def _score(self, values: np.ndarray) -> float:
        if self.layout.post_nms:
            return float(values[4])
        cls = values[self.layout.class_offset() + self._category(values)]
        return float(cls * values[4]) if self.layout.objectness else float(cls)

    def _category(self, values: np.ndarray) -> int:
        if self.category is not None:
            return int(self.category)
        return int(np.argmax(values[self.layout.class_columns(len(values))]))

    def _row(self, output: np.ndarray) -> int | None:
        if not self.layout.post_nms or self.box is None:
            return self.index
        found = decode(output, self.layout)
        same = np.flatnonzero(found.classes == self.category) if self.category is not None else \
            np.arange(len(found.scores))
        if not len(same):
            return None
        overlaps = box_iou(np.asarray(self.box), found.boxes[same])
        best = int(np.argmax(overlaps))
        return int(same[best]) if overlaps[best] >= self.iou else None

    def describe(self) -> str:
        box = "" if self.box is None else " box " + ",".join(f"{v:.0f}" for v in self.box)
        return f"detection {self.index} class {self.category}{box}"


@dataclass
class InstanceMaskTarget(DetectionTarget):
    """The mask of detection `index` of an instance segmentation model (YOLOv8-seg style): the sum of its mask
    logits (its coefficients times the prototypes, before the sigmoid) over the input pixels inside its box, the
    logits resized to the input as Ultralytics' full-resolution masks are (bilinear; pixel i is inside when
    x0 <= i < x1). It explains what makes the mask, where DetectionTarget explains the class score.

    The output is the detections and the prototypes joined (`Explainer(model, output=[detections, prototypes])`;
    its `detection_layout` has both parts); the target reads both, and its seed has one piece per output: the
    row's coefficients get the prototypes summed over the box, the prototypes get the coefficients times the box's
    weights. The box is fixed by `bind` from the clean output (post-NMS rows follow it by IoU, as DetectionTarget).
    """

    rows_weights: np.ndarray | None = field(default=None, compare=False, repr=False)
    cols_weights: np.ndarray | None = field(default=None, compare=False, repr=False)

    def bind(self, output: np.ndarray) -> InstanceMaskTarget:
        bound = DetectionTarget.bind(self, output)
        layout = self.layout
        if layout.extras != "masks" or len(layout.parts) != 2:
            raise InputError("an instance mask target needs an instance segmentation model's detections (with mask "
                             "coefficients) and prototypes explained together: Explainer(model, output=[detections,"
                             " prototypes]) and its detection_layout")
        if layout.input_size is None:
            raise InputError("an instance mask target needs the input size: take the layout from "
                             "Explainer.detection_layout(shape, input_size) or layout.at_input((H, W))")
        prototypes, coefficients = layout.parts[1], layout.extra_columns(layout.rows(output).shape[1])
        if len(prototypes) != 3 or coefficients.stop - coefficients.start != prototypes[0]:
            raise InputError(f"{coefficients.stop - coefficients.start} mask coefficients per detection do not fit "
                             f"prototypes of shape {prototypes} (expected (coefficients, h, w))")
        assert bound.box is not None
        rows, cols = box_weights(bound.box, layout.input_size, prototypes[1:])
        return replace(self, category=bound.category, box=bound.box, rows_weights=rows, cols_weights=cols)

    def __call__(self, output: np.ndarray) -> float:
        bound = self._bound(output)
        row = bound._row(output)
        if row is None:
            return 0.0
        prototypes = bound.layout.part(output, 1).astype(np.float64)
        return float(bound._coefficients(output, row) @ np.einsum("khw,hw->k", prototypes, bound._weights()))

    def seed(self, output: np.ndarray) -> np.ndarray:
        bound = self._bound(output)
        layout = bound.layout
        rows = layout.rows(output)
        row_seed = np.zeros(rows.shape, np.float32)
        prototypes = layout.part(output, 1).astype(np.float64)
        prototype_seed = np.zeros(prototypes.shape, np.float32)
        row = bound._row(output)
        if row is not None:
            weights = bound._weights()
            row_seed[row, layout.extra_columns(rows.shape[1])] = np.einsum("khw,hw->k", prototypes, weights)
            prototype_seed = bound._coefficients(output, row)[:, None, None] * weights[None]
        return layout.output_seed(row_seed, prototype_seed)

    def _bound(self, output: np.ndarray) -> InstanceMaskTarget:
        return self if self.rows_weights is not None else self.bind(output)

    def _weights(self) -> np.ndarray:
        """(h, w): each prototype pixel's weight in the sum over the box at the input's resolution."""
        assert self.rows_weights is not None and self.cols_weights is not None
        return np.outer(self.rows_weights, self.cols_weights)

    def _coefficients(self, output: np.ndarray, row: int) -> np.ndarray:
        rows = self.layout.rows(output)
        return rows[row, self.layout.extra_columns(rows.shape[1])].astype(np.float64)

    def describe(self) -> str:
        return "mask of " + super().describe()


def box_weights(box: Sequence[float], input_size: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Weights (h,) and (w,) over a map of `grid` (h, w) such that rows @ map @ cols is the sum, over the input
    pixels inside `box` (x0, y0, x1, y1; pixel i is inside when x0 <= i < x1), of the map resized bilinearly to
    `input_size` (H, W). Resizing is linear and separable, so the sum over a rectangle is this weighted sum."""
    height, width = int(input_size[0]), int(input_size[1])
    inside_rows = (np.arange(height) >= box[1]) & (np.arange(height) < box[3])
    inside_cols = (np.arange(width) >= box[0]) & (np.arange(width) < box[2])
    return (bilinear_matrix(int(grid[0]), height)[inside_rows].sum(axis=0),
            bilinear_matrix(int(grid[1]), width)[inside_cols].sum(axis=0))


def bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source): bilinear resizing of a line of `source` values to `target` values as a matrix, with
    half-pixel centres and the edge values repeated beyond the ends (OpenCV's INTER_LINEAR, PyTorch's
    interpolate with align_corners False)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    left = np.minimum(np.floor(position).astype(np.int64), source - 1)
    right = np.minimum(left + 1, source - 1)
    fraction = position - left
    matrix = np.zeros((target, source), np.float64)
    np.add.at(matrix, (np.arange(target), left), 1 - fraction)
    np.add.at(matrix, (np.arange(target), right), fraction)
    return matrix


def detection_targets(output: np.ndarray, layout: DetectionLayout, threshold: float | None = None,
                      index: int | None = None, iou: float = 0.5) -> list[DetectionTarget]:
    """Targets for one image: detection `index`, or every detection scoring >= threshold after greedy per-class
    NMS at `iou` (raw outputs), best first; neither: the best detection."""
    found = decode(output, layout)
    if index is not None:
        return [DetectionTarget(index, layout=layout).bind(output)]
    order = np.argsort(-found.scores, kind="stable")
    if threshold is None:
        return [DetectionTarget(int(order[0]), layout=layout).bind(output)] if len(order) else []
    kept: list[int] = []
    for row in order:
        if found.scores[row] < threshold:
            break
        same = [k for k in kept if found.classes[k] == found.classes[row]]
        if layout.post_nms or not same or box_iou(found.boxes[row], found.boxes[same]).max() < iou:
            kept.append(int(row))
    return [DetectionTarget(row, layout=layout).bind(output) for row in kept]


def guess_detection_layout(shape: Sequence[int], classes: int | None = None, metadata: str | None = None,
                           post_nms: bool | None = None) -> DetectionLayout:
    """The layout of one image's detector output (boxes x attributes either way round).

    The model's "detection" metadata (JSON: layout "attributes_first"/"boxes_first", box, objectness, post_nms,
    normalised) wins; its box defaults to "xyxy" for post-NMS rows, else "cxcywh". Rows of 6 or 7 values read as
    post-NMS detections unless the class count or `post_nms` (known from the graph) says otherwise. Otherwise the
    shorter axis holds the attributes; with `classes` known, objectness is present when there are 5 + classes
    attributes, else YOLOv5's convention (boxes first: objectness) or YOLOv8's (attributes first: none) is
    assumed.
    """
    if metadata:
        spec = json.loads(metadata)
        selected = bool(spec.get("post_nms", False))
        return DetectionLayout(attributes_first=spec.get("layout", "boxes_first") == "attributes_first",
                               objectness=bool(spec.get("objectness", True)),
                               box=spec.get("box", "xyxy" if selected else "cxcywh"), post_nms=selected,
                               normalised=bool(spec.get("normalised", False)))
    if len(shape) != 2:
        raise InputError(f"a detection output per image must be 2-D (boxes x attributes), got {tuple(shape)}")
    raw_sizes = (4 + classes, 5 + classes) if classes is not None else ()
    if post_nms or (post_nms is None and shape[1] in (6, 7) and shape[1] not in raw_sizes):
        return DetectionLayout(False, objectness=False, box="xyxy", post_nms=True)
    attributes_first = shape[0] < shape[1]
    attributes = min(shape)
    if classes is not None and attributes in raw_sizes:
        return DetectionLayout(attributes_first, objectness=attributes == 5 + classes)
    return DetectionLayout(attributes_first, objectness=not attributes_first)


def detection_layout(shape: Sequence[int], metadata: Mapping[str, str] | None = None, classes: int | None = None,
                     post_nms: bool | None = None, input_size: Sequence[int] | None = None) -> DetectionLayout:
    """The layout of one image's detector output of `shape` from the model's metadata: onnxcam's "detection"
    entry, else Ultralytics' (task, names, kpt_shape, end2end, head), else guessed (`guess_detection_layout`).
    post_nms: known from the graph (NMS inside it, or its raw predictions exposed), None when it is not.
    input_size: the model input's (H, W), which normalised boxes are fractions of."""
    meta = metadata or {}
    if meta.get("detection"):
        layout = guess_detection_layout(shape, classes, meta["detection"], post_nms)
    else:
        info = ultralytics_info(meta)
        if info is not None and info.task in ULTRALYTICS_DETECTORS:
            layout = ultralytics_layout(info, shape, post_nms)
        else:
            layout = guess_detection_layout(shape, classes, None, post_nms)
    return layout.at_input(input_size)


# --- Ultralytics exports --------------------------------------------------------------------------------------------
ULTRALYTICS_TASKS = ("classify", "detect", "segment", "pose", "obb")
ULTRALYTICS_DETECTORS = ("detect", "segment", "pose", "obb")
# what follows the class scores in each task's rows
_ULTRALYTICS_EXTRAS = {"detect": "", "segment": "masks", "pose": "keypoints", "obb": "angle"}


@dataclass(frozen=True)
class UltralyticsInfo:
    """What an Ultralytics export says about itself in its metadata (written as Python literals)."""
    task: str                             # classify, detect, segment, pose or obb
    names: tuple[str, ...]                # class names, by index
    imgsz: tuple[int, int] | None         # (H, W) the model was exported for
    stride: int | None                    # the largest stride of its feature maps
    kpt_shape: tuple[int, int] | None     # pose: (keypoints, values per keypoint: 2 or 3)
    end2end: bool                         # NMS-free head: rows are final detections (x0, y0, x1, y1, score, class)
    detr: bool = False                    # RT-DETR's decoder: boxes cx, cy, w, h as fractions of the input


def ultralytics_info(metadata: Mapping[str, str] | None) -> UltralyticsInfo | None:
    """The Ultralytics metadata of a model (None for other models, or when its task is not one of
    ULTRALYTICS_TASKS)."""
    meta = metadata or {}
    if not _is_ultralytics(meta):
        return None
    task = meta["task"]
    names = _literal(meta.get("names"))
    if isinstance(names, dict):
        ordered = tuple(str(names[k]) for k in sorted(names, key=lambda k: int(k)))
    elif isinstance(names, (list, tuple)):
        ordered = tuple(str(n) for n in names)
    else:
        raise InputError(f"the model's Ultralytics metadata has unreadable class names: {meta.get('names')!r:.80}")
    imgsz = _literal(meta.get("imgsz"))
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    stride = _literal(meta.get("stride"))
    kpt_shape = _literal(meta.get("kpt_shape"))
    return UltralyticsInfo(
        task, ordered,
        (int(imgsz[0]), int(imgsz[1])) if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 else None,
        int(max(stride)) if isinstance(stride, (list, tuple)) and stride else int(stride)
        if isinstance(stride, (int, float)) else None,
        (int(kpt_shape[0]), int(kpt_shape[1])) if isinstance(kpt_shape, (list, tuple)) and len(kpt_shape) == 2
        else None,
        str(meta.get("end2end", "False")).strip().lower() == "true",
        is_rtdetr(meta))


def is_rtdetr(meta: Mapping[str, str]) -> bool:
    """Whether an Ultralytics export is RT-DETR: its "head" metadata, or (exports before that key) the model name
    its description starts with ("Ultralytics rtdetr-l model ...")."""
    head = meta.get("head")
    if head:
        return head == "RTDETRDecoder"
    words = meta.get("description", "").lower().split()
    return len(words) > 1 and words[0] == "ultralytics" and words[1].startswith("rtdetr")


def ultralytics_layout(info: UltralyticsInfo, shape: Sequence[int], post_nms: bool | None = None) -> DetectionLayout:
    """The layout of an Ultralytics detector's output per image: (4 + classes + extras, boxes) for raw predictions,
    where the extras are 32 mask coefficients (segment), the keypoints (pose) or an angle (obb); (boxes, 6 +
    extras) for end-to-end heads. The class count comes from the names, so extras are never taken as classes.
    RT-DETR (`rtdetr_layout`) is told by its metadata, or by its selected rows where the metadata says end2end
    False (no other Ultralytics head selects rows without being end-to-end)."""
    if len(shape) != 2:
        raise InputError(f"a detection output per image must be 2-D (boxes x attributes), got {tuple(shape)}")
    extras = _ULTRALYTICS_EXTRAS[info.task]
    classes = len(info.names)
    extra_count = {"": 0, "angle": 1, "keypoints": int(np.prod(info.kpt_shape or (0,)))}.get(extras, 0)
    selected_rows = extras != "masks" and min(shape) == 6 + extra_count and 4 + classes + extra_count != min(shape)
    if info.detr or (selected_rows and not info.end2end and not post_nms):
        return rtdetr_layout(shape, classes)
    # rows already selected (x0, y0, x1, y1, score, class [+ extras]): end-to-end heads
    if post_nms or (post_nms is None and info.end2end):
        return DetectionLayout(False, objectness=False, box="xyxy", post_nms=True, classes=classes, extras=extras)
    attributes = min(shape)
    wanted = 4 + classes + {"": 0, "angle": 1, "keypoints": int(np.prod(info.kpt_shape or (0,)))}.get(extras, 0)
    if attributes < wanted + (1 if extras == "masks" else 0) or (extras != "masks" and attributes != wanted):
        detail = {"masks": " + mask coefficients", "keypoints": f" + keypoints {info.kpt_shape}", "angle": " + 1 angle"}
        raise InputError(f"the model's Ultralytics metadata (task {info.task}, {classes} names) does not fit its "
                         f"output of {tuple(shape)}: rows of 4 box values + {classes} class scores"
                         f"{detail.get(extras, '')} expected; re-export the model or fix its metadata")
    return DetectionLayout(shape[0] < shape[1], objectness=False, box="cxcywh", classes=classes, extras=extras)


def rtdetr_layout(shape: Sequence[int], classes: int) -> DetectionLayout:
    """Ultralytics' RT-DETR exports: one row per query, boxes cx, cy, w, h as fractions of the input (its
    predictor multiplies them by the image's width and height, having stretched the image to the input). Since
    Ultralytics 8.4 the decoder's top-k is in the graph: 300 rows cx, cy, w, h, score, class (selected, like
    post-NMS rows); earlier exports give every query's sigmoid class scores, (300, 4 + classes)."""
    if shape[1] == 6:
        return DetectionLayout(False, objectness=False, box="cxcywh", post_nms=True, classes=classes,
                               normalised=True)
    if shape[1] != 4 + classes:
        raise InputError(f"an RT-DETR output per image is (queries, 6) or (queries, 4 + {classes} classes), got "
                         f"{tuple(shape)}; re-export the model or fix its metadata")
    return DetectionLayout(False, objectness=False, box="cxcywh", classes=classes, normalised=True)


def instance_mask(coefficients: np.ndarray, prototypes: np.ndarray, box: Sequence[float],
                  input_hw: tuple[int, int]) -> np.ndarray:
    """The boolean (H, W) mask of one instance of an instance-segmentation model (YOLOv8-seg style): the
    prototypes (P, h, w) combined with the detection's P coefficients, resized to the input (bilinear), kept inside
    its box (input pixels: pixel i is in when x0 <= i < x1), where the mask logit is positive (sigmoid > 0.5). This
    is Ultralytics' full-resolution mask (`retina_masks`: resize, then crop), in the model input's pixels."""
    import cv2

    prototypes = np.asarray(prototypes, np.float32)
    coefficients = np.asarray(coefficients, np.float32).reshape(-1)
    if prototypes.ndim != 3 or prototypes.shape[0] != coefficients.size:
        raise InputError(f"{coefficients.size} mask coefficients do not fit prototypes of shape {prototypes.shape} "
                         "(expected (coefficients, h, w))")
    logits = np.tensordot(coefficients, prototypes, axes=1)
    height, width = int(input_hw[0]), int(input_hw[1])
    logits = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]  # pixel i spans [i, i + 1)
    inside = (cols >= box[0]) & (cols < box[2]) & (rows >= box[1]) & (rows < box[3])
    return np.asarray((logits > 0) & inside)


def _is_ultralytics(meta: Mapping[str, str]) -> bool:
    return meta.get("task", "") in ULTRALYTICS_TASKS and "names" in meta and (
        meta.get("author", "").startswith("Ultralytics") or "stride" in meta)


def _literal(text: str | None) -> Any:
    """A Python literal written by str() (Ultralytics' metadata), or None."""
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


# --- embeddings ---------------------------------------------------------------------------------------------------
@dataclass
class SimilarityTarget(Target):
    """Cosine similarity of the image's embedding to `reference` (an embedding of the same size)."""

    reference: np.ndarray

    def __call__(self, output: np.ndarray) -> float:
        e, r = self._vectors(output)
        return float(e @ r / (np.linalg.norm(e) * np.linalg.norm(r) + 1e-12))

    def seed(self, output: np.ndarray) -> np.ndarray:
        # d cos(e, r) / de = r / (|e| |r|) - cos(e, r) e / |e|^2
        e, r = self._vectors(output)
        ne, nr = np.linalg.norm(e) + 1e-12, np.linalg.norm(r) + 1e-12
        cos = e @ r / (ne * nr)
        return (r / (ne * nr) - cos * e / ne ** 2).astype(np.float32).reshape(np.shape(output))

    def _vectors(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.asarray(output, np.float64).reshape(-1)
        r = np.asarray(self.reference, np.float64).reshape(-1)
        if e.shape != r.shape:
            raise InputError(f"the reference embedding has {r.size} values but the model's output has {e.size}")
        return e, r

    def describe(self) -> str:
        return "similarity to the reference"


# --- resolving what the user passed ---------------------------------------------------------------------------------
def guess_task(output_shape: Sequence[Any] | None, metadata: dict[str, str] | None = None) -> str | None:
    """classify / segment / detect / embed from the model's "task" metadata, else from the output's rank.

    Ultralytics' pose and obb models, and its instance segmentation (task "segment" with a rank-3 detection
    output), are explained per detection: "detect"."""
    task = (metadata or {}).get("task", "")
    rank = None if output_shape is None else len(output_shape)
    if _is_ultralytics(metadata or {}) and (task in ("pose", "obb") or (task == "segment" and rank == 3)):
        return "detect"
    named = {"classification": "classify", "segmentation": "segment", "detection": "detect", "embedding": "embed"}
    if task in named or task in TASKS:
        return named.get(task, task)
    return {2: "classify", 3: "detect", 4: "segment"}.get(rank or 0)


def default_target(task: str, output: np.ndarray, layout: DetectionLayout | None = None) -> Target:
    """The target when none is given: the predicted class; for segmentation the most frequent predicted class
    other than 0 (taken as background) over its predicted region; for detection the best-scoring detection."""
    if task == "segment":
        return SemanticSegmentationTarget(None).bind(output)
    if task == "detect":
        found = detection_targets(output, layout or guess_detection_layout(np.shape(output)))
        if not found:
            raise InputError("the detector output holds no predictions to explain")
        return found[0]
    if task == "embed":
        raise InputError("an embedding model needs a reference: pass SimilarityTarget(reference) targets "
                         "(CLI: --reference IMAGE)")
    return ClassifierOutputTarget(int(np.argmax(np.asarray(output).reshape(-1))))


def is_target_objects(targets: Any) -> bool:
    """Whether `targets` is a sequence of target objects (rather than None, ints or a seed array)."""
    return isinstance(targets, (list, tuple)) and any(isinstance(t, Target) for t in targets)


def bind_targets(targets: Sequence[Any], outputs: np.ndarray) -> list[Target]:
    """One bound target per image from the clean outputs (N, ...); ints become ClassifierOutputTargets."""
    if len(targets) != len(outputs):
        raise InputError(f"{len(targets)} targets given for a batch of {len(outputs)} images; give one per image")
    bound: list[Target] = []
    for target, output in zip(targets, outputs):
        if isinstance(target, (int, np.integer)):
            target = ClassifierOutputTarget(int(target))
        if not isinstance(target, Target):
            raise InputError(f"targets must be ints or onnxcam.targets objects, got {type(target).__name__}")
        bound.append(target.bind(output))
    return bound


def seeds(targets: Sequence[Target], outputs: np.ndarray) -> np.ndarray:
    """The seed batch (N, ...) like `outputs`: each target's gradient at its image's output."""
    return np.stack([t.seed(o) for t, o in zip(targets, outputs)]).astype(np.float32)


def categories(targets: Sequence[Target]) -> np.ndarray:
    """(N,) the class each target is about (-1 where none, e.g. similarity)."""
    return np.array([-1 if t.category is None else int(t.category) for t in targets], np.int64)


# --- helpers ------------------------------------------------------------------------------------------------------
def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A boolean (H, W) mask at `size` (nearest neighbour)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = np.asarray(mask.any(axis=-1))
    if mask.ndim != 2:
        raise InputError(f"a segmentation mask must be (H, W), got {mask.shape}")
    h, w = int(size[0]), int(size[1])
    if mask.shape == (h, w):
        return mask.astype(bool)
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols].astype(bool)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with each of boxes (B, 4), corners."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def _rotated_bounds(boxes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Axis-aligned corners (B, 4) around rotated boxes cx, cy, w, h turned by `angles` (radians)."""
    cos, sin = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    half_w = (boxes[:, 2] * cos + boxes[:, 3] * sin) / 2
    half_h = (boxes[:, 2] * sin + boxes[:, 3] * cos) / 2
    return np.stack([boxes[:, 0] - half_w, boxes[:, 1] - half_h, boxes[:, 0] + half_w, boxes[:, 1] + half_h], axis=1)


def _corners(boxes: np.ndarray, form: str) -> np.ndarray:
    if form == "xyxy":
        return boxes
    if form != "cxcywh":
        raise InputError(f"box format must be 'cxcywh' or 'xyxy', not '{form}'")
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _segmentation_output(output: np.ndarray) -> np.ndarray:
    output = np.asarray(output)
    if output.ndim != 3:
        raise InputError(f"a segmentation output per image must be (classes, H, W), got {output.shape}")
    return output


def _dominant_class(output: np.ndarray) -> int:
    """The most frequent predicted class, ignoring class 0 (background) when anything else is predicted."""
    counts = np.bincount(output.argmax(axis=0).reshape(-1), minlength=output.shape[0])
    if counts[1:].any():
        return int(np.argmax(counts[1:]) + 1)
    return 0


def resolve_targets(targets: Any, outputs: np.ndarray, task: str | None,
                    layout: DetectionLayout | None = None) -> list[Target] | None:
    """Bound target objects, one per image, for what the user passed; None where the class fast path applies
    (a classifier with None / ints, or a raw seed array).

    For segmentation an int is a class (its predicted region), for detection an int is a class (its best
    detection); None picks `default_target` per image.
    """
    if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.floating):
        return None
    if not is_target_objects(targets) and task in (None, "classify"):
        return None
    n = len(outputs)
    items = [targets] * n if targets is None or np.isscalar(targets) else list(targets)
    if len(items) != n:
        raise InputError(f"{len(items)} targets given for a batch of {n} images; give one per image")
    bound: list[Target] = []
    for item, output in zip(items, outputs):
        if isinstance(item, Target):
            bound.append(item.bind(output))
        elif item is None:
            bound.append(default_target(task or "classify", output, layout))
        elif isinstance(item, (int, np.integer)):
            bound.append(class_target(task or "classify", int(item), output, layout))
        else:
            raise InputError(f"targets must be ints or onnxcam.targets objects, got {type(item).__name__}")
    return bound


def class_target(task: str, category: int, output: np.ndarray, layout: DetectionLayout | None = None) -> Target:
    """The target for a class index under a task: its logit, its predicted region, or its best detection."""
    if task == "segment":
        return SemanticSegmentationTarget(category).bind(output)
    if task == "detect":
        layout = layout or guess_detection_layout(np.shape(output))
        found = decode(output, layout)
        rows = layout.rows(output)
        if layout.post_nms:
            same = np.flatnonzero(found.classes == category)
            if not len(same):
                raise InputError(f"no detection of class {category} in this image")
            return DetectionTarget(int(same[np.argmax(found.scores[same])]), category, layout).bind(output)
        offset = layout.class_offset()
        columns = layout.class_columns(rows.shape[1])
        if not 0 <= category < columns.stop - columns.start:
            raise InputError(f"class {category} is out of range: the detector has {columns.stop - columns.start} "
                             "classes")
        scores = rows[:, offset + category] * (rows[:, 4] if layout.objectness else 1.0)
        return DetectionTarget(int(np.argmax(scores)), category, layout).bind(output)
    return ClassifierOutputTarget(category)


# --- target plans: what a batch job explains in each image ----------------------------------------------------------
@dataclass(frozen=True)
class TargetPlan:
    """How one image's model output becomes the targets a batch job explains (picklable: the local and Ray
    engines share it, and `describe` goes into the run manifest).

    classify: `category` for every image, the `top_k` best classes, or the predicted class (None); the job keeps
    the in-graph fast path for these. segment: the class's predicted region (`category`, default the dominant
    class) or `mask`. detect: detection row `box`, every detection scoring at least `threshold` (best first, at most
    `max_detections`), the best of class `category`, or the best detection; `detection_target` "mask" explains
    each one's instance mask (InstanceMaskTarget) instead of its class score. embed: similarity to `reference`.
    """

    task: str = "classify"
    category: int | None = None
    top_k: int | None = None
    mask: np.ndarray | None = None
    box: int | None = None
    threshold: float | None = None
    max_detections: int = 20
    reference: np.ndarray | None = None
    detection_target: str = "score"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"unknown task '{self.task}'; use one of {', '.join(TASKS)}")
        if self.detection_target not in DETECTION_TARGETS:
            raise InputError(f"unknown detection target '{self.detection_target}'; use one of "
                             f"{', '.join(DETECTION_TARGETS)}")
        if self.detection_target != "score" and self.task != "detect":
            raise InputError(f"a detection's {self.detection_target} is explained for detection models (task detect),"
                             f" not {self.task}")
        if self.box is not None and self.threshold is not None:
            raise InputError("give either a box or a threshold, not both")
        if self.top_k is not None and self.task != "classify":
            raise InputError(f"top_k explains the k best classes of a classifier; a {self.task} model has none "
                             "(detectors: use --threshold, at most --max-detections maps)")
        if self.top_k is not None and self.category is not None:
            raise InputError("give either a target or top_k, not both")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        if self.max_detections < 1:
            raise InputError(f"max_detections must be at least 1, got {self.max_detections}")
        if self.mask is not None and self.task != "segment":
            raise InputError("a mask is for segmentation models (task segment)")
        if (self.box is not None or self.threshold is not None) and self.task != "detect":
            raise InputError("a box or threshold is for detection models (task detect)")
        if self.task == "embed" and self.reference is None:
            raise InputError("an embedding model is explained against a reference: pass a reference image "
                             "(CLI: --reference IMAGE)")

    @property
    def per_image(self) -> int | None:
        """How many targets each image gets when that is fixed (None: it depends on the image's detections)."""
        if self.task == "classify":
            return self.top_k or 1
        return None if self.task == "detect" and self.threshold is not None else 1

    def targets(self, output: np.ndarray, layout: DetectionLayout | None = None) -> list[Target]:
        """The bound targets of one image of a segment / detect / embed model, from its output."""
        if self.task == "segment":
            return [SemanticSegmentationTarget(self.category, self.mask).bind(output)]
        if self.task == "embed":
            assert self.reference is not None
            return [SimilarityTarget(self.reference).bind(output)]
        if self.task == "detect":
            if self.box is None and self.threshold is None:
                if self.category is not None:
                    found = [class_target("detect", self.category, output, layout)]
                else:
                    found = [default_target("detect", output, layout)]
            else:
                found = list(detection_targets(output, layout or guess_detection_layout(np.shape(output)),
                                               self.threshold, self.box))
                found = [t for t in found if self.category is None or t.category == self.category]
                found = found[:self.max_detections]
            if self.detection_target == "mask":
                return [InstanceMaskTarget(t.index, t.category, t.layout).bind(output) for t in found
                        if isinstance(t, DetectionTarget)]
            return found
        return [class_target("classify", self.category, output) if self.category is not None
                else default_target("classify", output)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready and stable (arrays by content hash), for the run manifest."""
        import hashlib

        def digest(array: np.ndarray | None) -> str | None:
            return None if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]

        described = {"task": self.task, "category": self.category, "top_k": self.top_k, "mask": digest(self.mask),
                     "box": self.box, "threshold": self.threshold, "max_detections": self.max_detections,
                     "reference": digest(self.reference)}
        if self.detection_target != "score":  # only then: earlier runs' manifests stay the same
            described["detection_target"] = self.detection_target
        return described
