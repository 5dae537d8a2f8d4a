"""Prefect tasks of the grid: thin wrappers that call skinadv and log to MLflow.

Each model task owns its MLflow run from start to end (``tracking.owned_run``): it trains,
scores both protocols, logs, and ends the run. Reuse happens here, not in the flow: a task
that finds a complete run with its config hash returns that run's result in a ``Reused``
state and trains nothing. Every task returns a small frozen dataclass (``tasks.refs``),
never tensors; a model task's final state message carries its key figure, which the CLI's
progress table and the Prefect UI show.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.states import Completed, State

from skinadv import experiment as exp
from skinadv import selection, tracking
from skinadv.config import DefenceConfig, ExperimentConfig
from skinadv.data.io import atomic_write_npz
from skinadv.evaluation.checks import Check, sanity_checks
from skinadv.models import load_model, save_model
from skinadv.results import ModelResult, cell_name
from skinadv.training import AdvPool, adversarial_pool, augment
from skinadv.training import prepare_data as prepare_split
from tasks.refs import DataRef, GridRun, Pool, TrainedModel


def _use_assigned_threads() -> int:
    """torch threads = the CPUs Ray gave this task, so parallel cells don't oversubscribe."""
    n = 0
    try:
        import ray

        if ray.is_initialized():
            n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    except Exception:  # not inside a Ray worker
        n = 0
    n = n or int(os.environ.get("SKINADV_TORCH_THREADS", "0")) or (os.cpu_count() or 1)
    exp.set_threads(n)
    return n


