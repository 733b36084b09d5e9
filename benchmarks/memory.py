"""Peak memory of a long `onnxcam explain` run: does resident memory stay flat as the folder grows?

Explains folders of 500 and 5,000 generated benchmark images (96 x 96, models/shapes_resnet.onnx, gradcam) in a
fresh process each, samples its resident set size (VmRSS) every 0.1 s, and prints the peak, the RSS after 10 % and
90 % of the run, and the ratio of the two peaks. Flat memory means a ratio near 1: what a run keeps per image
(records for the report, at most REPORT_LIMIT thumbnails) must stay small next to the model and the batches.

    python benchmarks/memory.py [--counts 500,5000] [--batch-size 16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxcam.datasets.shapes import write_dataset  # noqa: E402

CHILD = """
import sys
from onnxcam.jobs.explain import explain_images
summary = explain_images(sys.argv[1], [sys.argv[2]], sys.argv[3], methods=["gradcam"], batch_size=int(sys.argv[4]),
                         device="cpu")
print(summary.done, summary.failed, round(summary.seconds, 2))
"""


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(images: Path, out: Path, batch_size: int) -> dict[str, float]:
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "models" / "shapes_resnet.onnx"),
                                str(images), str(out), str(batch_size)], stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    while process.poll() is None:
        value = rss_mib(process.pid)
        if value is not None:
            samples.append((time.perf_counter() - start, value))
        time.sleep(0.1)
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0 or not samples:
        raise SystemExit(f"the explain run failed (exit {process.returncode}): {output}")
    done, failed, seconds = output.split()
    total = samples[-1][0]

    def at(share: float) -> float:
        return next(v for t, v in samples if t >= share * total)

    return {"images": int(done), "failed": int(failed), "seconds": float(seconds), "peak": max(v for _, v in samples),
            "at10": at(0.1), "at90": at(0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="500,5000")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="write data and outputs here instead of a temporary folder")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        data = write_dataset(work / "data", max(counts), seed=11) / "images"
        files = sorted(data.glob("*.png"))
        rows = []
        for count in counts:
            folder = work / f"in_{count}"
            folder.mkdir(parents=True, exist_ok=True)
            for f in files[:count]:
                link = folder / f.name
                if not link.exists():
                    link.symlink_to(f)
            rows.append(measure(folder, work / f"out_{count}", args.batch_size))
    print(f"{'images':>7} {'seconds':>8} {'img/s':>7} {'RSS@10% MiB':>12} {'RSS@90% MiB':>12} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['images']:>7} {r['seconds']:>8.1f} {r['images'] / r['seconds']:>7.1f} {r['at10']:>12.1f} "
              f"{r['at90']:>12.1f} {r['peak']:>9.1f}")
    if len(rows) > 1:
        print(f"peak ratio {rows[-1]['images']} / {rows[0]['images']} images: {rows[-1]['peak'] / rows[0]['peak']:.3f}")


if __name__ == "__main__":
    main()
