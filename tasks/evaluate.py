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
from pydantic import ValidationError

from skinadv import tracking
from skinadv.commands import model_sources
from skinadv.commands.evaluation import eps_list, robust_config
from skinadv.commands.evaluation_run import EvalRequest, registered_versions, run_evaluation
from skinadv.commands.experiment_shared import experiment_config
from skinadv.config import describe_error, load_preset, parse_overrides
from skinadv.data.sources import absolute_spec
from skinadv.evaluation.checks import Check
from skinadv.models.adapters import parse_classes, parse_normalize
from skinadv.models.sources import FACTORY_RE, source_kind
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


def is_factory(spec: str) -> bool:
    """Whether SPEC names a ``package.module:factory`` (and no file of that name exists)."""
    return bool(FACTORY_RE.match(spec)) and not Path(spec).expanduser().exists()


def pin_spec(spec: str, *, what: str = "model") -> str:
    """A model (or weights) SPEC as a worker in another folder reads it: MLflow URIs checked
    and kept, a ``package.module:factory`` kept, local paths made absolute.

    Raises:
        ValueError: a malformed MLflow URI, or no such file (one line naming it).
    """
    spec = spec.strip()
    if model_sources.is_mlflow_uri(spec):
        model_sources.parse_mlflow_uri(spec)
        return spec
    if what == "model" and is_factory(spec):
        return spec
    path = Path(spec).expanduser()
    if what == "model":
        source_kind(path)  # no such file: one line naming it
    elif not path.exists():
        raise ValueError(f"{what} {spec}: no such file or folder")
    return str(path.resolve())


def check_options(req: EvalRequest) -> str:
    """The options of a request that need no model (preset, overrides, budgets, attacks,
    class order, normalisation) checked as ``skinadv evaluate`` checks them; returns the
    data SPEC with local paths made absolute (None: the preset's).

    Raises:
        ValueError: the first fault, in one line naming the setting.
    """
    try:
        data = req.data
        if data is None:
            data = load_preset(req.preset, parse_overrides(list(req.overrides))).data.spec
        data = absolute_spec(data)
        cfg = experiment_config(req.preset, list(req.overrides), data)
        robust_config(cfg, eps=req.eps, attacks=req.attacks)
    except ValidationError as exc:  # the preset's own: one line naming the setting
        raise ValueError(describe_error(exc)) from None
    if req.autoattack_eps is not None:
        eps_list(req.autoattack_eps, "autoattack_eps")
    if req.classes is not None:
        parse_classes(req.classes)
    if req.normalize is not None:
        parse_normalize(*req.normalize)
    return data


def model_label(spec: str) -> str:
    """A model's name in the Prefect UI and its report folder: ``my-model v3``,
    ``my-model@champion``, ``run 1a2b3c4d weights``, a file's name, a factory's function."""
    if model_sources.is_mlflow_uri(spec):
        parts = model_sources.parse_mlflow_uri(spec)
        if "version" in parts:
            return f"{parts['name']} v{parts['version']}"
        if "alias" in parts:
            return f"{parts['name']}@{parts['alias']}"
        return f"run {parts['run_id'][:8]} {parts['path']}"
    if is_factory(spec):
        return spec.rpartition(":")[2]
    return Path(spec).name


def model_labels(specs: list[str]) -> list[str]:
    """``model_label`` of each, made unique (``model.pt``, ``model.pt (2)``)."""
    labels: list[str] = []
    for spec in specs:
        label, n = model_label(spec), 2
        while label in labels:
            label, n = f"{model_label(spec)} ({n})", n + 1
        labels.append(label)
    return labels


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


__all__ = [
    "EvalRequest",
    "EvaluatedModel",
    "check_options",
    "evaluate_model",
    "is_factory",
    "model_label",
    "model_labels",
    "model_versions",
    "pin_spec",
]