def _load_sets(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _key_figure(r: ModelResult) -> str:
    """One line for the progress table and the Prefect UI: clean and white-box PGD."""
    clean = r.transfer.value("clean", "balanced_accuracy")
    pgd = r.whitebox.value("pgd", "accuracy")
    parts = [f"clean {r.transfer.accuracy():.1%}"]
    if clean is not None:
        parts.append(f"bal. {clean:.1%}")
    if pgd is not None:
        parts.append(f"PGD white-box {pgd:.1%}")
    return ", ".join(parts)


def _reusable(grid: GridRun, config_hash: str):
    return None if grid.force else tracking.find_complete(grid.experiment, config_hash)


def _reused(grid: GridRun, run, config_hash: str, transfer: Path | None = None) -> State:
    # an attempt of an earlier grid that died (Ctrl-C, a killed worker) may be RUNNING still
    tracking.kill_stale(grid.experiment, config_hash, reason="attempt died; a complete run exists")
    result, _ = tracking.load_result(run.info.run_id)
    weights = str(grid.weights(result.cell, config_hash))
    model = TrainedModel(result, config_hash, weights, transfer and str(transfer), True)
    return Completed(
        data=model,
        name="Reused",
        message=f"{_key_figure(result)} (MLflow run {run.info.run_id[:8]})",
    )


def _transfer_sets(vanilla: TrainedModel) -> str:
    """The vanilla model's transfer sets, downloaded from its run when they are not in this
    work folder (a reused model, or another node)."""
    assert vanilla.transfer is not None
    p = Path(vanilla.transfer)
    if not p.is_file():
        got = tracking.download_artifact(vanilla.run_id, tracking.TRANSFER_DIR, p.parent / ".dl")
        os.replace(next(got.glob("*.npz")), p)
    return str(p)


def _weights(model: TrainedModel) -> str:
    if not Path(model.weights).is_file():
        got = tracking.download_weights(model.run_id, Path(model.weights).parent / model.run_id)
        os.replace(got, model.weights)
        os.replace(str(got) + ".json", model.weights + ".json")
    return model.weights


def _params(cfg: ExperimentConfig, data: DataRef, seed: int, h: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "config_hash": h,
        "data_fingerprint": data.fingerprint,
        "data_source": data.source,
        "data_kind": data.kind,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "n_val": data.n_val,
        "preset": cfg.name,
        "code_version": exp.__version__,
        "model": cfg.model.name,
        "model_width": cfg.model.width,
        "epochs": cfg.train.epochs,
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "fgsm_eps": cfg.attack.fgsm.eps,
        **{f"pgd_{k}": v for k, v in cfg.attack.pgd.model_dump().items()},
    }


def _train_and_score(
    cfg: ExperimentConfig,
    data: DataRef,
    train: Any,
    *,
    grid: GridRun,
    method: str | None,
    fraction: float | None,
    seed: int,
    config_hash: str,
    params: dict[str, Any],
    transfer: str | None,
    defence: DefenceConfig | None = None,
) -> TrainedModel:
    """Train, score both protocols and log, inside one MLflow run this function owns.

    The vanilla model (``method`` None) also crafts the transfer sets (from itself, so
    ``transfer`` is where to write them) and the sanity sweeps. A ``defence`` trains on the
    fly (its ``method`` is the defence's)."""
    cell = defence.name if defence is not None else cell_name(method, fraction)
    kind = "vanilla" if method is None else "defence" if defence is not None else "cell"
    stale = tracking.kill_stale(grid.experiment, config_hash, reason="attempt died; retried")
    if stale:
        get_run_logger().warning("%s: marked %d dead attempt(s) KILLED", cell, len(stale))
    weights = grid.weights(cell, config_hash)
    test = data.load("test")
    val = data.load("val") if data.val else None
    with tracking.owned_run(
        grid.experiment,
        name=f"{cell}-s{seed}",
        kind=kind,
        params=params,
        tags={tracking.TAG_HASH: config_hash, tracking.TAG_CELL: cell},
        parent_run_id=grid.parent_run_id,
    ) as run_id:
        tracking.set_stage(run_id, "training")

        def on_epoch(s) -> None:
            metrics = {
                "train_loss": s.loss,
                "train_accuracy": s.train_acc,
                "epoch_seconds": s.seconds,
            }
            tracking.log_metrics(run_id, metrics, step=s.epoch)

        trained = exp.train_model(cfg, train, seed=seed, on_epoch=on_epoch, defence=defence)
        save_model(trained.model, weights, {"seed": seed, "config_hash": config_hash, "cell": cell})
        payload: dict[str, Any] = {}
        if method is None:
            tracking.set_stage(run_id, "crafting transfer sets")
            sets = exp.transfer_sets(cfg, trained.model, test, seed=seed, progress=False, val=val)
            atomic_write_npz(transfer, compress=False, **sets)
            payload["sweeps"] = exp.sanity_sweeps(cfg, trained.model, test, seed=seed)
        tracking.set_stage(run_id, "scoring")
        result = exp.evaluate_both(
            cfg,
            trained.model,
            test,
            _load_sets(transfer),
            method=method,
            fraction=fraction,
            seed=seed,
            run_id=run_id,
            cell=cell,
            val=val,
        )
        tracking.set_stage(run_id, "logging")
        result = dataclasses.replace(result, cost=trained.cost.as_dict())
        tracking.log_metrics(run_id, result.flat_metrics())  # train_seconds, ... included
        if trained.guard_triggered:  # fast-at's catastrophic-overfitting guard
            tracking.set_tags(run_id, {"skinadv.guard": f"restored epoch {trained.kept_epoch}"})
        tracking.log_result(run_id, {**result.to_dict(), **payload})
        tracking.log_figure(run_id, exp.confusion_figure(result), "confusion_matrix.png")
        files = [weights, Path(str(weights) + ".json")]
        tracking.log_artifact_files(run_id, files, tracking.WEIGHTS_DIR)
        if method is None:
            tracking.log_artifact_files(run_id, [transfer], tracking.TRANSFER_DIR)
    return TrainedModel(result, config_hash, str(weights), transfer if method is None else None)


@task(name="prepare-data", task_run_name="prepare data", retries=1, retry_delay_seconds=5)
def prepare_data(cfg: ExperimentConfig, grid: GridRun) -> DataRef:
    """Load, subset, split and oversample the data; write both sides as canonical npz."""
    prep = prepare_split(cfg.data)
    folder = grid.path("data", f"{prep.fingerprint}-{exp.config_hash(cfg.data)}", "x").parent
    sides = {"train": prep.train, "test": prep.test, "val": prep.val}
    paths = {k: folder / f"{k}.npz" for k, ds in sides.items() if ds is not None}
    for k, p in paths.items():
        if not p.is_file():
            sides[k].save_npz(p)
    get_run_logger().info("data %s (%s): %s", cfg.data.spec, prep.test.kind, prep.summary())
    return DataRef(
        train=str(paths["train"]),
        test=str(paths["test"]),
        fingerprint=prep.fingerprint,
        kind=prep.test.kind,
        source=cfg.data.spec,
        n_train=len(prep.train),
        n_test=len(prep.test),
        val=str(paths["val"]) if "val" in paths else None,
        n_val=0 if prep.val is None else len(prep.val),
        size=cfg.data.size,
    )


@task(name="train-vanilla", task_run_name="vanilla s{seed}", retries=2, retry_delay_seconds=5)
def train_vanilla(cfg: ExperimentConfig, data: DataRef, *, seed: int, grid: GridRun) -> State:
    """Train the vanilla model, craft the transfer sets from it, score it, end its run."""
    _use_assigned_threads()
    h = exp.vanilla_hash(cfg, data.fingerprint, seed)
    transfer = grid.path("adv", f"transfer-{h}.npz")
    run = _reusable(grid, h)
    if run is not None:
        return _reused(grid, run, h, transfer)
    params = {**_params(cfg, data, seed, h), "method": "none", "fraction": 0.0}
    model = _train_and_score(
        cfg,
        data,
        data.load("train"),
        grid=grid,
        method=None,
        fraction=None,
        seed=seed,
        config_hash=h,
        params=params,
        transfer=str(transfer),
    )
    return Completed(data=model, message=_key_figure(model.result))


def _cell_hash(cfg: ExperimentConfig, vanilla: TrainedModel, method: str, fraction: float) -> str:
    seed = vanilla.result.seed
    return exp.cell_hash(vanilla.config_hash, cfg, method, fraction, seed, max(cfg.fractions))


@task(name="craft-pool", task_run_name="pool {method} s{seed}", retries=1, retry_delay_seconds=5)
def craft_pool(
    cfg: ExperimentConfig,
    data: DataRef,
    vanilla: TrainedModel,
    *,
    method: str,
    seed: int,
    grid: GridRun,
) -> State:
    """One method's adversarial pool against the vanilla model, for the largest fraction;
    skipped when every cell of the method will be reused."""
    _use_assigned_threads()
    todo = [
        f for f in cfg.fractions if _reusable(grid, _cell_hash(cfg, vanilla, method, f)) is None
    ]
    if not todo:
        return Completed(data=Pool(method, seed, None), name="Skipped", message="all cells reused")
    fraction = max(cfg.fractions)
    path = grid.path("adv", f"pool-{method}-{fraction}-{vanilla.config_hash}.npz")
    if not path.is_file():
        model, _ = load_model(_weights(vanilla))
        x, y = data.load("train").to_float()
        adversarial_pool(
            model,
            x,
            y,
            method=method,
            fraction=fraction,
            attack_cfg=cfg.attack,
            seed=seed,
            progress=False,
        ).save(path)
    return Completed(data=Pool(method, seed, str(path)), message=f"{len(todo)} cell(s) need it")


def _cell_run_name() -> str:
    """``pgd@0.8 s0``: the cell's name in the Prefect UI and the CLI's progress table."""
    from prefect.runtime import task_run

    p = task_run.parameters
    return model_label(p["method"], p["fraction"], p["seed"])


def model_label(method: str | None, fraction: float | None, seed: int) -> str:
    return f"{cell_name(method, fraction)} s{seed}"


@task(name="train-cell", task_run_name=_cell_run_name, retries=2, retry_delay_seconds=5)
def train_cell(
    cfg: ExperimentConfig,
    data: DataRef,
    vanilla: TrainedModel,
    pool: Pool,
    *,
    method: str,
    fraction: float,
    seed: int,
    grid: GridRun,
) -> State:
    """Train a fresh model on the training set + round(fraction * n) adversarial examples,
    score it under both protocols and end its run."""
    _use_assigned_threads()
    h = _cell_hash(cfg, vanilla, method, fraction)
    run = _reusable(grid, h)
    if run is not None:
        return _reused(grid, run, h)
    if pool.path is None:
        raise RuntimeError(f"the {method} pool was skipped but {method}@{fraction:g} needs it")
    x, y = data.load("train").to_float()
    adv = AdvPool.load(pool.path)
    xa, ya = augment(x, y, adv, fraction)
    params = {
        **_params(cfg, data, seed, h),
        "method": method,
        "fraction": fraction,
        "n_adversarial": int(len(ya) - len(y)),
        "vanilla_run_id": vanilla.run_id,
        "pool_fraction": adv.fraction,
    }
    transfer = _transfer_sets(vanilla)
    model = _train_and_score(
        cfg,
        data,
        (xa, ya),
        grid=grid,
        method=method,
        fraction=fraction,
        seed=seed,
        config_hash=h,
        params=params,
        transfer=transfer,
    )
    return Completed(data=model, message=_key_figure(model.result))


def _defence_run_name() -> str:
    """``pgd-at@2_255 s0``: the defence's name in the Prefect UI and the progress table."""
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['defence'].name} s{p['seed']}"


