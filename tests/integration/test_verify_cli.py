"""``skinadv verify`` end to end through MLflow (a SQLite store, no server: cheap): a grid's
runs as ``skinadv grid`` logs them (parent run listing its models, state dict + config JSON,
evaluation.json, data parameters), verified from the CLI; figures on every named model's
run, verify.md / verify.json in the run folder and on the parent run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from skinadv import tracking, tracking_ui
from skinadv.cli import app
from skinadv.config import TrainConfig, grid_config
from skinadv.models import save_model
from skinadv.results import Evaluation, ModelResult, RobustPoint
from skinadv.training import fit
from skinadv.training.prep import prepare_data

DATA = "synthetic:400:0"
EXPERIMENT = "verify-test"


def _model_run(prep, cell: str, method: str | None, seed: int, val_robust: float, tmp: Path):
    """A finished model run, as the grid logs one; returns its ModelResult."""
    model = fit(
        "paper_cnn", prep.train, TrainConfig(epochs=1, batch_size=64, seed=seed, device="cpu"),
        model_kwargs={"width": 4},
    ).model  # fmt: skip
    m = {"accuracy": 0.5, "balanced_accuracy": 0.4, "recall": {"mel": 0.3}}
    ev = Evaluation("transfer", len(prep.test), {"clean": m, "fgsm": m, "pgd": m})
    params = {
        "seed": seed,
        "config_hash": f"h-{cell}-{seed}",
        "data_fingerprint": prep.fingerprint,
        "n_train": len(prep.train),
        "n_val": len(prep.val),
        "n_test": len(prep.test),
    }
    kind = "vanilla" if method is None else "cell"
    with tracking.owned_run(EXPERIMENT, name=f"{cell} s{seed}", kind=kind, params=params) as rid:
        pt = save_model(model, tmp / rid / f"{cell}.pt", {"seed": seed, "cell": cell})
        tracking.log_artifact_files(rid, [pt, Path(str(pt) + ".json")], tracking.WEIGHTS_DIR)
        r = ModelResult(
            cell, seed, ev, ev.as_protocol("whitebox"), method, None, run_id=rid,
            validation=ev, val_robust=RobustPoint(2 / 255, val_robust, val_robust),
        )  # fmt: skip
        tracking.log_result(rid, r.to_dict())
    return r


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid in a SQLite MLflow store: the vanilla model, two seeds of the most robust
    defence and one of another; yields (tracking URI, parent run id, {model key: run id})."""
    tmp = tmp_path_factory.mktemp("verify-grid")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: 2 threads crawl
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the store's default artifact folder
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = grid_config("quick", data=DATA, overrides=["data.val_size=0.1"])
        prep = prepare_data(cfg.data)
        results = [
            _model_run(prep, cell, method, seed, v + 0.01 * seed, tmp / "w")
            for cell, method, v, seed in (
                ("vanilla", None, 0.0, 0),
                ("pgd-at@2_255", "pgd-at", 0.3, 0),
                ("pgd-at@2_255", "pgd-at", 0.3, 1),
                ("pgd-at@8_255", "pgd-at", 0.2, 0),
            )
        ]
        params = {"preset": "quick", "data": DATA, "methods": cfg.methods, "seeds": [0, 1]}
        with tracking.owned_run(EXPERIMENT, name="grid", kind="parent", params=params) as parent:
            cells = {r.key: r.run_id for r in results}
            tracking_ui.log_cells(parent, cells)
        yield uri, parent, cells
    torch.set_num_threads(threads)  # verify sets its own (--threads)


