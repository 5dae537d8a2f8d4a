"""What a user of the MLflow UI meets, on a real MLflow backend (SQLite + local artifacts in
tmp): the experiment's description, the parent run's description, key figures and
``cells.json`` (and old parents' ``skinadv.cells`` tag still read), each model run's
datasets, and its model as a pt2 MLflow model that loads and gives the weights' logits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_report import grid_results, result  # same folder (pytest prepends it)

from skinadv import tracking, tracking_ui
from skinadv.data import CLASSES, Dataset
from skinadv.experiment import confusion_figure
from skinadv.key_figures import key_figures
from skinadv.models import create_model
from skinadv.results import Evaluation, ModelResult, RobustPoint

EXPERIMENT = "ui-test"


@pytest.fixture
def mlflow_tmp(tmp_path: Path, monkeypatch):
    """MLflow on ``tmp_path/mlflow.db`` with artifacts under ``tmp_path/artifacts`` (the
    environment variable only: see tests/core/test_registry.py)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.MlflowClient().create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    yield tmp_path


def _with_curves() -> list[ModelResult]:
    """Two seeds of vanilla + 12 cells, and two defences whose robust curves rank them the
    other way round from their validation scores; every model has a test curve at 2/255."""
    out = []
    for seed in range(2):
        for r in grid_results(seed=seed):
            out.append(dataclasses.replace(r, curve=(RobustPoint(2 / 255, 0.05, 0.02),)))
        for cell, val, test in (("pgd-at@2_255", 0.4, 0.1), ("pgd-at@8_255", 0.3, 0.5)):
            r = result("pgd-at", 1.0, seed, val=(0.5, 0.5, 0.5, val))
            curve = (RobustPoint(2 / 255, test + 0.1, test + 0.01 * seed),)
            out.append(dataclasses.replace(r, cell=cell, fraction=None, curve=curve))
    return out


def test_key_figures_are_the_vanilla_model_and_the_validation_choice():
    fig = key_figures(_with_curves())
    m = fig.metrics
    assert (m["n_models"], m["n_cells"], m["n_seeds"]) == (30, 15, 2)
    assert m["vanilla_clean_balanced_accuracy"] == pytest.approx(0.5)  # result(): acc - 0.1
    assert m["vanilla_clean_accuracy"] == pytest.approx(0.6)
    assert m["vanilla_clean_mel_recall"] == pytest.approx(0.42)
    assert m["vanilla_robust_2_255_balanced_accuracy"] == pytest.approx(0.02)
    # chosen on the validation split (0.4 > 0.3), although its test curve is the worse one
    assert fig.best_cell == "pgd-at@2_255"
    assert m["best_robust_2_255_balanced_accuracy"] == pytest.approx(0.105)  # mean of 2 seeds
    assert all(0 <= v <= 1 for k, v in m.items() if not k.startswith("n_"))
    # no robust curve: no "best", the vanilla figures still
    plain = key_figures(grid_results())
    assert plain.best_cell is None and not any(k.startswith("best_") for k in plain.metrics)
    assert "vanilla_clean_balanced_accuracy" in plain.metrics
    assert key_figures([]).metrics == {}


def test_experiment_description_is_written_once_and_a_users_own_is_kept(mlflow_tmp):
    c = tracking.client()
    tracking_ui.describe_experiment("fresh")  # created here
    note = c.get_experiment_by_name("fresh").tags[tracking_ui.NOTE]
    assert note.startswith(tracking_ui.EXPERIMENT_HEADING) and "`fresh`" in note
    for words in ("one parent run per grid", "one child run per model", "skinadv.cell"):
        assert words in note.lower()
    eid = c.get_experiment_by_name(EXPERIMENT).experiment_id
    c.set_experiment_tag(eid, tracking_ui.NOTE, "my own notes")
    tracking_ui.describe_experiment(EXPERIMENT)
    assert c.get_experiment(eid).tags[tracking_ui.NOTE] == "my own notes"
    c.set_experiment_tag(eid, tracking_ui.NOTE, tracking_ui.EXPERIMENT_HEADING + " old words")
    tracking_ui.describe_experiment(EXPERIMENT)  # an older skinadv's description: replaced
    assert c.get_experiment(eid).tags[tracking_ui.NOTE] == tracking_ui.experiment_note(EXPERIMENT)


def test_parent_run_description_metrics_and_cells_artifact(mlflow_tmp):
    c = tracking.client()
    with tracking.owned_run(EXPERIMENT, name="a", kind="vanilla") as a:
        pass
    with tracking.owned_run(EXPERIMENT, name="grid", kind="parent") as parent:
        cells = {"vanilla-s0": a}
        tracking_ui.describe_parent(
            parent,
            title="skinadv: the quick grid",
            lead="Vanilla reaches 60 % balanced accuracy.",
            figures=key_figures(_with_curves()),
            cells=cells,
        )
    run = c.get_run(parent)
    note = run.data.tags[tracking_ui.NOTE]
    assert note.startswith("**skinadv: the quick grid**\n\nVanilla reaches 60 %")
    assert "cells.json" in note and "report/report.html" in note
    assert run.data.metrics["vanilla_clean_balanced_accuracy"] == pytest.approx(0.5)
    assert run.data.metrics["n_models"] == 30
    assert run.data.tags[tracking_ui.TAG_BEST] == "pgd-at@2_255"
    assert tracking.TAG_CELLS not in run.data.tags  # no wall of JSON among the tags
    assert tracking_ui.logged_cells(run) == cells and tracking_ui.cell_run_ids(run) == [a]
    # a parent logged before cells.json existed: its tag is still read
    with tracking.owned_run(EXPERIMENT, name="old grid", kind="parent") as old:
        tracking.set_tags(old, {tracking.TAG_CELLS: json.dumps(cells)})
    assert tracking_ui.cell_run_ids(c.get_run(old)) == [a]
    assert tracking_ui.parent_note("t", "x" * 9000, n_models=1).endswith("…")


