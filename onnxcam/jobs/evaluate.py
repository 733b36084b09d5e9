"""`evaluate`: the CLI's `evaluate` job as a Python function (a folder of images in, a table of metrics out).

Each evaluated item is an (image, class) pair: one per row of labels.csv (a two-object image has two rows, each
class explained and scored on its own), or the predicted class for images that labels.csv does not name. Every
method explains every item (`limits` may cap slow methods to the first items), then `onnxcam.metrics` scores the
maps. Localisation metrics need a mask (`<stem>.png`); where a mask holds per-class values (class index + 1) the
target class's region is used, else its non-zero pixels; the energy-based pointing game uses that region's tight
box. Masks of another size than their image are resized with nearest neighbour (and a note says how many).
A method that cannot run on the model (its first call raises an onnxcam error, e.g. `attention` on a model
without an attention branch) is left out and its error kept in `Evaluation.errors`; method options go only to
the methods whose signature accepts them.

Written to OUT: evaluation.json (settings, accuracy, per method and metric the mean and the number of items it
was computed on, mean curves), evaluation.csv (one row per method) and curves.png (mean deletion and insertion
curves per method).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnxcam import metrics as M
from onnxcam.errors import InputError, OnnxcamError
from onnxcam.explainer import Explainer
from onnxcam.graph.contract import ModelSource, model_name
from onnxcam.images import (
    IMAGE_SUFFIXES,
    ImageError,
    geometry,
    map_to_image,
    preprocess,
    preprocessing_problems,
    read_image,
    resolve_preprocessing,
)
from onnxcam.inputs import InputValue, prepare_model
from onnxcam.labels import find_labels, metadata_problems, resolve_target
from onnxcam.methods import get_method
from onnxcam.render import write_bytes, write_png

# metric name -> (higher is better, short column title)
METRICS: dict[str, tuple[bool, str]] = {
    "average_drop": (False, "AD%"),
    "average_increase": (True, "AI%"),
    "average_gain": (True, "AG%"),
    "deletion": (False, "Del"),
    "insertion": (True, "Ins"),
    "road_morf": (False, "MoRF"),
    "road_lerf": (True, "LeRF"),
    "pointing_game": (True, "PG%"),
    "energy_pointing_game": (True, "EPG%"),
    "seconds_per_image": (False, "s/img"),
}
ALIASES: dict[str, list[str]] = {
    "ad": ["average_drop"], "ai": ["average_increase"], "ic": ["average_increase"], "ag": ["average_gain"],
    "faithfulness": ["average_drop", "average_increase", "average_gain"],
    "insertion_deletion": ["deletion", "insertion"], "road": ["road_morf", "road_lerf"],
    "pg": ["pointing_game"], "pointing": ["pointing_game"], "energy": ["energy_pointing_game"],
    "epg": ["energy_pointing_game"], "localisation": ["pointing_game", "energy_pointing_game"],
    "runtime": ["seconds_per_image"], "all": list(METRICS),
}
LOCALISATION = ("pointing_game", "energy_pointing_game")
EXPLAINER_OPTIONS = ("aug_smooth", "eigen_smooth")  # taken by Explainer.explain for every method
JSON_NAME, CSV_NAME, PLOT_NAME = "evaluation.json", "evaluation.csv", "curves.png"


@dataclass
class Item:
    path: Path
    name: str               # relative path without suffix, '/'-separated
    target: int | None      # ground-truth class, None = the predicted class
    mask: Path | None


@dataclass
class Evaluation:
    model: str
    data: str
    items: int
    labelled: int
    with_masks: int
    activation: str
    layer: list[str]
    metrics: list[str]
    settings: dict[str, Any]
    accuracy: float | None                   # on labelled items: top-1 (softmax) or probability >= 0.5 (sigmoid)
    results: dict[str, dict[str, dict[str, Any]]]   # method -> metric -> {"mean", "n", "higher_is_better"}
    curves: dict[str, dict[str, list[float]]]       # method -> "deletion"/"insertion" -> mean curve
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # unreadable images
    errors: dict[str, str] = field(default_factory=dict)  # method -> why it could not run on this model
    out: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "out"}


def parse_metrics(names: Sequence[str] | str | None) -> list[str]:
    """Metric names, groups or aliases (comma-separated or a list) -> metric names in table order."""
    if names is None:
        return list(METRICS)
    items = names.split(",") if isinstance(names, str) else [n for item in names for n in str(item).split(",")]
    chosen: set[str] = set()
    for raw in items:
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        if name in METRICS:
            chosen.add(name)
        elif name in ALIASES:
            chosen.update(ALIASES[name])
        else:
            raise InputError(f"unknown metric '{raw.strip()}'; valid metrics: {', '.join(METRICS)} (groups: "
                             f"{', '.join(ALIASES)})")
    if not chosen:
        raise InputError(f"no metric given; valid metrics: {', '.join(METRICS)}")
    chosen.add("seconds_per_image")
    return [m for m in METRICS if m in chosen]


# --- finding images, labels and masks -----------------------------------------------------------------------------
def find_images(data: Path, exclude: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """(file, name) for every image under `data` (recursive), leaving out the folders in `exclude`."""
    if not data.exists():
        raise InputError(f"data folder {data} does not exist")
    if data.is_file():
        return [(data, data.stem)]
    skip = [os.path.join(os.path.realpath(p), "") for p in exclude]
    found = []
    for path in sorted(data.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(os.path.realpath(path).startswith(s) for s in skip):
            continue
        found.append((path, path.relative_to(data).with_suffix("").as_posix()))
    if not found:
        raise InputError(f"no images found in {data} (image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def _beside(data: Path, name: str, want_dir: bool) -> Path | None:
    """`name` in DATA or in DATA's parent folder (the shapes benchmark keeps images/, masks/, labels.csv side by
    side), or None."""
    folder = data if data.is_dir() else data.parent
    for candidate in (folder / name, folder.parent / name):
        if (candidate.is_dir() if want_dir else candidate.is_file()) and candidate.resolve() != folder.resolve():
            return candidate
    return None


def read_label_rows(csv_path: Path, data: Path, images: list[tuple[Path, str]], class_names: list[str] | None,
                    classes: int | None) -> list[tuple[Path, int]]:
    """(image file, class) per row of a `file,class` csv; files relative to DATA or to the csv's folder."""
    by_path = {os.path.realpath(p): p for p, _ in images}
    folder = data if data.is_dir() else data.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels csv {csv_path}: {e}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise InputError(f"labels csv {csv_path} is empty; expected a header 'file,class' and one row per object")
    header = [h.strip().lower() for h in rows[0]]
    if "file" not in header or "class" not in header:
        raise InputError(f"labels csv {csv_path} must start with the header 'file,class' (got '{','.join(rows[0])}')")
    fi, ci = header.index("file"), header.index("class")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(fi, ci):
            raise InputError(f"{csv_path} line {line}: expected 'file,class', got '{','.join(row)}'")
        file = row[fi].strip()
        match = next((by_path[key] for base in (folder, csv_path.parent, folder.parent)
                      if (key := os.path.realpath(base / file)) in by_path), None)
        if match is None:
            raise InputError(f"{csv_path} line {line}: image '{file}' is not among the images in {data} "
                             f"(paths are relative to {folder} or to the csv's folder)")
        try:
            target = resolve_target(row[ci], class_names, classes)
        except InputError as e:
            raise InputError(f"{csv_path} line {line}: {e}") from None
        out.append((match, target))
    return out


