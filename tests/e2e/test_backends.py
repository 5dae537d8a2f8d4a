"""Team backends: MLflow on PostgreSQL with S3 artifacts, Prefect on PostgreSQL, data from S3.

The integration test starts a real PostgreSQL (databases ``mlflow`` and ``prefect``) and
moto's S3 server, a ``Stack`` whose MLflow server stores runs in PostgreSQL and artifacts in
the bucket and whose Prefect server uses PostgreSQL, then runs the tiny grid through the
CLI in a subprocess, on the real 28x28 HAM10000 npz read from ``s3://``. It checks the
objects in the bucket, the rows in both databases, models loading back through the server
from S3, and that the S3 secret and the database password reach no log and no output.

The unit tests check the ``s3://`` data source in-process (moto's ``mock_aws``).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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
EXPERIMENT = "e2e-backends"
ARTIFACT_PREFIX = "mlflow"
NPZ_KEY = "ham10000_28x28_rgb.npz"
# trust authentication accepts any password: one in the URLs proves none is ever printed
DB_PASSWORD = "pg-pass-e2e-7f3a"
METRIC_KEYS = [
    f"{p}_{a}_{m}"
    for p in ("transfer", "whitebox")
    for a in ("fgsm", "pgd")
    for m in ("accuracy", "balanced_accuracy")
] + ["clean_accuracy", "clean_balanced_accuracy"]
# every method (mix: its pool composed from the other two pools, read back from the bucket)
# at one fraction: the backends see every kind of task, run and artifact of the 13-model grid
FRACTION = "0.8"
CELLS = sorted(["vanilla"] + [f"{m}@{FRACTION}" for m in ("fgsm", "pgd", "mix")])


# --------------------------------------------------------------------------- unit: s3 source


@pytest.fixture
def mocked_s3(monkeypatch):
    """In-process moto S3 (no endpoint override) and a counter of GetObject calls."""
    moto = pytest.importorskip("moto")
    import boto3

    for key in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    calls = {"GetObject": 0, "HeadObject": 0}
    tamper: dict[str, bytes] = {}
    real_client = boto3.client

    def counting_client(*args, **kwargs):
        client = real_client(*args, **kwargs)

        def count(event_name, **_):
            calls[event_name.rsplit(".", 1)[-1]] += 1

        def corrupt(parsed, **_):
            if "body" in tamper:
                from botocore.response import StreamingBody

                bad = tamper["body"]
                parsed["Body"] = StreamingBody(io.BytesIO(bad), len(bad))

        client.meta.events.register("before-call.s3.GetObject", count)
        client.meta.events.register("before-call.s3.HeadObject", count)
        client.meta.events.register("after-call.s3.GetObject", corrupt)
        return client

    with moto.mock_aws():
        monkeypatch.setattr(boto3, "client", counting_client)
        real_client("s3").create_bucket(Bucket="data")
        yield real_client("s3"), calls, tamper


def _npz_bytes(n: int = 14, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(
        buf,
        images=rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int64) % 7,
    )
    return buf.getvalue()


def test_s3_fetch_downloads_once_checks_and_caches(mocked_s3, tmp_path):
    from skinadv.data import load_dataset
    from skinadv.data.s3 import fetch

    s3, calls, _ = mocked_s3
    payload = _npz_bytes()
    s3.put_object(Bucket="data", Key="sets/tiny.npz", Body=payload)

    first = Path(fetch("s3://data/sets/tiny.npz", cache_dir=tmp_path))
    assert first.read_bytes() == payload and first.name == "tiny.npz"
    assert first.is_relative_to(tmp_path / "s3")
    assert calls["GetObject"] == 1
    mtime = first.stat().st_mtime_ns
    time.sleep(0.01)

    second = Path(fetch("s3://data/sets/tiny.npz", cache_dir=tmp_path))
    assert second == first and second.stat().st_mtime_ns == mtime
    assert calls["GetObject"] == 1  # served from the cache: only a HEAD was sent
    assert calls["HeadObject"] == 2
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".tmp")]

    # a changed object (new ETag) is fetched again, into its own cache entry
    changed = _npz_bytes(seed=1)
    s3.put_object(Bucket="data", Key="sets/tiny.npz", Body=changed)
    third = Path(fetch("s3://data/sets/tiny.npz", cache_dir=tmp_path))
    assert third != first and third.read_bytes() == changed and calls["GetObject"] == 2

    # through the data layer, as `--data s3://...` uses it (cache from SKINADV_CACHE_DIR)
    ds = load_dataset("s3://data/sets/tiny.npz", cache_dir=tmp_path)
    assert len(ds.labels) == 14 and calls["GetObject"] == 2


def test_s3_fetch_rejects_a_corrupt_download(mocked_s3, tmp_path):
    from skinadv.data import DataError
    from skinadv.data.s3 import fetch

    s3, _, tamper = mocked_s3
    payload = _npz_bytes()
    s3.put_object(Bucket="data", Key="tiny.npz", Body=payload)
    tamper["body"] = bytes([payload[0] ^ 0xFF]) + payload[1:]  # same length, other bytes
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("s3://data/tiny.npz", cache_dir=tmp_path)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing entered the cache
    tamper.clear()
    assert Path(fetch("s3://data/tiny.npz", cache_dir=tmp_path)).read_bytes() == payload


def test_s3_fetch_names_the_missing_bucket_or_key(mocked_s3, tmp_path):
    from skinadv.data import DataError
    from skinadv.data.s3 import fetch

    with pytest.raises(
        DataError,
        match=r"s3://data/nope\.npz: no object 'nope\.npz' in "
        r"bucket 'data'",
    ):
        fetch("s3://data/nope.npz", cache_dir=tmp_path)
    with pytest.raises(
        DataError,
        match=r"s3://no-such-bucket/x\.npz: no bucket "
        r"'no-such-bucket'",
    ):
        fetch("s3://no-such-bucket/x.npz", cache_dir=tmp_path)
    for bad in ("s3://", "s3://bucket-only", "s3://bucket/folder/"):
        with pytest.raises(DataError, match="expected s3://bucket/key"):
            fetch(bad, cache_dir=tmp_path)


def test_s3_fetch_without_credentials_or_endpoint_says_so(tmp_path, monkeypatch):
    from skinadv.data import DataError
    from skinadv.data.s3 import fetch

    # no mock (moto's mock_aws brings fake keys); boto3 fails while signing, before sending
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "MLFLOW_S3_ENDPOINT_URL",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing there
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DataError, match="no AWS credentials found"):
        fetch("s3://data/x.npz", cache_dir=tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DataError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        fetch("s3://data/x.npz", cache_dir=tmp_path)


def test_stack_storage_settings_and_redaction(tmp_path, monkeypatch):
    """Storage options: arguments, SKINADV_* variables, defaults; nothing secret printed."""
    from skinadv import stack as st
    from skinadv.stack.redact import redact, redact_args

    for var in st.STORAGE_ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    default = st.Stack(tmp_path)
    assert default._mlflow_backend() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert default._mlflow_artifacts() == str(tmp_path.resolve() / "mlartifacts")
    assert default._prefect_database().startswith("sqlite+aiosqlite:///")

    monkeypatch.setenv("SKINADV_MLFLOW_BACKEND_URI", f"postgresql://u:{DB_PASSWORD}@h:5/ml")
    monkeypatch.setenv("SKINADV_MLFLOW_ARTIFACTS", "s3://b/p")
    monkeypatch.setenv("SKINADV_PREFECT_DATABASE_URL", f"postgresql://u:{DB_PASSWORD}@h:5/pf")
    s = st.Stack(tmp_path)
    assert s.mlflow_backend_uri == f"postgresql://u:{DB_PASSWORD}@h:5/ml"
    assert s.mlflow_artifacts == "s3://b/p"
    assert s.prefect_database_url == f"postgresql+asyncpg://u:{DB_PASSWORD}@h:5/pf"
    assert st.Stack(tmp_path, mlflow_artifacts="s3://other").mlflow_artifacts == "s3://other"

    # the password goes to MLflow through its environment, never onto argv or into logs
    svc = st.Service("mlflow", "http://127.0.0.1:1", None, started=True, ports=(1,))
    cmd, env = s._mlflow_command(svc, {"MLFLOW_DEFAULT_ARTIFACT_ROOT": "s3://leak"})
    assert DB_PASSWORD not in " ".join(cmd) and "--backend-store-uri" not in cmd
    assert env["MLFLOW_BACKEND_STORE_URI"] == s.mlflow_backend_uri
    assert "MLFLOW_DEFAULT_ARTIFACT_ROOT" not in env
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://b/p"
    plain = st.Stack(tmp_path, mlflow_backend_uri="postgresql://u@h:5/ml")
    cmd, env = plain._mlflow_command(svc, {})
    assert cmd[cmd.index("--backend-store-uri") + 1] == "postgresql://u@h:5/ml"
    assert DB_PASSWORD not in json.dumps(s.storage()) + " ".join(redact_args(cmd))
    for url in (s.mlflow_backend_uri, s.prefect_database_url, "postgresql://h/db?password=x1"):
        assert DB_PASSWORD not in redact(url) and "x1" not in redact(url)

    with pytest.raises(st.StackError, match="must start with postgresql\\+asyncpg://"):
        st.Stack(tmp_path, prefect_database_url="mysql://h/db")
    with pytest.raises(st.StackError, match="must be a database URL"):
        st.Stack(tmp_path, mlflow_backend_uri="just-a-name")


def test_stack_checks_the_artifact_bucket_before_starting(mocked_s3, tmp_path, monkeypatch):
    from skinadv.stack import ENV_VARS, Stack, StackError

    for var in ENV_VARS.values():  # a server named here would be used, not started
        monkeypatch.delenv(var, raising=False)

    Stack(tmp_path, mlflow_artifacts="s3://data/mlflow")._check_artifact_store()  # exists
    with pytest.raises(StackError, match="bucket 'missing' does not exist"):
        Stack(tmp_path, mlflow_artifacts="s3://missing/mlflow")._check_artifact_store()
    with pytest.raises(StackError, match="bucket 'missing' does not exist"):
        Stack(
            tmp_path, mlflow_artifacts="s3://missing/mlflow", prefect=False, ray=False
        ).start()  # before anything is launched
    assert not (tmp_path / "logs" / "mlflow.log").exists()


# --------------------------------------------------------------------------- integration


@pytest.fixture(scope="module")
def backends_stack(postgres_server, moto_s3, tmp_path_factory):
    from skinadv.stack import Stack

    run_dir = tmp_path_factory.mktemp("backends-stack")
    with Stack(
        run_dir,
        ray_num_cpus=2,
        mlflow_backend_uri=postgres_server.url("mlflow", password=DB_PASSWORD),
        mlflow_artifacts=f"s3://{moto_s3.bucket}/{ARTIFACT_PREFIX}",
        prefect_database_url=postgres_server.url(
            "prefect", "postgresql+asyncpg", password=DB_PASSWORD
        ),
    ) as st:
        yield st


@pytest.fixture(scope="module")
def s3_data(moto_s3, real_npz) -> str:
    moto_s3.client().upload_file(str(real_npz), moto_s3.bucket, NPZ_KEY)
    return f"s3://{moto_s3.bucket}/{NPZ_KEY}"


@pytest.fixture(scope="module")
def grid(backends_stack, s3_data, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("backends-grid")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": backends_stack.mlflow_tracking_uri,
        "PREFECT_API_URL": backends_stack.prefect_api_url,
        "RAY_ADDRESS": backends_stack.ray_address,
        "SKINADV_CACHE_DIR": str(run_dir / "cache"),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinadv.cli",
            "grid",
            "--data",
            s3_data,
            "--preset",
            "quick",
            *TINY,
            "--fractions",
            FRACTION,
            "--experiment",
            EXPERIMENT,
            "--run-dir",
            str(run_dir),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_wall_s"] = round(time.perf_counter() - t0, 1)
    result["_output"] = proc.stdout + proc.stderr
    result["_run_dir"] = str(run_dir)
    print(
        f"\nbackends grid: {result['_wall_s']} s (CLI reported {result['seconds']} s); "
        f"stack start-up {backends_stack.startup_seconds}"
    )
    return result


def _child_runs(parent_id: str):
    import mlflow

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


@pytest.mark.integration
def test_grid_on_postgres_and_s3_finishes_every_run(backends_stack, grid, s3_data):
    import mlflow

    assert grid["failed"] == [] and grid["reused"] == []
    assert sorted(grid["trained"]) == sorted(f"{c} s0" for c in CELLS)
    runs = _child_runs(grid["parent_run_id"])
    assert sorted(r.data.tags["skinadv.cell"] for r in runs) == CELLS
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["skinadv.complete"] == "true"
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        missing = [k for k in METRIC_KEYS if k not in r.data.metrics]
        assert not missing, (r.data.tags["skinadv.cell"], missing)
    parent = mlflow.MlflowClient().get_run(grid["parent_run_id"])
    assert parent.data.params["data"] == s3_data
    # the data came from the bucket, through the s3:// source, into the CLI's cache
    cached = list(Path(grid["_run_dir"], "cache", "s3").rglob(NPZ_KEY))
    assert len(cached) == 1


@pytest.mark.integration
def test_models_and_reports_are_objects_in_the_bucket(backends_stack, grid, moto_s3):
    runs = _child_runs(grid["parent_run_id"])
    keys = moto_s3.keys(ARTIFACT_PREFIX + "/")
    assert keys, "nothing was written to the bucket"
    exp_id = runs[0].info.experiment_id
    for r in runs:
        rid = r.info.run_id
        run_keys = [k for k in keys if f"/{rid}/" in k]
        weights = [k for k in run_keys if re.search(r"/artifacts/weights/[^/]+\.pt$", k)]
        assert len(weights) == 1, (r.data.tags["skinadv.cell"], run_keys)
        assert weights[0].startswith(f"{ARTIFACT_PREFIX}/{exp_id}/{rid}/artifacts/")
        # the state dict's JSON config beside it; no pickled MLflow model anywhere
        assert any(
            k.endswith("/artifacts/weights/" + weights[0].rsplit("/", 1)[1] + ".json")
            for k in run_keys
        )
    # each model is also an MLflow model: a torch.export program (pt2), never a pickle
    assert not [k for k in keys if k.endswith(("/model.pth", ".pkl"))]
    programs = [k for k in keys if k.endswith("/data/model.pt2")]
    assert len(programs) == len(runs), programs
    assert len([k for k in keys if k.endswith("/MLmodel")]) == len(runs)
    # the vanilla model's transfer test sets, for reuse from another node or work folder
    (vanilla,) = [r for r in runs if r.data.tags["skinadv.cell"] == "vanilla"]
    assert [k for k in keys if f"/{vanilla.info.run_id}/artifacts/transfer_sets/" in k]
    parent = grid["parent_run_id"]
    for name in ("report/report.html", "report/grid_all_cells.csv"):
        key = f"{ARTIFACT_PREFIX}/{exp_id}/{parent}/artifacts/{name}"
        assert key in keys, name
    html = (
        moto_s3.client()
        .get_object(
            Bucket=moto_s3.bucket,
            Key=f"{ARTIFACT_PREFIX}/{exp_id}/{parent}/artifacts/report/report.html",
        )["Body"]
        .read()
    )
    assert b"Table 1" in html
    # nothing was written to the local artifact folder of the MLflow server
    assert not (backends_stack.run_dir / "mlartifacts").exists()


@pytest.mark.integration
def test_models_load_back_from_s3(backends_stack, grid, tmp_path):
    """Weights downloaded from the bucket load with weights_only=True and equal the ones the
    task saved in its Ray node's own folder (the stack's head: RUN/node)."""
    import torch

    from skinadv import tracking
    from skinadv.models import load_model

    runs = _child_runs(grid["parent_run_id"])
    x = torch.rand(4, 3, 28, 28)
    node = backends_stack.run_dir / "node" / "runs"
    for r in runs[:3]:  # each load is a download through the server from the bucket
        weights = tracking.download_weights(r.info.run_id, tmp_path / r.info.run_id)
        plain, meta = load_model(weights)  # torch.load(weights_only=True)
        local, _ = load_model(node / r.info.run_id / tracking.WEIGHTS_DIR / weights.name)
        assert meta["config_hash"] == r.data.params["config_hash"]
        with torch.no_grad():
            assert torch.equal(plain(x), local(x))


@pytest.mark.integration
def test_runs_and_flow_runs_live_in_postgres(backends_stack, grid, postgres_server):
    conn = postgres_server.connect("mlflow")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e "
                "ON r.experiment_id = e.experiment_id WHERE e.name = %s",
                (EXPERIMENT,),
            )
            rows = dict(cur.fetchall())
            cur.execute(
                "SELECT value FROM tags WHERE key = 'mlflow.parentRunId' AND value = %s",
                (grid["parent_run_id"],),
            )
            n_children = len(cur.fetchall())
    finally:
        conn.close()
    assert len(rows) == len(CELLS) + 1 and n_children == len(CELLS)  # the cells + the parent
    assert rows[grid["parent_run_id"]] == "FINISHED"
    assert set(rows.values()) == {"FINISHED"}

    conn = postgres_server.connect("prefect")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT fr.state_type, f.name FROM flow_run fr JOIN flow f ON fr.flow_id = f.id"
            )
            flow_runs = cur.fetchall()
            cur.execute("SELECT count(*) FROM task_run")
            n_tasks = cur.fetchone()[0]
    finally:
        conn.close()
    assert ("COMPLETED", "skinadv-grid") in flow_runs
    assert n_tasks >= len(CELLS) + 5  # vanilla, the cells, 3 pools, prepare data, gather
    # and no SQLite file was made by either server
    assert not (backends_stack.run_dir / "mlflow.db").exists()
    assert not (backends_stack.run_dir / "prefect" / "prefect.db").exists()


def _secret_free(texts: dict[str, str], secrets_: list[str]) -> None:
    for where, text in texts.items():
        for secret in secrets_:
            assert secret not in text, f"a secret appears in {where}"


@pytest.mark.integration
def test_no_secret_in_logs_or_output(backends_stack, grid, moto_s3, prefect_api):
    """Neither the S3 secret key nor the database password reaches the CLI's output, a log
    (the services', Ray's session logs, the grid's), the report, an MLflow param or tag
    (every run's, the experiment's), or Prefect's records (flow run parameters, logs)."""
    import mlflow

    secrets_ = [moto_s3.secret_key, DB_PASSWORD]
    texts = {"cli output": grid["_output"]}
    # every file the services wrote: their logs and Ray's session logs (*.log/out/err)
    logs = sorted(p for p in (backends_stack.run_dir / "logs").rglob("*") if p.is_file())
    assert {p.name for p in logs} >= {"mlflow.log", "prefect.log", "ray.log"}
    logs += [
        p
        for p in Path(grid["_run_dir"]).rglob("*")
        if p.is_file() and p.suffix in (".log", ".out", ".err", ".txt", ".json")
    ]
    # the report: tables, Markdown, HTML
    report = [p for p in Path(grid["out_dir"]).rglob("*") if p.is_file() and p.suffix != ".png"]
    assert {p.name for p in report} >= {"report.html", "report.md", "grid_all_cells.csv"}
    for p in logs + report:
        texts[str(p)] = p.read_text(errors="replace")
    # MLflow: every run's params and tags, and the experiment's tags
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= len(CELLS) + 1  # the parent and its models
    texts["MLflow experiment tags"] = json.dumps(exp.tags)
    for r in runs:
        texts[f"MLflow params of {r.info.run_name}"] = json.dumps(r.data.params)
        texts[f"MLflow tags of {r.info.run_name}"] = json.dumps(r.data.tags)
    # Prefect: flow run parameters and the logs the flow and its tasks sent
    api = backends_stack.prefect_api_url
    texts["Prefect flow runs"] = json.dumps(prefect_api("POST", f"{api}/flow_runs/filter", {}))
    prefect_logs = prefect_api("POST", f"{api}/logs/filter", {"limit": 200})
    assert prefect_logs, "the grid sent Prefect no logs?"
    texts["Prefect logs"] = json.dumps(prefect_logs)
    _secret_free(texts, secrets_)
    # the addresses and storage shown to users are redacted too
    shown = json.dumps(backends_stack.addresses()) + json.dumps(backends_stack.storage())
    assert all(s not in shown for s in secrets_)
    assert "postgresql://***@127.0.0.1" in backends_stack.storage()["mlflow"]
    # and the Ray workers were never handed the credentials
    env_vars = backends_stack.ray_runtime_env()["env_vars"]
    assert "AWS_SECRET_ACCESS_KEY" not in env_vars
    assert all(s not in json.dumps(env_vars) for s in secrets_)


@pytest.mark.integration
def test_no_secret_in_error_messages(moto_s3, tmp_path):
    """Commands that fail on a credential-bearing setting say why in one line, without the
    credential: on screen, and in every file they wrote."""
    from skinadv.stack.process import free_ports

    (closed,) = free_ports(1)
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS")
    }
    base |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": moto_s3.secret_key}
    cases = {
        # a tracking server given with a password in its URL, which does not answer
        "grid, MLflow unreachable": (
            ["grid", "--data", "synthetic:50"],
            {"MLFLOW_TRACKING_URI": f"http://skinadv:{DB_PASSWORD}@127.0.0.1:{closed}"},
        ),
        # a backend store MLflow cannot open (a driver SQLAlchemy does not have): the
        # server exits while starting, and the error line quotes its log
        "report, MLflow backend unusable": (
            ["report"],
            {
                "SKINADV_MLFLOW_BACKEND_URI": (
                    f"postgresql+nosuchdriver://mlflow:{DB_PASSWORD}@127.0.0.1:{closed}/mlflow"
                )
            },
        ),
        # an artifact bucket that does not exist, with S3 keys in the environment
        "report, no such bucket": (
            ["report"],
            {
                "SKINADV_MLFLOW_BACKEND_URI": (
                    f"postgresql://mlflow:{DB_PASSWORD}@127.0.0.1:{closed}/mlflow"
                ),
                "SKINADV_MLFLOW_ARTIFACTS": "s3://no-such-bucket/mlflow",
                "MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint,
            },
        ),
    }
    for what, (args, env) in cases.items():
        run_dir = tmp_path / what.replace(" ", "_").replace(",", "")
        proc = subprocess.run(
            [sys.executable, "-m", "skinadv.cli", *args, "--run-dir", str(run_dir)],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, (what, output)
        assert "Traceback" not in output, (what, output)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, (what, output)
        texts = {f"{what}: output": output}
        for p in run_dir.rglob("*") if run_dir.exists() else []:
            if p.is_file():
                texts[f"{what}: {p}"] = p.read_text(errors="replace")
        _secret_free(texts, [moto_s3.secret_key, DB_PASSWORD])
