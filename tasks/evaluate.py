"""Prefect tasks of the evaluation flow: one model's evaluation as ``skinadv evaluate`` runs
it (``skinadv.commands.evaluation_run``), and a registered model's versions.

The model task writes the grid's report for its model into a folder of its own node and
returns the files' bytes, so the driver writes them where the flow's parameters say (no
disk shared between nodes); its MLflow run (one per model, tagged with the flow run) is
owned by ``run_evaluation`` from start to end. Its final state message carries the model's
key figure, as a grid task's does.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from skinadv import tracking
from skinadv.commands.evaluation_run import EvalRequest, registered_versions, run_evaluation
from skinadv.evaluation.checks import Check
from skinadv.results import ModelResult
from tasks.grid import key_figure, use_assigned_resources


@dataclass(frozen=True)
class EvaluatedModel:
    """One model evaluated by the flow: its scores, MLflow run and report files.

    Args:
        label: its name in the Prefect UI and the report folder (``my-model v3``).
        spec: the ``--model`` SPEC it was loaded from.
        source: ``skinadv``, ``torchscript``, ``export`` or ``factory``.
        result: both protocols, the robust curve, targeted attacks and AutoAttack (extra).
        run_id: its MLflow run (None without MLflow).
        report: the grid's report for it, ``{file name: bytes}``.
        checks: the sanity checks; flags: AutoAttack's warnings.
    """

    label: str
    spec: str
    source: str
    result: ModelResult
    run_id: str | None
    report: dict[str, bytes] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def _no_retry_on_bad_input(task: Any, task_run: Any, state: State) -> bool:
    """Retry what may be passing (MLflow or a download away); a bad model or option is not."""
    try:
        state.result()
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - any other failure may pass on a second try
        return True
    return True


@task(
    name="model-versions",
    task_run_name="versions of {name}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_no_retry_on_bad_input,
    cache_policy=NO_CACHE,
)
def model_versions(name: str, which: str) -> list[str]:
    """The registered model's newest version (or every version) as ``models:/`` URIs."""
    uris = registered_versions(name, which)
    get_run_logger().info("%s: %s", name, ", ".join(uris))
    return uris


@task(
    name="evaluate-model",
    task_run_name="{label}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_no_retry_on_bad_input,
    cache_policy=NO_CACHE,
)
def evaluate_model(request: EvalRequest, *, label: str, flow_run_id: str = "") -> State:
    """Evaluate one model as ``skinadv evaluate --out`` does; its MLflow run is ended here."""
    use_assigned_resources()
    log = get_run_logger()
    log.info("evaluating %s (preset %s, data %s)", request.model, request.preset, request.data)

    def on_point(c: Any) -> None:
        log.info(
            "AutoAttack on %d images at %.4g: %.1f %% (our ensemble %.1f %%) in %.0f s",
            c.autoattack.n, c.eps, 100 * c.autoattack.accuracy, 100 * c.ensemble.accuracy,
            c.autoattack.seconds,
        )  # fmt: skip

    tags = {tracking.TAG_FLOW_RUN: flow_run_id} if flow_run_id else {}
    with tempfile.TemporaryDirectory(prefix="skinadv-evaluate-") as tmp:
        done = run_evaluation(replace(request, out=Path(tmp)), on_point=on_point, tags=tags)
        report = {name: Path(path).read_bytes() for name, path in done.files.items()}
    assert done.result is not None  # both protocols: the flow always asks for them
    for c in done.checks:
        log.info("%s %s: %s", c.status, c.name, c.detail)
    for f in done.flags:
        log.warning("AutoAttack flag: %s", f)
    model = EvaluatedModel(
        label,
        request.model,
        str(done.payload["model_source"]),
        done.result,
        done.run_id,
        report,
        done.checks,
        done.flags,
    )
    where = f" (MLflow run {done.run_id[:8]})" if done.run_id else ""
    return Completed(data=model, message=f"{key_figure(done.result)}{where}")


__all__ = ["EvaluatedModel", "evaluate_model", "model_versions"]
