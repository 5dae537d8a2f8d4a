"""The evaluation flow: ``skinadv evaluate`` on one or several models at once, one Ray task
per model, each with its own MLflow run and the grid's report, and one summary of them all
(a Markdown file and a Prefect artifact). The models are SPECs of any source, and/or a
registered MLflow model's newest version (or every version): a nightly "re-evaluate the
newest version of my-model" is a deployment of this flow with a cron schedule
(``skinadv serve --evaluate-registered-model my-model --evaluate-cron '0 4 * * *'``).

Import this module only after ``PREFECT_API_URL`` is in the environment, like flows.grid.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from prefect_ray.context import remote_options
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from flows.cancel import cancellable
from flows.grid import settle, write_report
from skinadv import tracking
from skinadv.data.io import atomic_write_bytes
from skinadv.report.markup import cells_as_code
from skinadv.results import eps_text
from tasks.evaluate import (
    EvalRequest,
    EvaluatedModel,
    check_options,
    evaluate_model,
    is_factory,
    model_labels,
    model_versions,
    pin_spec,
)
from tasks.resources import cluster_gpus

SUMMARY_KEY = "skinadv-evaluate-report"
#: ``EvaluateParams.model_validate(d, context=DEFAULTS)``: a deployment's defaults may name
#: no model yet (a run started from the UI names them)
DEFAULTS = {"defaults": True}


class EvaluateParams(BaseModel):
    """An evaluation run's parameters (the Prefect UI shows and validates them as a form)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=list,
        description="Model SPECs, as skinadv evaluate --model takes them: a skinadv "
        "checkpoint, TorchScript file, .pt2 program, package.module:factory (with weights), "
        "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH.",
    )
    registered_model: str | None = Field(
        None, description="A registered MLflow model's name: evaluate its versions too."
    )
    versions: Literal["newest", "all"] = Field(
        "newest", description="Of registered_model: its newest version, or every version."
    )
    weights: str | None = Field(None, description="State dict of package.module:factory models.")
    classes: str | None = Field(
        None, description="The models' output order, e.g. hmnist (default: canonical)."
    )
    normalize: list[str] | None = Field(
        None, description="[MEAN, STD] the models expect, e.g. ['0.5', '0.25'] (default: none)."
    )
    data: str | None = Field(None, description="Data SPEC; default: the preset's.")
    preset: str = Field("quick", description="Preset name (quick, rigorous, paper) or a YAML path.")
    overrides: list[str] = Field(default_factory=list, description="e.g. robust.n_images=200")
    eps: str | None = Field(None, description="Robust curve budgets, e.g. 2/255,8/255.")
    attacks: str | None = Field(None, description="Robust curve attacks, e.g. pgd,apgd-ce.")
    autoattack_eps: str | None = Field(None, description="AutoAttack budgets, e.g. 2/255.")
    experiment: str = Field("skinadv-grid", description="MLflow experiment of the runs.")
    out_dir: str | None = Field(
        None,
        description="Report folder: one subfolder per model and summary.md "
        "(default runs/evaluate/EXPERIMENT).",
    )

    @model_validator(mode="after")
    def _valid(self, info: ValidationInfo) -> EvaluateParams:
        # workers run in other folders: pin relative paths here
        self.models = [pin_spec(s) for s in self.models]
        if len(set(self.models)) != len(self.models):
            twice = next(s for s in self.models if self.models.count(s) > 1)
            raise ValueError(f"model {twice} is given twice")
        defaults = (info.context or {}).get("defaults")
        if not self.models and not self.registered_model and not defaults:
            raise ValueError(
                "no model to evaluate: give models (SPECs) or registered_model (a name)"
            )
        if self.registered_model is not None:
            name = self.registered_model.strip()
            if not name or name.startswith(("models:/", "runs:/")):
                raise ValueError(
                    f"registered_model {self.registered_model!r}: a registered model's name, "
                    "e.g. my-model (a models:/ URI goes into models)"
                )
            self.registered_model = name
        if self.weights is not None:
            if self.registered_model or any(not is_factory(s) for s in self.models):
                raise ValueError("weights go with package.module:factory models only")
            self.weights = pin_spec(self.weights, what="weights")
        if self.normalize is not None and len(self.normalize) != 2:
            raise ValueError("normalize takes [MEAN, STD], e.g. ['0.5', '0.25']")
        # a bad preset, override, budget, attack, class order or normalisation fails here
        self.data = check_options(self.request(""))
        return self

    @classmethod
    def defaults(cls, **values: object) -> EvaluateParams:
        """A deployment's default parameters, which may name no model yet."""
        return cls.model_validate(values, context=DEFAULTS)

    def request(self, spec: str) -> EvalRequest:
        """``skinadv evaluate --model SPEC`` with these options (both protocols)."""
        return EvalRequest(
            model=spec,
            data=self.data,
            eps=self.eps,
            attacks=self.attacks,
            autoattack_eps=self.autoattack_eps,
            experiment=self.experiment,
            preset=self.preset,
            overrides=tuple(self.overrides),
            weights=self.weights,
            classes=self.classes,
            normalize=(self.normalize[0], self.normalize[1]) if self.normalize else None,
        )

    def report_dir(self) -> Path:
        return Path(self.out_dir or Path("runs/evaluate") / self.experiment).resolve()