def test_verify_logs_figures_on_the_named_models(grid, tmp_path, monkeypatch):
    uri, parent, runs = grid
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "grid"
    res = CliRunner().invoke(
        app,
        ["verify", "--tracking-uri", uri, "--run-dir", str(run_dir), "--experiment", EXPERIMENT,
         "--eps", "8/255", "--n-images", "30", "--set", "data.val_size=0.1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "[1/3] vanilla seed 0 (vanilla)" in res.output and "AutoAttack" in res.output
    doc = json.loads((run_dir / "verify.json").read_text())
    assert doc["done"] and doc["n_images"] == 30
    verified = {(m["cell"], m["seed"]) for m in doc["models"]}
    # the vanilla model and every seed of the champion / most robust cell; not pgd-at@8_255
    assert verified == {("vanilla", 0), ("pgd-at@2_255", 0), ("pgd-at@2_255", 1)}
    md = (run_dir / "verify.md").read_text()
    assert "AutoAttack standard (reference)" in md and "subset of 30 of the" in md
    c = tracking.client()
    for key in ("vanilla-s0", "pgd-at@2_255-s1"):
        metrics = c.get_run(runs[key]).data.metrics
        for name in (
            "autoattack_8_255_accuracy",
            "ensemble_8_255_balanced_accuracy",
            "autoattack_8_255_square_extra",
            "autoattack_n_images",
            "autoattack_seconds",
        ):
            assert name in metrics, (key, name)  # fmt: skip
        assert metrics["autoattack_n_images"] == 30
        assert c.get_run(runs[key]).info.status == "FINISHED"  # never reopened
    assert "autoattack_n_images" not in c.get_run(runs["pgd-at@8_255-s0"]).data.metrics
    listed = [f.path for f in c.list_artifacts(parent, "verify")]
    assert sorted(listed) == ["verify/verify.json", "verify/verify.md"]


def test_verify_without_a_grid_says_so(grid, tmp_path):
    uri, _, _ = grid  # a store with a grid, but not of this name
    res = CliRunner().invoke(
        app, ["verify", "--tracking-uri", uri, "--run-dir", str(tmp_path / "out"),
              "--experiment", "no-such-grid"],
    )  # fmt: skip
    assert res.exit_code == 2 and "no-such-grid" in res.output
    assert not (tmp_path / "out" / "verify.md").exists()


def test_verified_figures_reach_the_report(grid, tmp_path, monkeypatch):
    """What verify logged on a run comes back with the run's result (``extra``), so the
    report rebuilt from MLflow shows AutoAttack beside the ensemble."""
    from skinadv.report import autoattack_table

    uri, parent, runs = grid
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        app,
        ["verify", "--tracking-uri", uri, "--run-dir", str(tmp_path / "g"), "--experiment",
         EXPERIMENT, "--eps", "8/255", "--n-images", "30", "--set", "data.val_size=0.1",
         "--models", "vanilla"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    logged = tracking.client().get_run(runs["vanilla-s0"]).data.metrics
    result, _ = tracking.load_result(runs["vanilla-s0"])
    assert result.extra["autoattack_8_255_accuracy"] == logged["autoattack_8_255_accuracy"]
    assert result.extra["ensemble_8_255_accuracy"] == logged["ensemble_8_255_accuracy"]
    unverified, _ = tracking.load_result(runs["pgd-at@8_255-s0"])
    assert not any(k.startswith("autoattack_") for k in unverified.extra)
    table = autoattack_table([result, unverified])
    assert len(table) == 1 and table.iloc[0]["cell"] == "vanilla"


def test_a_grid_that_has_not_gathered_is_read_from_its_finished_children(tmp_path, monkeypatch):
    """A parent run with no cell list yet (a grid still running, or interrupted) gives the
    children it finished so far: what ``skinadv report --parent-run`` and ``verify`` read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracking.start_run("partial", name="grid", kind="parent")
    with tracking.owned_run("partial", name="a", kind="vanilla", parent_run_id=parent) as done:
        pass
    running = tracking.start_run("partial", name="b", kind="cell", parent_run_id=parent)
    with pytest.raises(RuntimeError):
        with tracking.owned_run("partial", name="c", kind="cell", parent_run_id=parent):
            raise RuntimeError("a failed model")
    assert tracking_ui.cell_run_ids(tracking.client().get_run(parent)) == [done]
    tracking.finish_run(running)  # finished now: listed too
    assert sorted(tracking_ui.cell_run_ids(tracking.client().get_run(parent))) == sorted(
        [done, running]
    )
    empty = tracking.start_run("partial", name="grid2", kind="parent")
    with pytest.raises(ValueError, match="has none finished"):
        tracking_ui.cell_run_ids(tracking.client().get_run(empty))
