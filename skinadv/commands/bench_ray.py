"""``skinadv bench --ray``: the grid's cells on 1 vs 2 Ray workers, and the orchestration's
own costs (service start, task dispatch, a Prefect task run, MLflow logging) measured apart.

Cells: N identical cell-shaped tasks, each a fresh quick-preset CNN (``paper_cnn``, width
16) trained for one epoch on the same slice of the real training data with as many torch
threads as Ray gave it CPUs (1), as a grid cell does. The data goes into Ray's object store
once (``ray.put``); the workers are warmed up (torch and skinadv imported, one tiny fit)
before anything is timed, and that warm-up is reported as orchestration, not compute.
"1 worker" and "2 workers" are the same Ray head (2 CPUs) with at most 1 or 2 cells in
flight: the next cell is submitted when one finishes, as a K-CPU Ray runs the grid.

Baseline: before Ray starts, the same cells in a spawned pool of 2 plain processes (no Ray,
Ray's workers' nice 15, same in-flight limits): what the machine gives two cells, so that a
low efficiency can be told apart from Ray's own cost. (Spawned: a script that calls
``run_ray_bench`` needs the ``if __name__ == "__main__":`` guard; the CLI has it.)

Services: a ``Stack`` of its own (MLflow, Prefect, Ray head started side by side in a
temporary folder, whatever ``$MLFLOW_TRACKING_URI`` / ``$PREFECT_API_URL`` / ``$RAY_ADDRESS``
say: the benchmark never logs to a team's servers); ``services=False`` (the tests) starts a
bare local Ray (``ray.init``) instead and logs to a local SQLite store, no Prefect.

Imports Ray (Prefect and MLflow through ``bench_services``): it lives among the adapters,
not in ``skinadv.bench``, which renders the results (``skinadv.bench.markdown``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from skinadv.commands.bench_services import (
    env,
    mlflow_logging,
    own_services,
    prefect_round_trips,
    start_services,
    summary,
)

log = logging.getLogger(__name__)

#: the issue's goal for (cells/min with 2 workers) / (2 x cells/min with 1 worker)
EFFICIENCY_GOAL = 0.8
#: the niceness Ray gives its workers (the raylet's ``worker_niceness``, 15): the baseline's too
WORKER_NICE = 15


@dataclass(frozen=True)
class RaySettings:
    """What the Ray part measures, and on how much.

    Attributes:
        cells: cells per run (even: 2 workers never finish on one cell alone).
        images: real training images each cell trains on (the same slice for all).
        width, epochs, batch_size: each cell's CNN and training (quick preset: 16, 1, 128).
        workers: cells in flight per run; the head offers ``max(workers)`` CPUs.
        dispatch_rounds: empty Ray tasks timed one after another (median).
        mlflow_rounds: MLflow runs logged one after another, after a first untimed one.
        prefect_rounds: Prefect task runs in one flow (0: no Prefect measured).
        baseline: also run the cells in plain processes (no Ray), first.
        services: start MLflow, Prefect and Ray as ``skinadv up`` does (False: a bare
            ``ray.init`` and a local SQLite MLflow store, no Prefect).
        seed: the data slice and the cells' initial weights.
    """

    cells: int = 8
    images: int = 8000
    width: int = 16
    epochs: int = 1
    batch_size: int = 128
    workers: tuple[int, ...] = (1, 2)
    dispatch_rounds: int = 50
    mlflow_rounds: int = 5
    prefect_rounds: int = 10
    baseline: bool = True
    services: bool = True
    seed: int = 0


def default_settings(cells: int | None = None) -> RaySettings:
    """``--ray``: 8 cells of 8000 images (about 2 s each on one core), or ``cells``."""
    base = RaySettings()
    return base if cells is None else replace(base, cells=cells)


def tiny(**overrides: Any) -> RaySettings:
    """Seconds' worth (tests): 2 tiny cells, a bare Ray, few rounds."""
    base = RaySettings(
        cells=2,
        images=256,
        width=4,
        dispatch_rounds=10,
        mlflow_rounds=2,
        prefect_rounds=0,
        services=False,
    )
    return replace(base, **overrides)


