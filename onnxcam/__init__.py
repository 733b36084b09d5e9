"""onnxcam: class activation maps for ONNX image models, with gradients built from standard ONNX operators.

The public names are imported on first use (PEP 562), so `import onnxcam` and `onnxcam --help` load neither onnx
nor onnxruntime nor OpenCV.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# First: sets OpenCV's pixel limit and log level, which cv2 reads only when imported (see onnxcam/opencv.py).
from onnxcam import opencv as _opencv  # noqa: E402,F401,I001
from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError  # noqa: E402

# public name -> (module, attribute)
_LAZY = {
    "Explainer": ("onnxcam.explainer", "Explainer"),
    "methods": ("onnxcam.methods", "METHODS"),
    "clear_cache": ("onnxcam.runtime", "clear_cache"),
    "GradientResult": ("onnxcam.runners", "GradientResult"),
    "RelevanceResult": ("onnxcam.runners", "RelevanceResult"),
    "ReverseResult": ("onnxcam.runners", "ReverseResult"),
    "ReverseRunner": ("onnxcam.runners", "ReverseRunner"),
    "gradients": ("onnxcam.runners", "gradients"),
    "relevance": ("onnxcam.runners", "relevance"),
    "Images": ("onnxcam.api", "Images"),
    "load_images": ("onnxcam.api", "load_images"),
    "overlay": ("onnxcam.api", "overlay"),
    "save_report": ("onnxcam.api", "save_report"),
}

__all__ = ["GradientError", "InputError", "LayerError", "ModelError", "OnnxcamError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnxcam' has no attribute '{name}'")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
