"""The report screenshots in docs/ and the README, made from real runs so they stay current.

    python docs/make_screenshots.py            # about 30 s on 2 cores; needs chromium (apt-get install -y chromium)

Four runs of `onnxcam explain` with the bundled models (CPU), each report opened in headless Chromium
(tests/chromium.py) and photographed:

| file | run |
|---|---|
| docs/report_demo.jpg | the demo: shapes_resnet on the 8 sample images, Grad-CAM (header, filters, first sections) |
| docs/report_top3.jpg | top-3 classes x 4 methods (gradcam, gradcam++, scorecam, eigencam) on a photo |
| docs/report_segmentation.jpg | shapes_segmenter, the checker region, gradcam and hirescam |
| docs/report_detection.jpg | shapes_detector, every detection scoring >= 0.3, gradcam and eigencam |
| docs/report_dark.jpg | the demo's report with the system in dark mode |

The photo is examples/photos/grace_hopper.jpg; the shapes classifier was never trained on photos, so its classes
there are guesses: the screenshot shows the report's layout, not a meaningful explanation.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

DOCS = ROOT / "docs"
IMAGES = Path("examples") / "images"      # relative to ROOT, the current folder while the runs go
MODELS = Path("models")
WIDTH = 1200


def runs(folder: Path) -> dict[str, Path]:
    """The runs, each in its own output folder; returns name -> report.html."""
    from onnxcam.jobs.explain import explain

    made = {}
    specs = {
        "demo": (MODELS / "shapes_resnet.onnx", [IMAGES], {"methods": ["gradcam"]}),
        "top3": (MODELS / "shapes_resnet.onnx", [Path("examples") / "photos" / "grace_hopper.jpg"],
                 {"methods": ["gradcam", "gradcam++", "scorecam", "eigencam"], "top_k": 3}),
        "segmentation": (MODELS / "shapes_segmenter.onnx", [IMAGES / "07_triangle_checker.png",
                                                            IMAGES / "08_ring_triangle.png"],
                         {"methods": ["gradcam", "hirescam"], "target": "checker"}),
        "detection": (MODELS / "shapes_detector.onnx", [IMAGES / "08_ring_triangle.png"],
                      {"methods": ["gradcam", "eigencam"], "threshold": 0.3}),
    }
    for name, (model, inputs, options) in specs.items():
        out = folder / name
        explain(model, inputs, out, device="cpu", **options)
        made[name] = out / "report.html"
    return made


def photograph(report: Path, target: Path, clip_to: str | None, dark: bool = False, height: int = 1000) -> None:
    """A screenshot of the report: the top of the page (`clip_to` None) or the box around the elements that
    `clip_to` (a CSS selector) matches, with a margin."""
    from chromium import Chromium

    with Chromium(width=WIDTH, height=height, dark=dark) as browser:
        browser.open(report)
        browser.wait_for("window.reportReady")
        browser.evaluate("document.querySelectorAll('section.img img').forEach(i => i.loading = 'eager')")
        browser.wait_for("[...document.querySelectorAll('section.img img')].every(i => i.complete && "
                         "i.naturalWidth > 0)")
        if clip_to is None:
            clip = {"x": 0, "y": 0, "width": WIDTH, "height": height}
        else:
            box = browser.evaluate(f"""(() => {{ const r = [...document.querySelectorAll({clip_to!r})]
                .map(e => e.getBoundingClientRect()); const top = Math.min(...r.map(b => b.top)) - 12;
                return {{x: 0, y: top + window.scrollY, width: Math.max(...r.map(b => b.right)) + 12,
                         height: Math.max(...r.map(b => b.bottom)) - top + 12}}; }})()""")
            clip = {k: float(v) for k, v in box.items()}
        browser.screenshot(target, clip=clip)
    print(f"wrote {target.relative_to(ROOT)} ({target.stat().st_size // 1024} KB)")


def main() -> int:
    from chromium import CHROMIUM

    if CHROMIUM is None:
        print("chromium is not installed (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # the reports show the model and image paths as given: relative, not this machine's
    with tempfile.TemporaryDirectory() as folder:
        reports = runs(Path(folder))
        photograph(reports["demo"], DOCS / "report_demo.jpg", None, height=900)
        photograph(reports["demo"], DOCS / "report_dark.jpg", None, dark=True, height=640)
        photograph(reports["top3"], DOCS / "report_top3.jpg", "section.img")
        photograph(reports["segmentation"], DOCS / "report_segmentation.jpg", "section.img")
        photograph(reports["detection"], DOCS / "report_detection.jpg", "section.img")
    return 0


if __name__ == "__main__":
    sys.exit(main())
