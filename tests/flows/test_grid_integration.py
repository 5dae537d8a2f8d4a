"""The real grid: a real Prefect server, a real Ray head (2 worker CPUs), a real MLflow
server, the real flow on a few hundred real HAM10000 images. Nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

TINY = [
    "--set",
    "data.subset=400",
    "--set",
    "train.epochs=1",
    "--set",
    "attack.pgd.steps=3",
    "--set",
    "model.width=8",
    "--set",
    "seeds=[0]",
]
METRIC_KEYS = [
    f"{p}_{a}_{m}"
    for p in ("transfer", "whitebox")
    for a in ("fgsm", "pgd")
    for m in ("accuracy", "balanced_accuracy")
] + ["clean_accuracy", "clean_balanced_accuracy"]
EXPERIMENT = "it-grid"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from skinadv.stack import Stack

    run_dir = tmp_path_factory.mktemp("stack")
    with Stack(run_dir, ray_num_cpus=2) as st:
        yield st


@pytest.fixture(scope="module")
def grid_env(stack, real_npz, tmp_path_factory):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
        "PREFECT_API_URL": stack.prefect_api_url,
        "RAY_ADDRESS": stack.ray_address,
    }
    return env, tmp_path_factory.mktemp("grid")


def run_grid(env, run_dir: Path, data: Path, experiment: str = EXPERIMENT, *extra: str) -> dict:
    proc = subprocess.run(
        grid_command(run_dir, data, experiment, *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    # a quiet console: no MLflow warnings or "View run" links, no Prefect/Ray log lines
    assert "View run" not in proc.stderr + proc.stdout and "pickle" not in proc.stderr.lower()
    assert len(proc.stdout.strip().splitlines()) == 1  # the JSON alone
    assert " | INFO " not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) <= 80, proc.stderr
    assert (run_dir / "logs" / "grid.log").stat().st_size > 0
    return json.loads(proc.stdout.strip().splitlines()[-1])


def grid_command(run_dir: Path, data: Path, experiment: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "skinadv.cli",
        "grid",
        "--data",
        str(data),
        "--preset",
        "quick",
        *TINY,
        "--experiment",
        experiment,
        "--run-dir",
        str(run_dir),
        "--json",
        *extra,
    ]


@pytest.fixture(scope="module")
def first(grid_env, real_npz):
    env, run_dir = grid_env
    return run_grid(env, run_dir, real_npz)


def child_runs(parent_id: str, experiment: str = EXPERIMENT):
    import mlflow

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


def test_first_run_trains_13_finished_child_runs(stack, first):
    runs = assert_13_finished_child_runs(first, EXPERIMENT)
    assert_metrics_and_pool_sizes(runs)
    # the head started here keeps its tasks' files in RUN/node, where each model was trained
    kept = {p.parts[-3] for p in (stack.run_dir / "node").glob("runs/*/weights/*.pt")}
    assert kept == {r.info.run_id for r in runs}


def assert_13_finished_child_runs(out: dict, experiment: str) -> list:
    """The grid's JSON says 13 trained, and its parent run has 13 FINISHED children: the
    vanilla model and the 3 methods x 4 fractions."""
    assert out["failed"] == []
    assert len(out["trained"]) == 13 and out["reused"] == []
    runs = child_runs(out["parent_run_id"], experiment)
    assert len(runs) == 13
    names = sorted(r.data.tags["skinadv.cell"] for r in runs)
    assert names == sorted(
        ["vanilla"] + [f"{m}@{f:g}" for m in ("fgsm", "pgd", "mix") for f in (0.2, 0.4, 0.6, 0.8)]
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    return runs


def assert_metrics_and_pool_sizes(runs: list) -> None:
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["skinadv.complete"] == "true"
        missing = [k for k in METRIC_KEYS if k not in r.data.metrics]
        assert not missing, (r.data.tags["skinadv.cell"], missing)
        for k in METRIC_KEYS:
            assert 0.0 <= r.data.metrics[k] <= 1.0
        assert r.data.params["data_kind"] == "npz"
        assert len(r.data.params["config_hash"]) == 16
    # adversarial cells appended round(f * n) examples
    n_train = int(runs[0].data.params["n_train"])
    for r in runs:
        if r.data.params["method"] != "none":
            assert int(r.data.params["n_adversarial"]) == round(
                float(r.data.params["fraction"]) * n_train
            )


def test_models_load_back_without_pickle(stack, first, real_npz, tmp_path):
    """Each run holds a plain state dict + JSON config (no pickled model): loaded with
    weights_only=True, it scores exactly the clean accuracy the run logged. Its MLflow model
    (pt2: an exported graph, no pickle either) loads from the server and gives the same
    logits."""
    import mlflow
    import torch

    from skinadv import tracking
    from skinadv.config import grid_config
    from skinadv.evaluation import score
    from skinadv.models import load_model
    from skinadv.training import prepare_data

    cfg = grid_config("quick", data=str(real_npz), overrides=TINY[1::2])  # the --set values
    x, y = prepare_data(cfg.data).test.to_float()  # the split the grid scored on
    for r in child_runs(first["parent_run_id"]):
        c = mlflow.MlflowClient()
        arts = [a.path for a in c.list_artifacts(r.info.run_id)]
        assert "weights" in arts
        weights = tracking.download_weights(r.info.run_id, tmp_path / r.info.run_id)
        model, meta = load_model(weights)  # weights_only=True
        assert meta["config_hash"] == r.data.params["config_hash"]
        acc = score(model, x, y)["accuracy"]
        assert acc == pytest.approx(r.data.metrics["clean_accuracy"], abs=1e-9)
        (out,) = c.get_run(r.info.run_id).outputs.model_outputs
        files = [f.path for f in c.list_logged_model_artifacts(out.model_id, "data")]
        assert files == ["data/model.pt2"]
        if r.data.tags["skinadv.cell"] == "vanilla":  # one download and load is enough
            logged = mlflow.pytorch.load_model(f"models:/{out.model_id}")
            with torch.no_grad():
                xt = torch.from_numpy(x[:64])
                want = model.eval()(xt)
                assert torch.allclose(logged(xt), want, atol=1e-4)


def test_gathered_tables_equal_run_metrics(stack, first):
    out = Path(first["out_dir"])
    grid = pd.read_csv(out / "grid_all_cells.csv")
    runs = {r.data.tags["skinadv.cell"]: r for r in child_runs(first["parent_run_id"])}
    assert len(grid) == 12
    for _, row in grid.iterrows():
        m = runs[f"{row['method']}@{row['fraction']:g}"].data.metrics
        assert row["clean_accuracy"] == pytest.approx(100 * m["clean_accuracy"])
        assert row["transfer_pgd_accuracy"] == pytest.approx(100 * m["transfer_pgd_accuracy"])
        assert row["whitebox_fgsm_balanced_accuracy"] == pytest.approx(
            100 * m["whitebox_fgsm_balanced_accuracy"]
        )
    t1 = pd.read_csv(out / "table1_vanilla.csv", index_col="protocol")
    v = runs["vanilla"].data.metrics
    assert t1.loc["transfer", "pgd_accuracy"] == pytest.approx(100 * v["transfer_pgd_accuracy"])
    html = (out / "report.html").read_text()
    assert "Table 1" in html and html.count("data:image/png;base64,") >= 2
    # the report is on the parent run too
    import mlflow

    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(first["parent_run_id"], "report")]
    assert "report/report.html" in arts and "report/grid_all_cells.csv" in arts


def test_flow_runs_recorded_in_prefect(stack, first, prefect_api):
    runs = prefect_api(
        "POST",
        f"{stack.prefect_api_url}/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
    )
    assert len(runs) >= 1
    tasks = prefect_api("POST", f"{stack.prefect_api_url}/task_runs/filter", {})
    names = {t["name"] for t in tasks}
    # task runs are named after their model, as the progress table rows are
    assert {
        "prepare data",
        "vanilla s0",
        "pool pgd s0",
        "pgd@0.8 s0",
        "mix@0.2 s0",
        "gather report",
    } <= names


def test_second_run_reuses_all_and_report_rebuilds(stack, first, grid_env, real_npz):
    env, run_dir = grid_env
    second = run_grid(env, run_dir, real_npz)
    assert second["trained"] == [] and len(second["reused"]) == 13
    assert second["parent_run_id"] != first["parent_run_id"]
    assert child_runs(second["parent_run_id"]) == []  # nothing new was trained or logged
    first_ids = {r["run_id"] for r in first["records"]}
    assert {r["run_id"] for r in second["records"]} == first_ids
    # skinadv report rebuilds the same table from MLflow alone
    out = run_dir / "rebuilt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinadv.cli",
            "report",
            "--experiment",
            EXPERIMENT,
            "--run-dir",
            str(run_dir),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = pd.read_csv(out / "grid_all_cells.csv")
    b = pd.read_csv(Path(first["out_dir"]) / "grid_all_cells.csv")
    pd.testing.assert_frame_equal(a, b)


def test_mlflow_ui_shows_the_13_child_runs_and_metrics(stack, first, browser, artifacts_dir):
    """The MLflow experiment browser, in a real Chromium: the parent run with its 13 child
    runs, and a cell's metrics. Screenshots land in the test artifacts folder."""
    import mlflow

    exp_id = mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    try:
        page.goto(f"{stack.mlflow_tracking_uri}/#/experiments/{exp_id}/runs")
        # parent + 13 children (the first invocation's; the rerun added a second parent)
        page.get_by_text("matching runs").first.wait_for(timeout=60_000)
        page.get_by_role("link", name=first_parent_name(first)).wait_for(timeout=60_000)
        row = page.get_by_role("row").filter(has_text=first_parent_name(first))
        row.get_by_role("button").first.click()  # expand the parent's children
        child_names = [
            f"{c}-s0"
            for c in ["vanilla"]
            + [f"{m}@{f:g}" for m in ("fgsm", "pgd", "mix") for f in (0.2, 0.4, 0.6, 0.8)]
        ]
        for name in child_names:
            page.get_by_role("link", name=name, exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "mlflow-experiment-runs.png"), full_page=True)
        run = next(
            r
            for r in child_runs(first["parent_run_id"])
            if r.data.tags["skinadv.cell"] == "pgd@0.8"
        )
        page.goto(f"{stack.mlflow_tracking_uri}/#/experiments/{exp_id}/runs/{run.info.run_id}")
        page.get_by_text("whitebox_pgd_accuracy").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "transfer_fgsm_balanced_accuracy" in text and "pgd@0.8-s0" in text
        page.screenshot(path=str(artifacts_dir / "mlflow-cell-run.png"), full_page=True)
    finally:
        page.close()


