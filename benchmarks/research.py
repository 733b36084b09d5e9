"""The research methods next to their bases on the shapes benchmark: one command, one table per setting.

    python benchmarks/research.py [--images 100] [--out docs/research_results.md]

Generates the benchmark (`onnxcam.datasets.shapes.write_dataset`, test seed 2, the held-out set of
models/shapes_resnet.onnx; BroadCAM's training images from seed 1, the model's training seed) into a temporary
folder (or --data), then scores every method with `onnxcam.jobs.evaluate.evaluate` (targets: the labels; all metrics:
AD/AI/AG, deletion/insertion AUC, ROAD MoRF/LeRF, pointing game, energy pointing game, seconds per image).

Settings (issue 6):
- shapes_resnet, last layer (stage3) and middle layer (stage2): gradcam vs relevancecam, opticam and
  conceptor-gradcam; gradcam++ vs conceptor-gradcam++; scorecam vs conceptor-scorecam on the first
  --scorecam-images items (Score-CAM is ~one forward per channel);
- shapes_lfi, last layer only: attention (the model's own class-agnostic map) vs gradcam;
- shapes_resnet: broadcam fitted on 50 and 200 training images vs gradcam and cam.

ROAD (noisy linear imputation, the slowest metric) runs on the first --road-images items of every method. The
cost column divides each method's seconds per image by a plain forward of the same batch size.
Prints one markdown table per setting and writes them, with the command line, date and machine, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.datasets.shapes import write_dataset
from onnxcam.explainer import Explainer
from onnxcam.images import preprocess, read_image
from onnxcam.jobs.evaluate import METRICS, evaluate
from onnxcam.jobs.fit_broadcam import fit_broadcam, read_dataset

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "models" / "shapes_resnet.onnx"
LFI = ROOT / "models" / "shapes_lfi.onnx"
LAST = "/stage3/stage3.1/Relu_1_output_0"
MIDDLE = "/stage2/stage2.1/Relu_1_output_0"
TEST_SEED, TRAIN_SEED = 2, 1

# column title per metric, in table order (arrows: which way is better)
COLUMNS = {
    "average_drop": "AD % ↓", "average_increase": "AI % ↑", "average_gain": "AG % ↑", "deletion": "deletion ↓",
    "insertion": "insertion ↑", "road_morf": "ROAD MoRF ↓", "road_lerf": "ROAD LeRF ↑", "pointing_game": "PG % ↑",
    "energy_pointing_game": "EPG % ↑", "seconds_per_image": "ms / image", "forward_ratio": "x forward",
}
SCORED = [k for k in COLUMNS if k not in ("seconds_per_image", "forward_ratio")]


@dataclass
class Settings:
    images: int = 100                 # test images (seed 2)
    train_images: int = 200           # BroadCAM training images (seed 1)
    broadcam_counts: tuple[int, ...] = (50, 200)
    opticam_iterations: int = 50      # the official demo's default
    scorecam_images: int = 25         # Score-CAM and Conceptor-Score-CAM: the first N items only
    road_images: int = 50             # ROAD on the first N items of every method
    steps: int = 20                   # deletion/insertion steps
    batch_size: int = 16
    scorecam: bool = True


@dataclass
class ResearchTable:
    key: str
    title: str
    model: str
    layer: str
    rows: dict[str, dict[str, float | None]]      # method label -> column key -> value
    counts: dict[str, dict[str, int]]             # method label -> metric -> items it was computed on
    notes: list[str] = field(default_factory=list)
    forward_ms: float = 0.0

    def markdown(self) -> str:
        best = self._best()
        lines = ["| method | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---:|" * len(COLUMNS)]
        for label, values in self.rows.items():
            cells = []
            for k in COLUMNS:
                text = _format(k, values.get(k))
                # bold what reads as the best value (rows equal to the shown digits tie)
                cells.append(f"**{text}**" if k in best and text == _format(k, best[k]) and label in self._full()
                             else text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _full(self) -> list[str]:
        """Rows computed on every item (the bold best values are chosen among these only)."""
        most = max(c["average_drop"] for c in self.counts.values())
        return [label for label, c in self.counts.items() if c["average_drop"] == most]

    def _best(self) -> dict[str, float]:
        full = self._full()
        best = {}
        for k in SCORED:
            values = [v for label in full if (v := self.rows[label].get(k)) is not None]
            if len(values) > 1 and not all(math.isclose(v, values[0]) for v in values):
                best[k] = max(values) if METRICS[k][0] else min(values)
        return best


def _format(key: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if key in ("average_drop", "average_increase", "average_gain", "pointing_game", "energy_pointing_game"):
        return f"{value:.1f}"
    if key == "seconds_per_image":
        return f"{1000 * value:.1f}"
    if key == "forward_ratio":
        return f"{value:.1f}"
    return f"{value:.3f}"


def forward_seconds(ex: Explainer, x: np.ndarray, repeats: int = 5) -> float:
    """Seconds per image of a plain forward of the batch x (the best of a few runs: the machine is shared)."""
    ex.scores(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ex.scores(x)
        times.append((time.perf_counter() - started) / len(x))
    return min(times)


def _first_batch(ex: Explainer, images: Path, count: int) -> np.ndarray:
    files = sorted(images.glob("*.png"))[:count]
    return np.concatenate([preprocess(read_image(f), ex.preprocessing) for f in files])


def _score(ex: Explainer, images: Path, methods: Sequence[str], settings: Settings, layer: str | None,
           limits: dict[str, int] | None = None, options: dict[str, Any] | None = None,
           ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """evaluate() on the benchmark; returns its per-method results and notes (errors are fatal here: every
    method of this benchmark must run)."""
    result = evaluate(ex.model, images, list(methods), layer=layer, limits=limits,
                      metric_limits={"road": settings.road_images}, steps=settings.steps,
                      batch_size=settings.batch_size, options=options, explainer=ex)
    if result.errors:
        raise RuntimeError(f"methods failed: {result.errors}")
    return result.results, result.notes


def _table(key: str, title: str, model: Path, layer: str, results: dict[str, dict[str, dict[str, Any]]],
           forward: float, labels: dict[str, str] | None = None, notes: Sequence[str] = ()) -> ResearchTable:
    rows: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for method, per in results.items():
        label = (labels or {}).get(method, method)
        values: dict[str, float | None] = {k: per[k]["mean"] for k in SCORED + ["seconds_per_image"]}
        seconds = values["seconds_per_image"]
        values["forward_ratio"] = None if seconds is None else seconds / forward
        rows[label] = values
        counts[label] = {k: per[k]["n"] for k in SCORED}
    return ResearchTable(key, title, model.name, layer, rows, counts, list(notes), 1000 * forward)


def run_research(settings: Settings, work: Path, on_table: Callable[[ResearchTable], None] | None = None
                 ) -> list[ResearchTable]:
    """Write the benchmark under `work` and score every setting; returns the tables in order."""
    test, train = work / "test", work / "train"
    write_dataset(test, settings.images, TEST_SEED)
    images = test / "images"
    opt = {"iterations": settings.opticam_iterations}
    tables: list[ResearchTable] = []

    def done(table: ResearchTable) -> None:
        tables.append(table)
        if on_table:
            on_table(table)

    ex = Explainer(RESNET, device="cpu")
    forward = forward_seconds(ex, _first_batch(ex, images, settings.batch_size))
    slow = ["scorecam", "conceptor-scorecam"] if settings.scorecam else []
    limits = {m: settings.scorecam_images for m in slow}
    methods = ["gradcam", "relevancecam", "opticam", "conceptor-gradcam", "gradcam++", "conceptor-gradcam++"] + slow
    last_results: dict[str, dict[str, Any]] = {}
    for key, layer, name in (("last", LAST, "last layer (stage3, 64 x 12 x 12)"),
                             ("middle", MIDDLE, "middle layer (stage2, 32 x 24 x 24)")):
        wanted = methods + (["cam"] if key == "last" else [])  # CAM needs the GAP + linear head after the layer
        results, notes = _score(ex, images, wanted, settings, layer, limits, opt)
        if key == "last":
            last_results = results
            results = {m: v for m, v in results.items() if m != "cam"}
        done(_table(key, f"shapes_resnet, {name}", RESNET, layer, results, forward, notes=notes))

    write_dataset(train, settings.train_images, TRAIN_SEED)
    files, targets, names = read_dataset(ex, train)
    broad: dict[str, dict[str, Any]] = {m: last_results[m] for m in ("gradcam", "cam")}
    labels = {}
    for count in settings.broadcam_counts:
        fit = fit_broadcam(ex, files[:count], targets[:count], labels=names).save(work / f"broadcam{count}.npz")
        results, _ = _score(ex, images, ["broadcam"], settings, None, options={"fit": str(fit)})
        label = f"broadcam ({min(count, len(files))} training images)"
        broad[label] = results["broadcam"]
        labels[label] = label
    done(_table("broadcam", "shapes_resnet, BroadCAM (fitted on stage1-3) vs Grad-CAM and CAM at stage3", RESNET,
                LAST, broad, forward, labels))

    lfi = Explainer(LFI, device="cpu")
    lfi_forward = forward_seconds(lfi, _first_batch(lfi, images, settings.batch_size))
    results, notes = _score(lfi, images, ["attention", "gradcam"], settings, None)
    done(_table("attention", "shapes_lfi, last layer: the model's attention vs Grad-CAM", LFI,
                lfi.default_layer if isinstance(lfi.default_layer, str) else str(lfi.default_layer), results,
                lfi_forward, notes=notes))
    return tables


# --- the report -----------------------------------------------------------------------------------------------------
def _value(tables: list[ResearchTable], key: str, row: str, metric: str) -> float:
    table = next(t for t in tables if t.key == key)
    value = table.rows[row][metric]
    return float("nan") if value is None else value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _verdict(ai_better: bool, ad_better: bool, ai_worse: bool, ad_worse: bool) -> str:
    if ai_better and ad_better:
        return "confirmed"
    if (ai_better or ad_better) and not (ai_worse or ad_worse):
        return "half confirmed (" + ("AI" if ai_better else "AD") + " only, the other unchanged)"
    return "not confirmed"


def claim_checks(tables: list[ResearchTable]) -> list[str]:
    """The papers' claims (issue 6), checked on the numbers of this run."""
    lines = []
    for key in ("last", "middle"):
        table = next(t for t in tables if t.key == key)
        full = table._full()
        ad = min(full, key=lambda r: _or(table.rows[r]["average_drop"], math.inf))
        ag = max(full, key=lambda r: _or(table.rows[r]["average_gain"], -math.inf))
        lines.append(f"- Opti-CAM lowest AD and highest AG ({key} layer): lowest AD {ad}, highest AG {ag}: "
                     + ("confirmed" if ad == ag == "opticam" else "not confirmed"))
        for base in ("gradcam", "gradcam++", "scorecam"):
            if base not in table.rows:
                continue
            d_ai = _value(tables, key, f"conceptor-{base}", "average_increase") - _value(tables, key, base,
                                                                                           "average_increase")
            d_ad = _value(tables, key, f"conceptor-{base}", "average_drop") - _value(tables, key, base, "average_drop")
            verdict = _verdict(d_ai > 0, d_ad < 0, d_ai < 0, d_ad > 0)
            lines.append(f"- Conceptor-CAM raises AI and lowers AD of {base} ({key} layer): AI {d_ai:+.1f}, "
                         f"AD {d_ad:+.1f} points: {verdict}")
    d_pg = _value(tables, "middle", "relevancecam", "pointing_game") - _value(tables, "middle", "gradcam",
                                                                              "pointing_game")
    d_epg = _value(tables, "middle", "relevancecam", "energy_pointing_game") - _value(
        tables, "middle", "gradcam", "energy_pointing_game")
    lines.append(f"- Relevance-CAM localises better than Grad-CAM at the middle layer: pointing game {d_pg:+.1f}, "
                 f"energy pointing game {d_epg:+.1f} points: "
                 + ("confirmed" if d_pg > 0 and d_epg > 0 else "not confirmed"))
    return lines


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_note(load_at_start: float | None = None) -> str:
    import onnxruntime

    now = load_average()
    load = "" if now is None else f", load average {now:.1f} at the end" + (
        "" if load_at_start is None else f" ({load_at_start:.1f} at the start)")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores{load}; "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, CPU provider")


