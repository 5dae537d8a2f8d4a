"""The ``skinadv`` command line: the command groups of ``skinadv.commands`` in one Typer app."""

from __future__ import annotations

import logging
import sys

import typer

from skinadv.commands import bench, console, data, experiment, grid, serve, stack, verify
from skinadv.memory import keep_freed_memory

app = typer.Typer(
    help="Adversarial attacks and defences for skin-lesion classification (HAM10000).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
# flat: ``skinadv train``, ``skinadv grid``
for _group in (experiment, grid, serve, stack, bench, verify):
    app.add_typer(_group.app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # training and attacks in this process reuse freed tensor memory
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
