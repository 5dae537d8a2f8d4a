"""The evaluation flow (``flows/evaluate.py``) and its deployment beside the grid's.

Fast tests: its parameters (each bad input gives one clear error), model labels, a
registered model's versions on a SQLite MLflow, and ``skinadv serve``'s evaluation options.
The integration test serves both deployments with ``skinadv serve`` on a real Prefect
server, Ray and MLflow server, starts an evaluation of two models (a skinadv checkpoint and
a TorchScript file, trained here on 200 real images) through the Prefect API, and checks
that each model's MLflow run carries the figures ``skinadv evaluate --json`` gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.evaluate import EvaluateParams, EvaluationFailed, evaluate_flow, folder_name
from tasks.evaluate import model_labels

TINY = [
    "data.subset=200",
    "train.epochs=1",
    "train.schedule=constant",  # one-cycle needs more than a handful of steps
    "model.width=4",
    "attack.batch_size=64",
    "attack.pgd.steps=2",
    "robust.pgd_steps=3",
]
CURVE = {"eps": "2/255", "attacks": "pgd"}  # one budget, one attack
EXPERIMENT = "it-evaluate"
DEPLOYMENT = "it-evaluate"
REGISTERED = "it-evaluate-model"
CRON = "0 4 * * *"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A file that is a skinadv checkpoint for the parameter checks (never loaded)."""
    path = tmp_path / "m.pt"
    path.write_bytes(b"weights")
    path.with_name("m.pt.json").write_text("{}")
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "no model to evaluate: give models (SPECs) or registered_model"),
        ({"models": ["nowhere/model.pt"]}, "no such model checkpoint, file or folder"),
        ({"models": ["models:/m"]}, "not an MLflow model URI we read"),
        ({"models": ["{ckpt}", "{ckpt}"]}, "is given twice"),
        ({"registered_model": "models:/m/1"}, "a registered model's name, e.g. my-model"),
        ({"models": ["{ckpt}"], "weights": "w.pt"}, "weights go with package.module:factory"),
        ({"models": ["pkg.mod:net"], "weights": "nowhere.pt"}, "weights nowhere.pt: no such"),
        ({"models": ["{ckpt}"], "versions": "latest"}, "'newest' or 'all'"),
        ({"models": ["{ckpt}"], "eps": "2/255,x"}, "cannot read 'x'"),
        ({"models": ["{ckpt}"], "attacks": "pgd,cw"}, "unknown attack 'cw'"),
        ({"models": ["{ckpt}"], "autoattack_eps": "0"}, "autoattack_eps: 0 is not in"),
        ({"models": ["{ckpt}"], "overrides": ["train.epochs=0"]}, "train.epochs"),
        ({"models": ["{ckpt}"], "preset": "nosuch"}, "nosuch"),
        ({"models": ["{ckpt}"], "classes": "a,b"}, "unknown"),
        ({"models": ["{ckpt}"], "normalize": ["0.5"]}, "normalize takes [MEAN, STD]"),
        ({"models": ["{ckpt}"], "normalize": ["0.5", "0"]}, "STD must be > 0"),
        ({"models": ["{ckpt}"], "modle": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_give_one_clear_error(checkpoint, values, message):
    values = {
        k: [str(checkpoint) if x == "{ckpt}" else x for x in v] if k == "models" else v
        for k, v in values.items()
    }
    with pytest.raises(ValidationError) as exc:
        EvaluateParams(data="synthetic:100", **values)
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    assert message in errors[0]["msg"], errors[0]["msg"]


def test_params_pin_paths_and_allow_modelless_defaults(checkpoint, monkeypatch):
    monkeypatch.chdir(checkpoint.parent)
    p = EvaluateParams(models=["m.pt", "models:/my-model@champion"], overrides=["data.subset=50"])
    assert p.models == [str(checkpoint), "models:/my-model@champion"]
    # the preset's relative data path, pinned for workers in other folders
    assert Path(p.data).is_absolute() and p.data.endswith("shared/data/ham10000")
    req = p.request(p.models[0])
    assert (req.model, req.protocol, req.overrides) == (
        str(checkpoint),
        "both",
        ("data.subset=50",),
    )
    defaults = EvaluateParams.defaults(data="synthetic:100", experiment="nightly")
    assert defaults.models == [] and defaults.registered_model is None
    with pytest.raises(ValidationError, match="no model to evaluate"):
        EvaluateParams.model_validate(defaults.model_dump())  # a run must name one
    # a deployment's defaults are still checked
    with pytest.raises(ValidationError, match="train.epochs"):
        EvaluateParams.defaults(data="synthetic:100", overrides=["train.epochs=0"])


def test_labels_name_each_model_once():
    specs = [
        "models:/my-model/3",
        "models:/my-model@champion",
        "runs:/0123456789abcdef/weights",
        "/a/model.pt",
        "/b/model.pt",
        "tests.zoo:resnet",
    ]
    labels = model_labels(specs)
    assert labels == [
        "my-model v3",
        "my-model@champion",
        "run 01234567 weights",
        "model.pt",
        "model.pt (2)",
        "resnet",
    ]
    assert [folder_name(x) for x in labels[:3]] == [
        "my-model-v3",
        "my-model@champion",
        "run-01234567-weights",
    ]


def test_registered_versions_need_mlflow(monkeypatch):
    """Without MLflow, or with an unknown choice, one clear error (the versions themselves
    are checked on the MLflow server in the integration test)."""
    from skinadv.commands.evaluation_run import registered_versions

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="set MLFLOW_TRACKING_URI to the MLflow that holds it"):
        registered_versions("my-model")
    with pytest.raises(ValueError, match="versions 'latest': choose newest or all"):
        registered_versions("my-model", "latest")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evaluate-cron", CRON], "--evaluate-cron needs --evaluate-model or"),
        (["--evaluate-cron", "61 4 * * *", "--evaluate-model", "{ckpt}"], "bad cron expression"),
        (["--evaluate-versions", "latest"], "--evaluate-versions: Input should be 'newest'"),
        (["--evaluate-model", "nowhere.pt"], "nowhere.pt: no such model checkpoint"),
        (["--evaluate-autoattack-eps", "2/255,x"], "cannot read 'x'"),
        (["--evaluate-name", "nightly/eval"], "bad deployment name 'nightly/eval'"),
    ],
)
def test_serve_bad_evaluation_options_exit_2(tmp_path, monkeypatch, checkpoint, args, message):
    from typer.testing import CliRunner

    from skinadv.cli import app

    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    args = [str(checkpoint) if a == "{ckpt}" else a for a in args]
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["serve", *args, "--data", "synthetic:100", "--run-dir", str(run_dir)]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0]
    assert not run_dir.exists()  # no service was started


