"""Command groups merged into the ``skinadv`` CLI, and what they share: the two consoles,
error handling and every option more than one command takes (declared once, here)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape


def _width(stream: Any) -> int | None:
    # Piped output (CI logs, `| tee`) gets wide tables instead of rich's 80-column default,
    # which would cut service addresses, cell names and paths.
    return None if stream.isatty() else 160


#: Messages, progress and errors (stderr), so stdout stays clean for piping.
console = Console(stderr=True, width=_width(sys.stderr))
#: Results (tables) on stdout; ``--json`` output goes through ``print_json``.
stdout_console = Console(width=_width(sys.stdout), highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear ``error:`` line (no traceback, every URL in it without credentials);
    return the Exit for ``raise``."""
    from skinadv.stack.redact import redact_text

    message = redact_text(message)
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def has_mlflow(run_dir: Any) -> bool:
    """Whether there is an MLflow to read: one named by the environment, or the run folder's
    own database (``skinadv grid`` / ``up`` left it; commands that read it start a server)."""
    import os
    from pathlib import Path

    return bool(
        os.environ.get("MLFLOW_TRACKING_URI")
        or os.environ.get("SKINADV_MLFLOW_BACKEND_URI")
        or (Path(run_dir) / "mlflow.db").is_file()
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (data, config, arguments) -> ``error: ...``, exit 2; IO or numeric
    failures -> exit 1. Never a traceback for what the user can fix."""
    from skinadv.config import describe_error

    try:
        yield
    except typer.Exit:
        raise
    except ValueError as exc:  # DataError and pydantic's ValidationError are ValueErrors
        raise fail(describe_error(exc), 2) from None
    except (OSError, FloatingPointError) as exc:
        raise fail(describe_error(exc), 1) from None


def print_json(payload: Any) -> None:
    """Machine-readable output: JSON alone on stdout."""
    typer.echo(json.dumps(payload, indent=2, default=str))


DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        "-d",
        help="Data SPEC: HAM10000 folder, hmnist CSV, dermamnist.npz, canonical .npz, "
        "s3://bucket/key or synthetic[:N[:SEED]]. grid and serve fall back to "
        "$SKINADV_HAM10000, else synthetic.",
        envvar="SKINADV_DATA",
    ),
]
PresetOpt = Annotated[str, typer.Option(help="Preset name (quick, rigorous, paper) or YAML path.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=2 (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
MethodsOpt = Annotated[str | None, typer.Option(help="Comma list, e.g. fgsm,pgd,mix.")]
FractionsOpt = Annotated[str | None, typer.Option(help="Comma list, e.g. 0.2,0.4.")]
SeedsOpt = Annotated[str | None, typer.Option(help="Comma list of seeds.")]
ExperimentOpt = Annotated[str, typer.Option(help="MLflow experiment name.")]
ForceOpt = Annotated[bool, typer.Option(help="Retrain cells even if a finished run exists.")]
