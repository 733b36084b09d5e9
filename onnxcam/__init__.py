"""onnxcam: class activation maps for ONNX image models, with gradients built from standard ONNX operators."""

__version__ = "0.1.0"

# First: sets OpenCV's pixel limit and log level, which cv2 reads only when imported (see onnxcam/opencv.py).
from onnxcam import opencv as _opencv  # noqa: E402,F401,I001
from onnxcam.api import Images, load_images, overlay, save_report  # noqa: E402
from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError  # noqa: E402
from onnxcam.explainer import Explainer  # noqa: E402
from onnxcam.methods import METHODS as methods  # noqa: E402
from onnxcam.runners import (  # noqa: E402
    GradientResult,
    RelevanceResult,
    ReverseResult,
    ReverseRunner,
    gradients,
    relevance,
)

__all__ = [
    "Explainer", "GradientError", "GradientResult", "Images", "InputError", "LayerError", "ModelError",
    "OnnxcamError", "RelevanceResult", "ReverseResult", "ReverseRunner", "__version__", "gradients", "load_images",
    "methods", "overlay", "relevance", "save_report",
]
