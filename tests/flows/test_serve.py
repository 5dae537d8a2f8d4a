"""``skinadv serve``: the grid deployment registered with its cron schedule, a run started
through the Prefect API on the real Ray runner and MLflow server, and a clean stop.
Bad parameters stop it before any service starts."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["data.subset=400", "train.epochs=1", "attack.pgd.steps=3", "model.width=8", "seeds=[0]"]
EXPERIMENT = "it-serve"
DEPLOYMENT = "it-serve"
CRON = "0 3 * * *"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "61 3 * * *"], "bad cron expression '61 3 * * *'"),
        (["--cron", "every day"], "needs 5 fields"),
        (["--cron", CRON, "--set", "train.epochs=0"], "train.epochs"),
        (["--cron", CRON, "--fractions", "0.2,1.5"], "fraction"),
        (["--name", "nightly/grid"], "bad deployment name 'nightly/grid'"),
    ],
)
def test_bad_input_exits_2_before_starting_anything(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from skinadv.cli import app

    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["serve", *args, "--data", "synthetic:100", "--run-dir", str(run_dir)]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0]
    assert not run_dir.exists()  # no service was started


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from skinadv.stack import Stack

    with Stack(tmp_path_factory.mktemp("stack"), ray_num_cpus=2) as st:
        yield st


def _log_tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _wait(what: str, check, timeout_s: float, log: Path, interval: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what}; serve log:\n{_log_tail(log)}"
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_serve(run_dir: Path, env: dict, log: Path) -> subprocess.Popen:
    """skinadv serve with defaults that the API run overrides (synthetic data, experiment)."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skinadv.cli",
                "serve",
                "--cron",
                CRON,
                "--name",
                DEPLOYMENT,
                "--data",
                "synthetic:300",
                "--experiment",
                "it-serve-default",
                "--run-dir",
                str(run_dir),
            ],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            # Ctrl-C as a terminal delivers it: a test suite started in the background
            # (`cmd &` in a script) inherits SIGINT ignored, and so would serve
            preexec_fn=_default_sigint,
        )


