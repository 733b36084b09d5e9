"""BroadCAM next to Grad-CAM and CAM on the shapes benchmark, fitted on 50 and on 200 labelled images.

    python benchmarks/broadcam_shapes.py [--test 200] [--ridge 50]

Writes the data sets to a temporary folder (train seed 21, test seed 22: neither is the model's training or test
seed), fits with `onnxcam.jobs.fit_broadcam`, scores with `onnxcam.jobs.evaluate` (pointing game, energy-based
pointing game,
Average Drop / Increase) and prints one table row per method; `random` (seeded random channel weights) is the
chance row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from onnxcam.datasets.shapes import write_dataset
from onnxcam.explainer import Explainer
from onnxcam.jobs.evaluate import evaluate
from onnxcam.jobs.fit_broadcam import fit_broadcam, read_dataset

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["pointing_game", "energy_pointing_game", "average_drop", "average_increase"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "shapes_resnet.onnx")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--ridge", type=float, default=50.0)
    args = parser.parse_args()
    ex = Explainer(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "train", 200, 21)
        write_dataset(root / "test", args.test, 22)
        files, targets, names = read_dataset(ex, root / "train")
        fits = {}
        for count in (50, 200):
            start = time.perf_counter()
            fit = fit_broadcam(ex, files[:count], targets[:count], penalty=args.ridge, labels=names)
            fits[count] = fit.save(root / f"broadcam{count}.npz")
            print(f"fit on {count} images: {time.perf_counter() - start:.1f} s")
        rows = evaluate(ex.model, root / "test", ["gradcam", "cam", "random"], metrics=METRICS, explainer=ex).results
        for count, path in fits.items():
            result = evaluate(ex.model, root / "test", ["broadcam"], metrics=METRICS, explainer=ex,
                              options={"fit": str(path)})
            rows[f"broadcam ({count} images)"] = result.results["broadcam"]
    print(f"\n{args.test} test images, ridge {args.ridge:g}\n")
    print("| method | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for method, values in rows.items():
        print(f"| {method} | " + " | ".join(f"{values[m]['mean']:.3f}" for m in METRICS) + " |")


if __name__ == "__main__":
    main()
