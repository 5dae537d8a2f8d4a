"""The orchestration part of ``skinadv bench --ray``: services started as ``skinadv up``
starts them (each one's start-up seconds), a cell's worth of MLflow logging, and Prefect
task runs, each timed apart from any compute. See ``skinadv.commands.bench_ray``."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXPERIMENT = "skinadv-bench"


def summary(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """median, mean, min, max, p90 and n of ``values`` times ``scale``."""
    v = sorted(x * scale for x in values)
    return {
        "median": statistics.median(v),
        "mean": statistics.fmean(v),
        "min": v[0],
        "max": v[-1],
        "p90": v[min(len(v) - 1, int(0.9 * len(v)))],
        "n": len(v),
    }


@contextlib.contextmanager
def own_services() -> Iterator[None]:
    """No service from the environment: the benchmark starts and measures its own, and
    never logs to a team's MLflow or Prefect. Restores the variables afterwards."""
    from skinadv.stack import ENV_VARS
    from skinadv.stack.mlflow_server import AUTH_ENV_VARS as MLFLOW_AUTH
    from skinadv.stack.ray_head import AUTH_ENV_VARS as RAY_AUTH

    names = (*ENV_VARS.values(), *RAY_AUTH, *MLFLOW_AUTH)
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        for k in names:
            os.environ.pop(k, None)
        os.environ.update(saved)


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_services(run_dir: Path, cpus: int, console) -> tuple[Any, dict[str, Any]]:
    """A started ``Stack`` (MLflow, Prefect, a Ray head of ``cpus`` CPUs; storage in
    ``run_dir``, never from ``$SKINADV_*``) and ``{"started", "start_s": {service: s},
    "stack_start_s"}``. Raises StackError when a service does not start."""
    from skinadv.stack import Stack

    stack = Stack(
        run_dir,
        ray_num_cpus=cpus,
        console=console,
        mlflow_backend_uri=f"sqlite:///{run_dir / 'mlflow.db'}",
        mlflow_artifacts=str(run_dir / "mlartifacts"),
        prefect_database_url=f"sqlite+aiosqlite:///{run_dir / 'prefect' / 'prefect.db'}",
        mlflow_auth=False,
    )
    t0 = time.perf_counter()
    stack.start()
    return stack, {
        "started": True,
        "start_s": stack.startup_seconds,
        # side by side: the stack is up after the slowest, not after their sum
        "stack_start_s": time.perf_counter() - t0,
    }


def mlflow_logging(run_dir: Path, rounds: int, *, local: bool) -> dict[str, Any]:
    """Seconds of one cell's worth of MLflow logging through ``skinadv.tracking``: create a
    run with 5 params, log 3 metrics, upload a 1 KB artifact, end it. The first round (the
    experiment created, the client warmed) is reported apart; the rest give the median.
    ``local``: a store without a server, its artifacts kept in ``run_dir``."""
    from skinadv import tracking

    if local:  # else a new experiment's artifacts would land in ./mlartifacts
        tracking.client().create_experiment(
            EXPERIMENT, artifact_location=(run_dir / "artifacts").as_uri()
        )

    artifact = run_dir / "bench-artifact.json"
    artifact.write_text("{" + ", ".join(f'"k{i}": {i}' for i in range(100)) + "}\n")
    params = {"method": "pgd", "fraction": 0.4, "seed": 0, "width": 16, "epochs": 1}

    def one(i: int) -> float:
        t0 = time.perf_counter()
        rid = tracking.start_run(EXPERIMENT, name=f"bench-{i}", kind="bench", params=params)
        tracking.log_metrics(rid, {"accuracy": 0.7, "loss": 0.8, "seconds": 2.0}, step=0)
        tracking.log_artifact_files(rid, [artifact])
        tracking.finish_run(rid)
        return time.perf_counter() - t0

    first = one(0)
    times = [one(i + 1) for i in range(rounds)]
    finished = tracking.client().search_runs(
        [tracking.experiment_id(EXPERIMENT)], "attributes.status = 'FINISHED'"
    )
    return {
        "target": tracking.tracking_uri(),
        "what": "create run + 5 params + 3 metrics + 1 KB artifact + end run",
        "runs_finished": len(finished),  # read back from the store: first + rounds
        "first_ms": 1000 * first,
        "run_ms": summary(times, 1000),
    }


def prefect_round_trips(rounds: int) -> dict[str, Any]:
    """A flow of ``rounds`` empty task runs, called one after another (the default task
    runner, in this process): each task run's seconds (median), and the flow run's own
    (its wall time minus its tasks'). The first flow run (client warm-up) is reported apart."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(persist_result=False, cache_policy=NO_CACHE)
    def empty() -> None:
        return None

    @flow(persist_result=False)
    def probe(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            empty()
            times.append(time.perf_counter() - t0)
        return times

    t0 = time.perf_counter()
    probe(1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    times = probe(rounds)
    wall = time.perf_counter() - t0
    with contextlib.suppress(Exception):  # the flow runs' logs, before the server stops
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    return {
        "first_flow_s": first,
        "task_run_ms": summary(times, 1000),
        "flow_run_overhead_s": wall - sum(times),
    }