def check_cells(cells: int) -> None:
    """Raises ValueError unless ``cells`` is an even number >= 2."""
    if cells < 2 or cells % 2:
        raise ValueError(
            f"--ray-cells must be an even number >= 2 (2 workers, no cell left alone at the "
            f"end), got {cells}"
        )


# -- what runs in the workers (Ray's, or the plain processes of the baseline) -------------


def _train_cell(x: np.ndarray, y: np.ndarray, spec: dict[str, Any], threads: int) -> dict:
    """One cell-shaped task: a fresh CNN trained on (x, y) with ``threads`` torch threads.

    Returns its wall and CPU seconds (model built, data to tensors, training), its start and
    end (epoch seconds: the driver counts how many ran at once), the worker's pid and nice.
    """
    from skinadv.config import TrainConfig
    from skinadv.experiment import set_threads
    from skinadv.training import fit

    set_threads(threads)
    cfg = TrainConfig(
        epochs=spec["epochs"], batch_size=spec["batch_size"], lr=2e-3, seed=spec["seed"]
    )
    start, t0, c0 = time.time(), time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        # the object store's arrays are read-only; fit only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        fit("paper_cnn", (x, y), cfg, model_kwargs={"width": spec["width"]})
    return {
        "compute_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "start": start,
        "end": time.time(),
        "pid": os.getpid(),
        "nice": os.nice(0),
    }


def _cell(data: tuple[np.ndarray, np.ndarray], spec: dict[str, Any]) -> dict[str, float]:
    """The Ray task: ``_train_cell`` with the task's Ray CPUs as torch threads, as a grid
    cell does (``tasks.grid``)."""
    import ray

    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    return _train_cell(*data, spec, cpus)


_PROCESS_DATA: tuple[np.ndarray, np.ndarray] | None = None


def _process_init(data: str, images: int, seed: int, nice: int) -> None:
    """A baseline worker: Ray's workers' priority, the data slice loaded once."""
    global _PROCESS_DATA
    os.nice(max(0, nice - os.nice(0)))
    _PROCESS_DATA = _load_slice(data, images, seed)


def _process_cell(spec: dict[str, Any], n: int | None = None) -> dict[str, float]:
    """The baseline's task: ``_train_cell`` on the worker's slice (its first ``n`` images)."""
    assert _PROCESS_DATA is not None
    x, y = _PROCESS_DATA
    return _train_cell(x[:n], y[:n], spec, 1)


def _noop() -> None:
    return None


# -- the driver ---------------------------------------------------------------------------


def max_concurrent(intervals: list[tuple[float, float]]) -> int:
    """Most intervals (start, end) open at one instant (an end before a start at a tie)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def run_cells(cell, data_ref, spec: dict[str, Any], *, cells: int, workers: int) -> dict:
    """``cells`` cells with at most ``workers`` in flight; wall time, cells/min, per-task times."""
    import ray

    pending, done = [], []
    t0 = time.perf_counter()
    for _ in range(cells):
        if len(pending) == workers:  # a worker frees up: the next cell goes there
            ready, pending = ray.wait(pending, num_returns=1)
            done += ray.get(ready)
        pending.append(cell.remote(data_ref, spec))
    done += ray.get(pending)
    return summarise(done, workers, time.perf_counter() - t0)


def cell_spec(settings: RaySettings) -> dict[str, Any]:
    """What each cell task needs to know (small: sent with every task)."""
    return {k: getattr(settings, k) for k in ("width", "epochs", "batch_size", "seed")}


def process_baseline(
    data: str, settings: RaySettings, spec: dict[str, Any], report: Callable[[str], None]
) -> dict[str, Any]:
    """The same cells in plain processes (no Ray): one spawned pool of 2, warmed up, data
    loaded once per process, Ray's workers' nice, at most K cells in flight as in the Ray
    runs. What the machine gives two cells, against which Ray's own cost shows.

    Returns:
        ``{"runs": [...], **scaling(runs)}``.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cpus = max(settings.workers)
    ctx = multiprocessing.get_context("spawn")  # no fork of a driver with torch threads
    args = (data, settings.images, settings.seed, WORKER_NICE)
    runs = []
    with ProcessPoolExecutor(
        cpus, mp_context=ctx, initializer=_process_init, initargs=args
    ) as pool:
        list(pool.map(_process_cell, [spec] * cpus, [64] * cpus))  # warm-up: processes start
        for k in settings.workers:
            pending, done = set(), []
            t0 = time.perf_counter()
            for _ in range(settings.cells):
                if len(pending) == k:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    done += [f.result() for f in finished]
                pending.add(pool.submit(_process_cell, spec))
            done += [f.result() for f in pending]
            r = summarise(done, k, time.perf_counter() - t0)
            report(
                f"processes: {r['cells']} cells on {k} worker(s) in {r['wall_s']:.1f} s "
                f"({r['cells_per_min']:.1f} cells/min, {r['task_compute_s']['median']:.2f} s a "
                "cell)"
            )
            runs.append(r)
    return {"runs": runs, **scaling(runs)}


