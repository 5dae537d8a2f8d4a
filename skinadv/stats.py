"""Intervals for reported numbers: a result is a mean with a 95 % interval, never one run.

Over seeds (training runs) the interval is Student's t (``t_interval``); a difference
between two models trained on the same seeds (same split, same vanilla model) is paired by
seed (``paired_interval``), which removes the spread the two share. With a single
seed there is nothing to spread over, so the fallback is a percentile bootstrap over test
images (``bootstrap_interval`` from per-example data, ``confusion_bootstrap`` from a
confusion matrix): it says how much the number moves with the test set, not with training.

numpy and scipy only. Values are in whatever unit they come in (fractions or percent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

#: ``Interval.method`` of a bootstrap over test images (one seed).
BOOTSTRAP = "bootstrap (test images)"
#: ``Interval.method`` of Student's t over seeds.
T = "t"

#: A metric of stacked confusion matrices: (..., K, K) counts -> (...) values.
CMMetric = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval.

    Args:
        mean: the point estimate (mean over seeds, or the metric on the whole test set).
        low, high: the interval's bounds; NaN when none can be computed (one value).
        n: seeds averaged (``t``) or test images resampled (bootstrap).
        method: ``"t"`` or ``"bootstrap (test images)"``.
    """

    mean: float
    low: float
    high: float
    n: int
    method: str = T

    @property
    def half_width(self) -> float:
        """(high - low) / 2: the "± w" of a table; NaN without an interval."""
        return (self.high - self.low) / 2.0

    def scaled(self, k: float) -> Interval:
        """The same interval in other units (``k=100``: fractions to percent)."""
        return Interval(self.mean * k, self.low * k, self.high * k, self.n, self.method)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _finite(values: Any, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: NaN or infinite value in {x.tolist()}")
    return x


def t_interval(values: Any, confidence: float = 0.95) -> Interval:
    """Student-t interval for the mean of independent runs (one value per seed).

    Args:
        values: (n,) one number per seed, finite.
        confidence: two-sided level in (0, 1).

    Returns:
        ``Interval(mean, low, high, n, "t")`` with ``sd(ddof=1) / sqrt(n)`` as the scale;
        for ``n == 1`` the bounds are NaN (no spread to estimate), for constant values
        they equal the mean.

    Raises:
        ValueError: empty input, a NaN or infinite value, or a bad ``confidence``.
    """
    _check_confidence(confidence)
    x = _finite(values, "t_interval")
    n, mean = x.size, float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, T)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:  # scipy gives NaN for a zero scale; the runs agree exactly
        return Interval(mean, mean, mean, n, T)
    low, high = _st.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), n, T)


def paired_interval(a: Any, b: Any, confidence: float = 0.95) -> Interval:
    """Mean of the per-seed differences ``a - b`` with its Student-t interval over seeds.

    Models of one seed share the split and the vanilla model, so comparing them seed by
    seed cancels what the seed does to both (scipy's ``ttest_rel(a, b)``).

    Args:
        a, b: per-seed values, either two ``{seed: value}`` mappings (matched by seed; a
            seed missing from either side is left out) or two (n,) sequences already
            matched by position. Finite numbers in one unit (fractions or percent).
        confidence: two-sided level in (0, 1).

    Returns:
        ``Interval(mean difference, low, high, n matched seeds, "t")``; NaN bounds for
        ``n == 1``, bounds equal to the mean when every seed gives the same difference.

    Raises:
        ValueError: no seed in common, sequences of different lengths, a NaN or infinite
            value, or a bad ``confidence``.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        seeds = [s for s in a if s in b]
        if not seeds:
            raise ValueError(f"paired_interval: no seed in common ({list(a)} vs {list(b)})")
        a, b = [a[s] for s in seeds], [b[s] for s in seeds]
    x, y = _finite(a, "paired_interval"), _finite(b, "paired_interval")
    if x.size != y.size:
        raise ValueError(f"paired_interval: {x.size} values vs {y.size}")
    return t_interval(x - y, confidence)


def covers_zero(iv: Interval) -> bool:
    """Whether an interval leaves the sign of a difference open (bounds NaN included)."""
    return not (iv.low > 0.0 or iv.high < 0.0)


def _percentile(point: float, reps: np.ndarray, n: int, confidence: float) -> Interval:
    reps = reps[np.isfinite(reps)]  # e.g. a class absent from a resample
    if not math.isfinite(point) or reps.size == 0:
        return Interval(point, math.nan, math.nan, n, BOOTSTRAP)
    a = (1.0 - confidence) / 2.0
    low, high = np.quantile(reps, [a, 1.0 - a])
    return Interval(point, float(low), float(high), n, BOOTSTRAP)


def bootstrap_interval(
    data: Any,
    metric: Callable[..., float] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap over test images, for a number from one training run.

    Args:
        data: (N,) per-example values (e.g. 1 = correct, 0 = wrong), or a tuple
            ``(y_true, y_pred)`` of two (N,) label arrays.
        metric: for per-example values, ``metric(sample) -> float`` (default: the mean);
            for a label pair, ``metric(y_true, y_pred) -> float`` (required).
        n_boot: resamples of the N images, with replacement.
        seed: the resampling seed (same seed, same interval).
        confidence: two-sided level in (0, 1).

    Returns:
        ``Interval(metric on all images, low, high, N, "bootstrap (test images)")``.

    Raises:
        ValueError: empty or NaN input, pairs of different lengths, a pair without a
            metric, or a bad ``n_boot`` / ``confidence``.
    """
    _check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    if isinstance(data, tuple):
        if len(data) != 2 or metric is None:
            raise ValueError("a (y_true, y_pred) pair needs exactly two arrays and a metric")
        y_true, y_pred = (_finite(a, "bootstrap_interval") for a in data)
        if y_true.size != y_pred.size:
            raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
        n = y_true.size
        idx = rng.integers(0, n, size=(n_boot, n))
        reps = np.array([metric(y_true[i], y_pred[i]) for i in idx], dtype=np.float64)
        return _percentile(float(metric(y_true, y_pred)), reps, n, confidence)
    x = _finite(data, "bootstrap_interval")
    n = x.size
    idx = rng.integers(0, n, size=(n_boot, n))
    if metric is None:
        return _percentile(float(x.mean()), x[idx].mean(axis=1), n, confidence)
    reps = np.array([metric(x[i]) for i in idx], dtype=np.float64)
    return _percentile(float(metric(x)), reps, n, confidence)


