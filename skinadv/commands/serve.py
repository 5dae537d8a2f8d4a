"""``skinadv serve``: the grid as a Prefect deployment, with an optional cron schedule.

Starts (or finds, through ``MLFLOW_TRACKING_URI`` / ``PREFECT_API_URL`` / ``RAY_ADDRESS``)
the services like ``skinadv grid``, registers the deployment ``skinadv-grid/NAME`` with its
default parameters and schedule, and runs its flow runs (scheduled, or started from the
Prefect UI / API with other parameters) on Ray until Ctrl-C. ``flows.deployments`` is
imported after ``Stack.start()``: Prefect reads ``PREFECT_API_URL`` at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skinadv.commands import (
    DataOpt,
    ExperimentOpt,
    ForceOpt,
    FractionsOpt,
    MethodsOpt,
    PresetOpt,
    SeedsOpt,
    SetOpt,
    console,
    fail,
)
from skinadv.commands.grid import _split_list, default_data

app = typer.Typer(pretty_exceptions_enable=False)


def check_cron(expr: str) -> str:
    """The expression if Prefect accepts it as a cron schedule, else ValueError saying why."""
    # Prefect's own check; importing prefect before the stack is safe: Stack.start()
    # refreshes Prefect's settings from the addresses it exports.
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    if len(expr.split()) != 5:
        raise ValueError(
            f"cron expression {expr!r} needs 5 fields (minute hour day month "
            f"weekday), e.g. '0 3 * * *' for 03:00 UTC daily"
        )
    try:
        return CronSchedule(cron=expr).cron
    except ValidationError as exc:
        reason = "; ".join(
            str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in exc.errors()
        )
        raise ValueError(f"bad cron expression {expr!r}: {reason}") from None


def check_name(name: str) -> str:
    """The deployment name if Prefect accepts it, else ValueError saying why."""
    from prefect.types import BANNED_CHARACTERS, NonEmptyishName
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(NonEmptyishName).validate_python(name)
    except ValidationError:
        raise ValueError(
            f"bad deployment name {name!r}: it must be non-empty, without any "
            f"of {' '.join(BANNED_CHARACTERS)}"
        ) from None


@app.command("serve")
def serve(
    cron: Annotated[
        str | None,
        typer.Option(
            help="Cron schedule (UTC) for reruns, e.g. "
            "'0 3 * * *'; without it runs start only from the UI or API."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Deployment name (skinadv-grid/NAME).")] = "grid",
    data: DataOpt = None,
    preset: PresetOpt = "quick",
    methods: MethodsOpt = None,
    fractions: FractionsOpt = None,
    seeds: SeedsOpt = None,
    set_: SetOpt = None,
    experiment: ExperimentOpt = "skinadv-grid",
    force: ForceOpt = False,
    run_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for services, work files and reports (shared by every Ray worker).",
            envvar="SKINADV_RUN_DIR",
        ),
    ] = Path("runs/serve"),
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default RUN_DIR/report/EXPERIMENT).")
    ] = None,
) -> None:
    """Serve the grid as a Prefect deployment (cron reruns, runs from the UI) until Ctrl-C."""
    from skinadv.config import describe_error, grid_config
    from skinadv.data import DataError, detect

    why = "given"
    if data is None:
        data, why = default_data()
    method_list = _split_list(methods)
    fraction_list = _split_list(fractions, float)
    seed_list = _split_list(seeds, int)
    try:
        cfg = grid_config(
            preset,
            data=data,
            methods=method_list,
            fractions=fraction_list,
            seeds=seed_list,
            overrides=set_ or [],
        )
        kind = detect(cfg.data.spec)
        name = check_name(name)
        if cron is not None:
            cron = check_cron(cron.strip())
    except (DataError, ValueError) as exc:
        raise fail(describe_error(exc)) from None
    run_dir = run_dir.resolve()
    # only what was given: a run from the UI with another preset keeps that preset's axes
    from flows.grid import GridParams

    params = GridParams(
        preset=str(preset),
        data=cfg.data.spec,
        methods=method_list,
        fractions=fraction_list,
        seeds=seed_list,
        overrides=set_ or [],
        experiment=experiment,
        force=force,
        workdir=str(run_dir / "work"),
        out_dir=str(out.resolve()) if out else None,
    )
    label = "SYNTHETIC data (not real lesions)" if kind == "synthetic" else f"{kind} data"
    console.print(
        f"[bold]serve[/]: preset {cfg.name}, {label}: {cfg.data.spec} ({why}); "
        f"schedule: {f'cron {cron} (UTC)' if cron else 'none (runs on demand)'}"
    )

    from skinadv.stack import Stack, StackError

    try:
        with Stack(run_dir, console=console) as stack:
            stack.print_addresses(console)
            from flows.deployments import grid_deployment, serve_grid

            deployment = grid_deployment(
                params,
                name=name,
                cron=cron,
                ray_address=stack.ray_address,
                env=stack.ray_runtime_env()["env_vars"],
            )
            deployment_id = deployment.apply()  # serve_grid updates the same deployment
            ui = stack.addresses().get("prefect") or stack.prefect_api_url
            console.print(
                f"deployment [bold]skinadv-grid/{name}[/]: "
                f"{ui}/deployments/deployment/{deployment_id}\nstart a run there or "
                f"with: prefect deployment run 'skinadv-grid/{name}' "
                f"--params '{{\"params\": {{...}}}}' (a whole GridParams object)",
                soft_wrap=True,
            )
            console.print("serving; press Ctrl-C to stop")
            serve_grid(deployment)
    except StackError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt:
        pass  # the with block has stopped the services already
    except SystemExit as exc:
        # Prefect's runner answers a SIGTERM that comes before it has started with
        # sys.exit(0): the same clean stop as Ctrl-C, not a failure
        if exc.code not in (0, None):
            raise
    console.print("stopped serving")
