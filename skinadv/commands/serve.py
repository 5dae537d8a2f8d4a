"""``skinadv serve``: the grid and the evaluation flow as Prefect deployments, each with an
optional cron schedule.

Starts (or finds, through ``MLFLOW_TRACKING_URI`` / ``PREFECT_API_URL`` / ``RAY_ADDRESS``)
the services like ``skinadv grid``, registers the deployments ``skinadv-grid/NAME`` and
``skinadv-evaluate/EVALUATE_NAME`` with their default parameters and schedules, and runs
their flow runs (scheduled, or started from the Prefect UI / API with other parameters) on
Ray until Ctrl-C, one at a time. ``--data``, ``--preset``, ``--set`` and ``--experiment``
are both deployments' defaults; the ``--evaluate-*`` options are the evaluation's own.
``flows.deployments`` is imported after ``Stack.start()``: Prefect reads
``PREFECT_API_URL`` at import.
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


def _evaluate_defaults(**values: object):
    """The evaluation deployment's default ``EvaluateParams`` (it may name no model); a
    fault as ``ValueError`` in one line, naming the option."""
    from pydantic import ValidationError

    from flows.evaluate import EvaluateParams

    options = {"models": "--evaluate-model", "registered_model": "--evaluate-registered-model",
               "versions": "--evaluate-versions", "autoattack_eps": "--evaluate-autoattack-eps"}  # fmt: skip
    try:
        return EvaluateParams.defaults(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        loc = [str(p) for p in err.get("loc", ())]
        where = options.get(loc[0], loc[0]) if loc else "evaluation"
        raise ValueError(f"{where}: {msg}") from None


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
    evaluate_model: Annotated[
        list[str] | None,
        typer.Option(
            help="A model the evaluation deployment evaluates by default (repeatable; any "
            "skinadv evaluate --model SPEC). Without one, its runs name their models."
        ),
    ] = None,
    evaluate_registered_model: Annotated[
        str | None,
        typer.Option(
            help="A registered MLflow model whose newest version (or every version: "
            "--evaluate-versions all) the evaluation deployment evaluates by default."
        ),
    ] = None,
    evaluate_versions: Annotated[
        str, typer.Option(help="newest or all, of --evaluate-registered-model.")
    ] = "newest",
    evaluate_autoattack_eps: Annotated[
        str | None,
        typer.Option(help="The evaluation's AutoAttack budgets, e.g. 2/255 (default: off)."),
    ] = None,
    evaluate_cron: Annotated[
        str | None,
        typer.Option(
            help="Cron schedule (UTC) of the evaluation, e.g. '0 4 * * *'; needs "
            "--evaluate-model or --evaluate-registered-model."
        ),
    ] = None,
    evaluate_name: Annotated[
        str, typer.Option(help="Evaluation deployment name (skinadv-evaluate/NAME).")
    ] = "evaluate",
) -> None:
    """Serve the grid and the evaluation flow as Prefect deployments (cron reruns, runs from
    the UI) until Ctrl-C."""
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
        evaluate_name = check_name(evaluate_name)
        if evaluate_cron is not None:
            evaluate_cron = check_cron(evaluate_cron.strip())
        eval_params = _evaluate_defaults(
            models=evaluate_model or [],
            registered_model=evaluate_registered_model,
            versions=evaluate_versions,
            autoattack_eps=evaluate_autoattack_eps,
            data=cfg.data.spec,
            preset=str(preset),
            overrides=set_ or [],
            experiment=experiment,
            out_dir=str(run_dir.resolve() / "evaluate"),
        )
        if evaluate_cron and not (eval_params.models or eval_params.registered_model):
            raise ValueError(
                "--evaluate-cron needs --evaluate-model or --evaluate-registered-model: a "
                "scheduled evaluation must know what to evaluate"
            )
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
        f"schedule: {f'cron {cron} (UTC)' if cron else 'none (runs on demand)'}; "
        f"evaluation schedule: "
        f"{f'cron {evaluate_cron} (UTC)' if evaluate_cron else 'none (runs on demand)'}"
    )

    from skinadv.stack import Stack, StackError

    try:
        with Stack(run_dir, console=console) as stack:
            stack.print_addresses(console)
            from flows.deployments import evaluate_deployment, grid_deployment, serve_grid

            env = stack.ray_runtime_env()["env_vars"]
            deployment = grid_deployment(
                params, name=name, cron=cron, ray_address=stack.ray_address, env=env
            )
            deployment_id = deployment.apply()  # serve_grid updates the same deployment
            evaluation = evaluate_deployment(
                eval_params,
                name=evaluate_name,
                cron=evaluate_cron,
                ray_address=stack.ray_address,
                env=env,
            )
            evaluation_id = evaluation.apply()
            ui = stack.addresses().get("prefect") or stack.prefect_api_url
            console.print(
                f"deployment [bold]skinadv-grid/{name}[/]: "
                f"{ui}/deployments/deployment/{deployment_id}\nstart a run there or "
                f"with: prefect deployment run 'skinadv-grid/{name}' "
                f"--params '{{\"params\": {{...}}}}' (a whole GridParams object)",
                soft_wrap=True,
            )
            console.print(
                f"deployment [bold]skinadv-evaluate/{evaluate_name}[/]: "
                f"{ui}/deployments/deployment/{evaluation_id}\nstart a run there or with: "
                f"prefect deployment run 'skinadv-evaluate/{evaluate_name}' --params "
                f'\'{{"params": {{"models": ["SPEC", ...], ...}}}}\' (a whole '
                "EvaluateParams object)",
                soft_wrap=True,
            )
            console.print("serving; press Ctrl-C to stop")
            serve_grid(deployment, also=[evaluation])
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
