"""The grid flow, as the paper's method: prepare the data, train the vanilla model, craft one
adversarial pool per method from it (the mix pool composed from the fgsm and pgd pools when
the grid has them), train and score every (method, fraction) cell, gather the report. The
science is in skinadv; reuse, MLflow runs and logging are in tasks/.

Import this module only after ``PREFECT_API_URL`` is in the environment (skinadv.stack
does that): Prefect reads its settings at import.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, runtime
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.futures import PrefectFuture, wait
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.cancel import cancellable
from skinadv import experiment as exp
from skinadv import tracking, tracking_ui
from skinadv.config import ExperimentConfig, grid_config
from skinadv.data.io import atomic_write_bytes
from skinadv.data.sources import absolute_spec
from skinadv.evaluation.checks import Check
from skinadv.report.markup import cells_as_code, table_records
from skinadv.results import ModelResult
from skinadv.stack import worker_env
from skinadv.training import composes_mix
from tasks.grid import (
    craft_pool,
    model_label,
    prepare_data,
    train_cell,
    train_defence,
    train_vanilla,
)
from tasks.refs import GridRun, TrainedModel
from tasks.report import gather
from tasks.resources import cell_resources

POOL_COST_ORDER = ("pgd", "mix", "fgsm")  # the costliest pool first: it is the critical path


class GridParams(BaseModel):
    """A grid run's parameters (the Prefect UI shows and validates them as a form)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("quick", description="Preset name (quick, rigorous, paper) or a YAML path.")
    data: str | None = Field(None, description="Data SPEC; default: the preset's.")
    methods: list[Literal["fgsm", "pgd", "mix"]] | None = Field(None, description="Default: all.")
    fractions: list[float] | None = Field(None, description="Shares of the training set.")
    seeds: list[int] | None = Field(None, description="Training seeds; default: the preset's.")
    overrides: list[str] = Field(default_factory=list, description="e.g. train.epochs=2")
    experiment: str = Field("skinadv-grid", description="MLflow experiment name.")
    force: bool = Field(False, description="Retrain even where a finished run exists.")
    workdir: str = Field(
        "runs/grid/work",
        description="The driver's folder; the report goes beside it. Tasks never use it: "
        "they keep files in their node's own folder ($SKINADV_NODE_DIR).",
    )
    out_dir: str | None = Field(None, description="Report folder (default beside workdir).")

    @model_validator(mode="after")
    def _valid_config(self) -> GridParams:
        if self.data is not None:  # workers run in other folders: pin relative paths here
            self.data = absolute_spec(self.data)
        self.config()  # a bad preset, axis or override fails here, before anything runs
        return self

    def config(self) -> ExperimentConfig:
        cfg = grid_config(
            self.preset,
            data=self.data,
            methods=self.methods,
            fractions=self.fractions,
            seeds=self.seeds,
            overrides=self.overrides,
        )
        cfg.data.spec = absolute_spec(cfg.data.spec)  # the preset's default may be relative
        return cfg


@dataclass(frozen=True)
class GridOutcome:
    """What a grid run returns: every model's result and where the report is."""

    parent_run_id: str
    out_dir: str
    results: list[ModelResult]
    trained: list[str]
    reused: list[str]
    checks: list[Check] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    flow_run_id: str = ""


class GridFailed(RuntimeError):
    """Some models of the grid failed; the others' runs are finished and will be reused."""


@flow(name="skinadv-grid")
def grid_flow(params: GridParams = GridParams()) -> GridOutcome:  # noqa: B008
    """Train and score the methods x fractions grid; reuse finished models unless ``force``."""
    cfg = params.config()
    out_dir = report_dir(params)
    # cancellable outside grid_run: the parent run sees SystemExit (KILLED), the engine a
    # cancel (CANCELLED)
    with cancellable(), grid_run(params, cfg) as grid:  # the MLflow parent run, owned here
        data = prepare_data.submit(cfg, grid)
        models: dict[str, PrefectFuture] = {}
        # on GPUs the share depends on the training set's size: wait for it only there
        with remote_options(**cell_resources(cfg, lambda: data.result().n_train)):
            for seed in cfg.seeds:
                vanilla = train_vanilla.submit(cfg, data, seed=seed, grid=grid)
                pools = {
                    m: craft_pool.submit(cfg, data, vanilla, method=m, seed=seed, grid=grid)
                    for m in sorted(cfg.methods, key=POOL_COST_ORDER.index)
                    if exp.pool_recipe(cfg.methods, m) is None
                }
                if composes_mix(cfg.methods):  # mix's rows from the fgsm and pgd pools
                    pools["mix"] = craft_pool.submit(
                        cfg,
                        data,
                        vanilla,
                        method="mix",
                        seed=seed,
                        grid=grid,
                        fgsm=pools["fgsm"],
                        pgd=pools["pgd"],
                    )
                models[model_label(None, None, seed)] = vanilla
                for m, f in itertools.product(cfg.methods, cfg.fractions):
                    models[model_label(m, f, seed)] = train_cell.submit(
                        cfg, data, vanilla, pools[m], method=m, fraction=f, seed=seed, grid=grid
                    )
                for d in cfg.defences:  # on-the-fly adversarial training: no pool
                    models[f"{d.name} s{seed}"] = train_defence.submit(
                        cfg, data, vanilla, defence=d, seed=seed, grid=grid
                    )
        done, failed = settle(models)
        context = _context(cfg, params, data.result(), grid)
        checks, report = gather.submit(cfg, data, done, grid=grid, context=context).result()
        files = write_report(report, out_dir)
        publish(done, files, grid)
        if done and not failed and all(m.reused for m in done):
            publish_nothing_to_do(done, data.result().fingerprint, exp.config_hash(cfg))
        if failed:
            raise GridFailed(
                f"{len(failed)} model(s) failed: {', '.join(failed)}; rerun to retry them "
                "(finished models are reused)"
            )
    return GridOutcome(
        grid.parent_run_id,
        str(out_dir),
        [m.result for m in done],
        trained=[m.label for m in done if not m.reused],
        reused=[m.label for m in done if m.reused],
        checks=checks,
        files=files,
        flow_run_id=str(runtime.flow_run.id or ""),
    )


