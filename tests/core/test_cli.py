"""CLI ``train`` / ``attack`` / ``evaluate`` end to end on a tiny real subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from skinadv.commands.experiment import app
from skinadv.data import load_dataset

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


def test_train_adversarial_cell(vanilla, ham_npz, tmp_path):
    src, base = vanilla
    out = tmp_path / "pgd40.pt"
    res = run(
        "train",
        "--data",
        ham_npz,
        *TINY,
        "--adv-method",
        "pgd",
        "--adv-fraction",
        "0.4",
        "--source-model",
        src,
        "--out",
        out,
        "--json",
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["n_adversarial"] == round(0.4 * base["n_train"])
    assert payload["n_train"] == base["n_train"] + round(0.4 * base["n_train"])
    assert payload["adv"] == {"method": "pgd", "fraction": 0.4}


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
    table = run("evaluate", "--model", model, "--data", ham_npz, *TINY, "--protocol", "whitebox")
    assert table.exit_code == 0 and "whitebox / pgd" in table.stdout


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
