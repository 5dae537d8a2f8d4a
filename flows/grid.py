"""The grid flow: prepare data -> vanilla -> transfer sets -> pools -> 12 cells on Ray ->
both protocols -> gather. Flows only orchestrate; the science is in skinadv, the MLflow
logging in tasks/.

Import this module only after ``PREFECT_API_URL`` is in the environment (skinadv.stack
does that): Prefect reads its settings at import.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from skinadv import experiment as exp
from skinadv import tracking
from skinadv.commands import console
from skinadv.config import ExperimentConfig, describe_error, grid_config
from skinadv.report import records_table
from tasks.grid import (
    craft_pool,
    craft_transfer,
    evaluate_model,
    fetch_weights,
    gather,
    prepare_data_task,
    train_cell,
    train_vanilla,
)

POOL_COST_ORDER = ("pgd", "mix", "fgsm")


def ray_resources() -> dict[str, float]:
    """Per-cell Ray resources: 1 CPU (torch threads match), plus a GPU share when the Ray
    cluster has GPUs (a CPU head with GPU workers counts) or CUDA is visible here.

    ``SKINADV_GPU_PER_CELL`` sets the share (default 0.25: four cells per GPU).
    """
    gpus = 0.0
    try:
        import ray

        if ray.is_initialized():
            gpus = float(ray.cluster_resources().get("GPU", 0.0))
    except Exception:  # no Ray here: fall back to this process's view
        gpus = 0.0
    if not gpus:
        import torch

        gpus = float(torch.cuda.device_count())
    if gpus:
        return {"num_cpus": 1, "num_gpus": float(os.environ.get("SKINADV_GPU_PER_CELL", "0.25"))}
    return {"num_cpus": 1}


class Progress:
    """Which cells are queued, training, evaluating, done, reused or failed."""

    def __init__(self, labels: list[str]) -> None:
        self.status = {label: "queued" for label in labels}
        self.futures: dict[str, list[tuple[str, PrefectFuture]]] = {}
        self.started = time.perf_counter()

    def track(self, label: str, stage: str, future: PrefectFuture) -> None:
        self.futures.setdefault(label, []).append((stage, future))

    def set(self, label: str, status: str) -> None:
        if self.status.get(label) != status:
            self.status[label] = status
            counts = {
                s: sum(v == s for v in self.status.values()) for s in ("done", "reused", "failed")
            }
            console.print(
                f"[dim]{time.perf_counter() - self.started:6.0f}s[/] "
                f"{label:<12} {status:<10} "
                f"[dim]({counts['done']} done, {counts['reused']} reused, "
                f"{counts['failed']} failed of {len(self.status)})[/]"
            )

    def poll(self) -> None:
        for label, stages in self.futures.items():
            if self.status[label] in ("done", "failed", "reused"):
                continue
            status = self.status[label]
            for stage, fut in stages:
                fut.wait(timeout=0)
                state = fut.state
                if state.is_failed() or state.is_crashed():
                    status = "failed"
                    break
                if state.is_completed():
                    status = "done" if stage == "evaluating" else status
                    continue
                if state.is_running():
                    status = stage
                break
            self.set(label, status)

    def wait_all(self, interval: float = 2.0) -> None:
        while any(s not in ("done", "failed", "reused") for s in self.status.values()):
            self.poll()
            time.sleep(interval)


@flow(name="skinadv-grid", log_prints=True)
def grid_flow(
    preset: str = "quick",
    data: str | None = None,
    methods: list[str] | None = None,
    fractions: list[float] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    experiment: str = "skinadv-grid",
    force: bool = False,
    workdir: str = "skinadv-runs/work",
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Train and score the methods x fractions grid; reuse finished cells unless ``force``."""
    logger = get_run_logger()
    cfg = grid_config(
        preset, data=data, methods=methods, fractions=fractions, seeds=seeds, overrides=overrides
    )
    workdir = str(Path(workdir).resolve())
    out_dir = str(Path(out_dir or Path(workdir).parent / "report" / experiment).resolve())
    parent = tracking.start_run(
        experiment,
        name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
        kind="parent",
        params={
            "preset": cfg.name,
            "data": cfg.data.spec,
            "methods": cfg.methods,
            "fractions": cfg.fractions,
            "seeds": cfg.seeds,
            "force": force,
            "config_hash": exp.config_hash(cfg),
            "code_version": exp.__version__,
        },
    )
    logger.info("MLflow experiment %r, parent run %s", experiment, parent)
    try:
        result = _run_grid(
            cfg, experiment=experiment, parent=parent, force=force, workdir=workdir, out_dir=out_dir
        )
    except BaseException as exc:
        tracking.fail_run(parent, f"{type(exc).__name__}: {describe_error(exc)}")
        raise
    failed = result["failed"]
    if failed:
        tracking.fail_run(parent, f"cells failed: {', '.join(failed)}")
        raise RuntimeError(
            f"{len(failed)} cell(s) failed: {', '.join(failed)}; rerun to retry "
            "them (finished cells are reused)"
        )
    tracking.finish_run(parent)
    return result


