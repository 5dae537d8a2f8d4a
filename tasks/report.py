"""The grid's last task: gather every model's result into the report, register each
method's champion in the MLflow Model Registry, log the report on the parent run and give
that run its description, key figures and cell list (``skinadv.tracking_ui``)."""

from __future__ import annotations

import tempfile
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from skinadv import experiment as exp
from skinadv import selection, tracking, tracking_ui
from skinadv.config import ExperimentConfig
from skinadv.evaluation.checks import Check, sanity_checks
from skinadv.key_figures import key_figures
from skinadv.evaluation.scale import eps_scale_images
from skinadv.models import load_model
from skinadv.report.page import report_title
from skinadv.results import ModelResult
from tasks import store
from tasks.refs import DataRef, GridRun, TrainedModel


def register_champions(experiment: str, results: list[ModelResult]) -> list[dict[str, Any]]:
    """Per method, the model chosen on the validation split (``selection.champions``)
    registered in the MLflow Model Registry as ``skinadv-<experiment>-<method>`` with the
    alias ``robust-champion`` and its model card; returns one row per champion for the
    report."""
    prefix = experiment if experiment.startswith("skinadv") else f"skinadv-{experiment}"
    rows = []
    for method, r in selection.champions(results).items():
        if r.run_id is None:
            continue
        name = f"{prefix}-{method}"
        description, tags = selection.champion_card(r, experiment=experiment)
        version = tracking.register_champion(name, r.run_id, description=description, tags=tags)
        key = tags["selected_by"]
        rows.append(
            {
                "method": method,
                "registered": f"{name} v{version} @{tracking.CHAMPION_ALIAS}",
                "cell": r.cell,
                "seed": r.seed,
                key: 100 * r.validation_metrics()[key],
            }
        )
    return rows


def _cell_links(results: list[ModelResult], parent_run_id: str) -> dict[str, str]:
    """Each cell's MLflow run page (its first seed's), when MLflow is a server; the grid's
    runs share its parent's experiment, looked up once."""
    first: dict[str, str] = {}
    for r in sorted(results, key=lambda r: r.seed):
        if r.run_id:
            first.setdefault(r.cell, r.run_id)
    if not first:
        return {}
    exp_id = tracking.client().get_run(parent_run_id).info.experiment_id
    urls = {cell: tracking.run_url(rid, exp_id) for cell, rid in first.items()}
    return {cell: url for cell, url in urls.items() if url.startswith("http")}


@task(name="gather", task_run_name="gather report", cache_policy=NO_CACHE)
def gather(
    cfg: ExperimentConfig,
    data: DataRef,
    models: list[TrainedModel],
    *,
    grid: GridRun,
    context: dict[str, Any],
) -> tuple[list[Check], dict[str, bytes]]:
    """Tables, figures and sanity checks from every model, logged on the parent run.
    Returns the checks and the report's files (``{name: content}``; the driver writes
    them where it wants: this task's node need not see the driver's folders)."""
    from skinadv.report import build_report, save_report

    results = [m.result for m in models]
    vanillas = sorted(
        (m for m in models if m.result.is_vanilla),
        key=lambda m: m.result.seed != cfg.seeds[0],  # the first seed's has the sweeps
    )
    sweeps, examples, eps_scale = None, [], []
    for m in vanillas:
        _, sweeps = tracking.load_result(m.run_id)
        if sweeps:
            break
    if vanillas:
        vanilla = vanillas[0]
        model, _ = load_model(store.weights(vanilla.run_id))
        test = data.load("test")
        sets = store.transfer_sets(vanilla.run_id)
        examples = exp.pick_examples(model, test, sets)
        eps_scale = eps_scale_images(model, *test.to_float(), (2 / 255, 8 / 255, 0.3))
        if not sweeps:  # the first seed's vanilla reused from a grid that ran other seeds
            sweeps = exp.sanity_sweeps(cfg, model, test, seed=vanilla.result.seed)
    checks = sanity_checks(results, sweeps)
    report = build_report(
        results,
        title=report_title(grid.experiment, cfg.name),
        context=context,
        champions=register_champions(grid.experiment, results),
        checks=checks,
        examples=examples,
        sweeps=sweeps,
        eps_scale=eps_scale,
        links=_cell_links(results, grid.parent_run_id),
    )
    with tempfile.TemporaryDirectory(prefix="report-", dir=store.node_dir()) as tmp:
        written = save_report(report, tmp)
        tracking.log_artifact_files(grid.parent_run_id, list(written.values()), "report")
        files = {name: path.read_bytes() for name, path in written.items()}
    cells = {r.key: r.run_id for r in results}
    tracking_ui.describe_parent(
        grid.parent_run_id,
        title=report.title,
        # the plain opening sentences where the report has them, then its headline
        lead="\n\n".join([" ".join(getattr(report, "glance", None) or []), report.headline]),
        figures=key_figures(results),
        cells=cells,
    )
    return checks, files
