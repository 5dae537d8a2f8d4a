"""Load: one running stack (`skinadv up`, reached through the variables it prints) takes
four grids started at once, and one served deployment takes three runs triggered at once.
Every grid and every run finishes with exactly its own runs in MLflow: one FINISHED parent,
one FINISHED child per model, nothing RUNNING, nothing counted twice. Two identical grids
at once in one experiment train each model once between them (the model lease; the same
assertions on Prefect's test harness: tests/flows/test_grid_overlap.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_grid_integration import grid_command
from test_serve import TERMINAL, TINY, _log_tail, _wait, start_serve

pytestmark = pytest.mark.integration

SERVICE_VARS = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS")


def _clean_env() -> dict[str, str]:
    """This process's environment without any service address or Ray token (an earlier
    test's stack may have exported them)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in SERVICE_VARS and not k.startswith("RAY_AUTH")
    }


def _exports(text: str) -> dict[str, str]:
    """The variables of `skinadv up`'s ``export A=1 B=2`` line."""
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("export "))
    return dict(item.split("=", 1) for item in line.split()[1:])


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`skinadv up` in its own session, as a user leaves it running in a terminal: the
    environment a second shell gets from its export line."""
    run_dir = tmp_path_factory.mktemp("up")
    log = run_dir / "up.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skinadv.cli", "up", "--run-dir", str(run_dir / "stack")],
            env=_clean_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(
            "skinadv up to start its services",
            lambda: proc.poll() is None and "press Ctrl-C to stop" in log.read_text(),
            300,
            log,
        )
        exports = _exports(log.read_text())
        assert set(SERVICE_VARS) <= set(exports), log.read_text()
        yield {**_clean_env(), **exports}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, _log_tail(log)
    assert "services stopped" in log.read_text()


def _runs_by_experiment(tracking_uri: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    return client.search_runs([exp.experiment_id])


def _assert_one_complete_grid(tracking_uri: str, experiment: str, models: list[str]) -> None:
    """Exactly one FINISHED parent and one FINISHED child per model, all under it."""
    runs = _runs_by_experiment(tracking_uri, experiment)
    parents = [r for r in runs if r.data.tags.get("skinadv.kind") == "parent"]
    children = [r for r in runs if r.data.tags.get("skinadv.kind") != "parent"]
    statuses = sorted({r.info.status for r in runs})
    assert len(parents) == 1, (experiment, [r.info.run_name for r in parents])
    assert statuses == ["FINISHED"], (experiment, statuses)
    assert sorted(r.data.tags["skinadv.cell"] for r in children) == sorted(models), experiment
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_four_grids_at_once_against_one_stack(up, real_npz, tmp_path):
    experiments = [f"load-grid-{i}" for i in range(4)]
    procs = []
    t0 = time.monotonic()
    for i, experiment in enumerate(experiments):
        cmd = grid_command(
            tmp_path / f"grid-{i}", real_npz, experiment, "--methods", "fgsm", "--fractions", "0.2"
        )
        with (
            open(tmp_path / f"grid-{i}.out", "w") as out,
            open(tmp_path / f"grid-{i}.err", "w") as err,
        ):  # the grid keeps its own copies of the files
            procs.append(subprocess.Popen(cmd, env=up, stdout=out, stderr=err))
    codes = [p.wait(timeout=1200) for p in procs]
    seconds = time.monotonic() - t0
    errors = {i: (tmp_path / f"grid-{i}.err").read_text()[-3000:] for i, c in enumerate(codes) if c}
    assert codes == [0, 0, 0, 0], errors
    outcomes = [json.loads((tmp_path / f"grid-{i}.out").read_text()) for i in range(4)]
    assert len({o["parent_run_id"] for o in outcomes}) == 4
    for outcome in outcomes:
        assert len(outcome["trained"]) == 2 and outcome["reused"] == []
    for experiment in experiments:
        _assert_one_complete_grid(up["MLFLOW_TRACKING_URI"], experiment, ["fgsm@0.2", "vanilla"])
    print(f"\nfour grids at once: {seconds:.0f} s")


def test_three_served_runs_at_once(up, real_npz, tmp_path, prefect_api):
    api = up["PREFECT_API_URL"]
    log = tmp_path / "serve.log"
    proc = start_serve(tmp_path / "serve", up, log)
    try:

        def deployment():
            assert proc.poll() is None, f"serve exited early:\n{_log_tail(log)}"
            found = prefect_api(
                "POST",
                f"{api}/deployments/filter",
                {"deployments": {"name": {"any_": ["it-serve"]}}},
            )
            return found[0] if found and "serving;" in log.read_text() else None

        dep = _wait("the deployment to be served", deployment, 180, log)
        experiments = [f"load-serve-{i}" for i in range(3)]
        t0 = time.monotonic()
        ids = [
            prefect_api(
                "POST",
                f"{api}/deployments/{dep['id']}/create_flow_run",
                {
                    "parameters": {
                        "params": {
                            **dep["parameters"]["params"],
                            "data": str(real_npz),
                            "overrides": TINY,
                            "methods": ["fgsm"],
                            "fractions": [0.2],
                            "experiment": experiment,
                        }
                    }
                },
            )["id"]
            for experiment in experiments
        ]

        def all_finished():
            runs = [prefect_api("GET", f"{api}/flow_runs/{i}") for i in ids]
            return runs if all(r["state"]["type"] in TERMINAL for r in runs) else None

        runs = _wait("the three flow runs to finish", all_finished, 900, log, interval=5)
        seconds = time.monotonic() - t0
        assert [r["state"]["type"] for r in runs] == ["COMPLETED"] * 3, _log_tail(log)
        for experiment in experiments:
            _assert_one_complete_grid(
                up["MLFLOW_TRACKING_URI"], experiment, ["fgsm@0.2", "vanilla"]
            )
        print(f"\nthree served runs at once: {seconds:.0f} s")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, _log_tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_identical_grids_at_once_train_each_model_once(up, real_npz, tmp_path):
    """Issue 23: two identical grids started at once in one experiment. Both exit 0, each
    model is trained once in all (the trained counts add up to the models), each config
    hash has one FINISHED complete run and nothing is RUNNING; a grid that met the other's
    live run says it waited for it and reused it, and its own claim was ended KILLED."""
    experiment = "load-overlap"
    models = ["pgd@0.4", "pgd@0.8", "vanilla"]
    procs = []
    t0 = time.monotonic()
    for i in range(2):
        cmd = grid_command(
            tmp_path / f"overlap-{i}",
            real_npz,
            experiment,
            "--methods",
            "pgd",
            "--fractions",
            "0.4,0.8",
        )
        with (
            open(tmp_path / f"overlap-{i}.out", "w") as out,
            open(tmp_path / f"overlap-{i}.err", "w") as err,
        ):  # the grid keeps its own copies of the files
            procs.append(subprocess.Popen(cmd, env=up, stdout=out, stderr=err))
    codes = [p.wait(timeout=1200) for p in procs]
    seconds = time.monotonic() - t0
    errs = [(tmp_path / f"overlap-{i}.err").read_text() for i in range(2)]
    assert codes == [0, 0], [e[-3000:] for e in errs]
    outcomes = [json.loads((tmp_path / f"overlap-{i}.out").read_text()) for i in range(2)]
    assert sorted(m for o in outcomes for m in o["trained"]) == sorted(f"{m} s0" for m in models)
    for o in outcomes:
        assert len(o["trained"]) + len(o["reused"]) == len(models)
    runs = _runs_by_experiment(up["MLFLOW_TRACKING_URI"], experiment)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.data.tags.get("skinadv.kind") == "parent"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]
    children = [r for r in runs if r.data.tags.get("skinadv.kind") != "parent"]
    complete = {
        r.info.run_id: r
        for r in children
        if r.info.status == "FINISHED" and r.data.tags.get("skinadv.complete") == "true"
    }
    hashes = [r.data.tags["skinadv.config_hash"] for r in complete.values()]
    assert len(hashes) == len(set(hashes)) == len(models)
    assert sorted(r.data.tags["skinadv.cell"] for r in complete.values()) == models
    # every other model run is a loser's own claim, ended at once and naming the owner
    lost = [r for r in children if r.info.run_id not in complete]
    for r in lost:
        assert r.info.status == "KILLED", r.data.tags
        why = r.data.tags.get("skinadv.error", "")
        assert why.startswith("lost the claim to run ") and why.split()[-1] in complete, why
    waited = [i for i, e in enumerate(errs) if "waited for and reused MLflow run" in e]
    assert waited, errs
    assert all(outcomes[i]["reused"] for i in waited)
    counts = [(len(o["trained"]), len(o["reused"])) for o in outcomes]
    print(
        f"\ntwo identical grids at once: {seconds:.0f} s; (trained, reused) per grid {counts}; "
        f"{len(lost)} losing claim(s) KILLED; the waiting grid's lines:\n"
        + "\n".join(ln for i in waited for ln in errs[i].splitlines() if "waited for" in ln)
    )
