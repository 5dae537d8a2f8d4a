"""CLI ``train`` / ``attack`` / ``evaluate`` end to end on a tiny real subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from skinadv import experiment as exp
from skinadv.commands.experiment import app
from skinadv.config import grid_config
from skinadv.data import load_dataset
from skinadv.results import ModelResult

runner = CliRunner()
TINY = [
    "--set",
    "data.subset=400",
    "--set",
    "train.epochs=1",
    "--set",
    "model.width=4",
    "--set",
    "attack.pgd.steps=2",
]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def grid_cfg(ham_npz, seed: int = 0):
    """The config the grid builds for the same preset, data, overrides and seed."""
    return grid_config("quick", data=str(ham_npz), seeds=[seed], overrides=TINY[1::2])


@pytest.fixture(scope="module")
def vanilla(ham_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "vanilla.pt"
    res = run("train", "--data", ham_npz, *TINY, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_train_json(vanilla):
    out, payload = vanilla
    assert out.is_file() and out.with_name("vanilla.pt.json").is_file()
    assert payload["n_test"] == 80 and payload["n_adversarial"] == 0
    assert payload["synthetic"] is False and 0 <= payload["test_clean"]["accuracy"] <= 1
    meta = json.loads(out.with_name("vanilla.pt.json").read_text())
    assert meta["data"]["subset"] == 400 and meta["adv"] is None
    assert meta["cell"] == payload["cell"] == "vanilla" and meta["seed"] == payload["seed"] == 0
    assert meta["config_hash"] == payload["config_hash"]


def test_train_hash_is_the_grids(vanilla, ham_npz, real_ds, tmp_path):
    """A model trained from the CLI and the grid's vanilla model of the same settings share
    their config hash (the key MLflow runs are reused by)."""
    _, payload = vanilla
    fp = real_ds.fingerprint()
    assert payload["config_hash"] == exp.vanilla_hash(grid_cfg(ham_npz), fp, 0)
    res = run("train", "--data", ham_npz, *TINY, "--seed", "1", "--out", tmp_path / "s1.pt")
    assert res.exit_code == 0, res.output
    h1 = exp.vanilla_hash(grid_cfg(ham_npz, seed=1), fp, 1)
    assert h1 != payload["config_hash"] and f"config hash {h1}" in res.stdout
    assert json.loads((tmp_path / "s1.pt.json").read_text())["config_hash"] == h1


def train_cell(ham_npz, src, out, *extra):
    args = ["--adv-method", "pgd", "--adv-fraction", "0.4", "--source-model", src, *extra]
    res = run("train", "--data", ham_npz, *TINY, *args, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def cell(vanilla, ham_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "pgd40.pt"
    return out, train_cell(ham_npz, vanilla[0], out)


def test_train_adversarial_cell(vanilla, cell, ham_npz, real_ds):
    (_, base), (out, payload) = vanilla, cell
    assert payload["n_adversarial"] == round(0.4 * base["n_train"])
    assert payload["n_train"] == base["n_train"] + round(0.4 * base["n_train"])
    assert payload["adv"] == {"method": "pgd", "fraction": 0.4}
    assert payload["cell"] == "pgd@0.4" and payload["vanilla_hash"] == base["config_hash"]
    # a pool crafted for this fraction alone (pool_fraction = fraction)
    h = exp.cell_hash(base["config_hash"], grid_cfg(ham_npz), "pgd", 0.4, 0, 0.4)
    assert payload["config_hash"] == h and payload["pool_fraction"] == 0.4
    meta = json.loads(out.with_name("pgd40.pt.json").read_text())
    assert (meta["config_hash"], meta["method"], meta["fraction"]) == (h, "pgd", 0.4)


def test_train_cell_pool_fraction_is_the_grids(vanilla, ham_npz, tmp_path):
    """--pool-fraction 0.8: the grid's pgd@0.4 cell (pool crafted for its largest fraction)."""
    src, base = vanilla
    payload = train_cell(ham_npz, src, tmp_path / "c.pt", "--pool-fraction", "0.8")
    assert payload["n_adversarial"] == round(0.4 * base["n_train"])
    cfg = grid_config("quick", data=str(ham_npz), fractions=[0.2, 0.4, 0.8], overrides=TINY[1::2])
    assert payload["config_hash"] == exp.cell_hash(
        base["config_hash"], cfg, "pgd", 0.4, 0, max(cfg.fractions)
    )


