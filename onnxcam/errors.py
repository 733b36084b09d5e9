"""User-facing errors: one line that says what was wrong and what to do."""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Control characters (line breaks, terminal escapes) as \\xNN: text from models and file systems, shown safely."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class OnnxcamError(Exception):
    """Base class; the CLI prints str(error) on one line and exits non-zero.

    Messages quote names from models and file systems (tensor names, paths), which may hold line breaks or terminal
    escapes: control characters are shown as \\xNN, so a message stays one line whatever it quotes."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (escape_controls(args[0]),)
        super().__init__(*args)


class ModelError(OnnxcamError):
    """The model file cannot be read, validated or rewritten."""


class LayerError(OnnxcamError):
    """A requested tensor does not exist or cannot be used as a layer."""


class GradientError(OnnxcamError):
    """The gradient cannot be built: an op on the path has no rule."""


class InputError(OnnxcamError):
    """An input array or target does not fit the model."""
