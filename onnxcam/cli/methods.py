"""`onnxcam methods`: the table of methods."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import console


def methods_command() -> None:
    """Table of the available methods."""
    from onnxcam.methods import METHODS

    table = Table(title="onnxcam methods")
    for column in ("name", "family", "gradients", "cost", "paper"):
        table.add_column(column)
    for m in sorted(METHODS.values(), key=lambda m: (m.family, m.name)):
        needs_grad = m.needs != "activations" or m.family == "gradient"
        column = "relevance rules" if m.needs == "relevance" else "yes" if needs_grad else "no"
        table.add_row(Text(m.name), m.family, column, Text(m.cost), Text(m.paper))
    from onnxcam.methods import COMPOSERS  # methods on top of any base: one row each (conceptor-<base>)

    for c in COMPOSERS.values():
        table.add_row(Text(c.listing.name), c.listing.family, "as base", Text(c.listing.cost), Text(c.listing.paper))
    console.print(table)
