"""On-the-fly defences (PGD-AT, TRADES, fast AT): config, determinism, cost, the fast-at
guard, and on real images: PGD-AT beats the vanilla model under white-box PGD."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch

from skinadv.config import (
    DEFENCES,
    DefenceConfig,
    DefenceMethod,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    load_preset,
)
from skinadv.data import Dataset
from skinadv.evaluation import evaluate
from skinadv.models import create_model
from skinadv.training import defences as defences_mod
from skinadv.training import fit
from skinadv.training.defences import GUARD_SIZE, GUARD_STEPS, LOSSES

EPS = 2 / 255
STEPS = 3
SMALL = TrainConfig(epochs=2, batch_size=32, lr=2e-3, seed=3, device="cpu")


def balanced(ds: Dataset, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each class (drawn with replacement where a class is smaller),
    shuffled: x (7 * per_class, 3, 28, 28) float32 in [0, 1], y int64."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [
            rng.choice(rows, per_class, replace=rows.size < per_class)
            for rows in (np.flatnonzero(ds.labels == c) for c in range(7))
        ]
    )
    return ds.subset(rng.permutation(idx)).to_float()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- config


def test_defence_config_names_and_defaults():
    assert DEFENCES == get_args(DefenceMethod) == ("pgd-at", "trades", "n-fgsm", "fast-at")
    pgd_at = DefenceConfig(method="pgd-at", eps=EPS)
    assert pgd_at.name == "pgd-at@2_255" and DefenceConfig(method="trades", eps=0.3).name == (
        "trades@0.3"
    )
    assert (pgd_at.steps, pgd_at.beta, pgd_at.guard_drop) == (5, 6.0, 0.2)
    assert pgd_at.step_size() == pytest.approx(2.5 * EPS / 5)
    assert DefenceConfig(method="fast-at", eps=EPS).step_size() == pytest.approx(1.25 * EPS)
    assert DefenceConfig(method="trades", eps=EPS, alpha=0.001).step_size() == 0.001
    # on-the-fly defences are opt-in: the shipped presets train none
    assert ExperimentConfig().defences == [] and load_preset("quick").defences == []
    cfg = ExperimentConfig(defences=[{"method": "fast-at", "eps": 0.01}])
    assert cfg.defences[0] == DefenceConfig(method="fast-at", eps=0.01)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "free-at", "eps": EPS}, "pgd-at"),
        ({"method": "pgd-at", "eps": -0.1}, "eps must be >= 0"),
        ({"method": "trades", "eps": EPS, "beta": -1.0}, "beta"),
        ({"method": "pgd-at", "eps": EPS, "alpha": -0.01}, "alpha must be >= 0"),
        ({"method": "pgd-at", "eps": EPS, "steps": 0}, "steps"),
        ({"method": "fast-at", "eps": EPS, "guard_drop": 0.0}, "guard_drop"),
        ({"method": "pgd-at", "eps": EPS, "epochs": 3}, "extra"),
    ],
)
def test_defence_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DefenceConfig(**kwargs)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def small_set(tiny_split):
    """140 real training images, 20 per class."""
    return balanced(tiny_split[0], 20)


@pytest.fixture(scope="module")
def clean_small(small_set):
    return fit(ModelConfig(width=8), small_set, SMALL)


@pytest.mark.parametrize("method", DEFENCES)
def test_losses_leave_mode_and_parameter_grads_alone(method, small_set):
    torch.manual_seed(0)
    model = create_model("paper_cnn", width=4).train()
    x, y = (torch.from_numpy(a[:16]) for a in small_set)
    out = LOSSES[method](
        model, x, y, DefenceConfig(method=method, eps=EPS, steps=2), torch.Generator()
    )
    assert all(m.training for m in model.modules())  # crafted in eval, back to train
    assert all(p.grad is None for p in model.parameters())  # attacks use autograd.grad
    assert out.loss.ndim == 0 and out.loss.requires_grad and out.logits.shape == (16, 7)


@pytest.mark.parametrize("method", DEFENCES)
def test_defence_trains_deterministically_with_its_cost(method, small_set, clean_small):
    defence = DefenceConfig(method=method, eps=EPS, steps=STEPS)
    a = fit(ModelConfig(width=8), small_set, SMALL, defence=defence)
    b = fit(ModelConfig(width=8), small_set, SMALL, defence=defence)
    assert same_weights(a.model, b.model) and not a.model.training
    assert not same_weights(a.model, clean_small.model)
    assert a.defence == f"{method}@2_255" and a.kept_epoch == 2 and not a.guard_triggered
    assert all(np.isfinite(s.loss) and 0 <= s.train_acc <= 1 for s in a.history)
    clean = clean_small.cost.grad_evals
    assert clean == SMALL.epochs * 140 and clean_small.cost.forwards == 0
    ratio = {"pgd-at": STEPS + 1, "trades": STEPS + 2, "n-fgsm": 2, "fast-at": 2}[method]
    assert a.cost.grad_evals == ratio * clean
    assert a.cost.forwards == (clean if method == "trades" else 0)
    guard = SMALL.epochs * GUARD_STEPS * min(GUARD_SIZE, 140) if method == "fast-at" else 0
    assert a.cost.guard_evals == guard and a.cost.seconds > 0
    guard_accs = [s.guard_acc for s in a.history]
    if method == "fast-at":
        assert all(0 <= g <= 1 for g in guard_accs) and "guard_acc" in a.final.as_dict()
    else:
        assert guard_accs == [None, None] and "guard_acc" not in a.final.as_dict()


@pytest.mark.parametrize(
    "accs, triggered, kept",
    [
        ([0.5, 0.6, 0.35, 0.9], True, 2),  # 25 points under the best: restore epoch 2
        ([0.5, 0.6, 0.45, 0.7], False, 4),  # 15 points: within the 20-point threshold
    ],
)
def test_fast_at_guard_restores_the_best_epoch(monkeypatch, small_set, accs, triggered, kept):
    scripted = iter(accs)
    monkeypatch.setattr(defences_mod, "guard_accuracy", lambda *a, **k: next(scripted))
    torch.manual_seed(0)
    model = create_model("paper_cnn", width=4)
    snapshots = []

    def snapshot(_stats):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    cfg = SMALL.model_copy(update={"epochs": 4})
    res = fit(
        model, small_set, cfg, defence=DefenceConfig(method="fast-at", eps=EPS), on_epoch=snapshot
    )
    assert res.guard_triggered is triggered and res.kept_epoch == kept
    n_run = 3 if triggered else 4  # stops at the epoch that tripped it
    assert [s.guard_acc for s in res.history] == accs[:n_run] and len(snapshots) == n_run
    state = res.model.state_dict()
    assert all(torch.equal(state[k], snapshots[kept - 1][k]) for k in state)
    if triggered:  # the weights that tripped it are gone
        assert not all(torch.equal(state[k], snapshots[-1][k]) for k in state)
    assert res.cost.guard_evals == n_run * GUARD_STEPS * 140


# --------------------------------------------------------------------------- real result

ROBUST_TRAIN = TrainConfig(epochs=5, batch_size=32, lr=2e-3, device="cpu")
WHITEBOX = {"pgd": {"attack": "pgd", "eps": EPS, "alpha": EPS / 4, "steps": 10}}


@pytest.fixture(scope="module")
def robust_set(tiny_split):
    """700 real training images, 100 per class (the rare classes repeat)."""
    return balanced(tiny_split[0], 100)


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_at_beats_vanilla_under_whitebox_pgd(seed, robust_set, tiny_test):
    # measured on 2 CPU cores, seeds 0-4: margins of 37, 45, 17, 16, 39 points
    cfg = ROBUST_TRAIN.model_copy(update={"seed": seed})
    x_test, y_test = tiny_test  # 500 held-out real images
    scores = {}
    for name, defence in [("vanilla", None), ("pgd-at", DefenceConfig(method="pgd-at", eps=EPS))]:
        model = fit(ModelConfig(width=8), robust_set, cfg, defence=defence).model
        ev = evaluate(model, x_test, y_test, attacks=WHITEBOX, protocol="whitebox")
        scores[name] = ev.metrics
    robust = {k: m["pgd"]["accuracy"] for k, m in scores.items()}
    assert robust["pgd-at"] > robust["vanilla"] + 0.05, scores
    # not a constant predictor: the defended model still tells classes apart
    assert scores["pgd-at"]["clean"]["balanced_accuracy"] > 0.25