def report(tables: list[ResearchTable], settings: Settings, command: str, seconds: float,
           load_at_start: float | None = None) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Research methods on the shapes benchmark",
        "",
        "Generated by `benchmarks/research.py`; do not edit by hand (rerun it). Method notes:",
        "[research_methods.md](research_methods.md) and the README's Relevance-CAM section.",
        "",
        f"- command: `{command}`",
        f"- date: {date}; total run time {seconds / 60:.1f} min",
        f"- machine: {machine_note(load_at_start)}. Timings are rough on a shared machine: the forward is the "
        "best of 5 runs, each method's time one run per batch, so under load the `x forward` ratios err high.",
        f"- data: {settings.images} test images of the shapes benchmark (seed {TEST_SEED}, the held-out set of "
        f"shapes_resnet; one object per image, target = its label); BroadCAM fitted on the first 50 / 200 of "
        f"{settings.train_images} training images (seed {TRAIN_SEED}, ridge 50).",
        f"- metrics: `onnxcam.jobs.evaluate` (AD/AI/AG with pixel-space masking towards black and softmax "
        f"probabilities; deletion/insertion AUC with {settings.steps} steps; ROAD with noisy linear imputation "
        f"at 10/30/50/70/90 % on the first {settings.road_images} items; pointing game at 0 px; energy pointing "
        f"game in the object's box). `ms / image`: the explanation alone, batches of {settings.batch_size}; "
        "`x forward`: that over a plain forward of the same batch.",
        f"- opticam: {settings.opticam_iterations} Adam iterations (lr 0.1, early stop)"
        + (", the official demo's setting" if settings.opticam_iterations == 50 else ", fewer than the official 50")
        + (f"; scorecam and conceptor-scorecam on the first {settings.scorecam_images} items only (their row "
           "says n=...), comparable with each other, not with the other rows" if settings.scorecam else "")
        + ". Bold: the best value among the rows computed on every item.",
        "",
    ]
    for table in tables:
        parts += [f"## {table.title}", "", f"Model `{table.model}`, layer `{table.layer}`; plain forward "
                  f"{table.forward_ms:.2f} ms per image.", ""]
        if table.key == "attention":
            parts += ["`attention` is class-agnostic: the model gives one map per image, whatever the target; "
                      "so it is compared at the last layer only.", ""]
        if table.key == "broadcam":
            parts += ["gradcam and cam rows: the same numbers as in the last-layer table (they are equal: after "
                      "a global average pool and a linear layer, Grad-CAM's channel weights are CAM's class "
                      "weights divided by h x w, so the normalised maps coincide).", ""]
        parts += [_with_counts(table), ""]
    parts += ["## The papers' claims, checked on these numbers", ""] + claim_checks(tables) + [""]
    return "\n".join(parts)


