"""report.html in a real browser: headless Chromium renders the gallery, names are shown as text, no script runs.

Needs the `chromium` binary (Debian: `apt-get install -y chromium chromium-driver`; .ci/run installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.jobs.explain import explain_images

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shapes_resnet.onnx"
IMAGES = ROOT / "examples" / "images"
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
# A file name that would run code if the report pasted it into the page unescaped (no '/', so it can be a file).
EVIL = "evil<script>document.title='pwned'<img src=x onerror=\"document.title='pwned'\">&amp;'q.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(Debian: apt-get install -y chromium chromium-driver)")


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--window-size=1280,900"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


class _Page(HTMLParser):
    """What the rendered DOM holds: tags counted by name, the title and the card names' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[dict[str, str | None]] = []
        self.names: list[str] = []
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "title" or (tag == "div" and ("class", "name") in attrs):
            self._in = tag
            if tag == "div":
                self.names.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "div":
            self.names[-1] += data


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(IMAGES, folder, ignore=shutil.ignore_patterns("*.json", "*.csv", "*.txt"))
    evil = folder / EVIL
    shutil.copy(folder / "01_circle.png", evil)
    (folder / "broken.png").write_bytes(b"not a png")
    count = len(list(folder.glob("*.png")))
    out = tmp_path / "out"
    summary = explain_images(MODEL, [folder], out, device="cpu")
    assert (summary.done, summary.failed) == (count - 1, 1)

    url = (out / "report.html").resolve().as_uri()
    dumped = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    page = _Page()
    page.feed(dumped.stdout)
    assert page.tags.get("img") == count - 1  # one thumbnail per explained image, none for the broken one
    assert all((img.get("src") or "").startswith("data:image/jpeg;base64,") for img in page.images)
    assert "script" not in page.tags  # the name's <script> is text, not an element
    assert page.title.startswith("onnxcam") and "pwned" not in page.title  # no injected handler ran
    assert str(evil) in page.names  # shown verbatim, as text
    assert sum(name.endswith("broken.png") for name in page.names) == 1

    shot = tmp_path / "report.png"
    taken = _chromium(tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (900, 1280)
    assert np.unique(picture.reshape(-1, 3), axis=0).shape[0] > 100  # thumbnails were drawn, not a blank page