def summarise(done: list[dict], workers: int, wall: float) -> dict[str, Any]:
    """A run's figures from its tasks' own (``_train_cell``) and its wall time."""
    compute = [d["compute_s"] for d in done]
    cpu = [d["cpu_s"] for d in done]
    return {
        "workers": workers,
        "cells": len(done),
        "wall_s": wall,
        "cells_per_min": 60.0 * len(done) / wall,
        "task_compute_s": summary(compute),
        "task_cpu_s": summary(cpu),
        # share of the workers' wall time spent inside the cells (the rest: dispatch, idle)
        "busy_share": sum(compute) / (workers * wall),
        # cores the cells really got (CPU seconds per wall second): below ``workers`` with
        # busy_share near 1, the machine gave them less (other load; Ray runs workers at
        # nice 15)
        "cores_used": sum(cpu) / wall,
        "max_concurrent": max_concurrent([(d["start"], d["end"]) for d in done]),
        "worker_pids": len({d["pid"] for d in done}),
        "nice": max(d["nice"] for d in done),
    }


def scaling(runs: list[dict]) -> dict[str, Any]:
    """Efficiency and per-cell slow-down of the 2-worker run against the 1-worker one."""
    by_k = {r["workers"]: r for r in runs}
    one, two = by_k.get(1), by_k.get(2)
    if one is None or two is None:
        return {"efficiency": None, "contention": None, "cpu_contention": None}
    return {
        "efficiency": two["cells_per_min"] / (2 * one["cells_per_min"]),
        # > 1: a cell takes longer when another runs beside it (wall seconds: less CPU given,
        # or each CPU second slower)
        "contention": two["task_compute_s"]["median"] / one["task_compute_s"]["median"],
        # the same in CPU seconds: what sharing the memory bandwidth and caches costs alone
        "cpu_contention": two["task_cpu_s"]["median"] / one["task_cpu_s"]["median"],
    }


