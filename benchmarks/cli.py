"""End-to-end `onnxcam explain` speed vs the bare onnxruntime forward of the same batches.

    python benchmarks/cli.py [--model M]... [--count 200] [--batch-size 8] [--method gradcam] [--repeat 3]

Writes `count` synthetic shapes images (onnxcam.datasets.shapes) to a temporary folder, then times
  bare:        decode + preprocess + session.run of the original model (scores only), batch by batch;
  maps only:   decode + preprocess + Explainer.explain_scored (no files), to show where the time goes;
  end-to-end:  explain_images(...) with the method: the gradient run, the map, the overlay PNG and .npy per image,
               results.jsonl and report.html, with an Explainer whose sessions already exist (as the bare run's
               session does before its clock starts; the one-time start-up is printed on its own line);
and prints images/s and the ratio to bare (target >= 0.8): medians over `repeat` rounds, each round
running the three one after the other. By default it measures two models: a production-sized ResNet-18
(224 x 224, random weights, built without torch by models/build_resnet.py into benchmarks/_models/) and the tiny
demo model, whose 1 ms forward makes the output files the cost; --model (repeatable) takes any others.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxcam.datasets.shapes import write_dataset
from onnxcam.explainer import Explainer
from onnxcam.files import collect_inputs as collect_images
from onnxcam.images import preprocess, read_image, resolve_preprocessing
from onnxcam.jobs.explain import explain_images
from onnxcam.runtime import choose_providers, make_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradients import resnet_path  # noqa: E402  (the same torch-free ResNet builder and cache)

ROOT = Path(__file__).resolve().parent.parent


def bare_forward(model: Path, folder: Path, batch_size: int, device: str) -> float:
    """Seconds for decode + preprocess + session.run over the folder, batch by batch (no outputs written)."""
    ex = Explainer(model, device=device)
    spec = resolve_preprocessing(ex.model, ex.input_name, ex.input_layout)
    session = make_session(model, choose_providers(device))
    files = [job.path for job in collect_images([folder])]
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        x = np.concatenate([preprocess(read_image(f), spec) for f in files[i:i + batch_size]])
        session.run([ex.output], {ex.input_name: x})
    return time.perf_counter() - start


def maps_only(model: Path, folder: Path, method: str, batch_size: int, device: str) -> float:
    """Seconds for decode + preprocess + the method's maps (no files): where the time goes without the writes."""
    ex = Explainer(model, device=device)
    spec = resolve_preprocessing(ex.model, ex.input_name, ex.input_layout)
    files = [job.path for job in collect_images([folder])]
    ex.explain(np.concatenate([preprocess(read_image(files[0]), spec)]), method)  # sessions made before timing
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        x = np.concatenate([preprocess(read_image(f), spec) for f in files[i:i + batch_size]])
        ex.explain_scored(x, method)
    return time.perf_counter() - start


def end_to_end(ex: Explainer, folder: Path, out: Path, method: str, batch_size: int) -> float:
    """Seconds for explain_images over the folder with an explainer whose sessions exist (as bare_forward's
    session does before its clock starts): the steady-state throughput, not the one-time start-up."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = explain_images(ex.model, [folder], out, methods=[method], batch_size=batch_size, explainer=ex)
    seconds = time.perf_counter() - start
    assert summary.failed == 0 and summary.done == len(list(folder.glob("*.png")))
    return seconds


def measure(model: Path, images: Path, root: Path, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    ex = Explainer(model, device=args.device)
    end_to_end(ex, images, root / "warm", args.method, args.batch_size)  # rewrite cached, sessions made
    startup = time.perf_counter() - start
    rounds = []
    for _ in range(args.repeat):  # the three runs side by side in each round, so load changes hit all alike
        rounds.append((bare_forward(model, images, args.batch_size, args.device),
                       maps_only(model, images, args.method, args.batch_size, args.device),
                       end_to_end(ex, images, root / "out", args.method, args.batch_size)))
    bare, maps, full = (float(np.median([r[i] for r in rounds])) for i in range(3))
    ratio = float(np.median([r[0] / r[2] for r in rounds]))
    providers = choose_providers(args.device)[0]
    print(f"\n{model.name}: {args.count} images of 96x96, batch {args.batch_size}, {providers}, "
          f"median of {args.repeat} rounds")
    print(f"bare forward (decode + preprocess + run): {args.count / bare:8.1f} images/s")
    print(f"decode + preprocess + {args.method} maps, no files: {args.count / maps:8.1f} images/s "
          f"({float(np.median([r[0] / r[1] for r in rounds])):.2f} of bare)")
    print(f"onnxcam explain -m {args.method} (all outputs): {args.count / full:8.1f} images/s")
    print(f"one-time start-up (load, rewrite, sessions) and a first pass, not in the rates: {startup:.1f} s")
    print(f"ratio end-to-end / bare forward: {ratio:.2f} (target >= 0.8; per round: "
          f"{', '.join(f'{r[0] / r[2]:.2f}' for r in rounds)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append",
                        help="repeatable (default: a random-weight ResNet-18 at 224 x 224, built without torch by "
                             "models/build_resnet.py, then the demo model models/shapes_resnet.onnx)")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    models = args.model or [resnet_path(18, 224)[0], ROOT / "models" / "shapes_resnet.onnx"]
    with tempfile.TemporaryDirectory(prefix="onnxcam-bench-") as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.count, seed=2)
        for model in models:
            measure(model, root / "data" / "images", root, args)


if __name__ == "__main__":
    main()
