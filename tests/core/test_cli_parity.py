"""The single-model commands at parity with the grid, on ~200 real images: ``attack`` takes
every attack of the registry (APGD included, either spelling), ``train --defence`` gives the
grid's config hash for the same settings, and ``evaluate`` writes the grid's report (robust
curve, targeted rows, AutoAttack) and logs an MLflow run with the grid cells' metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skinadv import experiment as exp
from skinadv.attacks import ATTACKS, attack_name, pgd
from skinadv.commands.experiment import app
from skinadv.config import load_preset
from skinadv.models import read_model_config
from skinadv.results import ModelResult
from skinadv.training import prepare_data

runner = CliRunner()
OVERRIDES = {
    "data.subset": 200,
    "train.epochs": 1,
    "train.schedule": "constant",  # one-cycle needs more than a handful of steps
    "model.width": 4,
    "attack.batch_size": 64,
    "attack.pgd.steps": 2,
    "attack.apgd.steps": 5,
    "robust.pgd_steps": 3,
}
SMALL = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]


def invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def payload(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory, ham_npz) -> str:
    out = tmp_path_factory.mktemp("parity") / "vanilla.pt"
    payload(invoke("train", "--data", ham_npz, "--out", out, *SMALL, "--json"))
    return str(out)


@pytest.mark.parametrize("spelling", ["apgd_ce", "apgd-t", "APGD-DLR", "mi-fgsm"])
def test_attack_takes_every_registry_attack(vanilla, ham_npz, spelling):
    """APGD-CE / APGD-T / APGD-DLR (settings from the ``apgd`` section) and MI-FGSM through
    the CLI, in either spelling, with a budget override checked against the section."""
    name = attack_name(spelling)
    res = invoke("attack", "--model", vanilla, "--data", ham_npz, *SMALL,
                 "--attack", spelling, "--eps", 0.03, "--json")  # fmt: skip
    p = payload(res)
    assert p["attack"]["attack"] == name and p["attack"]["eps"] == 0.03
    if name.startswith("apgd"):
        assert p["attack"]["steps"] == 5  # the preset's apgd section, overridden by --set
        assert ("n_target_classes" in p["attack"]) == (name == "apgd_t")
    assert p["n_test"] == 40 and p["max_linf"] <= 0.03 + 1e-6
    assert p["adversarial"]["accuracy"] <= p["clean"]["accuracy"]


def test_attack_names_and_settings_fail_in_one_line(vanilla, ham_npz):
    assert set(map(attack_name, ATTACKS)) == set(ATTACKS)
    for args, message in (
        (["--attack", "apgd-ce", "--alpha", "0.1"], "--alpha does not apply to apgd_ce"),
        (["--attack", "apgd_t", "--steps", "0"], "steps"),
        (["--attack", "cw"], "unknown attack 'cw'; choose one of fgsm, pgd"),
    ):
        res = invoke("attack", "--model", vanilla, "--data", ham_npz, *SMALL, *args)
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and re.search(message, res.stderr), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_pgd_takes_an_expanded_gradient():
    """A model that only sums its input gets a stride-0 (expanded) input gradient, which
    an in-place ``sign_()`` cannot write."""

    class Sum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.linspace(-1, 1, 7))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum((1, 2, 3))[:, None] * self.w

    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 5, 6])
    x_adv = pgd(Sum(), x, y, eps=0.1, alpha=0.05, steps=2, random_start=False)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)


@pytest.mark.parametrize("model_name", ["paper_cnn", "resnet18"])
def test_train_defence_has_the_grids_hash(tmp_path, ham_npz, model_name):
    """``train --defence n-fgsm --defence-eps 8/255`` keys the model as the grid's
    ``train_defence`` keys the same defence from a preset's ``defences`` list."""
    out = tmp_path / "defence.pt"
    res = invoke("train", "--data", ham_npz, "--out", out, *SMALL, "--model-name", model_name,
                 "--defence", "n-fgsm", "--defence-eps", "8/255", "--json")  # fmt: skip
    p = payload(res)
    grid_cfg = load_preset(
        "quick",
        {
            **OVERRIDES,
            "data.spec": str(ham_npz),
            "model.name": model_name,
            "defences": [{"method": "n-fgsm", "eps": "8/255"}],
        },
    )
    prep = prepare_data(grid_cfg.data)
    vanilla_hash = exp.vanilla_hash(grid_cfg, prep.fingerprint, grid_cfg.train.seed)
    (defence,) = grid_cfg.defences
    assert p["config_hash"] == exp.defence_hash(vanilla_hash, defence)
    assert p["cell"] == defence.name == "n-fgsm@8_255" and p["vanilla_hash"] == vanilla_hash
    meta = read_model_config(out)
    assert meta["name"] == model_name and meta["defence"] == defence.model_dump()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--defence", "n-fgsm"], "--defence and --defence-eps go together"),
        (["--defence", "free-at", "--defence-eps", "8/255"], "free-at"),
        (["--defence", "pgd-at", "--defence-eps", "8/255", "--adv-method", "fgsm"], "on the fly"),
        (["--model-name", "vgg"], "unknown model 'vgg'"),
    ],
)
def test_train_defence_bad_options(tmp_path, ham_npz, args, message):
    res = invoke("train", "--data", ham_npz, "--out", tmp_path / "m.pt", *SMALL, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr


def test_evaluate_writes_the_grids_report_and_logs_a_run(vanilla, ham_npz, tmp_path, monkeypatch):
    """Robust curve (worst case over PGD and APGD-CE), targeted mel->nv / nv->mel, the report
    files, and an MLflow run whose metrics are the grid cells' (``flat_metrics``)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "report"
    res = invoke("evaluate", "--model", vanilla, "--data", ham_npz, *SMALL,
                 "--eps", "2/255,8/255", "--attacks", "pgd,apgd-ce",
                 "--targeted", "mel->nv,nv->mel", "--out", out, "--json")  # fmt: skip
    p = payload(res)
    assert [c["eps"] for c in p["curve"]] == [2 / 255, 8 / 255]
    assert all(c["attacks"] == ["pgd", "apgd_ce"] for c in p["curve"])
    assert {(t["source"], t["target"]) for t in p["targeted"]} == {("mel", "nv"), ("nv", "mel")}
    assert set(p["evaluation"]["transfer"]["metrics"]["clean"]["recall"]) == {
        "akiec", "bcc", "bkl", "df", "mel", "nv", "vasc",
    }  # fmt: skip
    md = (out / "report.md").read_text()
    assert (out / "report.html").is_file() and (out / "robust_vs_eps.png").is_file()
    assert "Robust accuracy vs eps" in md and "Targeted" in md
    assert p["report"]["report.md"] == str(out / "report.md")
    # a one-model report names its model (cell and seed) and leaves out the grid's sections
    subject = f"{Path(vanilla).name} (vanilla, seed 0)"
    assert md.startswith(f"# skinadv evaluate: {subject}, preset quick")
    assert f"## Table 1 — {subject}" in md and "## All cells" not in md

    import mlflow

    run = mlflow.MlflowClient().get_run(p["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["skinadv.kind"] == "evaluation"
    assert run.info.run_name == f"evaluate {subject}"
    assert "skinadv.config_hash" not in run.data.tags  # never reused as a trained grid cell
    expected = ModelResult.from_dict(p).flat_metrics()
    assert "robust_2_255_balanced_accuracy" in run.data.metrics
    assert set(run.data.metrics) == set(expected)
    assert run.data.metrics["clean_accuracy"] == pytest.approx(expected["clean_accuracy"])


def test_evaluate_autoattack_beside_the_ensemble(vanilla, ham_npz, tmp_path, monkeypatch):
    """``--autoattack-eps``: AutoAttack (reference) and our ensemble on the curve's fixed
    subset, as ``skinadv verify`` names them, and the report's AutoAttack table."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "report"
    res = invoke("evaluate", "--model", vanilla, "--data", ham_npz, *SMALL, "--eps", "2/255",
                 "--set", "robust.n_images=20", "--autoattack-eps", "2/255", "--out", out,
                 "--json")  # fmt: skip
    p = payload(res)
    extra = p["extra"]
    assert extra["autoattack_n_images"] == 20 and p["curve"][0]["n_images"] == 20
    assert 0 <= extra["autoattack_2_255_accuracy"] <= p["curve"][0]["accuracy"] + 0.05
    assert "ensemble_2_255_balanced_accuracy" in extra and p["mlflow_run_id"] is None
    assert "AutoAttack vs our ensemble" in (out / "report.md").read_text()


def test_evaluate_bad_options_fail_in_one_line(vanilla, ham_npz):
    for args, message in (
        (["--eps", "2/255,x"], "--eps: cannot read 'x'"),
        (["--attacks", "pgd,cw"], "unknown attack 'cw'"),
        (["--targeted", "mel->mel"], "targeted pair 'mel->mel'"),
        (["--autoattack-eps", "0"], "--autoattack-eps: 0 is not in"),
        (["--protocol", "whitebox", "--out", "x"], "--out writes the grid's report"),
    ):
        res = invoke("evaluate", "--model", vanilla, "--data", ham_npz, *SMALL, *args)
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr
