"""Prefect tasks of the grid: thin wrappers that call skinadv and log to MLflow.

Each model task owns its MLflow run from start to end: it trains, scores both protocols,
logs, and ends the run. Reuse happens here, not in the flow: a task that finds a complete
run with its config hash returns that run's result in a ``Reused`` state and trains
nothing. Otherwise it claims the model (``skinadv.tracking_lease``): one live owner per
config hash, across grids and hosts, trains it under a heartbeat; a task that finds another
grid's live run training it waits for that run and reuses it. Every task returns a frozen
dataclass (``tasks.refs``), never a path: the data split and the pools travel inside them
(Ray's object store), weights and transfer sets through the MLflow run that logged them,
and a task's own files stay in its node's folder (``tasks.store``), so no node needs a disk
shared with another. A model task's final state message carries its key figure, which the
CLI's progress table and the Prefect UI show.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from skinadv import experiment as exp
from skinadv import tracking, tracking_lease, tracking_ui
from skinadv.bench.flops import train_cost_fields
from skinadv.config import DefenceConfig, ExperimentConfig
from skinadv.data import CLASSES
from skinadv.data.io import atomic_write_npz
from skinadv.models import load_model, save_model
from skinadv.results import ModelResult, cell_name
from skinadv.training import adversarial_pool, augment, mix_pool
from skinadv.training import prepare_data as prepare_split
from tasks import resources, store
from tasks.refs import DataRef, GridRun, Pool, TrainedModel


def use_assigned_resources() -> dict[str, float]:
    """Use what Ray gave this task: torch threads = its CPUs, so parallel cells don't
    oversubscribe, and a GPU share (``resources.use_assigned_gpu``: CUDA, or the CPU with a
    warning where this node has no real CUDA). Returns the assigned resources."""
    assigned = resources.assigned()
    n = int(assigned.get("CPU", 0))
    n = n or int(os.environ.get("SKINADV_TORCH_THREADS", "0")) or (os.cpu_count() or 1)
    exp.set_threads(n)
    resources.use_assigned_gpu(assigned)
    return assigned


def key_figure(r: ModelResult) -> str:
    """One line for the progress table and the Prefect UI: balanced accuracy and melanoma
    recall first (what a clinician reads), clean and under white-box PGD, then accuracy."""
    bal = r.transfer.value("clean", "balanced_accuracy")
    mel = (r.transfer.metrics["clean"].get("recall") or {}).get("mel")
    pgd = r.whitebox.value("pgd", "balanced_accuracy")
    parts = []
    if bal is not None:
        parts.append(f"bal. {bal:.1%}")
    if mel is not None:
        parts.append(f"mel {mel:.1%}")
    if pgd is not None:
        parts.append(f"PGD white-box bal. {pgd:.1%}")
    parts.append(f"acc. {r.transfer.accuracy():.1%}")
    return ", ".join(parts)


def _reusable(grid: GridRun, config_hash: str):
    return None if grid.force else tracking.find_complete(grid.experiment, config_hash)


def _reused(grid: GridRun, run, config_hash: str, waited_for: str | None = None) -> State:
    # an attempt of an earlier grid that died (Ctrl-C, a killed worker) may be RUNNING still;
    # a live owner (a --force grid's) is left alone
    tracking_lease.expire(grid.experiment, config_hash)
    result, _ = tracking.load_result(run.info.run_id)
    model = TrainedModel(result, config_hash, reused=True)
    rid = run.info.run_id[:8]
    how = f"waited for and reused MLflow run {rid}" if waited_for else f"MLflow run {rid}"
    return Completed(data=model, name="Reused", message=f"{key_figure(result)} ({how})")


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
    vanilla: TrainedModel | None,
    defence: DefenceConfig | None = None,
) -> State:
    """Train, score both protocols and log, inside one MLflow run this function owns (its
    claim on the model: ``tracking_lease``); or, when another grid's live run owns the
    model, wait for it and reuse it.

    The vanilla model (``method`` None, no ``vanilla``) also crafts the transfer sets from
    itself and, for the first seed only (the report reads one vanilla's), the sanity sweeps;
    other models are scored on ``vanilla``'s transfer sets. A ``defence`` trains on the fly
    (its ``method`` is the defence's). The weights and transfer sets are written to this
    node's folder under the run's id, then logged to the run."""
    cell = defence.name if defence is not None else cell_name(method, fraction)
    kind = "vanilla" if method is None else "defence" if defence is not None else "cell"
    test = data.load("test")
    val = data.load("val") if data.val else None
    resources.reset_gpu_peak()
    claim = tracking_lease.claim(
        grid.experiment,
        config_hash,
        reuse=not grid.force,
        logger=get_run_logger(),
        name=f"{cell}-s{seed}",
        kind=kind,
        params=params,
        tags={tracking.TAG_CELL: cell},
        parent_run_id=grid.parent_run_id,
    )
    if claim.reuse is not None:
        return _reused(grid, claim.reuse, config_hash, waited_for=claim.waited_for)
    with tracking_lease.held(claim.run_id) as run_id:
        splits = {"train": data.train, "validation": val, "test": test}
        tracking_ui.log_datasets(run_id, splits, fingerprint=data.fingerprint, spec=data.source)
        tracking.set_stage(run_id, "training")

        def on_epoch(s) -> None:
            metrics = {
                "train_loss": s.loss,
                "train_accuracy": s.train_acc,
                "epoch_seconds": s.seconds,
            }
            tracking.log_metrics(run_id, metrics, step=s.epoch)

        trained = exp.train_model(cfg, train, seed=seed, on_epoch=on_epoch, defence=defence)
        weights = store.run_dir(run_id, tracking.WEIGHTS_DIR) / f"{cell}-{config_hash}.pt"
        save_model(trained.model, weights, {"seed": seed, "config_hash": config_hash, "cell": cell})
        payload: dict[str, Any] = {}
        if vanilla is None:
            tracking.set_stage(run_id, "crafting transfer sets")
            sets = exp.transfer_sets(cfg, trained.model, test, seed=seed, progress=False, val=val)
            transfer = store.run_dir(run_id, tracking.TRANSFER_DIR) / f"transfer-{config_hash}.npz"
            atomic_write_npz(transfer, compress=False, **sets)
            if seed == cfg.seeds[0]:  # the report's sanity checks read one vanilla's sweeps
                payload["sweeps"] = exp.sanity_sweeps(cfg, trained.model, test, seed=seed)
        else:
            sets = store.transfer_sets(vanilla.run_id)
        tracking.set_stage(run_id, "scoring")
        result = exp.evaluate_both(
            cfg,
            trained.model,
            test,
            sets,
            method=method,
            fraction=fraction,
            seed=seed,
            run_id=run_id,
            cell=cell,
            val=val,
        )
        tracking.set_stage(run_id, "logging")
        # images, threads, FLOPs, precision, peaks: the report's "Training cost" table
        cost = {**trained.cost.as_dict(), **train_cost_fields(trained, cfg)}
        result = dataclasses.replace(result, cost=cost)
        tracking.log_metrics(run_id, result.flat_metrics())  # train_seconds, ... included
        tracking.log_metrics(run_id, resources.gpu_peak())  # on a GPU: for SKINADV_CELL_GPU_MB
        if trained.guard_triggered:  # fast-at's catastrophic-overfitting guard
            tracking.set_tags(run_id, {"skinadv.guard": f"restored epoch {trained.kept_epoch}"})
        tracking.log_result(run_id, {**result.to_dict(), **payload})
        tracking.log_figure(run_id, exp.confusion_figure(result), "confusion_matrix.png")
        files = [weights, Path(str(weights) + ".json")]
        tracking.log_artifact_files(run_id, files, tracking.WEIGHTS_DIR)
        # the same weights as an MLflow model (pt2): the UI's Models column, pyfunc loading
        example = test.subset(np.arange(min(2, len(test)))).to_float()[0]
        meta = {
            "cell": cell,
            "seed": seed,
            "config_hash": config_hash,
            "classes": list(CLASSES),
            "skinadv_config": dict(getattr(trained.model, "skinadv_config", {})),
        }
        tracking_ui.log_model(run_id, trained.model, example, metadata=meta, tags={"cell": cell})
        if vanilla is None:
            tracking.log_artifact_files(run_id, [transfer], tracking.TRANSFER_DIR)
    return Completed(data=TrainedModel(result, config_hash), message=key_figure(result))


# NO_CACHE on every task: their inputs hold whole data splits and pools, which Prefect would
# otherwise hash for a cache key it never uses (reuse is MLflow's, by config hash).
@task(
    name="prepare-data",
    task_run_name="prepare data",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def prepare_data(cfg: ExperimentConfig, grid: GridRun) -> DataRef:
    """Load, subset, split and oversample the data; the split travels in the returned ref."""
    prep = prepare_split(cfg.data)
    get_run_logger().info("data %s (%s): %s", cfg.data.spec, prep.test.kind, prep.summary())
    return DataRef(
        train=prep.train,
        test=prep.test,
        fingerprint=prep.fingerprint,
        kind=prep.test.kind,
        source=cfg.data.spec,
        val=prep.val,
    )


@task(
    name="train-vanilla",
    task_run_name="vanilla s{seed}",
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def train_vanilla(cfg: ExperimentConfig, data: DataRef, *, seed: int, grid: GridRun) -> State:
    """Train the vanilla model, craft the transfer sets from it, score it, end its run."""
    use_assigned_resources()
    h = exp.vanilla_hash(cfg, data.fingerprint, seed)
    run = _reusable(grid, h)
    if run is not None:
        return _reused(grid, run, h)
    params = {**_params(cfg, data, seed, h), "method": "none", "fraction": 0.0}
    return _train_and_score(
        cfg,
        data,
        data.load("train"),
        grid=grid,
        method=None,
        fraction=None,
        seed=seed,
        config_hash=h,
        params=params,
        vanilla=None,
    )


def _cell_hash(cfg: ExperimentConfig, vanilla: TrainedModel, method: str, fraction: float) -> str:
    seed = vanilla.result.seed
    recipe = exp.pool_recipe(cfg.methods, method)
    return exp.cell_hash(
        vanilla.config_hash, cfg, method, fraction, seed, max(cfg.fractions), pool_recipe=recipe
    )


def _craft(cfg: ExperimentConfig, data: DataRef, vanilla: TrainedModel, method: str, seed: int):
    """``method``'s pool against the vanilla model, for the grid's largest fraction."""
    model, _ = load_model(store.weights(vanilla.run_id))
    x, y = data.load("train").to_float()
    return adversarial_pool(
        model,
        x,
        y,
        method=method,
        fraction=max(cfg.fractions),
        attack_cfg=cfg.attack,
        seed=seed,
        progress=False,
    )


@task(
    name="craft-pool",
    task_run_name="pool {method} s{seed}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def craft_pool(
    cfg: ExperimentConfig,
    data: DataRef,
    vanilla: TrainedModel,
    *,
    method: str,
    seed: int,
    grid: GridRun,
    fgsm: Pool | None = None,
    pgd: Pool | None = None,
) -> State:
    """One method's adversarial pool against the vanilla model, for the largest fraction;
    skipped when every cell of the method will be reused. Given the grid's ``fgsm`` and
    ``pgd`` pools, the mix pool is composed from them (``mix_pool``), not crafted; a source
    skipped (its own cells reused) is crafted here, so the composition is the same."""
    use_assigned_resources()
    todo = [
        f for f in cfg.fractions if _reusable(grid, _cell_hash(cfg, vanilla, method, f)) is None
    ]
    if not todo:
        return Completed(data=Pool(method, seed, None), name="Skipped", message="all cells reused")
    if fgsm is None and pgd is None:
        pool = _craft(cfg, data, vanilla, method, seed)
        return Completed(data=Pool(method, seed, pool), message=f"{len(todo)} cell(s) need it")
    if method != "mix" or fgsm is None or pgd is None:
        raise ValueError(f"only a mix pool is composed, from an fgsm and a pgd pool ({method})")
    src = {
        p.method: _craft(cfg, data, vanilla, p.method, seed) if p.pool is None else p.pool
        for p in (fgsm, pgd)
    }
    pool = mix_pool(src["fgsm"], src["pgd"], fraction=max(cfg.fractions))
    msg = f"from the fgsm and pgd pools; {len(todo)} cell(s) need it"
    return Completed(data=Pool(method, seed, pool), message=msg)


def _cell_run_name() -> str:
    """``pgd@0.8 s0``: the cell's name in the Prefect UI and the CLI's progress table."""
    from prefect.runtime import task_run

    p = task_run.parameters
    return model_label(p["method"], p["fraction"], p["seed"])


def model_label(method: str | None, fraction: float | None, seed: int) -> str:
    return f"{cell_name(method, fraction)} s{seed}"


@task(
    name="train-cell",
    task_run_name=_cell_run_name,
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
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
    use_assigned_resources()
    h = _cell_hash(cfg, vanilla, method, fraction)
    run = _reusable(grid, h)
    if run is not None:
        return _reused(grid, run, h)
    if pool.pool is None:
        raise RuntimeError(f"the {method} pool was skipped but {method}@{fraction:g} needs it")
    x, y = data.load("train").to_float()
    adv = pool.pool
    xa, ya = augment(x, y, adv, fraction)
    params = {
        **_params(cfg, data, seed, h),
        "method": method,
        "fraction": fraction,
        "n_adversarial": int(len(ya) - len(y)),
        "vanilla_run_id": vanilla.run_id,
        "pool_fraction": adv.fraction,
        "pool_recipe": exp.pool_recipe(cfg.methods, method) or "crafted",
    }
    return _train_and_score(
        cfg,
        data,
        (xa, ya),
        grid=grid,
        method=method,
        fraction=fraction,
        seed=seed,
        config_hash=h,
        params=params,
        vanilla=vanilla,
    )


def _defence_run_name() -> str:
    """``pgd-at@2_255 s0``: the defence's name in the Prefect UI and the progress table."""
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['defence'].name} s{p['seed']}"


@task(
    name="train-defence",
    task_run_name=_defence_run_name,
    retries=2,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
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
    use_assigned_resources()
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
    return _train_and_score(
        cfg,
        data,
        data.load("train"),
        grid=grid,
        method=defence.method,
        fraction=None,
        seed=seed,
        config_hash=h,
        params=params,
        vanilla=vanilla,
        defence=defence,
    )
