"""What a batch job writes about itself: one record per (image, method, target) in results.jsonl, the run
manifest run.json, and what `--resume` reads back from them.

Records are strict JSON (no NaN/Infinity: a non-finite number is written as null) with non-ASCII text escaped,
so any parser reads them; image paths that are not valid UTF-8 keep their bytes as \\xNN escapes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onnxcam.errors import InputError
from onnxcam.files import printable

RESULTS, REPORT, MANIFEST = "results.jsonl", "report.html", "run.json"
PARTIAL = RESULTS + ".partial"
REPORT_LIMIT = 2000  # explained records kept in memory for report.html; results.jsonl always has them all
FAILURE_LIMIT = 500  # failures kept for the report and the summary; the rest are counted (and all in results.jsonl)
# Manifest entries that must match for --resume to continue a run (the rest is information).
RESUME_KEYS = ("model_sha256", "inputs", "layers", "per_layer", "methods", "method_options", "targets",
               "preprocessing", "explainer")
# What a manifest written before a key existed meant by leaving it out (so such runs still resume).
RESUME_DEFAULTS = {"per_layer": False}

Record = dict[str, Any]


class TextLog(Protocol):
    """What results are appended to: an open text file, or the job's all-or-nothing log."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> None: ...
Unit = list[tuple[Any, "list[Record] | None"]]  # (input file, its kept records under --resume, or None)


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python, tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return clean(value.item())
    return value


def dumps(record: Record) -> str:
    return json.dumps(clean(record), ensure_ascii=True, allow_nan=False)


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    out: Path = Path(".")
    total: int = 0                                    # images in the run
    # Every failure and the first REPORT_LIMIT other records, what report.html shows; all records (and the count
    # below) are in results.jsonl, so memory stays flat over millions of images.
    records: list[Record] = field(default_factory=list)
    total_records: int = 0
    method_seconds: dict[str, float] = field(default_factory=dict)  # measured compute time per method
    stopped: str | None = None                         # why the run stopped early (disk full, interrupted)
    _kept_ok: int = 0
    _kept_failed: int = 0

    def log_image(self, records: list[Record], log: TextLog) -> None:
        """One image's records: appended to the open results log (flushed, so a kill loses no finished image)
        and counted as failed, skipped or done."""
        log.write("".join(dumps(rec) + "\n" for rec in records))
        log.flush()
        for rec in records:
            self.add(rec)
            if rec.get("status") == "ok" and rec.get("method"):
                self.method_seconds[rec["method"]] = self.method_seconds.get(rec["method"], 0.0) + \
                    float(rec.get("seconds") or 0.0)
        if any(r["status"] == "failed" for r in records):
            self.failed += 1
        elif records[0]["status"] == "skipped":
            self.skipped += 1
        else:
            self.done += 1

    def add(self, record: Record) -> None:
        self.total_records += 1
        if record.get("status") == "failed":
            self._kept_failed += 1
            if self._kept_failed <= FAILURE_LIMIT:
                self.records.append(record)
        elif self._kept_ok < REPORT_LIMIT:
            self._kept_ok += 1
            self.records.append(record)

    @property
    def report(self) -> Path:
        return self.out / REPORT

    @property
    def results(self) -> Path:
        return self.out / RESULTS


def failed_record(image: str, name: str, error: str, methods: list[str], layer: str | None,
                  seconds: float = 0.0) -> Record:
    return {"image": image, "name": name, "status": "failed", "error": error, "task": None, "predicted": None,
            "predicted_label": None, "score": None, "target": None, "label": None, "target_score": None,
            "method": ", ".join(methods), "layer": layer, "paths": None, "seconds": round(seconds, 4)}


# --- the manifest -------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences in what the outputs were made from ('' when the runs match)."""
    found = []
    for key in RESUME_KEYS:
        a, b = clean(old.get(key, RESUME_DEFAULTS.get(key))), clean(new.get(key, RESUME_DEFAULTS.get(key)))
        if a != b:
            found.append(f"{key.replace('_', ' ')} {_short(a)} -> {_short(b)}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(out: Path, manifest: dict[str, Any]) -> None:
    """--resume continues only the run recorded in OUT/run.json; otherwise one line says what differs."""
    old = read_manifest(out)
    if old is None:
        if (out / RESULTS).exists() or (out / PARTIAL).exists():
            raise InputError(f"--resume: {printable(str(out))} has results but no readable {MANIFEST}, so what they "
                             "were made from is unknown; use another --out or drop --resume")
        return  # nothing was written yet (e.g. killed before the manifest): a fresh run
    differences = manifest_differences(old, manifest)
    if differences:
        raise InputError(f"--resume: this run differs from the one in {printable(str(out / MANIFEST))}: "
                         f"{'; '.join(differences)}; use another --out or drop --resume")


# --- resume ---------------------------------------------------------------------------------------------------------
def previous_records(out: Path) -> dict[tuple[str, str], list[Record]]:
    """(name, method) -> the records of images finished by earlier runs: the last complete run's results, then
    a killed later run's .partial log (newer per image). Names are input paths relative to their roots, so a
    record can only ever go back to the same file."""
    found: dict[tuple[str, str], list[Record]] = {}
    for path in (out / RESULTS, out / PARTIAL):
        if not path.is_file() or path.is_symlink():
            continue
        seen: dict[tuple[str, str], list[Record]] = {}
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed run may be cut short
                    continue
                if isinstance(rec, dict) and rec.get("status") in ("ok", "skipped") and \
                        isinstance(rec.get("name"), str) and isinstance(rec.get("method"), str):
                    seen.setdefault((rec["name"], rec["method"]), []).append(rec)
        found.update(seen)
    return found
