"""`onnxcam methods`: the table of methods, where to start, and what the cost column's letters mean."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import console

if TYPE_CHECKING:
    from onnxcam.methods import Method

START_HERE = ("Start here: gradcam (one forward + one backward pass, the usual baseline). For a second opinion "
              "that needs no gradients, eigencam (just as fast) or scorecam (slower, no gradients at all); "
              "layercam for finer maps from earlier layers.")
LEGEND = ("Cost per image: K = channels of the explained layer (e.g. 512 for ResNet-50's layer4), h*w = positions "
          "of its grid (7x7 = 49), num_samples / iterations = the method's options (--option NAME=VALUE). "
          "'head runs' run only the part of the model after the layer. gradients 'no': the method also works on "
          "a model with an op onnxcam has no gradient rule for.")
GRADIENT_FIELDS = ("gradients", "gradients_of", "input_gradients_of", "input_gradient")


def gradient_column(method: Method) -> str:
    """What a method needs from the backward pass: 'yes', 'relevance rules' or 'no'."""
    if method.run == "relevance":
        return "relevance rules"
    return "yes" if method.run in ("gradient", "fullgrad") or any(f in method.needs for f in GRADIENT_FIELDS) \
        else "no"


def methods_command() -> None:
    """Table of the available methods, where to start and what the costs mean."""
    from onnxcam.methods import COMPOSERS, METHODS

    table = Table(title="onnxcam methods")
    for column in ("name", "family", "gradients", "cost", "paper"):
        table.add_column(column)
    for m in sorted(METHODS.values(), key=lambda m: (m.family, m.name)):
        table.add_row(Text(m.name), m.family, gradient_column(m), Text(m.cost), Text(m.paper))
    for c in COMPOSERS.values():  # methods on top of any base: one row each (conceptor-<base>)
        table.add_row(Text(c.listing.name), c.listing.family, "as base", Text(c.listing.cost), Text(c.listing.paper))
    console.print(Text(START_HERE, style="bold"))
    console.print(table)
    console.print(Text(LEGEND, style="dim"))