@dataclass(frozen=True)
class EvaluateOutcome:
    """What an evaluation run returns: every model evaluated and where the reports are."""

    out_dir: str
    models: list[EvaluatedModel]
    failed: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)  # label -> report.html
    flow_run_id: str = ""


class EvaluationFailed(RuntimeError):
    """Some models could not be evaluated; the others' runs and reports are written."""


@flow(name="skinadv-evaluate")
def evaluate_flow(params: EvaluateParams) -> EvaluateOutcome:
    """Evaluate every model as ``skinadv evaluate --out`` does, one Ray task per model."""
    specs = list(params.models)
    if params.registered_model:
        # a quick MLflow query: in this process, so the evaluations' workers start at once
        found = model_versions(params.registered_model, params.versions)
        specs += [s for s in found if s not in specs]
    flow_run_id = str(runtime.flow_run.id or "")
    futures: dict[str, PrefectFuture] = {}
    with remote_options(**model_resources()):
        for label, spec in zip(model_labels(specs), specs, strict=True):
            futures[label] = evaluate_model.submit(
                params.request(spec), label=label, flow_run_id=flow_run_id
            )
    with cancellable():  # Cancel in the UI ends the run CANCELLED (flows/cancel.py)
        done, failed = settle(futures)
    out_dir = params.report_dir()
    reports = {
        m.label: write_report(m.report, out_dir / folder_name(m.label))["report.html"] for m in done
    }
    summary = summary_markdown(done, failed, reports, params)
    atomic_write_bytes(out_dir / "summary.md", summary.encode())
    create_markdown_artifact(
        markdown=summary, key=SUMMARY_KEY, description="skinadv evaluate: every model's figures"
    )
    if failed:
        raise EvaluationFailed(f"{len(failed)} model(s) failed: {', '.join(failed)}")
    return EvaluateOutcome(str(out_dir), done, failed, reports, flow_run_id)


def model_resources() -> dict[str, float]:
    """Ray resources of one model's evaluation: 1 CPU (torch threads match), and on a
    cluster with GPUs a share of one (``SKINADV_GPU_PER_CELL``, default a whole GPU)."""
    if not cluster_gpus():
        return {"num_cpus": 1}
    return {"num_cpus": 1, "num_gpus": float(os.environ.get("SKINADV_GPU_PER_CELL") or 1.0)}


def folder_name(label: str) -> str:
    """The label as a folder name (``my-model v3`` -> ``my-model-v3``)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "-", label).strip("-") or "model"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary_markdown(
    done: list[EvaluatedModel], failed: list[str], reports: dict[str, str], params: EvaluateParams
) -> str:
    """One row per model (clean, white-box PGD, robust and AutoAttack balanced accuracy, %),
    linked to its MLflow run and report; the failed models after it."""
    experiment_id = None
    rows = []
    for m in done:
        r = m.result
        robust = r.curve[0] if r.curve else None
        aa = sorted(
            k for k in r.extra if k.startswith("autoattack_") and k.endswith("_balanced_accuracy")
        )
        run = "-"
        if m.run_id:
            experiment_id = experiment_id or tracking.client().get_run(m.run_id).info.experiment_id
            run = f"[{m.run_id[:8]}]({tracking.run_url(m.run_id, experiment_id)})"
        rows.append(
            f"| {m.label} | {m.source} | {r.cell} "
            f"| {_pct(r.transfer.value('clean', 'balanced_accuracy'))} "
            f"| {_pct(r.whitebox.value('pgd', 'balanced_accuracy'))} "
            f"| {_pct(robust.balanced_accuracy) if robust else '-'} "
            f"| {_pct(r.extra[aa[0]]) if aa else '-'} | {run} | `{reports.get(m.label, '-')}` |"
        )
    robust_eps = eps_text(done[0].result.curve[0].eps) if done and done[0].result.curve else "-"
    lines = [
        f"# skinadv evaluate: {len(done)} model(s)",
        "",
        (
            f"Preset {params.preset}, data `{params.data}`, experiment {params.experiment}. "
            "Balanced accuracy, % (chance 14.3): clean, white-box PGD, the robust curve's "
            f"worst case at {robust_eps}, AutoAttack at its first budget."
        ),
        "",
        "| model | source | cell | clean | PGD white-box | robust | AutoAttack | MLflow run | report |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if failed:
        lines += ["", f"**Failed** ({len(failed)}): " + ", ".join(failed)]
    return cells_as_code("\n".join(lines) + "\n")


__all__ = [
    "EvaluateOutcome",
    "EvaluateParams",
    "EvaluationFailed",
    "evaluate_flow",
    "folder_name",
    "summary_markdown",
]