def first_parent_name(first: dict) -> str:
    import mlflow

    return mlflow.MlflowClient().get_run(first["parent_run_id"]).info.run_name


def test_a_worker_killed_mid_cell_leaves_one_finished_run_per_model(stack, grid_env, real_npz):
    """SIGKILL the Ray worker that is training a cell: Ray retries the task, the retry marks
    the dead attempt's run KILLED, and the grid completes with exactly one FINISHED, complete
    run per model and none RUNNING."""
    import signal
    import time

    import mlflow

    env, run_dir = grid_env
    name = "it-kill"
    cmd = grid_command(
        run_dir / "kill",
        real_npz,
        name,
        "--methods",
        "pgd",
        "--fractions",
        "0.4,0.8",
        "--set",
        "train.epochs=4",
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
    victim, deadline = None, time.monotonic() + 600
    try:
        while victim is None:
            assert proc.poll() is None, "the grid ended before a cell was training"
            assert time.monotonic() < deadline, "no cell started training in 10 min"
            exp = client.get_experiment_by_name(name)
            found = (
                []
                if exp is None
                else client.search_runs(
                    [exp.experiment_id],
                    filter_string="tags.`skinadv.kind` = 'cell' and attributes.status = 'RUNNING' "
                    "and tags.`skinadv.stage` = 'training'",
                )
            )
            victim = found[0] if found else None
            time.sleep(0.1)
        _, pid = victim.data.tags["skinadv.worker"].rsplit(":", 1)
        os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["trained"]) == 3
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    complete = sorted(
        r.data.tags["skinadv.cell"]
        for r in runs
        if r.info.status == "FINISHED"
        and r.data.tags.get("skinadv.kind") != "parent"
        and r.data.tags.get("skinadv.complete") == "true"
    )
    assert complete == ["pgd@0.4", "pgd@0.8", "vanilla"]
    dead = client.get_run(victim.info.run_id)
    assert dead.info.status == "KILLED", dead.data.tags
    assert {r["run_id"] for r in result["records"]} == {
        r.info.run_id
        for r in runs
        if r.data.tags.get("skinadv.complete") == "true"
        and r.data.tags.get("skinadv.kind") != "parent"
    }


