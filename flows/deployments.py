"""Deployments of the grid flow and of the evaluation flow: served by ``skinadv serve``
(both at once), or, for the grid, registered from ``infra/prefect.yaml`` for a process
work pool. Deployments live in this one file.

Both kinds run the flow on the Ray runner. A served deployment carries the runner it was given
(``Runner`` pickles the flow object into each flow-run process); a work-pool deployment is
imported afresh in each flow-run process, so ``ray_grid_flow`` builds its runner from the
environment there (``RAY_ADDRESS``, ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI`` set by the
work pool's ``job_variables.env``).

Import this module only after ``PREFECT_API_URL`` is in the environment, like flows.grid.
"""

from __future__ import annotations

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from flows.evaluate import EvaluateParams, evaluate_flow
from flows.grid import GridParams, grid_flow, make_task_runner

DEPLOYMENT_NAME = "grid"
TAGS = ["skinadv", "grid"]
EVALUATE_DEPLOYMENT_NAME = "evaluate"
EVALUATE_TAGS = ["skinadv", "evaluate"]

# The entrypoint for work pools (infra/prefect.yaml): the grid flow on the Ray runner that
# the flow-run process's environment points at.
ray_grid_flow = grid_flow.with_options(task_runner=make_task_runner())
# the same for the evaluation flow
ray_evaluate_flow = evaluate_flow.with_options(task_runner=make_task_runner())


def served_flow(ray_address: str | None = None, env: dict[str, str] | None = None) -> Flow:
    """The grid flow on a Ray runner whose workers get ``env`` (Prefect/MLflow addresses).

    Args:
        ray_address: Ray GCS address (``host:port``) or ``ray://`` client address; None
            reads ``RAY_ADDRESS`` (unset: a local Ray).
        env: environment variables for every Ray worker, added to the non-secret ones of
            this process (``skinadv.stack.worker_env``).
    """
    return grid_flow.with_options(task_runner=make_task_runner(ray_address, env))


def grid_deployment(
    params: GridParams,
    *,
    name: str = DEPLOYMENT_NAME,
    cron: str | None = None,
    ray_address: str | None = None,
    env: dict[str, str] | None = None,
) -> RunnerDeployment:
    """The grid as a deployment to serve: default parameters and an optional cron schedule.

    Args:
        params: the default ``GridParams`` of its runs (preset, data, methods, fractions,
            seeds, overrides, experiment, force, workdir, out_dir). The Prefect UI's run form
            starts from them; a run started from the API passes a whole ``params`` object,
            which replaces them (Prefect merges parameters one level deep).
        name: deployment name; the full name is ``skinadv-grid/<name>``.
        cron: cron expression (UTC) for scheduled reruns; None: runs only when triggered.
        ray_address, env: the Ray runner's address and worker environment (see served_flow).

    Returns:
        The deployment, ready for ``serve_grid``.
    """
    deployment = served_flow(ray_address, env).to_deployment(
        name=name,
        cron=cron,
        parameters={"params": params.model_dump(mode="json")},
        tags=TAGS,
        description="skinadv methods x fractions grid on Ray, tracked in MLflow",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # what a work pool would import to get the same flow on Ray (shown in the UI)
    deployment.entrypoint = f"{__name__}.ray_grid_flow"
    return deployment


def evaluate_deployment(
    params: EvaluateParams,
    *,
    name: str = EVALUATE_DEPLOYMENT_NAME,
    cron: str | None = None,
    ray_address: str | None = None,
    env: dict[str, str] | None = None,
) -> RunnerDeployment:
    """The evaluation flow as a deployment to serve: default parameters, optional cron.

    Args:
        params: the default ``EvaluateParams`` of its runs (``EvaluateParams.defaults``: they
            may name no model yet; a run that names none fails at once, saying so). A run
            started from the API passes a whole ``params`` object, which replaces them.
        name: deployment name; the full name is ``skinadv-evaluate/<name>``.
        cron: cron expression (UTC), e.g. a nightly re-evaluation of a registered model's
            newest version; None: runs only when triggered.
        ray_address, env: the Ray runner's address and worker environment (see served_flow).
    """
    runner = make_task_runner(ray_address, env)
    deployment = evaluate_flow.with_options(task_runner=runner).to_deployment(
        name=name,
        cron=cron,
        parameters={"params": params.model_dump(mode="json")},
        tags=EVALUATE_TAGS,
        description="skinadv evaluate on one or several models (any source) on Ray, "
        "one MLflow run and report per model",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment.entrypoint = f"{__name__}.ray_evaluate_flow"
    return deployment


def serve_grid(
    deployment: RunnerDeployment, *, also: list[RunnerDeployment] = (), limit: int = 1
) -> None:
    """Register the deployments and run their scheduled and triggered runs until interrupted.

    Args:
        deployment: from ``grid_deployment``.
        also: more deployments served by the same runner (``evaluate_deployment``).
        limit: flow runs at once, over all of them; further runs wait (one grid already
            fills the Ray workers).
    """
    serve(deployment, *also, limit=limit, print_starting_message=False)
