"""onnxcam: class activation maps for ONNX image models, with gradients built from standard ONNX operators.

The public names are imported on first use (PEP 562), so `import onnxcam` and `onnxcam --help` load neither onnx
nor onnxruntime nor OpenCV.
"""

__version__ = "0.1.0"

# First: sets OpenCV's pixel limit and log level, which cv2 reads only when imported (see onnxcam/opencv.py).
from onnxcam import opencv as _opencv  # noqa: E402,F401,I001
from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first use
    from onnxcam.explainer import Explainer
    from onnxcam.jobs.compare import compare
    from onnxcam.methods import METHODS as methods
    from onnxcam.runners import (
        GradientResult,
        RelevanceResult,
        ReverseResult,
        ReverseRunner,
        gradients,
        relevance,
    )
    from onnxcam.runtime import clear_cache

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
    "compare": ("onnxcam.jobs.compare", "compare"),
}

__all__ = [
    "Explainer", "GradientError", "GradientResult", "Images", "InputError", "LayerError", "ModelError",
    "OnnxcamError", "RelevanceResult", "ReverseResult", "ReverseRunner", "__version__", "clear_cache", "compare",
    "gradients", "load_images", "methods", "overlay", "relevance", "save_report",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'onnxcam' has no attribute '{name}'")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