def _mask_file(masks: Path, name: str) -> Path | None:
    for candidate in (masks / f"{name}.png", masks / f"{Path(name).name}.png"):
        if candidate.is_file():
            return candidate
    return None


def read_mask(path: Path) -> np.ndarray:
    """A mask as a 2-D integer label map (several channels: their maximum)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ImageError(f"cannot read mask {path}")
    return mask.max(axis=2) if mask.ndim == 3 else mask


def target_region(mask: np.ndarray, target: int) -> np.ndarray:
    """Pixels of `target`'s object: mask == target + 1 when that value occurs, else all non-zero pixels when the
    mask holds one object value (a binary mask), else nothing (the class is not in a multi-object mask)."""
    values = np.unique(mask[mask != 0])
    if (values == target + 1).any():
        return mask == target + 1
    if len(values) == 1:
        return mask != 0
    return np.zeros(mask.shape, bool)


# --- the job --------------------------------------------------------------------------------------------------------
def evaluate(model: ModelSource, data: str | os.PathLike, methods: Sequence[str], out: str | os.PathLike | None = None,
             metrics: Sequence[str] | str | None = None, labels: str | os.PathLike | None = None,
             masks: str | os.PathLike | None = None, layer: str | None = None, limit: int | None = None,
             limits: dict[str, int] | None = None, metric_limits: dict[str, int] | None = None,
             batch_size: int = 16, activation: str = "auto", steps: int = 20,
             road_percentages: Sequence[float] = M.ROAD_PERCENTAGES, road_noise: float = M.ROAD_NOISE,
             insertion_start: str = "blur", tolerance: float = 0.0,
             class_names: str | os.PathLike | None = None, preset: str | None = None, device: str = "auto",
             options: dict[str, Any] | None = None, seed: int = 0, explainer: Explainer | None = None,
             on_start: Callable[[int], None] | None = None,
             on_progress: Callable[[int], None] | None = None, bgr: bool | None = None,
             resize_short: int | None = None, crop: int | Sequence[int] | None = None,
             letterbox: bool | None = None, interpolation: str | None = None, pad_value: float | None = None,
             model_inputs: Mapping[str, InputValue] | None = None,
             on_info: Callable[[str], None] | None = None) -> Evaluation:
    """Score `methods` on the images under `data`; see the module docstring. Returns an Evaluation (also written
    to `out` when given). limit: the first N items only; limits: per method, e.g. {"scorecam": 50};
    metric_limits: per metric or group, e.g. {"road": 50} (ROAD's sparse solves are the slowest part).
    preset, bgr, resize_short, crop, letterbox, interpolation, pad_value: preprocessing (see `onnxcam explain`);
    model_inputs: values of model inputs beside the image (onnxcam.inputs); on_info gets the preprocessing and
    labels lines once, before any image."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InputError("no method given; see 'onnxcam methods'")
    for m in methods:
        get_method(m)
    for m, n in (limits or {}).items():
        if m not in methods:
            raise InputError(f"a limit is given for '{m}', which is not among the evaluated methods")
        if n < 1:
            raise InputError(f"the limit for '{m}' must be at least 1, got {n}")
    chosen = parse_metrics(metrics)
    metric_cap: dict[str, int] = {}
    for name, n in (metric_limits or {}).items():
        if n < 1:
            raise InputError(f"the limit for metric '{name}' must be at least 1, got {n}")
        for k in parse_metrics(name):
            if k != "seconds_per_image" or name.strip().lower() in ("runtime", "seconds_per_image"):
                metric_cap[k] = min(n, metric_cap.get(k, n))
    if activation not in M.ACTIVATIONS:
        raise InputError(f"unknown activation '{activation}'; use one of {', '.join(M.ACTIVATIONS)}")
    if insertion_start not in ("blur", "black"):
        raise InputError(f"insertion start must be 'blur' or 'black', got '{insertion_start}'")
    if steps < 1:
        raise InputError(f"insertion/deletion steps must be at least 1, got {steps}")
    if not road_percentages or any(not 0 < float(p) < 100 for p in road_percentages):
        raise InputError(f"ROAD percentages must lie strictly between 0 and 100, got {list(road_percentages)}")
    prepared = prepare_model(explainer.view.facts.source if explainer is not None else model, model_inputs)
    ex = explainer or Explainer(prepared.model, layer=layer, device=device)
    flags = (bgr, resize_short, crop, letterbox, interpolation, pad_value)
    if preset is not None or explainer is None or any(v is not None for v in flags):
        ex.preprocessing = resolve_preprocessing(ex.summary, ex.input_name, ex.input_layout, preset, bgr=bgr,
                                                 resize_short=resize_short, crop=crop, letterbox=letterbox,
                                                 interpolation=interpolation, pad_value=pad_value)
    act = M.activation_for(ex) if activation == "auto" else activation
    data_path = Path(data)
    notes: list[str] = []
    classes = ex.scores(_probe(ex)).shape[1]
    found = find_labels(class_names, ex.summary, classes)
    notes += prepared.notes + preprocessing_problems(ex.summary) + (metadata_problems(ex.summary, classes)
                                                                  if class_names is None else [])
    for line in (f"preprocessing: {ex.preprocessing.line()}", f"labels: {found.source}"):
        if on_info:
            on_info(line)
    items = _items(ex, data_path, labels, masks, found.names, classes, out, notes)
    if limit is not None:
        items = items[:limit]
    wanted_masks = any(m in chosen for m in LOCALISATION)
    with_masks = sum(item.mask is not None for item in items)
    if wanted_masks and with_masks < len(items):
        notes.append(f"{len(items) - with_masks} of {len(items)} items have no mask: localisation metrics skip them")
    per_method = {m: min(len(items), (limits or {}).get(m, len(items))) for m in methods}
    if on_start:
        on_start(sum(per_method.values()))
    values: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in chosen} for m in methods}
    curve_sums: dict[str, dict[str, list[np.ndarray]]] = {m: {"deletion": [], "insertion": []} for m in methods}
    correct: list[float] = []
    failed: list[str] = []
    resized = 0
    warmed: set[str] = set()
    errors: dict[str, str] = {}
    method_options = {m: _accepted(m, options or {}) for m in methods}
    unused = set(options or {}) - {k for opts in method_options.values() for k in opts}
    if unused:
        raise InputError(f"option(s) {', '.join(sorted(unused))} are accepted by none of the methods "
                         f"{', '.join(methods)}")
    settings = {"steps": steps, "insertion_start": insertion_start, "road_percentages": list(road_percentages),
                "road_noise": road_noise, "pointing_tolerance_px": tolerance, "batch_size": batch_size,
                "limits": dict(limits or {}), "metric_limits": dict(metric_limits or {}),
                "options": dict(options or {}), "seed": seed, "preprocessing": ex.preprocessing.describe(),
                "preprocessing_source": ex.preprocessing.source, "labels_source": found.source}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        loaded = []
        for item in batch:
            try:
                rgb = read_image(item.path)
                loaded.append((item, rgb, preprocess(rgb, ex.preprocessing)))
            except ImageError as e:
                failed.append(str(e))
        if not loaded:
            continue
        x = np.concatenate([t for _, _, t in loaded])
        scores = ex.scores(x)
        probs = M.to_probabilities(scores, act)
        targets = np.array([item.target if item.target is not None else int(np.argmax(s))
                            for (item, _, _), s in zip(loaded, scores)], np.int64)
        base = probs[np.arange(len(x)), targets]
        for (item, _, _), p in zip(loaded, probs):
            if item.target is not None:
                correct.append(float(np.argmax(p) == item.target if act != "sigmoid" else p[item.target] >= 0.5))
        regions: list[np.ndarray | None] = []
        if wanted_masks:
            for item, rgb, _ in loaded:
                region, was_resized = _region(item, rgb.shape[:2])
                resized += was_resized
                regions.append(region)
        for m in methods:
            keep = max(0, min(len(loaded), per_method[m] - start))
            if keep == 0:
                continue
            if m in errors:
                if on_progress:
                    on_progress(keep)
                continue
            if m not in warmed:  # build the method's sessions before its clock starts: runtime is per image
                try:
                    ex.explain(x[:1], m, targets[:1], layer, **method_options[m])
                except OnnxcamError as e:  # e.g. a method that needs an attention branch or fitted weights
                    errors[m] = str(e)
                    if len(errors) == len(methods):
                        raise
                    if on_progress:
                        on_progress(keep)
                    continue
                warmed.add(m)
            _score_method(ex, m, x[:keep], targets[:keep], base[:keep], [rgb for _, rgb, _ in loaded[:keep]],
                          regions[:keep] if wanted_masks else [], chosen, values[m], curve_sums[m], layer,
                          method_options[m], act, steps, insertion_start, road_percentages, road_noise, tolerance, seed,
                          batch_size, {k: max(0, n - start) for k, n in metric_cap.items()})
            if on_progress:
                on_progress(keep)
    if resized:
        notes.append(f"{resized} mask(s) had another size than their image and were resized (nearest neighbour)")
    if failed:
        notes.append(f"{len(failed)} image(s) could not be read and were skipped")
    if len(failed) == len(items):
        raise InputError(f"none of the {len(items)} images could be read; first error: {failed[0]}")
    ran = [m for m in methods if m not in errors]
    results = {m: {k: _summary(values[m][k], METRICS[k][0]) for k in chosen} for m in ran}
    curves = {m: {k: np.mean(np.concatenate(v), axis=0).round(6).tolist() for k, v in curve_sums[m].items() if v}
              for m in ran}
    evaluation = Evaluation(
        model=model_name(model), data=str(data_path), items=len(items),
        labelled=sum(i.target is not None for i in items),
        with_masks=with_masks, activation=act, layer=list(ex.layer) if layer is None else [layer], metrics=chosen,
        settings=settings, accuracy=float(np.mean(correct)) if correct else None, results=results, curves=curves,
        notes=notes, failed=failed, errors=errors)
    if out is not None:
        write_outputs(evaluation, Path(out))
    return evaluation


