"""MLflow side of ``skinadv verify``: read a grid's runs and champions, log the figures.

An adapter beside ``skinadv.tracking`` (kept under its size limit): it lives with the CLI
commands, since the core imports no mlflow. Verification figures are added to each model's finished run
as metrics (the run's status is never touched: its owner ended it), and the Markdown / JSON
write-up goes on the grid's parent run under ``verify/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skinadv import tracking, tracking_ui

VERIFY_DIR = "verify"
# a progress bar per downloaded state dict would drown the per-model progress lines
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def grid_results(experiment: str, parent_run_id: str | None = None) -> tuple[Any, list]:
    """The grid's parent run and one ``ModelResult`` per model its report covered.

    Args:
        experiment: the MLflow experiment of the grid.
        parent_run_id: a given parent run; None takes the newest finished one.

    Returns:
        (parent run, results).

    Raises:
        ValueError: no such experiment, no finished grid run, or a run that lists no models.
    """
    if parent_run_id is None:
        parent = tracking.latest_parent(experiment)
    else:
        from mlflow.exceptions import MlflowException

        try:
            parent = tracking.client().get_run(parent_run_id)
        except MlflowException as exc:  # RESOURCE_DOES_NOT_EXIST, an id of the wrong form
            raise ValueError(f"no MLflow run {parent_run_id!r}: {exc}") from None
        if parent.data.tags.get(tracking.TAG_KIND) != "parent":
            raise ValueError(f"MLflow run {parent_run_id} is not a grid's parent run")
    results, _ = tracking.load_results(tracking_ui.cell_run_ids(parent))
    return parent, results


def run_params(run_id: str) -> dict[str, str]:
    """A run's logged parameters (strings, as MLflow keeps them)."""
    return dict(tracking.client().get_run(run_id).data.params)


def champion_name(experiment: str, method: str) -> str:
    """The registered model a method's champion goes to (``tasks.report.register_champions``)."""
    prefix = experiment if experiment.startswith("skinadv") else f"skinadv-{experiment}"
    return f"{prefix}-{method}"


def registered_champions(experiment: str, methods: Sequence[str]) -> dict[str, str]:
    """``{method: run id}`` of each method's ``robust-champion`` in the Model Registry
    (methods without one are left out)."""
    out = {}
    for method in methods:
        found = tracking.champion(champion_name(experiment, method))
        if found is not None:
            out[method] = found[1]
    return out


def log_verification(run_id: str, metrics: Mapping[str, float]) -> None:
    """Add the verification metrics to a model's (finished) run."""
    tracking.log_metrics(run_id, metrics)


def log_files(run_id: str, paths: Sequence[str | Path]) -> None:
    """The write-up files on the grid's parent run, under ``verify/``."""
    tracking.log_artifact_files(run_id, list(paths), VERIFY_DIR)


def download_weights(run_id: str, dst: str | Path) -> Path:
    """The run's state dict (config JSON beside it) downloaded into ``dst``."""
    return tracking.download_weights(run_id, dst)


__all__ = [
    "VERIFY_DIR",
    "champion_name",
    "download_weights",
    "grid_results",
    "log_files",
    "log_verification",
    "registered_champions",
    "run_params",
]