# --------------------------------------------------------------------------- confusion


def cm_accuracy(cm: np.ndarray) -> np.ndarray:
    """Accuracy of (..., K, K) confusion matrices (rows = true, columns = predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


def cm_balanced_accuracy(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present (scikit-learn's ``balanced_accuracy_score``)."""
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diagonal(cm, axis1=-2, axis2=-1) / cm.sum(axis=-1)  # NaN: class absent
    present = np.isfinite(recall)
    count = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, recall, 0.0).sum(axis=-1) / count


def cm_macro_f1(cm: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes true or predicted at least once (scikit-learn's
    ``f1_score(average="macro", zero_division=0)``)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    seen = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(seen, 2 * tp / (support + predicted), 0.0)
        return f1.sum(axis=-1) / seen.sum(axis=-1)


def cm_recall(k: int) -> CMMetric:
    """Recall of class ``k`` (NaN where the class is absent)."""

    def recall(cm: np.ndarray) -> np.ndarray:
        cm = np.asarray(cm, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return cm[..., k, k] / cm[..., k, :].sum(axis=-1)

    return recall


def confusion_bootstrap(
    cm: Any,
    metric: CMMetric,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """``bootstrap_interval`` over the (true, predicted) pairs a confusion matrix counts.

    Resampling the N pairs with replacement gives a multinomial draw of N over the K x K
    cells with the observed frequencies, so the resamples are drawn that way directly
    (fast enough to bootstrap every cell of a grid).

    Args:
        cm: (K, K) counts, rows = true class, columns = predicted class.
        metric: vectorised over stacked matrices (``cm_accuracy``, ``cm_balanced_accuracy``,
            ``cm_macro_f1``, ``cm_recall(k)``).
        n_boot, seed, confidence: as in ``bootstrap_interval``.

    Raises:
        ValueError: a matrix that is not square, has negative or NaN counts, or is empty.
    """
    _check_confidence(confidence)
    counts = np.asarray(cm, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be (K, K), got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("confusion matrix has a NaN or negative count")
    n = int(round(counts.sum()))
    if n == 0:
        raise ValueError("confusion matrix counts no example")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts.reshape(-1) / counts.sum(), size=n_boot)
    reps = np.asarray(metric(draws.reshape(n_boot, *counts.shape)), dtype=np.float64)
    return _percentile(float(metric(counts)), reps, n, confidence)


__all__ = [
    "BOOTSTRAP",
    "Interval",
    "T",
    "bootstrap_interval",
    "cm_accuracy",
    "cm_balanced_accuracy",
    "cm_macro_f1",
    "cm_recall",
    "confusion_bootstrap",
    "covers_zero",
    "paired_interval",
    "t_interval",
]
