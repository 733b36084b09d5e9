"""Screenshot of index.html explaining a bundled image in headless Chromium: docs/export_browser.png.

    (cd examples/web && npm install) && python examples/web/screenshot.py [--out docs/export_browser.png]

Exports models/shapes_resnet.onnx with Grad-CAM, serves this folder and the files on 127.0.0.1, and lets the page
load the exported model and examples/images/08_ring_triangle.png, run onnxruntime-web (WASM) and draw the overlay.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import serve  # noqa: E402

from onnxcam.export import ExportOptions, export_model  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--hide-scrollbars"]


def chromium() -> str:
    found = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if found is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install -y chromium)")
    return found


def run_page(url: str, profile: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Chromium on `url` until the page's work is done (virtual time lets its promises settle first)."""
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=60000",
                           *args, url], capture_output=True, text=True, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "export_browser.png")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "images" / "08_ring_triangle.png")
    args = parser.parse_args()
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        raise SystemExit("run 'npm install' in examples/web first (onnxruntime-web)")
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        export_model(ROOT / "models" / "shapes_resnet.onnx", data / "model.cam.onnx", ExportOptions("gradcam"))
        shutil.copy(args.image, data / "image.png")
        shutil.copy(ROOT / "models" / "shapes_labels.txt", data / "labels.txt")
        server, base = serve.start(0, data)
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            url = f"{base}index.html?model=/data/model.cam.onnx&image=/data/image.png&labels=/data/labels.txt"
            done = run_page(url, data / "profile", f"--screenshot={args.out.resolve()}", "--window-size=760,520")
        finally:
            server.shutdown()
    if done.returncode != 0 or not args.out.is_file():
        raise SystemExit(f"chromium failed: {done.stderr[-500:]}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