NODEGUARD = Path(__file__).parent / "nodeguard"  # sitecustomize.py: the forbidden-path guard


@pytest.fixture
def two_nodes(stack, grid_env, ray_tmp, tmp_path):
    """A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, token auth as
    ``skinadv up`` starts it), 1 CPU per node. Each node's tasks get a private folder
    (``SKINADV_NODE_DIR``) and, through ``nodeguard``, fail on touching the other node's
    folder, the driver's run folder or the servers' storage. Yields (address, folders)."""
    from ray.cluster_utils import Cluster

    _, driver_dir = grid_env
    folders = [tmp_path / "node-a", tmp_path / "node-b"]

    def node_env(mine: Path) -> dict[str, str]:
        others = [f for f in folders if f != mine] + [driver_dir, stack.run_dir]
        return {
            "SKINADV_NODE_DIR": str(mine),
            "SKINADV_TEST_FORBIDDEN": os.pathsep.join(map(str, others)),
            "PYTHONPATH": str(NODEGUARD),
        }

    common = {"num_cpus": 1, "object_store_memory": 200 * 2**20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "temp_dir": str(ray_tmp),
            "include_dashboard": False,
            "env_vars": node_env(folders[0]),
        },
    )
    try:
        cluster.add_node(**common, env_vars=node_env(folders[1]))
        yield cluster.address, folders
    finally:
        cluster.shutdown()