def _load_slice(spec: str, images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from skinadv.data import load_dataset, split

    train, _ = split(load_dataset(spec), test_size=0.2, seed=seed)
    x, y = train.to_float()
    n = min(images, len(y))
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(y[:n])


def run_ray_bench(
    data: str,
    settings: RaySettings,
    *,
    report: Callable[[str], None] = log.info,
    console=None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the Ray part; returns ``(ray_scaling, orchestration)``, both JSON-ready.

    Args:
        data: a data spec of the real data (the canonical 28x28 npz).
        settings: see ``RaySettings``.
        report: gets a line of progress after each step.
        console: rich console for the stack's waiting line (None: stderr).

    Raises:
        ValueError: bad settings or data (before anything starts).
    """
    import ray

    from skinadv.stack import ray_head

    check_cells(settings.cells)
    if not settings.workers or min(settings.workers) < 1:
        raise ValueError(f"workers must be >= 1, got {settings.workers}")
    t_start = time.perf_counter()
    x, y = _load_slice(data, settings.images, settings.seed)
    cpus = max(settings.workers)
    spec = cell_spec(settings)
    # first, while no Ray runs: what the machine gives plain processes
    baseline = process_baseline(data, settings, spec, report) if settings.baseline else None
    run_dir = Path(tempfile.mkdtemp(prefix="skinadv-bench-", dir="/tmp"))
    orch: dict[str, Any] = {}
    stack = None
    try:
        with contextlib.ExitStack() as scope:
            # last: this process reads Ray's auth settings afresh once the token env is gone
            scope.callback(ray_head.forget_cached_token)
            if settings.services:
                scope.enter_context(own_services())
                stack, orch["services"] = start_services(run_dir, cpus, console)
                scope.callback(stack.stop)
                report(f"services up ({orch['services']['stack_start_s']:.0f} s)")
                t0 = time.perf_counter()
                ray.init(address=stack.ray_address, logging_level=logging.WARNING)
                orch["ray_init_s"] = time.perf_counter() - t0
            else:
                orch["services"] = {"started": False}
                # a Ray of its own: its temp dir in run_dir (not /tmp/ray, which other Rays
                # on this machine use), token authentication on, as a started head has it
                temp, made = ray_head.make_temp_dir(run_dir)
                if made is not None:
                    scope.callback(ray_head.remove_temp_dir, run_dir, made)
                scope.enter_context(env(**ray_head.auth_env(temp)))
                ray_head.forget_cached_token()
                t0 = time.perf_counter()
                ray.init(
                    num_cpus=cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    _temp_dir=str(temp),
                )
                orch["ray_init_s"] = time.perf_counter() - t0
            scope.callback(ray.shutdown)
            orch["ray"], runs = _ray_part(ray, x, y, settings, report)
            if settings.mlflow_rounds:
                uri = {} if stack else {"MLFLOW_TRACKING_URI": f"sqlite:///{run_dir / 'ml.db'}"}
                with env(**uri):
                    orch["mlflow"] = mlflow_logging(
                        run_dir, settings.mlflow_rounds, local=stack is None
                    )
                report(f"MLflow logging: {orch['mlflow']['run_ms']['median']:.0f} ms a run")
            if settings.prefect_rounds and stack is not None:
                orch["prefect"] = prefect_round_trips(settings.prefect_rounds)
                report(f"Prefect task run: {orch['prefect']['task_run_ms']['median']:.0f} ms")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    ray_scaling = {
        "settings": {**asdict(settings), "workers": list(settings.workers), "head_cpus": cpus},
        "images": len(y),
        "runs": runs,
        **scaling(runs),
        "goal": EFFICIENCY_GOAL,
        "processes": baseline or {"status": "not run"},
    }
    orch["seconds"] = time.perf_counter() - t_start
    return ray_scaling, orch


def _ray_part(ray, x, y, settings: RaySettings, report) -> tuple[dict[str, Any], list[dict]]:
    """Data into the object store, workers warmed up, dispatch timed, then the cell runs."""
    cpus = max(settings.workers)
    cell = ray.remote(num_cpus=1)(_cell)
    noop = ray.remote(num_cpus=1)(_noop)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    data_ref = ray.put((x, y))
    out["put_s"] = time.perf_counter() - t0
    out["data_mb"] = (x.nbytes + y.nbytes) / 2**20
    # warm-up: one worker per CPU imports torch and skinadv and trains on a few images
    spec = cell_spec(settings)
    warm_ref = ray.put((x[:64], y[:64]))
    t0 = time.perf_counter()
    warm = ray.get([cell.remote(warm_ref, spec) for _ in range(cpus)])
    out["worker_warmup_s"] = time.perf_counter() - t0
    out["warm_workers"] = len({w["pid"] for w in warm})
    report(f"ray: {cpus} worker(s) warmed up ({out['worker_warmup_s']:.1f} s)")
    ray.get(noop.remote())
    times = []
    for _ in range(settings.dispatch_rounds):
        t0 = time.perf_counter()
        ray.get(noop.remote())
        times.append(time.perf_counter() - t0)
    out["dispatch_ms"] = summary(times, 1000)
    runs = []
    for k in settings.workers:
        r = run_cells(cell, data_ref, spec, cells=settings.cells, workers=k)
        report(
            f"ray: {r['cells']} cells on {k} worker(s) in {r['wall_s']:.1f} s "
            f"({r['cells_per_min']:.1f} cells/min, {r['task_compute_s']['median']:.2f} s a cell)"
        )
        runs.append(r)
    return out, runs