def _items(ex: Explainer, data: Path, labels: str | os.PathLike | None, masks: str | os.PathLike | None,
           names: list[str] | None, classes: int, out: str | os.PathLike | None, notes: list[str]) -> list[Item]:
    mask_dir = Path(masks) if masks is not None else _beside(data, "masks", want_dir=True)
    if masks is not None and not mask_dir.is_dir():  # type: ignore[union-attr]
        raise InputError(f"masks folder {masks} does not exist")
    if masks is None and mask_dir is not None:
        notes.append(f"using masks from {mask_dir} (found beside the data)")
    exclude = [p for p in (mask_dir, Path(out) if out is not None else None) if p is not None]
    images = find_images(data, exclude)
    csv_path = Path(labels) if labels is not None else _beside(data, "labels.csv", want_dir=False)
    if labels is not None and not csv_path.is_file():  # type: ignore[union-attr]
        raise InputError(f"labels csv {labels} does not exist")
    if labels is None and csv_path is not None:
        notes.append(f"using ground-truth classes from {csv_path} (found beside the data)")
    rows = read_label_rows(csv_path, data, images, names, classes) if csv_path is not None else []
    by_file: dict[Path, list[int]] = {}
    for file, target in rows:
        by_file.setdefault(file, []).append(target)
    if csv_path is None:
        notes.append("no labels csv: each image's predicted class is explained")
    elif len(by_file) < len(images):
        notes.append(f"{len(images) - len(by_file)} image(s) not in {csv_path}: their predicted class is explained")
    items = []
    for file, name in images:
        mask = _mask_file(mask_dir, name) if mask_dir is not None else None
        targets: list[int | None] = list(by_file.get(file, [])) or [None]
        for wanted in dict.fromkeys(targets):
            items.append(Item(file, name, wanted, mask))
    return items


