"""Metrics, the two evaluation protocols, and the sanity checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from skinadv.attacks import pgd
from skinadv.data import CLASSES
from skinadv.evaluation import (
    craft_transfer_sets,
    eps_sweep,
    evaluate,
    metrics,
    sanity_checks,
    sweep,
)
from skinadv.results import Evaluation, ModelResult

SPECS = {
    "fgsm": {"attack": "fgsm", "eps": 0.2},
    "pgd": {"attack": "pgd", "eps": 0.3, "alpha": 0.2, "steps": 5},
}


def test_metrics_known_values():
    nv, mel, bcc = CLASSES.index("nv"), CLASSES.index("mel"), CLASSES.index("bcc")
    y_true = np.array([nv] * 6 + [mel] * 2 + [bcc] * 2)
    y_pred = np.array([nv] * 6 + [nv, mel] + [bcc, nv])
    m = metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert next(iter(m["recall"])) == "mel" and m["recall"]["mel"] == 0.5
    assert m["recall"]["df"] is None  # absent class: no recall, not a fake 0
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == 10 and cm[mel, nv] == 1 and cm[nv, nv] == 6
    assert 0 < m["macro_f1"] < 1


def test_always_nv_looks_good_only_on_accuracy():
    nv = CLASSES.index("nv")
    y = np.array([nv] * 67 + [0, 1, 2, 3, 4, 6] * 5 + [4] * 3)
    m = metrics(y, np.full_like(y, nv))
    assert m["accuracy"] == pytest.approx(0.67)
    assert m["balanced_accuracy"] == pytest.approx(1 / 7) and m["recall"]["mel"] == 0


def test_metrics_with_probs_and_errors():
    y = np.array([0, 1, 2])
    probs = np.eye(7, dtype=np.float32)[[0, 1, 3]] * 0.9 + 0.1 / 7
    m = metrics(y, probs.argmax(1), probs)
    assert m["mean_confidence"] > 0.9 and m["nll"] > 0
    with pytest.raises(ValueError, match="differ in length"):
        metrics(y, y[:2])
    with pytest.raises(ValueError, match="empty"):
        metrics(y[:0], y[:0])


@pytest.fixture(scope="module")
def both_protocols(tiny_trained, tiny_test):
    x, y = tiny_test
    model = tiny_trained.model
    sets = craft_transfer_sets(model, x, y, SPECS, seed=0)
    return {
        "transfer": evaluate(model, x, y, attacks=SPECS, protocol="transfer", transfer_sets=sets),
        "whitebox": evaluate(model, x, y, attacks=SPECS, protocol="whitebox", seed=0),
    }


def test_evaluate_vanilla_both_protocols(both_protocols):
    tr, wb = both_protocols["transfer"], both_protocols["whitebox"]
    assert isinstance(tr, Evaluation) and isinstance(wb, Evaluation)
    assert set(tr.metrics) == set(wb.metrics) == {"clean", "fgsm", "pgd"}
    assert tr.attack_names == wb.attack_names == ("fgsm", "pgd")
    assert tr.attacks["pgd"]["eps"] == 0.3 and tr.eps("pgd") == 0.3 and wb.protocol == "whitebox"
    # against its own source model, transfer is white-box: same seed, same numbers
    for k in ("clean", "fgsm", "pgd"):
        assert tr.accuracy(k) == wb.accuracy(k) == tr.metrics[k]["accuracy"]
    clean = wb.accuracy("clean")
    assert wb.accuracy("pgd") <= wb.accuracy("fgsm") < clean
    assert wb.accuracy("pgd") < 0.1  # eps 0.3 is a huge budget


def test_transfer_uses_sets_not_the_scored_model(tiny_trained, tiny_test, small_model):
    x, y = tiny_test
    sets = craft_transfer_sets(tiny_trained.model, x, y, SPECS, seed=0)
    # an untrained model scored on sets crafted against the trained one
    tr = evaluate(small_model, x, y, attacks=SPECS, transfer_sets=sets)
    tr2 = evaluate(small_model, x, y, attacks=SPECS, source_model=tiny_trained.model)
    assert tr.metrics["pgd"] == tr2.metrics["pgd"]
    wb = evaluate(small_model, x, y, attacks=SPECS, protocol="whitebox")
    assert wb.accuracy("pgd") <= tr.accuracy("pgd")


def test_evaluate_callable_attacks(tiny_trained, tiny_test):
    x, y = tiny_test
    fn = functools.partial(pgd, eps=2 / 255, alpha=1 / 255, steps=3)
    res = evaluate(
        tiny_trained.model, x[:64], y[:64], attacks={"pgd_small": fn}, protocol="whitebox"
    )
    assert res.attacks["pgd_small"] == {
        "attack": "pgd",
        "eps": 2 / 255,
        "alpha": 1 / 255,
        "steps": 3,
    }
    assert res.metrics["pgd_small"]["n"] == 64 and res.n == 64


def test_evaluate_errors(tiny_trained, tiny_test):
    x, y = tiny_test
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(tiny_trained.model, x, y, attacks=SPECS, protocol="blackbox")
    with pytest.raises(ValueError, match="needs transfer_sets"):
        evaluate(tiny_trained.model, x, y, attacks=SPECS, protocol="transfer")
    with pytest.raises(ValueError, match="whitebox protocol needs attacks"):
        evaluate(tiny_trained.model, x, y, protocol="whitebox")
    with pytest.raises(ValueError, match="has shape"):
        evaluate(tiny_trained.model, x, y, transfer_sets={"fgsm": x[:3]})
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(
            tiny_trained.model,
            x,
            y,
            attacks={"a": {"attack": "jsma", "eps": 1}},
            protocol="whitebox",
        )


def _ev(protocol, clean, **attacks):
    return Evaluation(
        protocol,
        100,
        {"clean": {"accuracy": clean}, **{k: {"accuracy": v} for k, v in attacks.items()}},
        {"fgsm": {"attack": "fgsm", "eps": 0.2}, "pgd": {"attack": "pgd", "eps": 0.3}},
    )


def _result(cell, transfer, whitebox, seed=0):
    method, _, fraction = cell.partition("@")
    return ModelResult(
        cell,
        seed,
        transfer,
        whitebox,
        method=None if cell == "vanilla" else method,
        fraction=float(fraction) if fraction else None,
    )


def _by_name(checks):
    return {c.name: c for c in checks}


def _clean(cell, clean=0.7, fgsm=0.3, pgd=0.1, seed=0):
    """A model whose results pass every check."""
    return _result(
        cell,
        _ev("transfer", clean, fgsm=fgsm, pgd=pgd),
        _ev("whitebox", clean, fgsm=fgsm, pgd=pgd),
        seed,
    )


def test_sanity_checks_pass_on_consistent_results():
    sweeps = {
        "eps": [
            {"eps": 0.0, "accuracy": 0.7},
            {"eps": 0.1, "accuracy": 0.2},
            {"eps": 1.0, "accuracy": 0.0},
        ],
        "steps": [{"steps": 1, "accuracy": 0.3}, {"steps": 10, "accuracy": 0.1}],
    }
    checks = sanity_checks([_clean("vanilla")], sweeps)
    assert all(c.ok and c.cells == () for c in checks), [str(c) for c in checks]
    assert set(_by_name(checks)) == {
        "whitebox <= transfer",
        "pgd <= fgsm",
        "no label leaking",
        "more steps never help",
        "accuracy -> 0 as eps grows",
    }
    assert _by_name(checks)["no label leaking"].detail == "all 4 comparisons hold"
    assert _by_name(checks)["more steps never help"].detail == "the 1 comparison holds"


def test_sanity_checks_flag_each_problem():
    cell = _result(
        "pgd@0.8",
        _ev("transfer", 0.6, fgsm=0.4, pgd=0.93),  # label leaking; pgd > fgsm
        _ev("whitebox", 0.6, fgsm=0.5, pgd=0.0),  # fgsm white-box > transfer
    )
    sweeps = {
        "eps": [
            {"eps": 0.0, "accuracy": 0.7},
            {"eps": 0.3, "accuracy": 0.5},
            {"eps": 1.0, "accuracy": 0.45},
        ],
        "restarts": [{"restarts": 1, "accuracy": 0.2}, {"restarts": 5, "accuracy": 0.3}],
    }
    checks = _by_name(sanity_checks([_clean("vanilla"), cell], sweeps))
    leak = checks["no label leaking"]
    assert leak.status == "warn" and leak.cells == ("pgd@0.8-s0",)
    assert leak.detail.startswith("1 of 8 comparisons: accuracy under attack above clean")
    assert "label leaking, Kurakin et al. 2017" in leak.detail
    assert "worst: pgd@0.8-s0 transfer PGD 93.0 % vs clean 60.0 %" in leak.detail
    assert checks["pgd <= fgsm"].status == "warn"
    assert checks["pgd <= fgsm"].cells == ("pgd@0.8-s0",)
    assert "pgd@0.8-s0 transfer PGD 93.0 % vs FGSM 40.0 % (eps 0.3 vs 0.2)" in (
        checks["pgd <= fgsm"].detail
    )
    wb = checks["whitebox <= transfer"]
    assert wb.status == "warn" and wb.cells == ("pgd@0.8-s0",)
    assert "pgd@0.8-s0 FGSM white-box 50.0 % vs transfer 40.0 %" in wb.detail
    assert checks["more restarts never help"].status == "warn"
    assert (
        "20.0 % at restarts 1 -> 30.0 % at restarts 5" in checks["more restarts never help"].detail
    )
    eps = checks["accuracy -> 0 as eps grows"]
    assert eps.status == "warn" and eps.cells == ()  # a sweep concerns no grid cell
    assert "45.0 % left at the largest eps 1" in eps.detail
    assert all(str(c).startswith("[warn]") for c in checks.values())
    assert str(leak).endswith("[pgd@0.8-s0]")


def test_each_check_once_naming_every_model_it_concerns():
    """Many models failing one check: one Check, its cells in input order, the worst named."""
    leaking = [
        _result(
            cell,
            _ev("transfer", 0.5, fgsm=0.3, pgd=pgd_acc),
            _ev("whitebox", 0.5, fgsm=0.3, pgd=0.0),
            seed,
        )
        for cell, seed, pgd_acc in [
            ("pgd@0.4", 0, 0.7),
            ("pgd@0.8", 0, 0.9),
            ("pgd@0.8", 1, 0.8),
        ]
    ]
    results = [_clean("vanilla"), *leaking, _clean("fgsm@0.2")]
    checks = sanity_checks(results)
    assert [c.name for c in checks] == ["whitebox <= transfer", "pgd <= fgsm", "no label leaking"]
    leak = _by_name(checks)["no label leaking"]
    assert leak.cells == ("pgd@0.4-s0", "pgd@0.8-s0", "pgd@0.8-s1")
    assert leak.detail.startswith("3 of 20 comparisons")
    assert "worst: pgd@0.8-s0 transfer PGD 90.0 % vs clean 50.0 %" in leak.detail
    assert leak.detail.count(";") == 1  # one sentence, not one message per model
    assert leak.as_dict()["cells"] == list(leak.cells)


def test_not_applicable_without_attacks():
    checks = _by_name(sanity_checks([]))
    assert all(c.ok for c in checks.values()) and len(checks) == 3
    assert "not applicable" in checks["whitebox <= transfer"].detail
    clean_only = _result("vanilla", _ev("transfer", 0.7), _ev("whitebox", 0.7))
    checks = _by_name(sanity_checks([clean_only]))
    assert "not applicable" in checks["pgd <= fgsm"].detail
    assert "not applicable" in checks["no label leaking"].detail


def test_real_model_sanity(tiny_trained, tiny_test, both_protocols):
    x, y = tiny_test
    model = tiny_trained.model
    x, y = x[:150], y[:150]
    sweeps = {
        "eps": eps_sweep(model, x, y, [0.0, 8 / 255, 1.0], steps=20),
        "steps": sweep(model, x, y, "pgd", "steps", [1, 3, 6], eps=2 / 255, alpha=1 / 255),
    }
    assert sweeps["eps"][-1]["accuracy"] <= 0.05
    vanilla = ModelResult("vanilla", 0, both_protocols["transfer"], both_protocols["whitebox"])
    checks = sanity_checks([vanilla], sweeps)
    assert all(c.ok for c in checks), [str(c) for c in checks]
    assert len(checks) == 5


def test_eps_sweep_zero_is_clean(tiny_trained, tiny_test):
    x, y = tiny_test
    rows = eps_sweep(tiny_trained.model, x[:50], y[:50], [0.0], attack="fgsm")
    with torch.no_grad():
        clean = float((tiny_trained.model(x[:50]).argmax(1) == y[:50]).float().mean())
    assert rows == [
        {
            "eps": 0.0,
            "accuracy": pytest.approx(clean),
            "balanced_accuracy": rows[0]["balanced_accuracy"],
        }
    ]