@pytest.mark.integration
def test_serve_registers_schedule_runs_from_api_and_stops(
    stack, real_npz, tmp_path, browser, artifacts_dir, prefect_api
):
    import mlflow

    api = stack.prefect_api_url
    run_dir = tmp_path / "serve"
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
        "PREFECT_API_URL": api,
        "RAY_ADDRESS": stack.ray_address,
    }
    log2 = tmp_path / "serve-again.log"
    t0 = time.monotonic()
    proc = start_serve(run_dir, env, log)
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
        assert [s["schedule"].get("cron") for s in dep["schedules"]] == [CRON]
        assert all(s["active"] for s in dep["schedules"])
        defaults = dep["parameters"]["params"]
        assert defaults["experiment"] == "it-serve-default"
        assert defaults["workdir"] == str((run_dir / "work").resolve())
        # the UI's run form: one GridParams object, its fields described
        schema = dep["parameter_openapi_schema"]
        assert list(schema["properties"]) == ["params"]
        fields = schema["definitions"]["GridParams"]["properties"]
        assert {
            "preset",
            "data",
            "methods",
            "fractions",
            "seeds",
            "overrides",
            "experiment",
            "force",
        } <= set(fields)
        assert fields["experiment"]["description"]
        assert dep["entrypoint"] == "flows.deployments.ray_grid_flow"
        registered_s = time.monotonic() - t0

        # as the UI's form does: the deployment's defaults, some of them changed
        params = {
            **defaults,
            "data": str(real_npz),
            "overrides": TINY,
            "methods": ["fgsm"],
            "fractions": [0.2],
            "experiment": EXPERIMENT,
        }
        flow_run_id = prefect_api(
            "POST",
            f"{api}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"params": params}},
        )["id"]

        def finished():
            run = prefect_api("GET", f"{api}/flow_runs/{flow_run_id}")
            return run if run["state"]["type"] in TERMINAL else None

        run = _wait("the flow run to finish", finished, 600, log, interval=5)
        assert run["state"]["type"] == "COMPLETED", _log_tail(log)
        # the run's parameters: the API's, the deployment's defaults kept where unchanged
        assert run["parameters"]["params"]["experiment"] == EXPERIMENT
        assert run["parameters"]["params"]["workdir"] == str((run_dir / "work").resolve())
        run_s = time.monotonic() - t0 - registered_s

        client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        assert exp is not None
        parents = client.search_runs(
            [exp.experiment_id], filter_string="tags.`skinadv.kind` = 'parent'"
        )
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
        )
        assert sorted(r.data.tags["skinadv.cell"] for r in children) == ["fgsm@0.2", "vanilla"]
        assert all(r.info.status == "FINISHED" for r in children)
        assert {r.data.params["data_kind"] for r in children} == {"npz"}
        # the cells ran on the stack's Ray: the tasks reported to the same Prefect server
        tasks = prefect_api(
            "POST", f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )
        # task runs named after their model, finished with its key figure
        names = {t["name"]: t for t in tasks}
        assert {
            "prepare data",
            "vanilla s0",
            "pool fgsm s0",
            "fgsm@0.2 s0",
            "gather report",
        } <= set(names)
        assert "PGD white-box" in names["fgsm@0.2 s0"]["state"]["message"]
        # the run graph's edges on Ray too: data -> vanilla -> pool -> cell
        up = {
            t["name"]: {
                i["id"] for v in t["task_inputs"].values() for i in v
                if i.get("input_type") == "task_run"
            }
            for t in tasks
        }  # fmt: skip
        assert names["prepare data"]["id"] in up["vanilla s0"]
        assert names["vanilla s0"]["id"] in up["pool fgsm s0"]
        assert names["pool fgsm s0"]["id"] in up["fgsm@0.2 s0"]
        # the outcome is published on the flow run: the report and a link to MLflow
        arts = prefect_api(
            "POST",
            f"{api}/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        )
        by_key = {a["key"]: a for a in arts}
        assert by_key["skinadv-grid-report"]["type"] == "markdown"
        assert "Table 1" in by_key["skinadv-grid-report"]["data"]
        # cell names in code spans: Prefect would autolink a bare fgsm@0.2 as an e-mail
        assert "`fgsm@0.2` s0" in by_key["skinadv-grid-report"]["data"]
        link = by_key["skinadv-grid-mlflow"]
        # Prefect stores a link artifact as Markdown: [text](url)
        assert link["data"].startswith("[MLflow parent run](http")
        assert f"/runs/{parents[0].info.run_id})" in link["data"]
        assert (run_dir / "report" / EXPERIMENT / "report.html").is_file()
        check_prefect_ui(stack, browser, artifacts_dir, dep, run)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, _log_tail(log)
        assert "stopped serving" in log.read_text()
        # the runner paused the deployment on its way out (no reruns with nobody serving)
        assert prefect_api("GET", f"{api}/deployments/{dep['id']}")["paused"] is True

        # serving again unpauses the same deployment; SIGTERM stops it cleanly too
        proc = start_serve(run_dir, env, log2)
        _wait(
            "the deployment to be unpaused",
            lambda: (
                prefect_api("GET", f"{api}/deployments/{dep['id']}")["paused"] is False
                and "serving;" in log2.read_text()
            ),
            180,
            log2,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, _log_tail(log2)
        assert "stopped serving" in log2.read_text()
        print(f"\nserve: registered after {registered_s:.0f} s, tiny grid run {run_s:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_sigterm_before_the_runner_starts_is_a_clean_stop(
    stack, monkeypatch, tmp_path, prefect_api
):
    """Prefect's runner answers a SIGTERM that lands before it has started with
    ``sys.exit(0)`` (its real handler is called here, at that moment): serve still says it
    stopped, exits 0, and the deployment it registered stays on the server."""
    from prefect.runner import Runner
    from typer.testing import CliRunner

    import flows.deployments
    from skinadv.cli import app

    for var, value in (
        ("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri),
        ("PREFECT_API_URL", stack.prefect_api_url),
        ("RAY_ADDRESS", stack.ray_address),
    ):
        monkeypatch.setenv(var, value)
    called = []

    def sigterm_too_early(deployment, **kwargs):
        called.append(deployment.name)
        Runner().handle_sigterm()  # not started: Prefect's handler calls sys.exit(0)

    monkeypatch.setattr(flows.deployments, "serve_grid", sigterm_too_early)
    args = [
        "serve",
        "--name",
        "it-early-stop",
        "--data",
        "synthetic:100",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    # in a thread of its own, as in a fresh CLI process: the session's Playwright browser
    # keeps an event loop running on this one, which would turn Prefect's sync calls async
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        res = pool.submit(CliRunner().invoke, app, args).result(timeout=300)
    assert called == ["it-early-stop"], (res.output, repr(res.exception))
    assert res.exit_code == 0, (res.output, res.exception)
    assert "stopped serving" in res.stderr
    deps = prefect_api(
        "POST",
        f"{stack.prefect_api_url}/deployments/filter",
        {"deployments": {"name": {"any_": ["it-early-stop"]}}},
    )
    assert len(deps) == 1


def check_prefect_ui(stack, browser, artifacts_dir: Path, dep: dict, run: dict) -> None:
    """The Prefect UI, in a real Chromium, as a user finds the deployment and its run: the
    deployment list with its cron schedule, the deployment page with the completed run and
    the next scheduled one, and the run page with its task runs. Screenshots are saved."""
    ui = stack.services["prefect"].ui_url
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    try:
        page.goto(f"{ui}/deployments")
        page.get_by_role("link", name=DEPLOYMENT, exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("At 03:00 AM every day").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "prefect-deployments.png"), full_page=True)

        page.get_by_role("link", name=DEPLOYMENT, exact=True).first.click()
        page.wait_for_url(f"**/deployments/deployment/{dep['id']}**", timeout=30_000)
        card = (
            page.locator("div.flow-run-list-item")
            .filter(has=page.get_by_role("link", name=run["name"], exact=True))
            .first
        )
        card.wait_for(timeout=60_000)
        assert "Completed" in card.inner_text(), card.inner_text()
        page.get_by_text("auto-scheduled").first.wait_for(timeout=30_000)  # the next cron run
        page.screenshot(path=str(artifacts_dir / "prefect-deployment.png"), full_page=True)

        page.get_by_role("link", name=run["name"], exact=True).first.click()
        page.wait_for_url(f"**/runs/flow-run/{run['id']}**", timeout=30_000)
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        page.get_by_text("Task Runs", exact=True).first.click()
        page.get_by_text("fgsm@0.2 s0", exact=False).first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert run["name"] in text and DEPLOYMENT in text
        page.screenshot(path=str(artifacts_dir / "prefect-flow-run.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.integration
def test_prefect_yaml_deploys_and_a_process_worker_runs_it(stack, real_npz, tmp_path, prefect_api):
    """infra/prefect.yaml through `prefect deploy` and a `process` worker, on the stack."""
    import mlflow

    repo = Path(__file__).resolve().parents[2]
    api = stack.prefect_api_url
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
        "PREFECT_API_URL": api,
        "RAY_ADDRESS": stack.ray_address,
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "SKINADV_REPO": str(repo),
    }

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [prefect, *args],
            env=env,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    run("work-pool", "create", "skinadv-process", "--type", "process")
    run("--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--name", "grid")
    (dep,) = prefect_api(
        "POST", f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["grid"]}}}
    )
    assert dep["entrypoint"] == "flows/deployments.py:ray_grid_flow"
    assert dep["work_pool_name"] == "skinadv-process"
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
    assert dep["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}
    ]
    job_env = dep["job_variables"]["env"]
    assert job_env["RAY_ADDRESS"] == stack.ray_address  # filled from the deploying shell
    assert job_env["MLFLOW_TRACKING_URI"] == stack.mlflow_tracking_uri

    params = {
        **dep["parameters"]["params"],
        "data": str(real_npz),
        "overrides": TINY,
        "methods": ["fgsm"],
        "fractions": [0.2],
        "experiment": "it-pool",
        "workdir": str(tmp_path / "work"),
    }
    flow_run_id = prefect_api(
        "POST", f"{api}/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": params}}
    )["id"]
    # one poll: picks up the run and waits for it (--limit makes --run-once wait)
    worker = run(
        "worker", "start", "--pool", "skinadv-process", "--run-once", "--limit", "1", timeout=600
    )
    state = prefect_api("GET", f"{api}/flow_runs/{flow_run_id}")["state"]["type"]
    assert state == "COMPLETED", worker.stdout[-6000:] + worker.stderr[-6000:]
    client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
    exp = client.get_experiment_by_name("it-pool")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("skinadv.cell", "parent") for r in runs) == [
        "fgsm@0.2",
        "parent",
        "vanilla",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
