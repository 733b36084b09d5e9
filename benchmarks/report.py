"""report.html at scale: how long a 20,000-image report takes to write, to open and to answer in headless Chromium.

    python benchmarks/report.py                       # 20,000 images x 2 methods, 3 rounds
    python benchmarks/report.py --images 100000 --methods 1 --repeat 1

The run is real where it matters for the page: the bundled demo model explains the 8 sample images once (overlays,
previews, results.jsonl), then results.jsonl is grown to N images by repeating those records under new names (the
records keep pointing at the 8 real overlay files, so the browser has real pictures to load). The report is written
by the job's own `write_report`, then opened in headless Chromium over the DevTools protocol (tests/chromium.py):

| measure | what |
|---|---|
| write | `write_report`: results.jsonl read back, grouped, rendered (seconds) |
| size | report.html in MB |
| load | navigation to the load event (seconds) |
| ready | navigation start to the first page of sections drawn (`window.reportReady`) |
| filter | typing a word that matches 1 image in 40, until the next frame is drawn |
| next page | the "next" button, until the next frame is drawn |
| method toggle | one method's check box off, until the next frame is drawn |

Medians over --repeat rounds (a fresh tab each); the exit status is 1 when ready or any interaction is above its
target (ready <= 3 s, interactions <= 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

TARGETS = {"ready": 3.0, "filter": 0.5, "next page": 0.5, "method toggle": 0.5}
# Resolves after the next frame is drawn (rAF, then a task: the frame has been committed by then).
NEXT_FRAME = "new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"


def synthetic_run(out: Path, images: int = 20_000, methods: int = 2) -> Path:
    """A run folder with `images` images in results.jsonl (see the module docstring); returns report.html."""
    from onnxcam.jobs.explain import explain, write_report
    from onnxcam.jobs.records import Summary, dumps

    chosen = ["gradcam", "eigencam", "gradcam++", "layercam"][:methods]
    base = explain(ROOT / "models" / "shapes_resnet.onnx", [ROOT / "examples" / "images"], out, methods=chosen,
                   device="cpu")
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    per_image = len(chosen)
    groups = [lines[k:k + per_image] for k in range(0, len(lines), per_image)]
    summary = Summary(out=out, total=images, seconds=base.seconds, method_seconds=dict(base.method_seconds))
    with open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for i in range(images):
            group = groups[i % len(groups)]
            folder = f"batch{i // 1000:03d}"
            for rec in group:
                copy = {**rec, "image": f"/data/{folder}/{i:06d}_{rec['name']}", "name": rec["name"]}
                handle.write(dumps(copy) + "\n")
            summary.done += 1
    # 1 image in 40 is a "needle" the filter benchmark searches for
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text.replace("0_01_circle", "0_needle_circle"))
    start = time.perf_counter()
    write_report(summary)
    summary.seconds = time.perf_counter() - start
    (out / "write_seconds.txt").write_text(f"{summary.seconds}\n")
    return out / "report.html"


def measure(report: Path, browser: object) -> dict[str, float]:
    """One round in a fresh tab: load, ready, filter, next page, method toggle (seconds)."""
    b = browser  # tests/chromium.Chromium
    load = b.open(report)  # type: ignore[attr-defined]
    ready = b.wait_for("window.reportReady") / 1000  # type: ignore[attr-defined]
    sections = b.evaluate("document.querySelectorAll('section.img').length")  # type: ignore[attr-defined]

    def timed(action: str) -> float:
        script = f"(async () => {{ const t = performance.now(); {action}; await {NEXT_FRAME}; " \
                 "return performance.now() - t; })()"
        return b.evaluate(script, await_promise=True) / 1000  # type: ignore[attr-defined]

    filtered = timed("const f = document.getElementById('filter'); f.value = 'needle'; "
                     "f.dispatchEvent(new Event('input'))")
    matches = b.evaluate("document.getElementById('count').textContent")  # type: ignore[attr-defined]
    timed("const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'))")
    paged = timed("[...document.querySelectorAll('#pager-top button')].find(x => x.textContent.startsWith('next'))"
                  ".click()")
    toggled = timed("document.querySelector('#methods input').click()")
    return {"load": load, "ready": ready, "filter": filtered, "next page": paged, "method toggle": toggled,
            "sections": sections, "matches": matches}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--methods", type=int, default=2, choices=(1, 2, 3, 4))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from chromium import CHROMIUM, Chromium

    if CHROMIUM is None:
        print("chromium is not installed (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        report = synthetic_run(out, args.images, args.methods)
        write = float((out / "write_seconds.txt").read_text())
        size = report.stat().st_size / 1e6
        rounds = []
        for _ in range(args.repeat):
            with Chromium() as browser:
                rounds.append(measure(report, browser))
    first = rounds[0]
    print(f"report of {args.images} images x {args.methods} method(s): {size:.1f} MB, written in {write:.2f} s; "
          f"{first['sections']} sections on the first page; filter 'needle': {first['matches']}")
    print("\n| measure | median (s) | spread (s) | target |\n|---|---|---|---|")
    failed = False
    for key in ("load", "ready", "filter", "next page", "method toggle"):
        values = [r[key] for r in rounds]
        median = statistics.median(values)
        target = TARGETS.get(key)
        failed |= target is not None and median > target
        print(f"| {key} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | "
              f"{'' if target is None else f'<= {target}'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