def report_dir(params: GridParams) -> Path:
    """Where the driver writes the report: ``out_dir``, else ``report/<experiment>`` beside
    ``workdir``."""
    workdir = Path(params.workdir).resolve()
    return Path(params.out_dir or workdir.parent / "report" / params.experiment).resolve()


def write_report(report: dict[str, bytes], out_dir: Path) -> dict[str, str]:
    """The gathered report's files, written on the driver; ``{name: path}``."""
    return {name: str(atomic_write_bytes(out_dir / name, data)) for name, data in report.items()}


@contextmanager
def grid_run(params: GridParams, cfg: ExperimentConfig) -> Iterator[GridRun]:
    """The grid's MLflow parent run, from start to end (FAILED if the grid fails, KILLED on
    Ctrl-C); no child run of it is left RUNNING when it ends."""
    tracking_ui.describe_experiment(params.experiment)  # what the experiment holds, how to read it
    with tracking.owned_run(
        params.experiment,
        name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
        kind="parent",
        params=_parent_params(cfg, params),
        tags={tracking.TAG_FLOW_RUN: str(runtime.flow_run.id)},
    ) as parent:
        try:
            yield GridRun(params.experiment, parent, params.force)
        finally:
            tracking.kill_unfinished(params.experiment, parent, reason="the grid ended first")


def settle(futures: dict[str, PrefectFuture]) -> tuple[list[TrainedModel], list[str]]:
    """Wait for every model; (the finished ones, the labels of those that failed)."""
    wait(list(futures.values()))
    done = [f.result() for f in futures.values() if f.state.is_completed()]
    failed = [label for label, f in futures.items() if not f.state.is_completed()]
    return done, failed


def publish(models: list[TrainedModel], files: dict[str, str], grid: GridRun) -> None:
    """The outcome in the Prefect UI: the report's Markdown and a link to the MLflow run."""
    md = Path(files["report.md"]).read_text() if "report.md" in files else ""
    # the figures are files beside report.md: in the UI, point at the HTML report instead
    md = "\n".join(line for line in md.splitlines() if not line.startswith("!["))
    rows = "\n".join(
        f"| {m.label} | {'reused' if m.reused else 'trained'} | {m.result.run_id} |" for m in models
    )
    create_markdown_artifact(
        markdown=cells_as_code(
            f"{md}\n\n### Models\n\n| model | | MLflow run |\n|---|---|---|\n{rows}\n"
        ),
        key="skinadv-grid-report",
        description="skinadv grid: result tables and sanity checks",
    )
    if "at_a_glance.csv" in files:  # the report's first table: vanilla, best cell, best defence
        create_table_artifact(
            table=table_records(pd.read_csv(files["at_a_glance.csv"])),
            key="skinadv-grid-key-results",
            description="skinadv grid: key results (mean ± 95 % half-width over seeds, %)",
        )
    create_link_artifact(
        link=tracking.run_url(grid.parent_run_id),
        link_text="MLflow parent run",
        key="skinadv-grid-mlflow",
    )


def publish_nothing_to_do(models: list[TrainedModel], fingerprint: str, config: str) -> None:
    """A rerun that trained nothing (a cron rerun with the same data, code and settings)
    says so in the Prefect UI, with what it checked."""
    create_markdown_artifact(
        markdown=(
            f"**Nothing to do: all {len(models)} models reused.** Each model's complete MLflow "
            f"run was found for the same data (fingerprint `{fingerprint}`), code (skinadv "
            f"`{exp.__version__}`) and settings (grid config `{config}`); the report was "
            "rebuilt from them. A rerun trains a model only when one of these changes, or "
            "with `force`."
        ),
        key="skinadv-grid-rerun",
        description="skinadv grid: what this rerun had to do",
    )


def _parent_params(cfg: ExperimentConfig, params: GridParams) -> dict[str, Any]:
    return {
        "preset": cfg.name,
        "data": cfg.data.spec,
        "methods": cfg.methods,
        "fractions": cfg.fractions,
        "seeds": cfg.seeds,
        "force": params.force,
        "config_hash": exp.config_hash(cfg),
        "code_version": exp.__version__,
    }


def _context(cfg: ExperimentConfig, params: GridParams, data: Any, grid: GridRun) -> dict[str, Any]:
    return {
        "experiment": params.experiment,
        "preset": cfg.name,
        "data": cfg.data.spec,
        "data kind": data.kind,
        "images (train after oversampling / validation / test)": (
            f"{data.n_train} / {data.n_val} / {data.n_test}"
        ),
        "fingerprint": data.fingerprint,
        "seeds": cfg.seeds,
        "parent run": grid.parent_run_id,
    }


def make_task_runner(
    address: str | None = None, env: dict[str, str] | None = None, *, quiet: bool = False
) -> RayTaskRunner:
    """The Ray runner, with the Prefect/MLflow addresses passed to every worker.

    ``quiet`` keeps the workers' output in Ray's session logs and Ray's own log records
    with the caller's logging (the quiet console of ``skinadv grid``)."""
    env = {**worker_env(), **(env or {})}
    return RayTaskRunner(
        address=address or os.environ.get("RAY_ADDRESS"),
        init_kwargs={
            "runtime_env": {"env_vars": env},
            "log_to_driver": not quiet,
            "configure_logging": not quiet,
        },
    )
