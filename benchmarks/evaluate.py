"""The README's benchmark table: every registered method scored by `onnxcam evaluate` on the shapes test set.

    python benchmarks/evaluate.py                       # 200 test images (seed 2), about 10 min on 2 cores
    python benchmarks/evaluate.py --count 32 --out /tmp/quick

Steps: write the single-label shapes test set (`python -m onnxcam.datasets --count N --seed 2`: the seed that
models/shapes_resnet.onnx was tested on; training used seed 1), fit BroadCAM's weights on a separate training
set (seed 1), then run `onnxcam evaluate` with every method in `onnxcam methods`. Slow methods run on fewer
images and ROAD (a sparse solve per image, percentage and order) on the first ROAD_ITEMS items; the table says
on how many items each number stands. Prints a markdown table (also written to OUT/benchmark.md) and leaves
evaluation.json / evaluation.csv / curves.png in OUT/eval.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
# per-method item caps: their explanations cost K or num_samples x K forward passes per image
SLOW = {"scorecam": 50, "opticam": 50, "sscam": 16, "iscam": 16}
ROAD_ITEMS = 50
BROADCAM_TRAIN = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_evaluate")
    parser.add_argument("--count", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from onnxcam.datasets.shapes import write_dataset
    from onnxcam.jobs.evaluate import JSON_NAME, METRICS
    from onnxcam.methods import METHODS

    out: Path = args.out
    test_dir, train_dir, eval_dir = out / "shapes_test", out / "shapes_train", out / "eval"
    started = time.perf_counter()
    if not (test_dir / "labels.csv").is_file() or len(list((test_dir / "images").glob("*.png"))) != args.count:
        write_dataset(test_dir, args.count, seed=2)
    methods = args.methods.split(",") if args.methods else sorted(METHODS)
    options: list[str] = []
    if "broadcam" in methods:
        fit = out / "broadcam.npz"
        if not fit.is_file():
            if not (train_dir / "labels.csv").is_file():
                write_dataset(train_dir, BROADCAM_TRAIN, seed=1)
            _cli(["fit", "broadcam", str(MODEL), str(train_dir), "--out", str(fit)], ok=(0,))
        options = ["--option", f"fit={fit}"]
    limits = [f"{m}={n}" for m, n in SLOW.items() if m in methods and n < args.count]
    command = ["evaluate", str(MODEL), str(test_dir / "images"), "--methods", ",".join(methods), "--out",
               str(eval_dir), "--metric-limit", f"road={min(ROAD_ITEMS, args.count)}", "--device", "cpu", *options]
    if limits:
        command += ["--method-limit", ",".join(limits)]
    print("onnxcam " + " ".join(command), flush=True)
    _cli(command, ok=(0, 1))
    report = json.loads((eval_dir / JSON_NAME).read_text())
    table = markdown(report, METRICS)
    seconds = time.perf_counter() - started
    text = f"{table}\n\nWhole run: {seconds / 60:.1f} min.\n"
    (out / "benchmark.md").write_text(text)
    print(text)


def _cli(command: list[str], ok: tuple[int, ...]) -> None:
    """Run `python -m onnxcam COMMAND...` in a child process (its progress bar shows live)."""
    code = subprocess.run([sys.executable, "-m", "onnxcam", *command], cwd=ROOT).returncode
    if code not in ok:
        raise SystemExit(f"'onnxcam {' '.join(command)}' failed with exit code {code}")


def markdown(report: dict, metrics: dict[str, tuple[bool, str]]) -> str:
    """Methods x metrics with arrows, the best value per column in bold, and the item count where it differs."""
    keys = report["metrics"]
    results = report["results"]
    best = {}
    for k in keys:
        means = [per[k]["mean"] for per in results.values() if per[k]["mean"] is not None]
        if means:
            best[k] = max(means) if metrics[k][0] else min(means)
    full = {k: max(per[k]["n"] for per in results.values()) for k in keys}
    head = "| method | " + " | ".join(f"{metrics[k][1]} {'↑' if metrics[k][0] else '↓'}" for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for method, per in results.items():
        cells = []
        for k in keys:
            mean, n = per[k]["mean"], per[k]["n"]
            if mean is None:
                cells.append("–")
                continue
            text = f"{mean * 1000:.1f} ms" if k == "seconds_per_image" else f"{mean:.3f}" if k in (
                "deletion", "insertion", "road_morf", "road_lerf") else f"{mean:.1f}"
            if mean == best.get(k):
                text = f"**{text}**"
            if n != full[k]:
                text += f" ({n})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method, error in report.get("errors", {}).items():
        lines.append(f"| {method} | not run: {error.replace('|', '/')} |" + " |" * (len(keys) - 1))
    counts = ", ".join(f"{metrics[k][1]} {full[k]}" for k in keys if full[k] != report["items"])
    accuracy = report.get("accuracy")
    notes = [f"{report['items']} items" + (f"; fewer where marked (n), and for {counts}" if counts else ""),
             f"top-1 accuracy of the model on them: {100 * accuracy:.1f} %" if accuracy is not None else ""]
    return "\n".join(lines) + "\n\n" + "; ".join(n for n in notes if n) + "."


if __name__ == "__main__":
    main()
