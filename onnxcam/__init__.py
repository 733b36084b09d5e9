"""onnxcam: class activation maps for ONNX image models, with gradients built from standard ONNX operators."""

__version__ = "0.1.0"

from onnxcam.errors import GradientError, InputError, LayerError, ModelError, OnnxcamError  # noqa: E402
from onnxcam.explainer import Explainer  # noqa: E402
from onnxcam.gradients import GradientResult, GradientRunner, gradients  # noqa: E402
from onnxcam.methods import METHODS as methods  # noqa: E402
from onnxcam.relevance import RelevanceResult, RelevanceRunner, relevance  # noqa: E402
from onnxcam.runtime import clear_cache  # noqa: E402

__all__ = [
    "Explainer", "GradientError", "GradientResult", "GradientRunner", "InputError", "LayerError", "ModelError",
    "OnnxcamError", "RelevanceResult", "RelevanceRunner", "__version__", "clear_cache", "gradients", "methods",
    "relevance",
]
