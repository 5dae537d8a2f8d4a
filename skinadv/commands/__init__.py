"""Command groups merged into the ``skinadv`` CLI, and what they share."""

from __future__ import annotations

import sys
from typing import Annotated

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


# Options shared by `skinadv grid` and `skinadv serve` (one declaration, two commands).
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="Data SPEC (default: $SKINADV_DATA, $SKINADV_HAM10000, else synthetic).",
    ),
]
PresetOpt = Annotated[str, typer.Option(help="Preset name (quick, paper) or YAML path.")]
MethodsOpt = Annotated[str | None, typer.Option(help="Comma list, e.g. fgsm,pgd,mix.")]
FractionsOpt = Annotated[str | None, typer.Option(help="Comma list, e.g. 0.2,0.4.")]
SeedsOpt = Annotated[str | None, typer.Option(help="Comma list of seeds.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=2 (repeatable).")
]
ExperimentOpt = Annotated[str, typer.Option(help="MLflow experiment name.")]
ForceOpt = Annotated[bool, typer.Option(help="Retrain cells even if a finished run exists.")]
