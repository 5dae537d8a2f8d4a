"""A served grid run cancelled through the Prefect API (as the UI's "Cancel" does) while a
model trains: CANCELLED within 60 s, no Ray task of it left on the stack's Ray (which
outlives the flow-run process), its model runs and its parent run KILLED with nothing
RUNNING, and a rerun of the deployment completes the grid, one FINISHED run per model."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_serve import TERMINAL, _log_tail, _wait, start_serve  # same folder

pytestmark = pytest.mark.integration

DEPLOYMENT = "it-serve"  # start_serve's name
EXPERIMENT = "it-cancel"
# long enough that the vanilla model is still training when the cancel request lands
OVERRIDES = [
    "data.subset=1500", "train.epochs=3", "attack.pgd.steps=2", "model.width=8", "seeds=[0]",
]  # fmt: skip
CELLS = ["fgsm@0.5", "vanilla"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from skinadv.stack import Stack

    with Stack(tmp_path_factory.mktemp("stack"), ray_num_cpus=2) as st:
        yield st


def ray_task_processes() -> list[str]:
    """Ray worker processes running a Prefect task now (their process title names the task;
    an idle pooled worker reads ``ray::IDLE``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if argv.startswith("ray::") and "_run_prefect_task" in argv:
            found.append(f"{proc.name}: {argv[:80]}")
    return found


def test_a_served_run_cancelled_mid_model_stops_and_a_rerun_completes(
    stack, real_npz, tmp_path, prefect_api
):
    import mlflow

    api = stack.prefect_api_url
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
        "PREFECT_API_URL": api,
        "RAY_ADDRESS": stack.ray_address,
    }
    client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
    proc = start_serve(tmp_path / "serve", env, log)
    try:

        def deployment():
            assert proc.poll() is None, f"serve exited early:\n{_log_tail(log)}"
            found = prefect_api(
                "POST",
                f"{api}/deployments/filter",
                {"deployments": {"name": {"any_": [DEPLOYMENT]}}},
            )
            return found[0] if found else None

        dep = _wait("the deployment to be registered", deployment, 180, log)
        params = {
            **dep["parameters"]["params"],
            "data": str(real_npz),
            "overrides": OVERRIDES,
            "methods": ["fgsm"],
            "fractions": [0.5],
            "experiment": EXPERIMENT,
        }

        def start() -> str:
            return prefect_api(
                "POST",
                f"{api}/deployments/{dep['id']}/create_flow_run",
                {"parameters": {"params": params}},
            )["id"]

        def runs() -> list:
            exp = client.get_experiment_by_name(EXPERIMENT)
            return client.search_runs([exp.experiment_id]) if exp else []

        def training():
            return [
                r for r in runs()
                if r.info.status == "RUNNING" and r.data.tags.get("skinadv.kind") != "parent"
            ]  # fmt: skip

        flow_run_id = start()
        victims = _wait("a model to be training", training, 300, log, interval=0.5)
        t_cancel = time.monotonic()
        prefect_api(
            "POST",
            f"{api}/flow_runs/{flow_run_id}/set_state",
            {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
        )

        def ended():
            run = prefect_api("GET", f"{api}/flow_runs/{flow_run_id}")
            return run if run["state"]["type"] in TERMINAL else None

        run = _wait("the cancelled run to end", ended, 60, log, interval=1)
        cancel_s = time.monotonic() - t_cancel
        assert run["state"]["type"] == "CANCELLED", (run["state"], _log_tail(log))
        # the Ray head outlives the flow-run process: no task of the cancelled run on it
        _wait("its Ray tasks to end", lambda: not ray_task_processes() or None, 30, log)
        # the flow-run process closes its MLflow runs before it exits (slow on a loaded host)
        _wait(
            "no MLflow run left RUNNING",
            lambda: all(r.info.status != "RUNNING" for r in runs()) or None,
            60,
            log,
            interval=1,
        )
        after = {r.info.run_id: r for r in runs()}
        for v in victims:
            assert after[v.info.run_id].info.status == "KILLED", v.data.tags.get("skinadv.cell")
        parents = [r for r in after.values() if r.data.tags.get("skinadv.kind") == "parent"]
        assert [p.info.status for p in parents] == ["KILLED"]
        finished_before = {
            r.data.tags["skinadv.cell"]: r.info.run_id
            for r in after.values()
            if r.info.status == "FINISHED" and r.data.tags.get("skinadv.complete") == "true"
        }

        # a rerun of the deployment completes the grid, reusing what had finished
        again = start()
        done = _wait(
            "the rerun to end",
            lambda: (
                (r := prefect_api("GET", f"{api}/flow_runs/{again}"))["state"]["type"] in TERMINAL
                and r
            ),
            600,
            log,
            interval=3,
        )
        assert done["state"]["type"] == "COMPLETED", _log_tail(log)
        final = runs()
        assert [r.info.run_id for r in final if r.info.status == "RUNNING"] == []
        complete = [
            r for r in final
            if r.info.status == "FINISHED" and r.data.tags.get("skinadv.complete") == "true"
            and r.data.tags.get("skinadv.kind") != "parent"
        ]  # fmt: skip
        assert sorted(r.data.tags["skinadv.cell"] for r in complete) == CELLS
        mine = {r.data.tags["skinadv.cell"]: r.info.run_id for r in complete}
        assert mine.items() >= finished_before.items()  # finished models were reused
        print(f"\ncancel: CANCELLED {cancel_s:.1f} s after the request; reused {finished_before}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
