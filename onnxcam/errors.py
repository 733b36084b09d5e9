"""User-facing errors: one line that says what was wrong and what to do."""


class OnnxcamError(Exception):
    """Base class; the CLI prints str(error) on one line and exits non-zero."""


class ModelError(OnnxcamError):
    """The model file cannot be read, validated or rewritten."""


class LayerError(OnnxcamError):
    """A requested tensor does not exist or cannot be used as a layer."""


class GradientError(OnnxcamError):
    """The gradient cannot be built: an op on the path has no rule."""


class InputError(OnnxcamError):
    """An input array or target does not fit the model."""
