"""``skinadv up``: start the local MLflow, Prefect and Ray services and keep them running."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from skinadv.commands import console
from skinadv.stack import mlflow_server

app = typer.Typer(no_args_is_help=False, pretty_exceptions_enable=False)


@app.command("up")
def up(
    run_dir: Annotated[
        Path,
        typer.Option(
            "--run-dir",
            help="Folder for the services' databases, artifacts and logs.",
            envvar="SKINADV_RUN_DIR",
        ),
    ] = Path("runs/stack"),
    no_ray: Annotated[bool, typer.Option("--no-ray", help="Do not start a Ray head.")] = False,
    ray_cpus: Annotated[
        int | None,
        typer.Option("--ray-cpus", min=1, help="CPUs the Ray head offers (default: all)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for each service to answer.")
    ] = 240.0,
) -> None:
    """Start MLflow, Prefect and Ray on 127.0.0.1 and keep them up until Ctrl-C.

    A service whose variable is set (MLFLOW_TRACKING_URI, PREFECT_API_URL, RAY_ADDRESS)
    is used as it is and not started. Other shells reach the services through the
    printed `export` lines.
    """
    from skinadv.stack import Stack, StackError

    stack = Stack(
        run_dir, ray=not no_ray, ray_num_cpus=ray_cpus, console=console, timeout_s=timeout
    )
    try:
        with stack:
            stack.print_addresses(console)
            exports = " ".join(
                f"{var}={value}"
                for var, value in (
                    ("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri),
                    ("PREFECT_API_URL", stack.prefect_api_url),
                    ("RAY_ADDRESS", stack.ray_address),
                    *stack.ray_auth_env.items(),  # the head requires its token
                )
                if value
            )
            console.print(f"to use them from another shell:\n  export {exports}", soft_wrap=True)
            if stack.mlflow_auth and stack.services.get("mlflow") is not None:
                console.print(
                    "MLflow asks for a user and password (basic auth): "
                    f"MLFLOW_TRACKING_USERNAME={mlflow_server.AUTH_USER}, "
                    "MLFLOW_TRACKING_PASSWORD=the admin_password in "
                    f"{stack.run_dir / 'mlflow-auth.ini'}",
                    soft_wrap=True,
                )
            for line in _experiment_links():
                console.print(line, soft_wrap=True, highlight=False)
            console.print(f"logs in {stack.run_dir / 'logs'}; press Ctrl-C to stop")
            while True:
                time.sleep(1)
                dead = stack.dead_services()
                if dead:
                    for name in dead:
                        console.print(
                            f"[bold red]{name} stopped unexpectedly[/]; last lines of its log:\n"
                            f"{stack.log_tail(name)}",
                            highlight=False,
                        )
                    raise typer.Exit(1)
    except StackError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass  # the with block has stopped the services already
    console.print("services stopped")


def _experiment_links() -> list[str]:
    """Each experiment's runs table in the MLflow UI's "Model training" view, and its newest
    grid's parent run (the links the grid printed, when it ran on this run folder)."""
    from skinadv import tracking

    out = []
    try:
        for e in tracking.client().search_experiments():
            view = tracking.runs_view_url(e.experiment_id)
            try:
                parent = tracking.latest_parent(e.name)
            except ValueError:  # no finished grid in it
                continue
            if view:
                out.append(f"MLflow runs of {e.name}: {view}")
                out.append(
                    f"  its newest grid's parent run: {tracking.run_url(parent.info.run_id)}"
                )
    except Exception:  # noqa: BLE001 - links are a convenience, never a reason to stop
        return out
    return out