def _with_counts(table: ResearchTable) -> str:
    """The markdown table, rows on fewer items labelled with their count."""
    most = max(c["average_drop"] for c in table.counts.values())
    renamed = ResearchTable(table.key, table.title, table.model, table.layer, {}, {}, table.notes, table.forward_ms)
    for label, values in table.rows.items():
        n = table.counts[label]["average_drop"]
        new = label if n == most else f"{label} (n={n})"
        renamed.rows[new], renamed.counts[new] = values, table.counts[label]
    text = renamed.markdown()
    road = {c["road_morf"] for c in table.counts.values()}
    return text + f"\n\n{most} items; ROAD on {', '.join(str(r) for r in sorted(road))} items."


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100, help="test images (seed 2)")
    parser.add_argument("--opticam-iterations", type=int, default=50)
    parser.add_argument("--scorecam-images", type=int, default=25, help="0: leave Score-CAM out")
    parser.add_argument("--road-images", type=int, default=50)
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated data (default: temporary)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "research_results.md")
    args = parser.parse_args(argv)
    settings = Settings(images=args.images, opticam_iterations=args.opticam_iterations,
                        scorecam_images=max(1, args.scorecam_images), scorecam=args.scorecam_images > 0,
                        road_images=args.road_images)
    command = "python benchmarks/research.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    started, load = time.perf_counter(), load_average()

    def show(table: ResearchTable) -> None:
        print(f"\n## {table.title} ({time.perf_counter() - started:.0f} s)\n\n{_with_counts(table)}", flush=True)

    if args.data is not None:
        tables = run_research(settings, args.data, show)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tables = run_research(settings, Path(tmp), show)
    text = report(tables, settings, command, time.perf_counter() - started, load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print("\n" + "\n".join(claim_checks(tables)) + f"\n\nwritten: {args.out}")


if __name__ == "__main__":
    main()
