"""What `onnxcam compare` costs over two plain explains, and the agreement table of the README.

    python benchmarks/compare.py [--a A.onnx --b B.onnx | --resnet 18] [--count 200] [--batch-size 8] [--method gradcam]
                                 [--repeat 3]
    python benchmarks/compare.py table [--images examples/images] [--methods gradcam,gradcam++,...]

Speed (the default): writes `count` synthetic shapes images (onnxcam.datasets.shapes) to a temporary folder and
times, as a user runs them (each call makes its own explainers; rewritten models come from onnxcam's cache):
  maps only:  decode + preprocess + Explainer.explain_scored for A, then the same for B (B for A's class)
              vs onnxcam.compare(A, B, images) with no output folder;
  end-to-end: `onnxcam explain` jobs for A and for B (overlays, .npy maps, results.jsonl, report.html)
              vs onnxcam.compare(..., out=DIR) (compare.jsonl, compare.json, report.html);
and prints the ratio of compare's time to the two plain explains' (medians over `repeat` rounds, the variants
interleaved in each round).

table: for each zoo pair (models/quantized.md) and each method, onnxcam.compare on the images, printed as the
README's markdown table (mean / worst Pearson r per method, then Grad-CAM's top-20 % IoU and changed predictions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import onnxcam
import onnxcam.jobs.compare
from onnxcam.datasets.shapes import write_dataset
from onnxcam.explainer import Explainer
from onnxcam.files import collect_inputs
from onnxcam.images import preprocess, read_image
from onnxcam.jobs.explain import explain as explain_job

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
VARIANTS = ("_int8_qdq", "_int8_qop", "_int8_dynamic", "_fp16")
PAIRS = [(f"shapes_{net}", f"shapes_{net}{suffix}") for net in ("resnet", "mobilenet") for suffix in VARIANTS] + \
    [("shapes_resnet", "shapes_resnet_corner")]
TABLE_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam", "scorecam", "ablationcam")


def two_plain_explains(a: Path, b: Path, files: list[Path], method: str, batch_size: int) -> None:
    """What compare does without the comparison: A explains its prediction, B explains A's class."""
    ex_a, ex_b = Explainer(a), Explainer(b)
    for first in range(0, len(files), batch_size):
        rgbs = [read_image(f) for f in files[first:first + batch_size]]
        _, _, chosen = ex_a.explain_scored(np.concatenate([preprocess(r, ex_a.preprocessing) for r in rgbs]), method)
        ex_b.explain_scored(np.concatenate([preprocess(r, ex_b.preprocessing) for r in rgbs]), method, chosen)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process): on a shared machine the CPU time is the steadier
    measure of the work done, the wall time what a user waits."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def resnet_pair(depth: int) -> tuple[Path, Path]:
    """A production-sized pair: a torchvision-architecture ResNet (224 x 224, random weights, built without torch)
    and its dynamic int8 quantisation, both cached in benchmarks/_models/."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gradients import resnet_path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    a, _ = resnet_path(depth, 224)
    b = a.with_name(a.stem + "_int8_dynamic.onnx")
    if not b.is_file() or b.stat().st_mtime < a.stat().st_mtime:
        quantize_dynamic(a, b, weight_type=QuantType.QInt8)
    return a, b


def speed(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="onnxcam-compare-bench-"))
    try:
        folder = write_dataset(work / "shapes", args.count, seed=5) / "images"  # (not its masks/)
        files = [item.path for item in collect_inputs([folder])]
        a, b = resnet_pair(args.resnet) if args.resnet else (Path(args.a), Path(args.b))
        m, bs = args.method, args.batch_size
        variants: dict[str, Callable[[], object]] = {
            "two plain explains (maps only)": lambda: two_plain_explains(a, b, files, m, bs),
            "compare (no output folder)": lambda: onnxcam.compare(a, b, [folder], method=m, batch_size=bs,
                                                                  threshold=-1.0),
            "two explain jobs (end-to-end)": lambda: (explain_job(a, [folder], work / "ea", [m], batch_size=bs),
                                                      explain_job(b, [folder], work / "eb", [m], batch_size=bs)),
            "compare --out (end-to-end)": lambda: onnxcam.compare(a, b, [folder], work / "c", method=m,
                                                                  batch_size=bs, threshold=-1.0, keep_records=False),
        }
        for fn in variants.values():  # warm-up: rewritten models into the cache, code paths loaded
            fn()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.repeat):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(timed(variants[name]))
        wall = {name: statistics.median(t[0] for t in values) for name, values in times.items()}
        cpu = {name: statistics.median(t[1] for t in values) for name, values in times.items()}
        print(f"A {a.name}, B {b.name}, {args.count} images of 96x96, {m}, batch {bs}, {args.repeat} rounds, "
              f"load average {os.getloadavg()[0]:.1f}")
        for name in names:
            print(f"  {name:32s} {wall[name]:7.3f} s wall ({args.count / wall[name]:6.1f} img/s), "
                  f"{cpu[name]:7.3f} s CPU")
        for what, median in (("wall", wall), ("CPU", cpu)):
            maps = median["compare (no output folder)"] / median["two plain explains (maps only)"]
            full = median["compare --out (end-to-end)"] / median["two explain jobs (end-to-end)"]
            print(f"compare / two plain explains ({what} time): maps only {maps:.2f}x, end-to-end {full:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(args: argparse.Namespace) -> None:
    methods = [m for m in args.methods.split(",") if m]
    images = [Path(args.images)]
    header = ["A", "B", *methods, "gradcam IoU top 20 %", "predictions differ", "exit"]
    work = Path(tempfile.mkdtemp(prefix="onnxcam-compare-table-"))
    held_out = work / "held_out" / "images"
    if args.held_out:
        write_dataset(held_out.parent, args.held_out, seed=2)  # the test set's seed (models/quantized.md)
        header += [f"{args.held_out} held-out images: gradcam", "below r 0.5", "predictions differ", "exit"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    try:
        for a_name, b_name in PAIRS:
            a, b = MODELS / f"{a_name}.onnx", MODELS / f"{b_name}.onnx"
            cells, gradcam = [], None
            for method in methods:
                result = onnxcam.compare(a, b, images, method=method)
                cells.append(_pearson_cell(result))
                if method == "gradcam":
                    gradcam = result
            if gradcam is None:
                gradcam = onnxcam.compare(a, b, images)
            iou = gradcam.stats.get("iou_top20")
            cells += ["n/a" if iou is None else f"{iou['mean']:.3f}",
                      f"{gradcam.predictions_differ} of {gradcam.images}", str(gradcam.exit_code)]
            if args.held_out:
                result = onnxcam.compare(a, b, [held_out], keep_records=False)
                cells += [_pearson_cell(result), str(result.below_threshold), str(result.predictions_differ),
                          str(result.exit_code)]
            print(f"| `{a_name}` | `{b_name}` | " + " | ".join(cells) + " |")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pearson_cell(result: onnxcam.jobs.compare.Comparison) -> str:
    pearson = result.stats.get("pearson")
    return "n/a" if pearson is None else f"{pearson['mean']:.3f} / {pearson['worst']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("speed", "table"), default="speed")
    parser.add_argument("--a", default=str(MODELS / "shapes_resnet.onnx"))
    parser.add_argument("--b", default=str(MODELS / "shapes_resnet_int8_qdq.onnx"))
    parser.add_argument("--resnet", type=int, choices=(18, 34, 50), help="speed: a ResNet of this depth at "
                        "224 x 224 vs its dynamic int8 quantisation instead of --a/--b")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", default=str(ROOT / "examples" / "images"))
    parser.add_argument("--methods", default=",".join(TABLE_METHODS))
    parser.add_argument("--held-out", type=int, default=100, help="table: also Grad-CAM on this many held-out "
                        "images (0: none)")
    args = parser.parse_args()
    speed(args) if args.mode == "speed" else table(args)


if __name__ == "__main__":
    main()
