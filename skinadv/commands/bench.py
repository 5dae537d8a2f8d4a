"""``skinadv bench``: attack and training throughput side by side with torchattacks and IBM
ART, and the grid's cost in gradient evaluations (``skinadv.bench``).

Prints the Markdown report on stdout; ``--json FILE`` and ``--markdown FILE`` also write
them (atomically, once everything has run). Bad input (unknown device, CUDA asked for where
there is none, an unwritable output path, no real data) gives one ``error:`` line and exit
code 2 before anything runs. A missing ``bench`` extra (torchattacks, ART) is bad input
too: the comparison is the point of the benchmark, so no column is silently left out; pass
``--libraries skinadv`` to time skinadv alone.

``--ray`` adds the grid's cells on 1 vs 2 Ray workers and the orchestration's own costs
(``skinadv.commands.bench_ray``: it starts MLflow, Prefect and Ray of its own, about 2
minutes on 2 cores); without it the JSON says ``not run (pass --ray)`` for both.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from skinadv.commands import DataOpt, console, fail, stdout_console, user_errors
from skinadv.commands.grid import default_data

app = typer.Typer(pretty_exceptions_enable=False)

NPZ_NAME = "ham10000_28x28_rgb.npz"
DEVICES = ("cpu", "cuda")
INSTALL = (
    "make setup, or pip install adversarial-robustness-toolbox==1.20.1 && "
    "pip install --no-deps torchattacks==3.5.1"
)


def _output_path(path: Path | None, what: str) -> Path | None:
    """``path`` if a file can be written there (its folder exists and is writable)."""
    if path is None:
        return None
    if path.is_dir():
        raise fail(f"--{what} {path}: is a folder, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise fail(f"--{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise fail(f"--{what} {path}: folder {parent} is not writable")
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: no half-written report


def _data_spec(data: str | None) -> str:
    spec = data or default_data()[0]
    if spec.startswith("synthetic"):
        raise fail(
            "the benchmark needs the real data: pass --data (the 28x28 npz or the HAM10000 "
            "folder) or set SKINADV_HAM10000"
        )
    folder_npz = Path(spec) / NPZ_NAME
    return str(folder_npz) if folder_npz.is_file() else spec  # the npz loads in 0.2 s


@app.command("bench")
def bench(
    data: DataOpt = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Quick-preset CNN, 500 images (1-4 min on 2 cores).")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda:N).")] = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON to FILE.")
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Also write the Markdown report to FILE.")
    ] = None,
    libraries: Annotated[
        str, typer.Option(help="Comma list of skinadv, torchattacks, art.")
    ] = "skinadv,torchattacks,art",
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Also time the grid's cells on 1 vs 2 Ray workers (CPU) and the "
            "orchestration (service start, dispatch, Prefect, MLflow logging): about 2 min.",
        ),
    ] = False,
    ray_cells: Annotated[
        int | None,
        typer.Option("--ray-cells", help="Cells per Ray run, an even number (default 8)."),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="Add a skinadv-bf16 column (bfloat16 autocast); default: where the device "
            "runs bf16 natively.",
        ),
    ] = None,
) -> None:
    """Attack throughput (FGSM, PGD-10, PGD-50, APGD-CE) against torchattacks and ART at the
    same settings and robust accuracy; training throughput; the grid's gradient evaluations."""
    import torch

    from skinadv.bench import LIBRARIES, full, run_bench, to_markdown
    from skinadv.bench import quick as quick_settings
    from skinadv.bench.attacks import missing_libraries
    from skinadv.training import select_device

    if device.split(":")[0] not in DEVICES:
        raise fail(f"unknown device {device!r}; use cpu or cuda[:N]")
    with user_errors():
        select_device(device)  # cuda without CUDA: exit 2 here, before any work
    libs = tuple(v.strip() for v in libraries.split(",") if v.strip())
    unknown = [v for v in libs if v not in LIBRARIES]
    if unknown or "skinadv" not in libs:
        raise fail(f"--libraries must name skinadv and any of {', '.join(LIBRARIES[1:])}")
    missing = missing_libraries(libs)
    if missing:
        raise fail(f"the bench extra is missing ({', '.join(missing)}): {INSTALL}")
    if ray_cells is not None and not ray:
        raise fail("--ray-cells needs --ray")
    if ray:
        from skinadv.commands import bench_ray

        with user_errors():
            if ray_cells is not None:
                bench_ray.check_cells(ray_cells)
            ray_settings = bench_ray.default_settings(ray_cells)
    json_path = _output_path(json_out, "json")
    md_path = _output_path(markdown_out, "markdown")
    spec = _data_spec(data)
    if threads is not None:
        if threads < 1:
            raise fail(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    settings = (quick_settings if quick else full)(spec, device)
    settings = replace(settings, libraries=libs, bf16=bf16)

    def progress(line: str) -> None:
        console.print(line, highlight=False)

    console.print(f"benchmarking on {device} with {torch.get_num_threads()} threads, data {spec}")
    with user_errors():
        result = run_bench(settings, report=progress)
        if ray:
            from skinadv.stack import StackError

            try:
                result["ray_scaling"], result["orchestration"] = bench_ray.run_ray_bench(
                    spec, ray_settings, report=progress, console=console
                )
            except StackError as exc:  # a service did not start: one line, as `skinadv up`
                raise fail(str(exc)) from None
    report = to_markdown(result)
    with user_errors():
        if json_path is not None:
            _write(json_path, json.dumps(result, indent=2, default=str) + "\n")
        if md_path is not None:
            _write(md_path, report)
    stdout_console.print(report, markup=False, highlight=False)
