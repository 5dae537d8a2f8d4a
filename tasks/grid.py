"""Prefect tasks of the grid: thin wrappers that call skinadv and log to MLflow.

Each returns something small and picklable (paths, run ids, metric dicts), never tensors.
Big intermediate arrays (data splits, transfer sets, pools, weights) live as files in the
grid's work folder, which every Ray worker can read (one machine, or a shared volume).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from skinadv import experiment as exp
from skinadv import tracking
from skinadv.config import ExperimentConfig
from skinadv.data import load_dataset
from skinadv.data.io import atomic_write_npz
from skinadv.models import load_model, save_model
from skinadv.training import AdvPool, adversarial_pool, augment, prepare_data


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


def _load_split(data: dict[str, Any]):
    return load_dataset(data["train"]), load_dataset(data["test"])


def _load_sets(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@task(name="prepare-data", retries=1, retry_delay_seconds=5)
def prepare_data_task(cfg: ExperimentConfig, workdir: str) -> dict[str, Any]:
    """Load, subset, split and oversample the data; write the two sides as canonical npz."""
    prep = prepare_data(cfg.data)
    folder = Path(workdir) / "data" / f"{prep.fingerprint}-{exp.config_hash(cfg.data)}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": folder / "train.npz", "test": folder / "test.npz"}
    if not all(p.is_file() for p in paths.values()):
        prep.train.save_npz(paths["train"])
        prep.test.save_npz(paths["test"])
    get_run_logger().info("data %s (%s): %s", cfg.data.spec, prep.test.kind, prep.summary())
    return {
        **{k: str(v) for k, v in paths.items()},
        **prep.summary(),
        "kind": prep.test.kind,
        "source": cfg.data.spec,
    }


def _log_training(run_id: str):
    def hook(stats) -> None:
        tracking.log_metrics(
            run_id,
            {
                "train_loss": stats.loss,
                "train_accuracy": stats.train_acc,
                "epoch_seconds": stats.seconds,
            },
            step=stats.epoch,
        )

    return hook


def _common_params(cfg: ExperimentConfig, data: dict[str, Any], seed: int, h: str) -> dict:
    return {
        "seed": seed,
        "config_hash": h,
        "data_fingerprint": data["fingerprint"],
        "data_source": data["source"],
        "data_kind": data["kind"],
        "n_train": data["n_train"],
        "n_test": data["n_test"],
        "preset": cfg.name,
        "code_version": exp.__version__,
        "model": cfg.model.name,
        "model_width": cfg.model.width,
        "epochs": cfg.train.epochs,
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "fgsm_eps": cfg.attack.fgsm.eps,
        "pgd_eps": cfg.attack.pgd.eps,
        "pgd_alpha": cfg.attack.pgd.alpha,
        "pgd_steps": cfg.attack.pgd.steps,
        "pgd_random_start": cfg.attack.pgd.random_start,
        "pgd_restarts": cfg.attack.pgd.restarts,
        "pgd_norm": cfg.attack.pgd.norm,
    }


def _train_child_run(
    cfg: ExperimentConfig,
    train: Any,
    *,
    cell: str,
    kind: str,
    params: dict[str, Any],
    seed: int,
    config_hash: str,
    experiment: str,
    parent_run_id: str,
    weights: Path,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Train one model inside a nested MLflow run (left open until it is evaluated) and save
    its weights; what the evaluate task needs comes back."""
    with tracking.child_run(
        experiment,
        name=f"{cell}-s{seed}",
        kind=kind,
        params=params,
        tags={tracking.TAG_HASH: config_hash, tracking.TAG_CELL: cell},
        parent_run_id=parent_run_id,
    ) as run_id:
        result = exp.train_model(cfg, train, seed=seed, on_epoch=_log_training(run_id))
        save_model(result.model, weights, {"seed": seed, "config_hash": config_hash, **meta})
    return {
        "run_id": run_id,
        "weights": str(weights),
        "cell": cell,
        "seed": seed,
        "train_seconds": result.seconds,
    }


@task(name="train-vanilla", retries=2, retry_delay_seconds=5)
def train_vanilla(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    *,
    seed: int,
    config_hash: str,
    experiment: str,
    parent_run_id: str,
    workdir: str,
) -> dict[str, Any]:
    """Train the vanilla model as a nested MLflow run (left open until it is evaluated)."""
    _use_assigned_threads()
    train, _ = _load_split(data)
    params = {**_common_params(cfg, data, seed, config_hash), "method": "none", "fraction": 0.0}
    return _train_child_run(
        cfg, train, cell="vanilla", kind="vanilla", params=params, seed=seed,
        config_hash=config_hash, experiment=experiment, parent_run_id=parent_run_id,
        weights=Path(workdir) / "models" / f"vanilla-{config_hash}.pt", meta={},
    )


@task(name="fetch-model", retries=2, retry_delay_seconds=5)
def fetch_weights(run_id: str, workdir: str) -> dict[str, Any]:
    """The state dict of a reused run, downloaded from MLflow into the work folder."""
    dst = Path(workdir) / "models" / f"run-{run_id}"
    return {"run_id": run_id, "weights": str(tracking.download_weights(run_id, dst))}


