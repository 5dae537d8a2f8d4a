"""Command groups merged into the ``skinadv`` CLI, and what they share."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

# Piped output (CI logs, `| tee`) gets wide tables instead of rich's 80-column default,
# which would cut service addresses and cell names.
_WIDTH = None if sys.stderr.isatty() else 160
console = Console(stderr=True, width=_WIDTH)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear ``error:`` line (no traceback); return the Exit for ``raise``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
