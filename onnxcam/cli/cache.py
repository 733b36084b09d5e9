"""`onnxcam cache list|clean`: the cache of rewritten models (one folder per model, its weights stored once)."""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from onnxcam.cli.common import console, fail
from onnxcam.errors import InputError

cache_app = typer.Typer(help="The cache of rewritten models (ONNXCAM_CACHE_DIR, capped by ONNXCAM_CACHE_SIZE).",
                        no_args_is_help=True)


@cache_app.command("list")
def list_entries() -> None:
    """Each cached model: its source file, size, rewritten variants, last use, and whether it is stale."""
    from onnxcam.cache import cache_dir, cache_entries, cache_limit

    entries = cache_entries()
    table = Table(title=f"onnxcam cache: {cache_dir()}")
    for column in ("source", "size", "variants", "last used", "stale"):
        table.add_column(column, justify="right" if column in ("size", "variants") else "left")
    for entry in entries:
        table.add_row(Text(entry.source or "(in-memory model)"), _size(entry.size), str(entry.variants),
                      _ago(entry.last_used), "yes" if entry.stale else "")
    console.print(table)
    console.print(f"{len(entries)} entries, {_size(sum(e.size for e in entries))} of at most {_size(cache_limit())}",
                  markup=False, highlight=False)


@cache_app.command("clean")
def clean(
    older_than: Annotated[str | None, typer.Option(help="Only entries unused for this long, e.g. 30d, 12h, 45m "
                                                   "(default: every entry).")] = None,
    debug: Annotated[bool, typer.Option(help="Show full tracebacks.")] = False,
) -> None:
    """Remove cached models (running processes keep the files they opened)."""
    from onnxcam.cache import clean_cache

    try:
        removed = clean_cache(_duration(older_than) if older_than else None)
    except (InputError, OSError) as e:
        fail(e, debug)
    console.print(f"removed {len(removed)} entries, {_size(sum(e.size for e in removed))}", markup=False,
                  highlight=False)


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise InputError(f"--older-than takes a number with s, m, h, d or w, e.g. 30d; got '{text}'")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _ago(stamp: float) -> str:
    seconds = max(0.0, time.time() - stamp)
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit} ago"
    return "just now"