def _accepted(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options `method` accepts (Method.accepts, the one filter), plus the explainer's own smoothing flags."""
    own = {k: v for k, v in options.items() if k in EXPLAINER_OPTIONS}
    return {**get_method(method).accepts(options, strict=False), **own}


def _probe(ex: Explainer) -> np.ndarray:
    """A black image as model input, to learn the number of classes."""
    h, w = ex.preprocessing.size
    shape = (1, ex.preprocessing.channels, h, w) if ex.input_layout == "NCHW" else (1, h, w, ex.preprocessing.channels)
    return np.ascontiguousarray(np.broadcast_to(ex.baseline(), shape))


def _region(item: Item, size: tuple[int, int]) -> tuple[np.ndarray | None, bool]:
    """The target's region at the image's size (None without a mask) and whether the mask was resized; the
    target is filled in by the caller when the item has none (predicted class): see `_score_method`."""
    if item.mask is None:
        return None, False
    mask = read_mask(item.mask)
    if mask.shape != tuple(size):
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST), True
    return mask, False


def _score_method(ex: Explainer, method: str, x: np.ndarray, targets: np.ndarray, base: np.ndarray,
                  rgbs: list[np.ndarray], masks: list[np.ndarray | None], chosen: list[str],
                  values: dict[str, list[np.ndarray]], curves: dict[str, list[np.ndarray]], layer: str | None,
                  options: dict[str, Any], act: str, steps: int, insertion_start: str,
                  road_percentages: Sequence[float], road_noise: float, tolerance: float, seed: int,
                  batch_size: int, caps: dict[str, int]) -> None:
    """Explain x with `method` and append each chosen metric's per-item values (the first caps[metric] items
    only where capped) to `values`."""
    run_batch = max(64, batch_size)

    def wanted(*names: str) -> int:
        """How many of this batch's items the metrics `names` are computed on (0: none of them is chosen)."""
        return max((min(len(x), caps.get(k, len(x))) for k in names if k in chosen), default=0)

    maps, seconds = M.timed_explain(ex, x, method, targets, layer, warm=False, **options)
    values["seconds_per_image"].append(np.full(len(x), seconds))
    if n := wanted("average_drop", "average_increase", "average_gain"):
        faith = M.faithfulness(ex, x[:n], maps[:n], targets[:n], act, run_batch, base=base[:n])
        for k in ("average_drop", "average_increase", "average_gain"):
            if k in chosen:
                values[k].append(faith[k][:caps.get(k, n)])
    if n := wanted("deletion", "insertion"):
        curve = M.insertion_deletion(ex, x[:n], maps[:n], targets[:n], steps, act, run_batch, insertion_start)
        for k in ("deletion", "insertion"):
            if k in chosen:
                values[k].append(curve[k][:caps.get(k, n)])
                curves[k].append(curve[f"{k}_curve"][:caps.get(k, n)])
    if n := wanted("road_morf", "road_lerf"):
        result = M.road(ex, x[:n], maps[:n], targets[:n], road_percentages, road_noise, act, run_batch, seed)
        for k, key in (("road_morf", "morf"), ("road_lerf", "lerf")):
            if k in chosen:
                values[k].append(result[key][:caps.get(k, n)])
    if masks and (n := wanted(*LOCALISATION)):
        regions = [None if mask is None else target_region(mask, int(t)) for mask, t in zip(masks[:n], targets)]
        present = [i for i, r in enumerate(regions) if r is not None]
        nan = np.full(n, np.nan)
        pg, energy = nan.copy(), nan.copy()
        for i in present:
            region = regions[i]
            assert region is not None
            full = map_to_image(maps[i], geometry(rgbs[i].shape[:2], ex.preprocessing))[None]
            pg[i] = M.pointing_game(full, region[None], tolerance)[0]
            energy[i] = M.energy_pointing_game(full, [M.mask_box(region)])[0]
        if "pointing_game" in chosen:
            values["pointing_game"].append(100.0 * pg[:caps.get("pointing_game", n)])
        if "energy_pointing_game" in chosen:
            values["energy_pointing_game"].append(100.0 * energy[:caps.get("energy_pointing_game", n)])