@task(name="craft-transfer-sets", retries=1, retry_delay_seconds=5)
def craft_transfer(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    vanilla: dict[str, Any],
    *,
    config_hash: str,
    workdir: str,
) -> str:
    """FGSM / PGD test sets crafted once against the vanilla model (transfer protocol)."""
    _use_assigned_threads()
    path = Path(workdir) / "adv" / f"transfer-{config_hash}.npz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        model, _ = load_model(vanilla["weights"])
        _, test = _load_split(data)
        atomic_write_npz(
            path, compress=False, **exp.transfer_sets(cfg, model, test, progress=False)
        )
    return str(path)


@task(name="craft-pool", retries=1, retry_delay_seconds=5)
def craft_pool(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    vanilla: dict[str, Any],
    *,
    method: str,
    seed: int,
    config_hash: str,
    workdir: str,
) -> str:
    """One method's adversarial pool, crafted once for the largest fraction."""
    _use_assigned_threads()
    fraction = max(cfg.fractions)
    path = Path(workdir) / "adv" / f"pool-{method}-{fraction}-{config_hash}.npz"
    if not path.is_file():
        model, _ = load_model(vanilla["weights"])
        train, _ = _load_split(data)
        x, y = train.to_float()
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
    return str(path)


@task(name="train-cell", retries=2, retry_delay_seconds=5)
def train_cell(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    pool_path: str,
    *,
    method: str,
    fraction: float,
    seed: int,
    config_hash: str,
    vanilla: dict[str, Any],
    experiment: str,
    parent_run_id: str,
    workdir: str,
) -> dict[str, Any]:
    """Train a fresh model on the training set + round(fraction * n) adversarial examples."""
    _use_assigned_threads()
    train, _ = _load_split(data)
    x, y = train.to_float()
    pool = AdvPool.load(pool_path)
    xa, ya = augment(x, y, pool, fraction)
    name = f"{method}@{fraction:g}"
    params = {
        **_common_params(cfg, data, seed, config_hash),
        "method": method,
        "fraction": fraction,
        "n_adversarial": int(len(ya) - len(y)),
        "vanilla_run_id": vanilla["run_id"],
        "pool_fraction": pool.fraction,
    }
    return _train_child_run(
        cfg, (xa, ya), cell=name, kind="cell", params=params, seed=seed,
        config_hash=config_hash, experiment=experiment, parent_run_id=parent_run_id,
        weights=Path(workdir) / "models" / f"cell-{config_hash}.pt",
        meta={"method": method, "fraction": fraction},
    )


@task(name="evaluate", retries=2, retry_delay_seconds=5)
def evaluate_model(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    trained: dict[str, Any],
    transfer_path: str,
    *,
    is_vanilla: bool = False,
) -> dict[str, Any]:
    """Score under both protocols, log metrics + model + confusion matrices, finish the run."""
    _use_assigned_threads()
    run_id = trained["run_id"]
    try:
        model, _ = load_model(trained["weights"])
        _, test = _load_split(data)
        sets = _load_sets(transfer_path)
        evals = exp.evaluate_both(
            cfg, model, test, sets, is_vanilla=is_vanilla, seed=trained["seed"]
        )
        payload: dict[str, Any] = {"evaluation": evals}
        if is_vanilla:
            payload["sweeps"] = exp.sanity_sweeps(cfg, model, test, seed=trained["seed"])
        metrics = exp.flat_metrics(evals)
        tracking.log_metrics(run_id, metrics)
        tracking.log_text(run_id, json.dumps(payload), "evaluation.json")
        tracking.log_figure(
            run_id, exp.confusion_figure(evals, trained["cell"]), "confusion_matrix.png"
        )
        tracking.log_torch_model(
            run_id, model, weights=trained["weights"], config_json=trained["weights"] + ".json"
        )
        tracking.finish_run(run_id)
    except BaseException as exc:
        tracking.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    return {"run_id": run_id, "cell": trained["cell"], "metrics": metrics}


@task(name="gather")
def gather(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    run_ids: list[str],
    *,
    vanilla: dict[str, Any] | None,
    transfer_path: str | None,
    parent_run_id: str,
    out_dir: str,
    context: dict[str, Any],
) -> dict[str, Any]:
    """Tables + figures from every cell's MLflow run; written to out_dir and the parent run."""
    from skinadv.report import build_report, save_report

    records, evals, sweeps = tracking.load_results(run_ids)
    examples = []
    if vanilla and transfer_path:
        model, _ = load_model(vanilla["weights"])
        _, test = _load_split(data)
        examples = exp.pick_examples(model, test, _load_sets(transfer_path))
    report = build_report(
        records,
        title=f"skinadv grid: {context.get('experiment', '')}",
        context=context,
        checks=exp.run_sanity_checks(evals, sweeps),
        examples=examples,
    )
    written = save_report(report, out_dir)
    tracking.log_artifact_files(parent_run_id, list(written.values()), "report")
    tracking.set_tags(
        parent_run_id,
        {
            tracking.TAG_CELLS: json.dumps(
                {f"{r['cell']}-s{r['seed']}": r["run_id"] for r in records}
            )
        },
    )
    return {
        "out_dir": out_dir,
        "files": {k: str(v) for k, v in written.items()},
        "records": records,
        "checks": report.checks,
    }
