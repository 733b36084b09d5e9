"""The exported model outside Python: onnxruntime-node (Node.js) and onnxruntime-web (WASM in headless Chromium).

Both must give the map that onnxruntime (Python) gives and that onnxcam's NumPy methods give (max |difference|
<= 1e-3). Skipped when node, the npm packages or chromium are missing; to run them:

    apt-get install -y nodejs npm chromium && (cd examples/web && npm install)
    python -m pytest tests/test_export_js.py

ONNXCAM_NODE_MODULES may name another node_modules folder that holds onnxruntime-node and onnxruntime-web.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxcam
from onnxcam.export import CAM, CAM_CLASS, TARGET_INPUT, ExportOptions, export_model
from onnxcam.images import preprocess, read_image

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "examples" / "web"
MODELS = ROOT / "models"
IMAGES = sorted((ROOT / "examples" / "images").glob("*.png"))
NODE_MODULES = Path(os.environ.get("ONNXCAM_NODE_MODULES", WEB / "node_modules"))
NODE = shutil.which("node")
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)

needs_node = pytest.mark.skipif(NODE is None or not (NODE_MODULES / "onnxruntime-node").is_dir(),
                                reason="node or onnxruntime-node missing (apt-get install nodejs npm; "
                                       "cd examples/web && npm install)")
needs_browser = pytest.mark.skipif(CHROMIUM is None or not (NODE_MODULES / "onnxruntime-web").is_dir(),
                                   reason="chromium or onnxruntime-web missing (apt-get install chromium; "
                                          "cd examples/web && npm install)")


def _python_cam(path: Path, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cam, classes = session.run([CAM, CAM_CLASS], feeds)
    return cam, classes


@pytest.fixture(scope="module")
def resnet() -> tuple[onnxcam.Explainer, np.ndarray]:
    ex = onnxcam.Explainer(MODELS / "shapes_resnet.onnx", device="cpu")
    return ex, np.concatenate([preprocess(read_image(p), ex.preprocessing) for p in IMAGES])


@needs_node
@pytest.mark.parametrize("method,target", [("gradcam", "predicted"), ("gradcam++", "input"),
                                           ("eigencam", "predicted")])
def test_onnxruntime_node_gives_the_python_map(tmp_path: Path, resnet, method: str, target: str) -> None:
    ex, x = resnet
    model = export_model(MODELS / "shapes_resnet.onnx", tmp_path / "m.cam.onnx",
                         ExportOptions(method=method, target=target)).path
    x.tofile(tmp_path / "x.bin")
    targets = np.array([0, 1, 2, 3, 4, 5, 6, 99], np.int64)
    args = [NODE, str(WEB / "node_cam.js"), str(model), str(tmp_path / "x.bin"), ",".join(map(str, x.shape)),
            str(tmp_path / "cam.bin")] + ([",".join(map(str, targets))] if target == "input" else [])
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=WEB)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    cam = np.fromfile(tmp_path / "cam.bin", np.float32).reshape(report["cam_shape"])
    feeds = {ex.input_name: x, **({TARGET_INPUT: targets} if target == "input" else {})}
    python_cam, python_classes = _python_cam(model, feeds)
    assert np.abs(cam - python_cam).max() <= 1e-3
    np.testing.assert_array_equal(report["cam_class"], python_classes)
    reference = ex.explain(x[:7], method, targets[:7].tolist() if target == "input" else None)
    assert np.abs(cam[:7] - reference).max() <= 1e-3
    if target == "input":
        assert report["cam_class"][7] == -1 and np.all(cam[7] == 0)


def _page(tmp_path: Path, query: str) -> dict:
    sys.path.insert(0, str(WEB))
    try:
        import serve
        from screenshot import run_page
    finally:
        sys.path.remove(str(WEB))
    server, base = serve.start(0, tmp_path)
    try:
        done = run_page(f"{base}index.html?{query}", tmp_path / "profile", "--dump-dom")
    finally:
        server.shutdown()
    title = re.search(r"<title>(.*?)</title>", done.stdout, re.S)
    assert title is not None and title.group(1) == "done", (title.group(1) if title else done.stderr[-800:])
    found = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert found is not None
    return dict(json.loads(found.group(1)))


@needs_browser
def test_onnxruntime_web_gives_the_python_map(tmp_path: Path, resnet) -> None:
    """The page in headless Chromium, its WASM runtime served from node_modules on 127.0.0.1: the same map for the
    same input tensor, and for the page's own preprocessing of an image."""
    ex, x = resnet
    export_model(MODELS / "shapes_resnet.onnx", tmp_path / "m.cam.onnx", ExportOptions(method="layercam"))
    x.tofile(tmp_path / "x.bin")
    result = _page(tmp_path, f"model=/data/m.cam.onnx&input=/data/x.bin&shape={','.join(map(str, x.shape))}")
    cam = np.asarray(result["cam"], np.float32).reshape(result["cam_shape"])
    python_cam, python_classes = _python_cam(tmp_path / "m.cam.onnx", {ex.input_name: x})
    assert np.abs(cam - python_cam).max() <= 1e-3
    np.testing.assert_array_equal(result["cam_class"], python_classes)
    assert np.abs(cam - ex.explain(x, "layercam")).max() <= 1e-3

    shutil.copy(IMAGES[2], tmp_path / "image.png")  # 96 x 96 like the model: the browser draws it unscaled
    result = _page(tmp_path, "model=/data/m.cam.onnx&image=/data/image.png")
    cam = np.asarray(result["cam"], np.float32).reshape(result["cam_shape"])
    assert np.abs(cam - ex.explain(x[2:3], "layercam")).max() <= 1e-3
