"""``skinadv data summary`` and ``skinadv data prepare``: load, inspect and convert sources."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from skinadv.commands import (
    DataOpt,
    JsonOpt,
    console,
    fail,
    print_json,
    stdout_console,
    user_errors,
)

app = typer.Typer(
    help="Load, inspect and convert data sources.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

SizeOpt = Annotated[int, typer.Option("--size", help="Image side length in pixels.")]


def load_with_progress(spec: str, size: int):
    """load_dataset with a progress bar on stderr; bad data (DataError) becomes a clean
    exit 2, an unreadable file exit 1."""
    from skinadv.data import load_dataset

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("decoding images", total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with user_errors():  # DataError (any ValueError): exit 2; unreadable files: exit 1
            return load_dataset(spec, size=size, progress=report)


@app.command("summary")
def data_summary(data: DataOpt, size: SizeOpt = 28, as_json: JsonOpt = False) -> None:
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
        print_json(summary)
        return
    out = stdout_console
    if ds.synthetic:
        out.print("[bold yellow]SYNTHETIC DATA[/] — generated, not real lesion images")
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
    out.print(table)


@app.command("prepare")
def data_prepare(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output canonical .npz file.")],
    size: SizeOpt = 28,
) -> None:
    """Write any source as the canonical .npz (atomic: no partial file on failure)."""
    if out.suffix != ".npz":
        raise fail(f"{out}: the output must be a .npz file")
    ds = load_with_progress(data, size)
    with user_errors():  # e.g. --out names a folder, or one we may not write
        ds.save_npz(out)
    stdout_console.print(
        f"wrote {out} ({len(ds)} images, {ds.size}x{ds.size}, fingerprint {ds.fingerprint()})"
    )
