"""The ``skinadv`` command line."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from skinadv.commands import console as err_console
from skinadv.commands import fail

app = typer.Typer(
    help="Adversarial attacks and defences for skin-lesion classification (HAM10000).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Load, inspect and convert data sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _register_commands() -> None:
    """Merge the command groups defined beside the data commands (flat: ``skinadv grid``)."""
    from skinadv.commands import experiment, grid, serve, stack

    for module in (experiment, grid, serve, stack):
        app.add_typer(module.app)


console = Console(width=None if sys.stdout.isatty() else 160)

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Data SPEC: HAM10000 folder, hmnist CSV, dermamnist.npz, canonical .npz, "
        "s3://bucket/key or synthetic[:N[:SEED]].",
        envvar="SKINADV_DATA",
    ),
]
SizeOpt = Annotated[int, typer.Option("--size", help="Image side length in pixels.")]


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def load_with_progress(spec: str, size: int):
    """load_dataset with a progress bar; DataError becomes a clean exit."""
    from skinadv.data import DataError, load_dataset

    with progress_bar("decoding images") as bar:
        task = bar.add_task("decoding images", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            return load_dataset(spec, size=size, progress=report)
        except DataError as exc:
            raise fail(str(exc)) from None


@data_app.command("summary")
def data_summary(
    data: DataOpt,
    size: SizeOpt = 28,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print source kind, N, image size, per-class counts, lesions and fingerprint."""
    from skinadv.data import CLASSES

    t0 = time.perf_counter()
    ds = load_with_progress(data, size)
    seconds = time.perf_counter() - t0
    summary = {
        "source": ds.source,
        "kind": ds.kind,
        "synthetic": ds.synthetic,
        "n": len(ds),
        "image_size": [ds.size, ds.size, 3],
        "class_counts": ds.class_counts(),
        "lesions": ds.num_lesions,
        "given_split": {k: len(v) for k, v in (ds.given_split or {}).items()} or None,
        "fingerprint": ds.fingerprint(),
        "load_seconds": round(seconds, 3),
    }
    if as_json:
        print(json.dumps(summary))
        return
    if ds.synthetic:
        console.print("[bold yellow]SYNTHETIC DATA[/] — generated, not real lesion images")
    table = Table(title=f"{ds.kind}: {ds.source}", show_header=False)
    table.add_row("kind", ds.kind)
    table.add_row("images", str(len(ds)))
    table.add_row("image size", f"{ds.size}x{ds.size}x3")
    table.add_row("classes", ", ".join(f"{c} {summary['class_counts'][c]}" for c in CLASSES))
    table.add_row("lesions", "unknown" if ds.num_lesions is None else str(ds.num_lesions))
    if summary["given_split"]:
        table.add_row(
            "given split", ", ".join(f"{k} {v}" for k, v in summary["given_split"].items())
        )
    table.add_row("fingerprint", summary["fingerprint"])
    table.add_row("load time", f"{seconds:.2f} s")
    console.print(table)


@data_app.command("prepare")
def data_prepare(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output canonical .npz file.")],
    size: SizeOpt = 28,
) -> None:
    """Write any source as the canonical .npz (atomic: no partial file on failure)."""
    if out.suffix != ".npz":
        raise fail(f"{out}: the output must be a .npz file")
    ds = load_with_progress(data, size)
    ds.save_npz(out)
    console.print(
        f"wrote {out} ({len(ds)} images, {ds.size}x{ds.size}, fingerprint {ds.fingerprint()})"
    )


_register_commands()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
