"""``skinadv verify``'s core: AutoAttack's reference code run attack by attack gives the
package's own figure; the flags; the stratified subset; metric names; which models are
named; bad input. Tiny models and synthetic data (fast); Square's budget is cut here only
(the command always runs the standard 5000 queries)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skinadv.cli import app
from skinadv.commands.verify import parse_eps_list, parse_seeds
from skinadv.commands.verify_models import pick_models
from skinadv.evaluation.autoattack import (
    STANDARD,
    AutoAttackPoint,
    Comparison,
    autoattack_point,
    flags,
    make_adversary,
    stratified_indices,
    verify,
)
from skinadv.evaluation.verify_report import VerifiedModel, markdown
from skinadv.results import Evaluation, ModelResult, RobustPoint

FEW_QUERIES = 100  # unit tests only


class Linear(nn.Module):
    """A fixed random linear classifier on [0, 1] images (logits out)."""

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, 7)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(7, 192, generator=g) * scale)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Masked(nn.Module):
    """The same classifier with its input gradient hidden (zero): white-box attacks see
    nothing, a black-box one still works. Gradient masking by construction."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.inner(x)
        return out + (x * 0.0).flatten(1).sum(1, keepdim=True)  # a dense zero gradient


def _data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 7, (n,), generator=g)