def _summary(parts: list[np.ndarray], higher: bool) -> dict[str, Any]:
    joined = np.concatenate(parts) if parts else np.zeros(0)
    finite = joined[np.isfinite(joined)]
    return {"mean": float(finite.mean()) if len(finite) else None, "n": int(len(finite)), "higher_is_better": higher}


# --- outputs --------------------------------------------------------------------------------------------------------
def write_outputs(evaluation: Evaluation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    evaluation.out = out
    write_bytes(out / JSON_NAME, (json.dumps(evaluation.as_dict(), indent=1) + "\n").encode())
    lines = [",".join(["method"] + [c for k in evaluation.metrics for c in (k, f"{k}_n")])]
    for m, per in evaluation.results.items():
        cells = [m]
        for k in evaluation.metrics:
            mean = per[k]["mean"]
            cells += ["" if mean is None else f"{mean:.6g}", str(per[k]["n"])]
        lines.append(",".join(cells))
    write_bytes(out / CSV_NAME, ("\n".join(lines) + "\n").encode())
    if any(evaluation.curves.values()):
        write_png(out / PLOT_NAME, plot_curves(evaluation.curves))


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (255, 215, 0)]


def plot_curves(curves: dict[str, dict[str, list[float]]], panel: tuple[int, int] = (420, 320)) -> np.ndarray:
    """RGB image: mean deletion (left) and insertion (right) curves, probability over the fraction of pixels,
    one colour per method with a legend below (OpenCV drawing; matplotlib is not a dependency)."""
    pw, ph = panel
    margin_l, margin_b, margin_t = 50, 40, 30
    methods = [m for m in curves if curves[m]]
    legend_rows = (len(methods) + 2) // 3
    canvas = np.full((ph + 20 * legend_rows + 10, 2 * pw, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, kind in enumerate(("deletion", "insertion")):
        x0, x1, y0, y1 = p * pw + margin_l, p * pw + pw - 15, margin_t, ph - margin_b
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 0, 0), 1)
        for t in range(0, 11, 2):
            gx, gy = x0 + (x1 - x0) * t // 10, y1 - (y1 - y0) * t // 10
            cv2.line(canvas, (gx, y0), (gx, y1), (225, 225, 225), 1)
            cv2.line(canvas, (x0, gy), (x1, gy), (225, 225, 225), 1)
            cv2.putText(canvas, f"{t / 10:.1f}", (gx - 10, y1 + 15), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(canvas, f"{t / 10:.1f}", (x0 - 28, gy + 4), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        arrow = "lower is better" if kind == "deletion" else "higher is better"
        cv2.putText(canvas, f"{kind} ({arrow})", (x0, y0 - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, "fraction of pixels", (x0 + (x1 - x0) // 2 - 55, y1 + 32), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for i, m in enumerate(methods):
            values = curves[m].get(kind)
            if not values:
                continue
            v = np.clip(np.asarray(values, np.float64), 0, 1)
            xs = x0 + (x1 - x0) * np.linspace(0, 1, len(v))
            ys = y1 - (y1 - y0) * v
            points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
            cv2.polylines(canvas, [points], False, _PALETTE[i % len(_PALETTE)], 2, cv2.LINE_AA)
    for i, m in enumerate(methods):
        lx, ly = 15 + (i % 3) * (2 * pw // 3), ph + 12 + 20 * (i // 3)
        colour = _PALETTE[i % len(_PALETTE)]
        cv2.line(canvas, (lx, ly), (lx + 25, ly), colour, 3)
        cv2.putText(canvas, m, (lx + 32, ly + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
