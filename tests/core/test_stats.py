"""Intervals: Student t over seeds equals scipy's (paired by seed too), the bootstrap over test images is
deterministic and covers its estimate, confusion-matrix metrics equal scikit-learn's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from skinadv.stats import (
    BOOTSTRAP,
    Interval,
    bootstrap_interval,
    cm_accuracy,
    cm_balanced_accuracy,
    cm_macro_f1,
    cm_recall,
    confusion_bootstrap,
    covers_zero,
    paired_interval,
    t_interval,
)


def _labels(n: int = 400, k: int = 7, right: float = 0.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.uniform(size=n) < right, y_true, rng.integers(0, k, n))
    return y_true, y_pred


def _cm(y_true, y_pred, k: int = 7) -> np.ndarray:
    pairs = np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(pairs, minlength=k * k).reshape(k, k)


@pytest.mark.parametrize(
    "values, confidence",
    [([61.2, 63.5, 58.9], 0.95), ([0.1, 0.4, 0.35, 0.2, 0.5], 0.95), ([1.0, 2.0], 0.9)],
)
def test_t_interval_matches_scipy(values, confidence):
    iv = t_interval(values, confidence)
    x = np.asarray(values)
    low, high = st.t.interval(confidence, x.size - 1, loc=x.mean(), scale=st.sem(x))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    assert iv.mean == pytest.approx(x.mean()) and iv.n == x.size and iv.method == "t"
    assert iv.half_width == pytest.approx((high - low) / 2)


def test_t_interval_edge_cases():
    one = t_interval([0.7])
    assert one.mean == 0.7 and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.half_width)
    same = t_interval([0.5, 0.5, 0.5])
    assert (same.low, same.mean, same.high) == (0.5, 0.5, 0.5)
    for bad in ([0.5, float("nan")], [], [0.1, float("inf")]):
        with pytest.raises(ValueError):
            t_interval(bad)
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=95)


@pytest.mark.parametrize("n, confidence", [(3, 0.95), (5, 0.95), (8, 0.9)])
def test_paired_interval_matches_scipy(n, confidence):
    rng = np.random.default_rng(n)
    shared = rng.normal(60.0, 5.0, n)  # what a seed does to both models
    a, b = shared + rng.normal(3.0, 1.0, n), shared + rng.normal(0.0, 1.0, n)
    iv = paired_interval(a, b, confidence)
    ci = st.ttest_rel(a, b).confidence_interval(confidence)
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    d = a - b
    low, high = st.t.interval(confidence, n - 1, loc=d.mean(), scale=st.sem(d))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    assert iv.mean == pytest.approx(d.mean()) and iv.n == n and iv.method == "t"
    # pairing removes the shared spread: narrower than two unpaired intervals would say
    assert iv.half_width < t_interval(a).half_width + t_interval(b).half_width


def test_paired_interval_matches_seeds_by_key():
    a = {0: 0.62, 1: 0.60, 2: 0.66, 7: 0.9}  # seed 7 has no partner: left out
    b = {2: 0.61, 0: 0.58, 1: 0.57}
    iv = paired_interval(a, b)
    d = np.array([0.62 - 0.58, 0.60 - 0.57, 0.66 - 0.61])
    ci = st.ttest_rel(d, np.zeros(3)).confidence_interval()
    assert iv.n == 3 and iv.mean == pytest.approx(d.mean())
    assert (iv.low, iv.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert not covers_zero(iv)
    one = paired_interval({4: 0.7}, {4: 0.6, 5: 0.5})
    assert one.n == 1 and one.mean == pytest.approx(0.1)
    assert math.isnan(one.low) and math.isnan(one.high) and covers_zero(one)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_interval({0: 0.5}, {1: 0.5})
    with pytest.raises(ValueError, match="3 values vs 2"):
        paired_interval([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError):
        paired_interval([0.1, float("nan")], [0.1, 0.2])


def test_covers_zero():
    assert covers_zero(Interval(0.5, -0.1, 1.1, 3))
    assert covers_zero(Interval(0.0, 0.0, 0.0, 3))  # no difference at all
    assert not covers_zero(Interval(-0.5, -1.0, -0.1, 3))
    assert not covers_zero(Interval(0.2, 0.2, 0.2, 3))


def test_bootstrap_is_deterministic_and_covers_the_estimate():
    correct = (np.random.default_rng(1).uniform(size=500) < 0.62).astype(float)
    a = bootstrap_interval(correct, seed=3)
    assert a == bootstrap_interval(correct, seed=3)
    assert a != bootstrap_interval(correct, seed=4)
    assert a.method == BOOTSTRAP and a.n == 500
    assert a.mean == pytest.approx(correct.mean())
    assert a.low < a.mean < a.high
    # about the normal approximation's width for a proportion
    se = math.sqrt(a.mean * (1 - a.mean) / 500)
    assert a.half_width == pytest.approx(1.96 * se, rel=0.2)


def test_bootstrap_of_label_pairs():
    y_true, y_pred = _labels()
    iv = bootstrap_interval((y_true, y_pred), balanced_accuracy_score, n_boot=300, seed=0)
    assert iv.mean == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert iv.low < iv.mean < iv.high and iv.n == y_true.size
    assert iv == bootstrap_interval((y_true, y_pred), balanced_accuracy_score, n_boot=300)


def test_bootstrap_bad_input():
    with pytest.raises(ValueError):
        bootstrap_interval([1.0, float("nan"), 0.0])
    with pytest.raises(ValueError):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="metric"):
        bootstrap_interval((np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="length"):
        bootstrap_interval((np.zeros(3), np.zeros(4)), balanced_accuracy_score)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_interval([1.0, 0.0], n_boot=0)


def test_constant_per_example_values_give_a_point():
    iv = bootstrap_interval(np.ones(50))
    assert (iv.low, iv.mean, iv.high) == (1.0, 1.0, 1.0)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_confusion_metrics_equal_sklearn():
    y_true, y_pred = _labels(300, right=0.5)
    y_true[y_true == 3] = 0  # a class never true, still predicted
    cm = _cm(y_true, y_pred)
    assert cm_accuracy(cm) == pytest.approx(np.mean(y_true == y_pred))
    assert cm_balanced_accuracy(cm) == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert cm_macro_f1(cm) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    rec = recall_score(y_true, y_pred, labels=[4], average=None)[0]
    assert cm_recall(4)(cm) == pytest.approx(rec)
    assert math.isnan(cm_recall(3)(cm))
    stacked = np.stack([cm, cm.T])
    assert cm_accuracy(stacked).shape == (2,) and cm_balanced_accuracy(stacked).shape == (2,)


def test_confusion_bootstrap_matches_the_pair_bootstrap():
    """Resampling the matrix's cells is resampling its (true, predicted) pairs."""
    y_true, y_pred = _labels(600)
    cm = _cm(y_true, y_pred)
    fast = confusion_bootstrap(cm, cm_balanced_accuracy, n_boot=2000, seed=0)
    slow = bootstrap_interval(
        (y_true, y_pred), lambda t, p: cm_balanced_accuracy(_cm(t, p)), n_boot=2000, seed=1
    )
    assert fast.mean == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert fast.low < fast.mean < fast.high and fast.n == 600 and fast.method == BOOTSTRAP
    assert fast.low == pytest.approx(slow.low, abs=0.01)
    assert fast.high == pytest.approx(slow.high, abs=0.01)
    assert fast == confusion_bootstrap(cm, cm_balanced_accuracy, n_boot=2000, seed=0)


def test_confusion_bootstrap_bad_input():
    with pytest.raises(ValueError, match="K, K"):
        confusion_bootstrap(np.ones((2, 3)), cm_accuracy)
    with pytest.raises(ValueError, match="negative"):
        confusion_bootstrap([[1, -1], [0, 2]], cm_accuracy)
    with pytest.raises(ValueError, match="no example"):
        confusion_bootstrap(np.zeros((7, 7)), cm_accuracy)


def test_interval_scaled():
    iv = Interval(0.5, 0.4, 0.6, 3).scaled(100)
    assert (iv.mean, iv.low, iv.high, iv.n, iv.method) == (50.0, 40.0, 60.0, 3, "t")