def test_flow_takes_one_params_object():
    """The Prefect UI's run form: one ``EvaluateParams`` object, every field described."""
    schema = evaluate_flow.parameters.model_dump()
    assert list(schema["properties"]) == ["params"]
    fields = schema["definitions"]["EvaluateParams"]["properties"]
    assert {"models", "registered_model", "versions", "data", "preset", "overrides", "eps",
            "attacks", "autoattack_eps", "experiment", "out_dir", "weights", "classes",
            "normalize"} <= set(fields)  # fmt: skip
    assert all(f.get("description") for f in fields.values())
    assert issubclass(EvaluationFailed, RuntimeError)


# --- integration: served for real ---------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from skinadv.stack import Stack

    with Stack(tmp_path_factory.mktemp("stack"), ray_num_cpus=2) as st:
        yield st


def _log_tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _wait(what: str, check, timeout_s: float, log: Path, interval: float = 1.0):
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


def _train_models(folder: Path, data: Path) -> tuple[str, str]:
    """A skinadv checkpoint (seed 0) and a TorchScript file of another model (seed 1)."""
    import torch
    from typer.testing import CliRunner

    from skinadv.commands.experiment import app
    from skinadv.models import load_model

    sets = [a for s in TINY for a in ("--set", s)]
    paths = []
    for seed in (0, 1):
        out = folder / f"seed{seed}.pt"
        res = CliRunner().invoke(
            app, ["train", "--data", str(data), "--out", str(out), *sets,
                  "--set", f"train.seed={seed}", "--json"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        paths.append(out)
    model, _ = load_model(paths[1])
    scripted = folder / "seed1-script.pt"
    torch.jit.trace(model.eval(), torch.rand(2, 3, 28, 28)).save(str(scripted))
    return str(paths[0]), str(scripted)


def _cli_metrics(model: str, data: Path) -> dict[str, float]:
    """``skinadv evaluate --json``'s figures as the grid cells' metric names, with one torch
    thread (what a Ray task of 1 CPU uses)."""
    import torch
    from typer.testing import CliRunner

    from skinadv.commands.experiment import app
    from skinadv.results import ModelResult

    sets = [a for s in TINY for a in ("--set", s)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(
            app, ["evaluate", "--model", model, "--data", str(data), *sets,
                  "--eps", CURVE["eps"], "--attacks", CURVE["attacks"], "--json"],
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["mlflow_run_id"] is None  # nothing logged from here
    return {**ModelResult.from_dict(payload).flat_metrics(), **payload["extra"]}


def _register(uri: str, checkpoint: str) -> None:
    """The checkpoint as versions 1 and 2 of the registered model ``REGISTERED``: its run's
    ``weights/`` folder, as the grid registers a champion."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("it-evaluate-registry"))
    for f in (checkpoint, checkpoint + ".json"):
        client.log_artifact(run.info.run_id, f, "weights")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(REGISTERED)
    for _ in range(2):  # two versions: a nightly run evaluates the newest alone
        client.create_model_version(
            REGISTERED, source=f"{run.info.artifact_uri}/weights", run_id=run.info.run_id
        )


@pytest.mark.integration
def test_served_evaluation_of_two_models(stack, real_npz, tmp_path, monkeypatch, prefect_api):
    """``skinadv serve`` with a nightly evaluation of a registered model's newest version;
    a run started through the API (the UI form's defaults, plus a TorchScript file) ends
    COMPLETED with one MLflow run per model carrying ``skinadv evaluate --json``'s figures,
    a report per model, and a summary linking both runs."""
    import mlflow

    api = stack.prefect_api_url
    run_dir = tmp_path / "serve"
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri,
        "PREFECT_API_URL": api,
        "RAY_ADDRESS": stack.ray_address,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # pick the run up at once (default 10 s)
    }
    args = ["serve", "--name", "it-evaluate-grid", "--evaluate-name", DEPLOYMENT,
            "--evaluate-registered-model", REGISTERED, "--evaluate-cron", CRON,
            "--data", str(real_npz), "--experiment", "it-evaluate-default",
            "--run-dir", str(run_dir)]  # fmt: skip
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "skinadv.cli", *args],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            # Ctrl-C as a terminal delivers it, even where the suite inherited SIGINT ignored
            preexec_fn=_default_sigint,  # noqa: PLW1509 - it only resets a signal
        )
    try:
        # while serve starts: the two models, one registered, and the CLI's figures
        checkpoint, scripted = _train_models(tmp_path, real_npz)
        _register(stack.mlflow_tracking_uri, checkpoint)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        expected = {
            f"models:/{REGISTERED}/2": _cli_metrics(checkpoint, real_npz),
            scripted: _cli_metrics(scripted, real_npz),
        }
        assert len({json.dumps(m, sort_keys=True) for m in expected.values()}) == 2

        def deployment():
            assert proc.poll() is None, f"serve exited early:\n{_log_tail(log)}"
            found = prefect_api(
                "POST",
                f"{api}/deployments/filter",
                {"deployments": {"name": {"any_": [DEPLOYMENT, "it-evaluate-grid"]}}},
            )
            return found if len(found) == 2 else None

        deps = {d["name"]: d for d in _wait("both deployments", deployment, 180, log)}
        dep = deps[DEPLOYMENT]
        served_s = time.monotonic() - t0
        assert [s["schedule"].get("cron") for s in dep["schedules"]] == [CRON]
        assert dep["entrypoint"] == "flows.deployments.ray_evaluate_flow"
        assert deps["it-evaluate-grid"]["entrypoint"] == "flows.deployments.ray_grid_flow"
        assert deps["it-evaluate-grid"]["schedules"] == []  # the grid's as before: no --cron
        defaults = dep["parameters"]["params"]
        assert (defaults["registered_model"], defaults["versions"]) == (REGISTERED, "newest")
        # serve pins the data path resolved (../shared may be a symlink, as in CI)
        assert defaults["models"] == [] and defaults["data"] == str(real_npz.resolve())
        assert defaults["out_dir"] == str((run_dir / "evaluate").resolve())
        assert "EvaluateParams" in dep["parameter_openapi_schema"]["definitions"]

        # as the UI's form does: the defaults (the registered model), a model added
        params = {**defaults, "models": [scripted], "overrides": TINY, **CURVE,
                  "experiment": EXPERIMENT}  # fmt: skip
        flow_run_id = prefect_api(
            "POST",
            f"{api}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"params": params}},
        )["id"]

        def finished():
            run = prefect_api("GET", f"{api}/flow_runs/{flow_run_id}")
            return run if run["state"]["type"] in TERMINAL else None

        run = _wait("the flow run to finish", finished, 300, log)
        assert run["state"]["type"] == "COMPLETED", _log_tail(log)
        run_s = time.monotonic() - t0
        proc.send_signal(signal.SIGINT)  # it stops while the results are checked

        client = mlflow.MlflowClient(stack.mlflow_tracking_uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id])
        by_model = {r.data.params["model"]: r for r in runs}
        assert len(runs) == 2 and set(by_model) == set(expected)
        for model, r in by_model.items():
            assert r.info.status == "FINISHED" and r.data.tags["skinadv.kind"] == "evaluation"
            assert r.data.tags["skinadv.prefect_flow_run_id"] == flow_run_id
            assert "skinadv.config_hash" not in r.data.tags  # never reused as a grid cell
            assert "robust_2_255_balanced_accuracy" in r.data.metrics
            assert r.data.metrics == pytest.approx(expected[model], abs=1e-12), model
            assert {a.path for a in client.list_artifacts(r.info.run_id, "report")} == {
                "report/report.md",
                "report/report.html",
            }
        assert by_model[f"models:/{REGISTERED}/2"].data.params["model_source"] == "skinadv"
        assert by_model[scripted].data.params["model_source"] == "torchscript"

        # the reports: one per model where the params say, and the summary
        out = run_dir / "evaluate"
        labels = {f"{REGISTERED} v2": f"{REGISTERED}-v2", "seed1-script.pt": "seed1-script.pt"}
        for folder in labels.values():
            assert "Robust accuracy vs eps" in (out / folder / "report.md").read_text()
            assert (out / folder / "report.html").is_file()
        summary = (out / "summary.md").read_text()
        tasks = prefect_api(
            "POST", f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}
        )
        names = {t["name"]: t for t in tasks}
        assert {*labels, f"versions of {REGISTERED}"} <= set(names)
        for label in labels:
            assert f"| {label} |" in summary
            assert "PGD white-box" in names[label]["state"]["message"]
        arts = prefect_api(
            "POST",
            f"{api}/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        )
        (art,) = [a for a in arts if a["key"] == "skinadv-evaluate-report"]
        assert art["type"] == "markdown" and art["data"] == summary
        for r in runs:  # each model linked to its MLflow run
            assert f"/runs/{r.info.run_id})" in summary

        # the versions a run sees: the newest alone, or all of them oldest first
        from skinadv.commands.evaluation_run import registered_versions

        monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_tracking_uri)
        assert registered_versions(REGISTERED, "all") == [
            f"models:/{REGISTERED}/1",
            f"models:/{REGISTERED}/2",
        ]
        with pytest.raises(ValueError, match="registered model 'it-nosuch' has no versions"):
            registered_versions("it-nosuch")

        assert proc.wait(timeout=120) == 0, _log_tail(log)
        assert "stopped serving" in log.read_text()
        print(
            f"\nserved evaluation: deployments registered after {served_s:.0f} s, 2 models "
            f"evaluated after {run_s:.0f} s, serve stopped after {time.monotonic() - t0:.0f} s"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