def test_the_grid_needs_no_shared_disk_two_nodes_private_folders(
    stack, grid_env, two_nodes, real_npz
):
    """Issue 11: a grid of every method (fgsm, pgd and mix, whose pool is composed from the
    other two, wherever they were made) at 2 fractions, 7 models, on two Ray nodes whose
    tasks each see only their own folder: it completes with 7 FINISHED runs, both nodes
    trained models, each model's weights were written on exactly one node, no task touched a
    forbidden folder, and the driver's work folder was never made. (The 13-model grid's
    runs: test_first_run_trains_13_finished_child_runs.)"""
    env, driver_dir = grid_env
    address, folders = two_nodes
    ray_vars = ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")  # set by ray_tmp
    env = {**env, **{k: os.environ[k] for k in ray_vars}, "RAY_ADDRESS": address}
    run_dir = driver_dir / "two-nodes"
    out = run_grid(env, run_dir, real_npz, "it-two-nodes", "--fractions", "0.4,0.8")
    models = ["vanilla"] + [f"{m}@{f}" for m in ("fgsm", "pgd", "mix") for f in ("0.4", "0.8")]
    assert out["failed"] == [] and out["reused"] == []
    assert sorted(out["trained"]) == sorted(f"{m} s0" for m in models)
    runs = child_runs(out["parent_run_id"], "it-two-nodes")
    assert sorted(r.data.tags["skinadv.cell"] for r in runs) == sorted(models)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for f in folders:
        log = f / "forbidden.log"
        assert not log.exists(), log.read_text()
    assert not (run_dir / "work").exists()  # nothing went through the driver's work folder
    # a model's weights are written where it trained; only the vanilla's are fetched elsewhere
    cells = {r.info.run_id: r.data.tags["skinadv.cell"] for r in runs}
    trained = [
        {cells[p.parts[-3]] for p in f.glob("runs/*/weights/*.pt")} - {"vanilla"} for f in folders
    ]
    assert all(trained), f"a node trained no cell: {trained}"
    assert not trained[0] & trained[1] and trained[0] | trained[1] == set(cells.values()) - {
        "vanilla"
    }
