"""Local engine vs the Ray Data engine: images/s for the same folder, and their ratio.

    python benchmarks/scale.py [--count 400] [--batch-size 16] [--method gradcam] [--workers N] [--address ADDR]

Writes `count` synthetic shapes images to a temporary folder (or takes --folder), explains them with the local
engine (this process, overlapped threads) and with `engine="ray"` (Ray Data actors), and prints images/s of both
and ray / local. Without --address a local Ray cluster is started first (its start-up is not timed; the actors'
start-up, model load included, is). With --address (e.g. `auto` on a cluster node) the same job runs on the
cluster: the folder and --out must then be on a filesystem every node sees (see README, "Scaling out").
Needs `pip install "onnxcam[ray]"`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from onnxcam.datasets.shapes import write_dataset
from onnxcam.jobs.explain import explain_images

ROOT = Path(__file__).resolve().parent.parent


def timed(engine: str, model: Path, folder: Path, out: Path, args: argparse.Namespace) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = explain_images(model, [folder], out, methods=[args.method], batch_size=args.batch_size,
                             device=args.device, engine=engine, workers=args.workers if engine == "ray" else None)
    seconds = time.perf_counter() - start
    assert summary.failed == 0, f"{summary.failed} images failed"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "shapes_resnet.onnx")
    parser.add_argument("--folder", type=Path, help="images to explain (default: --count generated ones)")
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per 2 CPUs)")
    parser.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    args = parser.parse_args()

    import ray

    ray.init(address=args.address, num_cpus=None if args.address else os.cpu_count(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="onnxcam-scale-") as tmp:
        root = args.out or Path(tmp)
        folder = args.folder
        if folder is None:
            write_dataset(Path(tmp) / "data", args.count, seed=2)
            folder = Path(tmp) / "data" / "images"
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        timed("local", args.model, folder, root / "warm", args)  # the rewritten model goes to the cache first
        local = timed("local", args.model, folder, root / "local", args)
        distributed = timed("ray", args.model, folder, root / "ray", args)
    resources, nodes = ray.cluster_resources(), sum(1 for n in ray.nodes() if n.get("Alive"))
    ray.shutdown()
    print(f"{count} images, batch {args.batch_size}, -m {args.method}; Ray cluster: {int(resources.get('CPU', 0))} "
          f"CPUs, {int(resources.get('GPU', 0))} GPUs, {nodes} node(s)")
    print(f"local engine: {count / local:8.1f} images/s")
    print(f"ray engine:   {count / distributed:8.1f} images/s")
    print(f"ratio ray / local: {local / distributed:.2f}")


if __name__ == "__main__":
    main()
