"""The white-box robustness sweep: worst case over an attack ensemble, monotone in eps,
equal to running each attack on the whole set and taking the per-example worst case."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from skinadv.data import CLASSES
from skinadv.evaluation import predict, run_attack
from skinadv.evaluation.robust import robust_curve
from skinadv.evaluation.targeted import parse_pair, targeted_success

EPS = (0.0, 1 / 255, 2 / 255, 8 / 255, 0.3)


def spec_for(attack: str, eps: float) -> dict:
    if attack == "pgd":
        return {"eps": eps, "alpha": 2.5 * eps / 10, "steps": 10, "random_start": True}
    return {"eps": eps}


@pytest.fixture(scope="module")
def trained(tiny_trained, tiny_test):
    """The shared narrow CNN trained on 2000 real images, and 200 real test images."""
    x, y = tiny_test
    return tiny_trained.model, x[:200], y[:200]


def test_curve_is_non_increasing_and_starts_at_clean_accuracy(trained):
    model, x, y = trained
    points = robust_curve(model, x, y, EPS[::-1], spec_for, ("fgsm", "pgd"))
    assert [p.eps for p in points] == sorted(EPS)
    acc = [p.accuracy for p in points]
    assert all(b <= a for a, b in itertools.pairwise(acc))
    pred, _ = predict(model, x)
    assert acc[0] == pytest.approx(float((pred == np.asarray(y)).mean()))
    assert acc[-1] < acc[0]  # eps 0.3 fools most images
    assert points[1].attacks == ("fgsm", "pgd")
    assert points[2].metrics()["robust_2_255_accuracy"] == points[2].accuracy


def test_curve_equals_the_per_example_worst_case_of_whole_set_attacks(trained):
    """Attacking only the still-robust images gives the same answer as attacking every
    image with every attack and taking the worst case per image."""
    model, x, y = trained
    eps = 2 / 255
    (point,) = robust_curve(model, x, y, [eps], spec_for, ("fgsm", "pgd"), seed=0)
    correct = predict(model, x)[0] == np.asarray(y)
    for attack in ("fgsm", "pgd"):
        x_adv = run_attack(model, x, y, {"attack": attack, **spec_for(attack, eps)}, seed=0)
        correct &= predict(model, x_adv)[0] == np.asarray(y)
    # PGD's random start depends on which images share a batch: allow one image's difference
    assert point.accuracy == pytest.approx(correct.mean(), abs=1.5 / len(correct))


def test_an_ensemble_is_never_weaker_than_its_members(trained):
    model, x, y = trained
    eps = [2 / 255]
    both = robust_curve(model, x, y, eps, spec_for, ("fgsm", "pgd"))[0].accuracy
    for attack in ("fgsm", "pgd"):
        assert both <= robust_curve(model, x, y, eps, spec_for, (attack,))[0].accuracy + 1e-9


def test_apgd_t_never_weakens_the_ensemble(trained):
    """The rigorous ensemble with APGD-T added is, budget by budget, at least as strong as
    without it. One budget per call: the first three attacks then see the same images, seeds
    and batches in both ensembles, so the claim is exact (across budgets the still-robust
    set, hence PGD's random starts, would differ)."""

    def apgd_spec(attack: str, eps: float) -> dict:
        return spec_for(attack, eps) if attack == "pgd" else {"eps": eps, "steps": 20}

    model, x, y = trained
    base = ("pgd", "apgd_ce", "apgd_dlr")
    for eps in (1 / 255, 2 / 255, 4 / 255):
        (without,) = robust_curve(model, x, y, [eps], apgd_spec, base, seed=0)
        (with_t,) = robust_curve(model, x, y, [eps], apgd_spec, (*base, "apgd_t"), seed=0)
        print(
            f"\neps {eps * 255:.0f}/255: robust accuracy {100 * without.accuracy:.1f} % "
            f"(PGD, APGD-CE, APGD-DLR), {100 * with_t.accuracy:.1f} % (+ APGD-T)"
        )
        # the same images fooled, and maybe more: no class's recall can rise
        assert with_t.accuracy <= without.accuracy
        assert with_t.balanced_accuracy <= without.balanced_accuracy + 1e-12
        assert with_t.mel_recall <= without.mel_recall + 1e-12
        assert with_t.attacks == (*base, "apgd_t")


def test_the_model_is_left_in_its_mode(trained):
    model, x, y = trained
    model.train()
    robust_curve(model, torch.as_tensor(x[:20]), torch.as_tensor(y[:20]), [2 / 255], spec_for)
    assert model.training
    model.eval()


# ----------------------------------------------------------------- targeted attacks


def test_targeted_attacks_count_flips_to_the_target_only(tiny_trained, tiny_test):
    """mel -> nv / nv -> mel on the real test images: success is the share of the source
    class's correctly classified images predicted as the target; it grows with eps, is 0 at
    eps 0, and equals what an independent count of the same attack gives."""
    model, (x, y) = tiny_trained.model, tiny_test
    points = targeted_success(model, x, y, ["mel->nv", "nv->mel"], [0.0, 2 / 255, 0.1], spec_for)
    assert [(p.source, p.target) for p in points] == [("mel", "nv")] * 3 + [("nv", "mel")] * 3
    pred, _ = predict(model, x)
    for pair in (points[:3], points[3:]):
        src, tgt = (CLASSES.index(c) for c in (pair[0].source, pair[0].target))
        idx = np.flatnonzero((y.numpy() == src) & (pred == src))
        assert all(p.n == idx.size > 0 for p in pair)
        assert pair[0].success == 0.0  # eps 0 moves nothing
        assert pair[1].success <= pair[2].success and pair[2].success > 0.2
        spec = {"attack": "pgd", **spec_for("pgd", 0.1), "target": tgt}
        adv = run_attack(model, x[idx], y[idx], spec, seed=0)
        assert pair[2].success == pytest.approx(float(np.mean(predict(model, adv)[0] == tgt)))
    assert points[1].key == "targeted_mel_nv_2_255_success"


def test_targeted_pairs_are_checked():
    with pytest.raises(ValueError, match="source->target"):
        parse_pair("mel->mel")
    with pytest.raises(ValueError, match="mel"):
        parse_pair("melanoma->nv")
    assert parse_pair(" nv -> mel ") == ("nv", "mel")


def test_the_test_curve_on_a_fixed_stratified_subset(tiny_trained, tiny_split):
    """``robust.n_images``: the curve attacks the same stratified images for every model (the
    ones ``skinadv verify`` picks), says so on each point, and the report says so too."""
    from skinadv.config import load_preset
    from skinadv.evaluation.subset import stratified_indices
    from skinadv.experiment import robust_spec, robustness_curve
    from skinadv.report.render import curve_subset_note
    from skinadv.report.text import curve_images
    from skinadv.results import ModelResult, RobustPoint

    cfg = load_preset("quick").model_copy(deep=True)
    cfg.robust.eps, cfg.robust.attacks = [2 / 255], ["fgsm", "pgd"]
    test = tiny_split[1]
    model = tiny_trained.model
    (sub,) = robustness_curve(cfg, model, test, n_images=150)
    assert sub.n_images == 150
    x, y = test.to_float()
    idx = stratified_indices(y, 150, seed=0)
    (direct,) = robust_curve(
        model, x[idx], y[idx], [2 / 255], lambda a, e: robust_spec(cfg, a, e), ("fgsm", "pgd")
    )
    assert sub.accuracy == direct.accuracy  # the same images, the same seed
    (whole,) = robustness_curve(cfg, model, test)
    assert whole.n_images is None
    assert RobustPoint.from_dict(sub.to_dict()) == sub
    r = ModelResult(cell="vanilla", seed=0, transfer=None, whitebox=None, curve=(sub,))
    assert curve_images([r]) == "150 test images"
    assert "150 test images" in curve_subset_note([r])
    assert curve_subset_note([dataclasses.replace(r, curve=(whole,))]) == ""