@task(name="train-defence", task_run_name=_defence_run_name, retries=2, retry_delay_seconds=5)
def train_defence(
    cfg: ExperimentConfig,
    data: DataRef,
    vanilla: TrainedModel,
    *,
    defence: DefenceConfig,
    seed: int,
    grid: GridRun,
) -> State:
    """Train a fresh model adversarially on the fly (PGD-AT, TRADES, Fast-AT), score it
    under both protocols and end its run."""
    _use_assigned_threads()
    h = exp.defence_hash(vanilla.config_hash, defence)
    run = _reusable(grid, h)
    if run is not None:
        return _reused(grid, run, h)
    params = {
        **_params(cfg, data, seed, h),
        "method": defence.method,
        "fraction": "none",
        "train_eps": defence.eps,
        "defence": defence.model_dump(),
        "vanilla_run_id": vanilla.run_id,
    }
    model = _train_and_score(
        cfg,
        data,
        data.load("train"),
        grid=grid,
        method=defence.method,
        fraction=None,
        seed=seed,
        config_hash=h,
        params=params,
        transfer=_transfer_sets(vanilla),
        defence=defence,
    )
    return Completed(data=model, message=_key_figure(model.result))


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


@task(name="gather", task_run_name="gather report")
def gather(
    cfg: ExperimentConfig,
    data: DataRef,
    models: list[TrainedModel],
    *,
    grid: GridRun,
    context: dict[str, Any],
) -> tuple[list[Check], dict[str, str]]:
    """Tables, figures and sanity checks from every model; written to the grid's report
    folder and logged on the parent run. Returns the checks and the files written."""
    from skinadv.report import build_report, save_report

    results = [m.result for m in models]
    vanilla = next((m for m in models if m.result.is_vanilla), None)
    sweeps, examples = None, []
    if vanilla is not None:
        _, sweeps = tracking.load_result(vanilla.run_id)
        transfer = _transfer_sets(vanilla)
        model, _ = load_model(_weights(vanilla))
        examples = exp.pick_examples(model, data.load("test"), _load_sets(transfer))
    checks = sanity_checks(results, sweeps)
    report = build_report(
        results,
        title=f"skinadv grid: {grid.experiment}",
        context=context,
        champions=register_champions(grid.experiment, results),
        checks=checks,
        examples=examples,
        sweeps=sweeps,
    )
    written = save_report(report, grid.out_dir)
    tracking.log_artifact_files(grid.parent_run_id, list(written.values()), "report")
    cells = {r.key: r.run_id for r in results}
    tracking.set_tags(grid.parent_run_id, {tracking.TAG_CELLS: json.dumps(cells)})
    return checks, {k: str(v) for k, v in written.items()}