def _dataset(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28, 3), dtype=np.uint8)
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int64)
    return Dataset(images, labels, "synthetic", "synthetic:40:3")


def test_datasets_are_logged_by_digest_without_the_images(mlflow_tmp):
    splits = {"train": _dataset(30, 0), "validation": None, "test": _dataset(10, 1)}
    with tracking.owned_run(EXPERIMENT, name="m", kind="cell") as rid:
        tracking_ui.log_datasets(rid, splits, fingerprint="0123abcd", spec="synthetic:40:3")
        folder = mlflow_tmp / "data"
        folder.mkdir()
        tracking_ui.log_datasets(rid, {"test": splits["test"]}, fingerprint="ff", spec=str(folder))
    inputs = tracking.client().get_run(rid).inputs.dataset_inputs
    got = {(i.tags[0].value, i.dataset.name, i.dataset.digest) for i in inputs}
    assert got == {
        ("train", "synthetic-train", "0123abcd"),
        ("test", "synthetic-test", "0123abcd"),
        ("test", "synthetic-test", "ff"),
    }
    by_digest = {i.dataset.digest: i.dataset for i in inputs if i.tags[0].value == "test"}
    assert json.loads(by_digest["0123abcd"].source) == {"tags": {"skinadv.data": "synthetic:40:3"}}
    assert by_digest["ff"].source_type == "local"
    profile = json.loads(by_digest["0123abcd"].profile)
    assert profile["features_shape"] == [10, 28, 28, 3] and profile["targets_shape"] == [10]
    # metadata only: a few hundred bytes, not the 23 kB of images
    assert len(by_digest["0123abcd"].schema) + len(by_digest["0123abcd"].profile) < 1000


def test_logged_model_is_pt2_with_a_signature_and_gives_the_weights_logits(mlflow_tmp):
    import mlflow

    torch.manual_seed(0)
    model = create_model("paper_cnn", width=4).train()  # any mode: an eval copy is exported
    example = torch.rand(3, 3, 28, 28).numpy()
    with tracking.owned_run(EXPERIMENT, name="m", kind="cell") as rid:
        uri = tracking_ui.log_model(rid, model, example, metadata={"cell": "pgd@0.5"})
    assert model.training  # the caller's model is left as it was
    model.eval()
    x = torch.rand(5, 3, 28, 28)  # another batch size than the example's
    with torch.no_grad():
        want = model(x).numpy()
    loaded = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), want, rtol=1e-5, atol=1e-5)
    by_run = mlflow.pyfunc.load_model(f"runs:/{rid}/{tracking_ui.MODEL_NAME}")
    np.testing.assert_allclose(by_run.predict(x.numpy()), want, rtol=1e-5, atol=1e-5)
    meta = by_run.metadata
    assert meta.metadata["cell"] == "pgd@0.5"
    sig = meta.signature.to_dict()
    assert "[-1, 3, 28, 28]" in sig["inputs"] and "[-1, 7]" in sig["outputs"]
    # the run's Models column: the logged model is the run's output
    run = tracking.client().get_run(rid)
    assert [o.model_id for o in run.outputs.model_outputs] == [uri.split("/")[-1]]
    logged = tracking.client().get_logged_model(uri.split("/")[-1])
    # in the run's experiment (MLflow's default would be experiment 0), and ready
    assert logged.experiment_id == run.info.experiment_id and "READY" in str(logged.status)
    files = {
        f.path for f in tracking.client().list_logged_model_artifacts(uri.split("/")[-1], "data")
    }
    assert files == {"data/model.pt2"}  # no pickled module beside it


def _cm_result() -> ModelResult:
    rng = np.random.default_rng(0)

    def m() -> dict:
        cm = rng.integers(0, 400, size=(7, 7))
        acc = float(np.trace(cm) / cm.sum())
        return {"accuracy": acc, "balanced_accuracy": acc, "confusion_matrix": cm.tolist()}

    attacks = {"fgsm": {"attack": "fgsm", "eps": 0.2}, "pgd": {"attack": "pgd", "eps": 0.3}}
    tr = Evaluation("transfer", 100, {"clean": m(), "fgsm": m(), "pgd": m()}, attacks)
    wb = Evaluation("whitebox", 100, {"clean": m(), "fgsm": m(), "pgd": m()}, attacks)
    return ModelResult("pgd@0.5", 0, tr, wb, "pgd", 0.5)


def test_confusion_figure_is_a_readable_grid_with_nothing_clipped():
    import matplotlib.pyplot as plt

    fig = confusion_figure(_cm_result())
    try:
        width, height = fig.get_size_inches() * fig.dpi
        assert 900 <= width <= 1400 and height >= 600  # 3 x 2 panels, not a 1600 x 340 strip
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        labels = [
            t for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label, ax.title) if t.get_text()
        ]
        assert {t.get_text() for t in labels} >= {"predicted class", "true class"}
        for t in labels:
            b = t.get_window_extent(renderer)
            assert box.x0 <= b.x0 and b.x1 <= box.x1 and box.y0 <= b.y0 and b.y1 <= box.y1, t
        counts = [t for ax in fig.axes for t in ax.texts if t.get_text().isdigit()]
        assert len(counts) == 5 * 49  # every count written in its cell
        key = [t.get_text() for ax in fig.axes for t in ax.texts if "recall" in t.get_text()]
        assert len(key) == 1  # the shading explained once, in the spare panel
    finally:
        plt.close(fig)