def _run_grid(
    cfg: ExperimentConfig, *, experiment: str, parent: str, force: bool, workdir: str, out_dir: str
) -> dict[str, Any]:
    data = prepare_data_task(cfg, workdir)
    resources = ray_resources()
    common = {"experiment": experiment, "parent_run_id": parent, "workdir": workdir}
    max_fraction = max(cfg.fractions)
    labels = [f"vanilla-s{s}" if len(cfg.seeds) > 1 else "vanilla" for s in cfg.seeds]
    cells = list(itertools.product(cfg.seeds, cfg.methods, cfg.fractions))
    cell_label = {
        c: f"{c[1]}@{c[2]:g}" + (f"-s{c[0]}" if len(cfg.seeds) > 1 else "") for c in cells
    }
    progress = Progress(labels + list(cell_label.values()))
    outcomes: dict[str, Any] = {}  # label -> evaluate future or reused outcome
    first_vanilla: dict[str, Any] = {}
    for seed, vlabel in zip(cfg.seeds, labels):
        vhash = exp.vanilla_hash(cfg, data["fingerprint"], seed)
        reused_v = None if force else tracking.find_complete(experiment, vhash)
        todo = []
        for c in (c for c in cells if c[0] == seed):
            h = exp.cell_hash(vhash, cfg, c[1], c[2], seed, max_fraction)
            reused = None if force else tracking.find_complete(experiment, h)
            if reused is not None:
                outcomes[cell_label[c]] = {
                    "run_id": reused.info.run_id,
                    "cell": cell_label[c],
                    "seed": seed,
                    "reused": True,
                }
                progress.set(cell_label[c], "reused")
            else:
                todo.append((c, h))
        transfer = None
        with remote_options(**resources):
            if reused_v is not None:
                outcomes[vlabel] = {
                    "run_id": reused_v.info.run_id,
                    "cell": "vanilla",
                    "seed": seed,
                    "reused": True,
                }
                progress.set(vlabel, "reused")
                vanilla = fetch_weights(reused_v.info.run_id, workdir) if todo else None
                if vanilla is not None:
                    vanilla = {**vanilla, "seed": seed, "cell": "vanilla"}
            else:
                vanilla = train_vanilla.submit(cfg, data, seed=seed, config_hash=vhash, **common)
                progress.track(vlabel, "training", vanilla)
            if vanilla is not None:
                transfer = craft_transfer.submit(
                    cfg, data, vanilla, config_hash=vhash, workdir=workdir
                )
            if reused_v is None:
                ev = evaluate_model.submit(cfg, data, vanilla, transfer, is_vanilla=True)
                progress.track(vlabel, "evaluating", ev)
                outcomes[vlabel] = ev
            pools = {
                m: craft_pool.submit(
                    cfg, data, vanilla, method=m, seed=seed, config_hash=vhash, workdir=workdir
                )
                # the costliest pool first: it is the critical path (PGD >> mix >> FGSM)
                for m in sorted(cfg.methods, key=POOL_COST_ORDER.index)
                if any(c[1] == m for c, _ in todo)
            }
            for c, h in todo:
                label = cell_label[c]
                trained = train_cell.submit(
                    cfg,
                    data,
                    pools[c[1]],
                    method=c[1],
                    fraction=c[2],
                    seed=seed,
                    config_hash=h,
                    vanilla=vanilla,
                    **common,
                )
                progress.track(label, "crafting", pools[c[1]])
                progress.track(label, "training", trained)
                ev = evaluate_model.submit(cfg, data, trained, transfer)
                progress.track(label, "evaluating", ev)
                outcomes[label] = ev
        if not first_vanilla:
            first_vanilla = {"vanilla": vanilla, "transfer": transfer}
    progress.wait_all()
    run_ids, failed = [], []
    for label, o in outcomes.items():
        if isinstance(o, dict):
            run_ids.append(o["run_id"])
        elif o.state.is_completed():
            run_ids.append(o.result()["run_id"])
        else:
            failed.append(label)
    vanilla_ref = first_vanilla.get("vanilla")
    transfer_ref = first_vanilla.get("transfer")
    report = gather(
        cfg,
        data,
        run_ids,
        vanilla=vanilla_ref.result() if isinstance(vanilla_ref, PrefectFuture) else vanilla_ref,
        transfer_path=transfer_ref.result()
        if isinstance(transfer_ref, PrefectFuture)
        else transfer_ref,
        parent_run_id=parent,
        out_dir=out_dir,
        context={
            "experiment": experiment,
            "preset": cfg.name,
            "data": cfg.data.spec,
            "data kind": data["kind"],
            "images (train after oversampling / test)": f"{data['n_train']} / {data['n_test']}",
            "fingerprint": data["fingerprint"],
            "seeds": cfg.seeds,
            "parent run": parent,
        },
    )
    console.print(records_table(report["records"]))
    for name, status, detail in report["checks"]:
        console.print(
            f"[{'green' if status == 'pass' else 'yellow'}]{status.upper()}[/] {name}: {detail}"
        )
    statuses = progress.status
    return {
        "parent_run_id": parent,
        "out_dir": out_dir,
        "failed": failed,
        "reused": sorted(k for k, v in statuses.items() if v == "reused"),
        "trained": sorted(k for k, v in statuses.items() if v == "done"),
        "records": report["records"],
        "report_files": report["files"],
    }


def make_task_runner(
    address: str | None = None,
    env: dict[str, str] | None = None,
) -> RayTaskRunner:
    """The Ray runner, with the Prefect/MLflow addresses passed to every worker."""
    env = {**tracking.env_for_workers(), **(env or {})}
    return RayTaskRunner(
        address=address or os.environ.get("RAY_ADDRESS"),
        init_kwargs={"runtime_env": {"env_vars": env}},
    )


def run_grid(**params: Any) -> dict[str, Any]:
    """Run the flow on the Ray runner (``RAY_ADDRESS``, else a local Ray)."""
    return grid_flow.with_options(task_runner=make_task_runner())(**params)
