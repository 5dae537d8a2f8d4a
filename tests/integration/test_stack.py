"""skinadv.stack against the real services: MLflow server, Prefect server, Ray head.

The module starts one stack (about 30 s on 2 idle cores) and shares it; the last test
stops it and checks that nothing it started is left. The flow runs in a subprocess, as
the CLI runs it: Prefect reads PREFECT_API_URL when it is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from skinadv.stack import ENV_VARS, WORKER_ENV_VARS, Stack, StackError, worker_env
from skinadv.stack.process import free_ports, session_pids
from skinadv.stack.redact import redact

ENV_KEYS = tuple(ENV_VARS.values())

FLOW_SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    import mlflow
    from prefect import flow, task
    from prefect_ray import RayTaskRunner

    from skinadv.stack import Stack

    EXPERIMENT_ID = sys.argv[1]
    # the stack was started by the test: every variable is set, so nothing starts here
    stack = Stack(sys.argv[2]).start()


    @task
    def cell(i: int, experiment_id: str) -> dict:
        \"\"\"Log one MLflow run from a Ray worker.\"\"\"
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"cell-{i}") as run:
            mlflow.log_param("i", i)
            mlflow.log_metric("score", i / 10)
        return {
            "run_id": run.info.run_id,
            "pid": os.getpid(),
            "prefect_api_url": os.environ.get("PREFECT_API_URL"),
            "mlflow_tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        }


    @flow(
        name="stack-smoke",
        task_runner=RayTaskRunner(
            address=stack.ray_address, init_kwargs={"runtime_env": stack.ray_runtime_env()}
        ),
    )
    def smoke(experiment_id: str) -> list:
        return [f.result() for f in cell.map([0, 1], experiment_id=experiment_id)]


    state = smoke(EXPERIMENT_ID, return_state=True)
    print("RESULT " + json.dumps({
        "flow_run_id": str(state.state_details.flow_run_id),
        "cells": state.result(),
        "pid": os.getpid(),
    }))
    """
)