def test_attack_writes_canonical_npz(vanilla, ham_npz, tmp_path):
    model, _ = vanilla
    out = tmp_path / "adv.npz"
    res = run(
        "attack",
        "--model",
        model,
        "--data",
        ham_npz,
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--out",
        out,
        *TINY,
        "--json",
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["attack"] == {"attack": "fgsm", "eps": 0.1}
    assert payload["max_linf"] <= 0.1 + 1e-6
    assert payload["n_test"] == 80 and 0 <= payload["adversarial"]["accuracy"] <= 1
    adv = load_dataset(out)  # a canonical npz the data layer reads back
    assert len(adv) == 80 and adv.images.dtype == np.uint8
    with np.load(out) as z:
        assert z["x_adv"].shape == (80, 3, 28, 28)


def test_attack_table(vanilla, ham_npz):
    model, _ = vanilla
    res = run("attack", "--model", model, "--data", ham_npz, "--attack", "pgd", *TINY)
    assert res.exit_code == 0, res.output
    assert "white-box pgd" in res.stdout and "clean" in res.stdout


def test_evaluate_both_protocols(vanilla, ham_npz):
    model, _ = vanilla
    res = run("evaluate", "--model", model, "--data", ham_npz, *TINY, "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert set(payload["results"]) == {"transfer", "whitebox"}
    assert set(payload["results"]["whitebox"]) == {"clean", "fgsm", "pgd"}
    assert {c["name"] for c in payload["checks"]} >= {"whitebox <= transfer", "pgd <= fgsm"}
    result = ModelResult.from_dict(payload)  # --json is ModelResult.to_dict() plus extras
    assert result.cell == "vanilla" and result.is_vanilla and result.seed == 0
    assert payload["config_hash"] == vanilla[1]["config_hash"]
    # the vanilla model's transfer sets are its white-box attacks: scored once
    assert result.transfer.metrics == result.whitebox.metrics
    table = run("evaluate", "--model", model, "--data", ham_npz, *TINY, "--protocol", "whitebox")
    assert table.exit_code == 0 and "whitebox / pgd" in table.stdout
    assert "transfer / " not in table.stdout


def test_evaluate_cell_on_vanilla_transfer_sets(vanilla, cell, ham_npz):
    args = ["--model", cell[0], "--source-model", vanilla[0], "--data", ham_npz, *TINY]
    res = run("evaluate", *args, "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    result = ModelResult.from_dict(payload)
    assert (result.cell, result.method, result.fraction) == ("pgd@0.4", "pgd", 0.4)
    assert result.whitebox.attack_names == ("fgsm", "pgd")
    assert payload["source_model"] == str(vanilla[0])
    assert payload["config_hash"] == cell[1]["config_hash"]
    table = run("evaluate", *args)
    assert table.exit_code == 0, table.output
    assert "pgd@0.4" in table.stdout and "transfer / fgsm" in table.stdout
    assert "whitebox / pgd" in table.stdout and cell[1]["config_hash"] in table.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "attack.fgsm.eps=-1"], "eps must be >= 0"),
        (
            ["--adv-method", "bim", "--adv-fraction", "0.2", "--source-model", "SRC"],
            "unknown adversarial training method 'bim'",
        ),
        (
            ["--adv-method", "pgd", "--adv-fraction", "1.5", "--source-model", "SRC"],
            r"fraction must be in (0, 1]",
        ),
        (["--adv-method", "pgd", "--adv-fraction", "0.2"], "needs --source-model"),
        (
            ["--adv-method", "pgd", "--adv-fraction", "0.4", "--pool-fraction", "0.2"],
            "--pool-fraction 0.2 is below --adv-fraction",
        ),
        (["--pool-fraction", "0.8"], "go with --adv-method"),
        (  # a pool crafted against a vanilla model of other settings: its hash would lie
            ["--adv-method", "pgd", "--adv-fraction", "0.2", "--source-model", "SRC"]
            + ["--set", "train.lr=0.01"],
            "train the cell with the settings of its vanilla model",
        ),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--set", "train.epoch=2"], "Extra inputs are not permitted"),
    ],
)
def test_train_bad_input_exits_2(vanilla, ham_npz, tmp_path, args, message):
    out = tmp_path / "m.pt"
    args = [str(vanilla[0]) if a == "SRC" else a for a in args]
    res = run("train", "--data", ham_npz, *TINY, *args, "--out", out)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_data_and_model_exit_2(vanilla, ham_npz, tmp_path):
    res = run("train", "--data", tmp_path / "none.npz", "--out", tmp_path / "m.pt")
    assert res.exit_code == 2 and "no such file or folder" in res.stderr
    res = run("evaluate", "--model", tmp_path / "none.pt", "--data", ham_npz)
    assert res.exit_code == 2 and "no such model checkpoint" in res.stderr
    res = run("attack", "--model", vanilla[0], "--data", ham_npz, "--attack", "deepfool")
    assert res.exit_code == 2 and "unknown attack 'deepfool'" in res.stderr
    res = run(
        "attack",
        "--model",
        vanilla[0],
        "--data",
        ham_npz,
        "--attack",
        "pgd",
        "--eps",
        "-0.1",
        "--out",
        tmp_path / "a.npz",
        *TINY,
    )
    assert res.exit_code == 2 and "eps must be >= 0" in res.stderr
    assert not (tmp_path / "a.npz").exists()
    # a split other than the model's would leak its training images into the test side
    res = run(
        "evaluate", "--model", vanilla[0], "--data", ham_npz, *TINY, "--set", "data.subset=500"
    )
    assert res.exit_code == 2 and "other data settings (subset=400)" in res.stderr