def _labelled(model: nn.Module, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Images labelled by the model itself (clean accuracy 100 %), a few relabelled."""
    x, _ = _data(n)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 7
    return x, y


def test_attack_by_attack_is_the_reference_figure():
    model = Linear(scale=0.05).eval()
    x, y = _labelled(model)
    eps = 8 / 255
    point = autoattack_point(model, x, y, eps, square_queries=FEW_QUERIES)
    adversary = make_adversary(model, eps, square_queries=FEW_QUERIES)
    assert adversary.attacks_to_run == list(STANDARD)
    assert adversary.apgd_targeted.n_target_classes == adversary.fab.n_target_classes == 6
    _, y_ref = adversary.run_standard_evaluation(x, y, batch_size=250)
    assert np.array_equal(point.pred, y_ref.numpy())
    assert point.accuracy == pytest.approx((y_ref == y).float().mean().item())
    assert 0 < point.accuracy < point.after["clean"]  # it fools some, not all
    assert list(point.after) == ["clean", *STANDARD]
    assert list(point.after.values()) == sorted(point.after.values(), reverse=True)
    assert sum(point.fooled_by.values()) == round((point.after["clean"] - point.accuracy) * 40)


def test_square_fools_what_masked_gradients_hide():
    model = Masked(Linear(scale=0.05)).eval()
    x, y = _labelled(model)
    (c,) = verify(
        model, x, y, [8 / 255], lambda name, eps: {"eps": eps, "steps": 5, "alpha": eps / 2},
        ["pgd"], square_queries=FEW_QUERIES,
    )  # fmt: skip
    a = c.autoattack
    white_box = sum(a.fooled_by[k] for k in ("apgd-ce", "apgd-t", "fab-t"))
    assert white_box < a.square_extra  # only random starts: no gradient to follow
    assert c.ensemble.accuracy > a.accuracy  # PGD is blind here too
    found = flags(c)
    assert any("Square" in f and "gradient masking" in f for f in found)
    assert any("overstates" in f for f in found)


def _point(eps: float, acc: float, bal: float, square: int = 0) -> AutoAttackPoint:
    fooled = {"apgd-ce": 1, "apgd-t": 0, "fab-t": 0, "square": square}
    return AutoAttackPoint(eps, 100, acc, bal, 0.5, {"clean": 0.9}, fooled, 2.0, np.zeros(100))


def test_flags_and_metric_names():
    close = Comparison(
        _point(2 / 255, 0.40, 0.35), RobustPoint(2 / 255, 0.405, 0.355, 0.5, ("pgd",))
    )
    far = Comparison(
        _point(8 / 255, 0.20, 0.15, 3), RobustPoint(8 / 255, 0.25, 0.16, 0.4, ("pgd",))
    )
    assert flags(close) == []
    assert far.gap_points() == pytest.approx(5.0)
    assert len(flags(far)) == 2
    m = VerifiedModel("pgd-at@2_255", 1, "r1", "most robust defence", (close, far), 4.0)
    names = set(m.metrics())
    for label in ("2_255", "8_255"):
        for who in ("autoattack", "ensemble"):
            for metric in ("accuracy", "balanced_accuracy", "mel_recall"):
                assert f"{who}_{label}_{metric}" in names
        assert f"autoattack_{label}_square_extra" in names
    assert {"autoattack_n_images", "autoattack_seconds"} <= names
    assert m.metrics()["autoattack_8_255_square_extra"] == 3
    text = markdown([m], context={"experiment": "x"}, n_images=100, n_test=600)
    assert "subset of 100 of the 600 test images" in text and "RobustBench" in text
    assert "AutoAttack standard (reference)" in text and "our ensemble (pgd)" in text
    assert "+5.0" in text and "gradient masking" in text


def test_stratified_subset_is_fixed_and_keeps_every_class():
    y = np.repeat(np.arange(7), [30, 50, 110, 12, 111, 670, 14])
    a, b = stratified_indices(y, 100, seed=0), stratified_indices(y, 100, seed=0)
    assert np.array_equal(a, b) and len(a) == 100 and np.all(np.diff(a) > 0)
    assert set(y[a]) == set(range(7))
    assert abs(np.mean(y[a] == 5) - np.mean(y == 5)) < 0.02
    assert np.array_equal(stratified_indices(y[:50], 500), np.arange(50))  # small: all of it


def test_eps_must_be_positive():
    model = Linear().eval()
    x, y = _data(4)
    with pytest.raises(ValueError, match="positive"):
        verify(model, x, y, [0.0], lambda n, e: {"eps": e}, ["fgsm"])
    assert parse_eps_list("8/255, 2/255") == [2 / 255, 8 / 255]
    for bad in ("-1", "0", "2", "eight", ""):
        with pytest.raises(ValueError, match="--eps"):
            parse_eps_list(bad)
    assert parse_seeds("ALL") == "all" and parse_seeds("0,2") == [0, 2]
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds("first")


def _result(cell: str, method: str | None, seed: int, val_robust: float | None) -> ModelResult:
    m = {"accuracy": 0.6, "balanced_accuracy": 0.5, "recall": {"mel": 0.4}}
    ev = Evaluation("transfer", 10, {"clean": m, "fgsm": m, "pgd": m})
    v = {**m, "accuracy": 0.5 + (val_robust or 0.0)}  # the paper's rule ranks as the robust one
    validation = Evaluation("transfer", 5, {"clean": v, "fgsm": v, "pgd": v})
    vr = None if val_robust is None else RobustPoint(2 / 255, val_robust, val_robust)
    fraction = float(cell.split("@")[1]) if method in ("fgsm", "pgd") else None
    return ModelResult(
        cell, seed, ev, ev.as_protocol("whitebox"), method, fraction, run_id=f"{cell}-{seed}",
        validation=validation, val_robust=vr,
    )  # fmt: skip


def test_named_models_cover_every_seed_of_each_named_cell():
    results = [
        _result(cell, method, seed, v + 0.01 * seed)
        for seed in range(3)
        for cell, method, v in (
            ("vanilla", None, 0.0),
            ("pgd@0.8", "pgd", 0.05),
            ("pgd@0.2", "pgd", 0.02),
            ("pgd-at@2_255", "pgd-at", 0.4),
            ("pgd-at@8_255", "pgd-at", 0.3),
        )
    ]
    # registry: pgd-at's champion registered from seed 2 (what selection.champions picks)
    picked = pick_models(results, {"pgd-at": "pgd-at@2_255-2"}, "vanilla,champions,verdict")
    keys = [(r.cell, r.seed) for r, _ in picked]
    assert keys[:3] == [("vanilla", 0), ("vanilla", 1), ("vanilla", 2)]
    assert {c for c, _ in keys} == {"vanilla", "pgd@0.8", "pgd-at@2_255"}
    assert len(keys) == 9 and len(set(keys)) == 9  # 3 cells x 3 seeds, no duplicate
    why = {(r.cell, r.seed): w for r, w in picked}
    assert "registered" in why[("pgd-at@2_255", 2)] and "most robust" in why[("pgd-at@2_255", 2)]
    assert why[("pgd-at@2_255", 0)].endswith("seed 2 is the pgd-at champion, registered")
    named = pick_models(results, {}, "champions", "named")
    assert {(r.cell, r.seed) for r, _ in named} == {("pgd@0.8", 2), ("pgd-at@2_255", 2)}
    assert len(pick_models(results, {}, "all", [1])) == 5
    with pytest.raises(ValueError, match="neither"):
        pick_models(results, {}, "nonsense")
    no_val = [dataclasses.replace(r, validation=None, val_robust=None) for r in results]
    assert {r.cell for r, _ in pick_models(no_val, {}, "vanilla,champions,verdict")} == {"vanilla"}


def test_cli_bad_input_one_line_nonzero_nothing_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SKINADV_MLFLOW_BACKEND_URI", raising=False)
    runner = CliRunner()
    missing = tmp_path / "no-such-grid"
    cases = [
        (["--run-dir", str(missing)], "no MLflow to read"),
        (["--run-dir", str(tmp_path), "--eps", "-8/255"], "--eps"),
        (["--run-dir", str(tmp_path), "--seeds", "some"], "--seeds"),
    ]
    for args, words in cases:
        res = runner.invoke(app, ["verify", *args])
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
    assert not missing.exists() and list(tmp_path.iterdir()) == []