PREFECT_FIRST_SCRIPT = textwrap.dedent(
    """
    import os, sys

    import prefect  # imported before the stack exports PREFECT_API_URL
    from prefect import flow
    from prefect.settings import get_current_settings

    assert get_current_settings().api.url is None, get_current_settings().api.url
    os.environ["PREFECT_API_URL"] = sys.argv[1]  # as Stack.start() sets it
    from skinadv.stack import Stack

    with Stack(sys.argv[2], mlflow=False, ray=False):
        assert get_current_settings().api.url == sys.argv[1]

        @flow(name="late-import")
        def late() -> int:
            return 7

        state = late(return_state=True)
        print("FLOW_RUN", state.state_details.flow_run_id)
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    saved = {k: os.environ.pop(k) for k in ENV_KEYS if k in os.environ}
    s = Stack(tmp_path_factory.mktemp("run"), ray_num_cpus=2)
    t0 = time.monotonic()
    s.start()
    print(f"\nstack up in {time.monotonic() - t0:.1f} s; per service: {s.startup_seconds}")
    yield s
    s.stop()
    os.environ.update(saved)


@contextlib.contextmanager
def _prefect_client(stack: Stack):
    """A sync Prefect client for this stack's server, whatever settings context is active."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
        with get_client(sync_client=True) as client:
            yield client


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(extra)
    return env


@pytest.mark.integration
def test_services_answer(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(stack.services) == {"mlflow", "prefect", "ray"}
    assert all(svc.started for svc in stack.services.values())
    assert _get(stack.mlflow_tracking_uri + "/health")[0] == 200
    assert _get(stack.prefect_api_url + "/health") == (200, b"true")
    dashboard = stack.addresses()["ray"]
    assert _get(dashboard + "/api/gcs_healthz")[0] == 200
    # the addresses are exported for this process and its children
    for name, key in ENV_VARS.items():
        assert os.environ[key] == stack.services[name].address
        assert stack.services[name].address.split("//")[-1].startswith("127.0.0.1:")
    assert stack.addresses()["prefect"] + "/api" == stack.prefect_api_url
    assert set(stack.startup_seconds) == {"mlflow", "prefect", "ray"}
    for name in ("mlflow", "prefect", "ray"):
        assert (stack.run_dir / "logs" / f"{name}.log").stat().st_size > 0
    # workers get the stack's addresses and the other listed settings, never credentials
    for key in set(WORKER_ENV_VARS) - set(ENV_KEYS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SKINADV_CACHE_DIR", "/cache")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    assert stack.ray_runtime_env() == {
        "env_vars": {
            "PREFECT_API_URL": stack.prefect_api_url,
            "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
            "SKINADV_CACHE_DIR": "/cache",
        }
    }


@pytest.mark.integration
def test_mlflow_run_over_http(stack: Stack, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    exp_id = client.create_experiment("stack-http")
    run = client.create_run(exp_id, run_name="from-test")
    client.log_param(run.info.run_id, "eps", 0.2)
    client.log_metric(run.info.run_id, "accuracy", 0.7, step=1)
    note = tmp_path / "note.txt"
    note.write_text("hello")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)

    got = mlflow.MlflowClient(tracking_uri=stack.mlflow_tracking_uri).get_run(run.info.run_id)
    assert got.data.params == {"eps": "0.2"}
    assert got.data.metrics == {"accuracy": 0.7}
    assert got.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    # artifacts are proxied: the server wrote the file into the run folder
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((stack.run_dir / "mlartifacts").rglob("note.txt"))
    assert (stack.run_dir / "mlflow.db").exists()


@pytest.mark.integration
def test_prefect_flow_on_ray_logs_to_mlflow(stack: Stack, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    exp_id = client.create_experiment("stack-flow")
    script = tmp_path / "flow_script.py"
    script.write_text(FLOW_SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), exp_id, str(tmp_path / "unused-run")],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    print(f"\nflow with 2 Ray tasks: {seconds:.1f} s")

    # both cells ran in Ray workers, which saw this stack's servers through runtime_env
    cells = result["cells"]
    assert len(cells) == 2
    assert all(c["pid"] != result["pid"] for c in cells)
    assert {c["prefect_api_url"] for c in cells} == {stack.prefect_api_url}
    assert {c["mlflow_tracking_uri"] for c in cells} == {stack.mlflow_tracking_uri}
    # nothing was started by the script (its stack found every service)
    assert not (tmp_path / "unused-run").exists()

    # the flow run and its 2 task runs are recorded in THIS Prefect server
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _prefect_client(stack) as prefect_client:
        assert str(prefect_client.api_url).rstrip("/") == stack.prefect_api_url
        flow_run = prefect_client.read_flow_run(result["flow_run_id"])
        assert flow_run.state.is_completed()
        task_runs = prefect_client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    assert len(task_runs) == 2
    assert all(tr.state.is_completed() for tr in task_runs)

    runs = client.search_runs([exp_id])
    assert sorted(r.info.run_name for r in runs) == ["cell-0", "cell-1"]
    assert {r.info.run_id for r in runs} == {c["run_id"] for c in cells}
    assert sorted(r.data.metrics["score"] for r in runs) == [0.0, 0.1]
    # no worker started a temporary Prefect server on the side
    output = (proc.stdout + proc.stderr).lower()
    assert "temporary server" not in output and "ephemeral" not in output


@pytest.mark.integration
def test_prefect_imported_before_stack(stack: Stack, tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(PREFECT_FIRST_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), stack.prefect_api_url, str(tmp_path / "unused")],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    flow_run_id = proc.stdout.split("FLOW_RUN ", 1)[1].split()[0]

    with _prefect_client(stack) as prefect_client:
        flow_run = prefect_client.read_flow_run(flow_run_id)
    assert flow_run.state.is_completed()


@pytest.mark.integration
def test_existing_mlflow_is_used_not_started(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in {*ENV_KEYS, *WORKER_ENV_VARS}:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri)
    with Stack(tmp_path / "run", prefect=False, ray=False) as other:
        svc = other.services["mlflow"]
        assert not svc.started and svc.process is None and svc.startup_s is None
        assert other.mlflow_tracking_uri == stack.mlflow_tracking_uri
        assert set(other.services) == {"mlflow"}
        assert other.ray_runtime_env() == {
            "env_vars": {"MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri}
        }
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    assert os.environ["MLFLOW_TRACKING_URI"] == stack.mlflow_tracking_uri
    assert _get(stack.mlflow_tracking_uri + "/health")[0] == 200  # still running


@pytest.mark.integration
def test_up_command_stops_what_it_started_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    # Prefect comes from the shared stack (found, so never stopped); MLflow is started
    env = _clean_env(PREFECT_API_URL=stack.prefect_api_url)
    code = "from skinadv.commands.stack import app; app()"
    run_dir = tmp_path / "up"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--run-dir", str(run_dir), "--no-ray"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # a reader thread, not select() on the pipe: select can't see lines already sitting in
    # the text wrapper's buffer and would wait for output that has arrived
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=5.0)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            if "press Ctrl-C to stop" in line:
                break
        output = "".join(seen)
        assert "press Ctrl-C to stop" in output, output
        uri = output.split("MLFLOW_TRACKING_URI=", 1)[1].split()[0]
        assert _get(uri + "/health")[0] == 200
        assert f"PREFECT_API_URL={stack.prefect_api_url}" in output
        assert "RAY_ADDRESS" not in output
        proc.terminate()  # SIGTERM, as a service manager would send
        proc.wait(timeout=60)
        reader.join(timeout=30)
        rest = "".join(iter(lines.get_nowait, None))
    finally:
        if proc.poll() is None:  # a failed check above: SIGTERM first, so the MLflow it
            proc.terminate()  # started is stopped too (SIGKILL would leave it running)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, output + rest
    assert "services stopped" in rest
    assert not _port_open(int(uri.rsplit(":", 1)[1]))
    assert _get(stack.prefect_api_url + "/health")[0] == 200  # found, so left running


_RAY_CLIENT = """
import sys
import ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except ConnectionError:
    print("REFUSED")
    sys.exit(3)
print("OK", ray.get(ray.put(7)))
"""


@pytest.mark.integration
def test_ray_head_refuses_a_client_without_its_token(stack: Stack, tmp_path: Path) -> None:
    """The Ray head skinadv starts requires Ray's token authentication (its GCS and raylet
    listen beyond 127.0.0.1): a client without the token is refused, the same client with
    it connects, and the token file is readable by its owner only."""
    auth = stack.ray_auth_env
    assert auth["RAY_AUTH_MODE"] == "token"
    token = Path(auth["RAY_AUTH_TOKEN_PATH"])
    assert token.stat().st_mode & 0o077 == 0 and len(token.read_text().strip()) >= 32
    assert {k: os.environ[k] for k in auth} == auth  # this process (ray.init) has it
    env = {k: v for k, v in _clean_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no default token file (~/.ray/auth_token) either
    cmd = [sys.executable, "-c", _RAY_CLIENT, stack.ray_address]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "REFUSED" in refused.stdout, refused.stderr[-3000:]
    assert "token" in refused.stderr.lower()  # Ray says why
    allowed = subprocess.run(cmd, env=env | auth, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0 and "OK 7" in allowed.stdout, allowed.stderr[-3000:]


@pytest.mark.integration
def test_stop_leaves_nothing(stack: Stack) -> None:
    started = {name: svc.process.pid for name, svc in stack.services.items()}
    ports = [p for svc in stack.services.values() for p in svc.ports]
    assert all(session_pids(pid) for pid in started.values())

    t0 = time.monotonic()
    stack.stop()
    print(f"\nstack stopped in {time.monotonic() - t0:.1f} s")

    for name, pid in started.items():
        assert session_pids(pid) == [], f"{name} left processes behind"
    assert [p for p in ports if _port_open(p)] == []
    for key in ENV_KEYS:
        assert key not in os.environ
    stack.stop()  # idempotent


# -- failures, no services needed ----------------------------------------------------


def test_service_that_exits_gives_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    boom = [sys.executable, "-c", "import sys; print('no database for you'); sys.exit(3)"]
    monkeypatch.setattr(Stack, "_mlflow_command", lambda self, svc, env: (boom, env))
    with pytest.raises(StackError, match=r"(?s)mlflow exited with code 3.*no database for you"):
        Stack(tmp_path, prefect=False, ray=False).start()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_service_that_never_answers_times_out_and_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    hang = [sys.executable, "-c", "import time; print('migrating', flush=True); time.sleep(600)"]
    monkeypatch.setattr(Stack, "_prefect_command", lambda self, svc, env: (hang, env))
    s = Stack(tmp_path, mlflow=False, ray=False, timeout_s=2)
    with pytest.raises(StackError, match=r"(?s)prefect did not answer .* within 2 s.*migrating"):
        s.start()
    assert session_pids(s.services["prefect"].process.pid) == []


def test_unreachable_existing_service_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{port}")
    with pytest.raises(StackError, match="does not answer") as err:
        Stack(tmp_path, prefect=False, ray=False).start()
    assert "secret" not in str(err.value)


def test_worker_env_is_the_listed_settings_that_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in WORKER_ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SKINADV_HAM10000", "/data/ham10000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "")  # empty: not forwarded
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")  # MLflow's client retries
    assert worker_env() == {
        "SKINADV_HAM10000": "/data/ham10000",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9",
    }
    assert not [k for k in WORKER_ENV_VARS if any(s in k for s in ("SECRET", "KEY", "TOKEN"))]


def test_redact_and_importing_starts_nothing() -> None:
    assert redact("http://u:p@host:5000/x") == "http://***@host:5000/x"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    code = (
        "import sys, skinadv.stack; "
        "print(sorted(m for m in ('mlflow', 'prefect', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.integration
def test_mlflow_basic_auth_refuses_unauthenticated_requests(tmp_path: Path) -> None:
    """``mlflow_auth=True`` (``SKINADV_MLFLOW_AUTH=1``) starts MLflow's basic-auth app: a
    request without a user and password, or with a wrong one, is refused (401); this
    process gets the generated credentials through MLflow's own variables and logs; the
    password is in a 0600 file, never on a command line; stopping restores the environment."""
    import base64
    import urllib.error

    from skinadv import tracking
    from skinadv.stack import mlflow_server

    saved = {k: os.environ.pop(k) for k in ENV_KEYS if k in os.environ}
    s = Stack(tmp_path / "run", prefect=False, ray=False, mlflow_auth=True)
    try:
        s.start()
        url = s.mlflow_tracking_uri + "/api/2.0/mlflow/experiments/search?max_results=1"

        def status(user_password: str | None) -> int:
            req = urllib.request.Request(url)
            if user_password is not None:
                token = base64.b64encode(user_password.encode()).decode()
                req.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        password = os.environ["MLFLOW_TRACKING_PASSWORD"]
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == mlflow_server.AUTH_USER
        assert status(None) == 401
        assert status(f"{mlflow_server.AUTH_USER}:wrong-password") == 401
        assert status(f"{mlflow_server.AUTH_USER}:{password}") == 200
        assert tracking.experiment_id("auth-check")  # the client logs with the credentials
        ini = tmp_path / "run" / "mlflow-auth.ini"
        assert ini.stat().st_mode & 0o077 == 0 and password in ini.read_text()
        argv = Path(f"/proc/{s.services['mlflow'].process.pid}/cmdline").read_bytes()
        assert b"basic-auth" in argv and password.encode() not in argv
    finally:
        s.stop()
        os.environ.update(saved)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
