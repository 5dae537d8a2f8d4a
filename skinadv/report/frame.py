"""``ModelResult``s to frames of means with 95 % intervals, one row per model (cell).

A row's number is the mean over the cell's seeds, in percent, beside ``<col>_ci_low`` and
``<col>_ci_high``: Student's t over seeds, or, for a cell trained once, a bootstrap over
the test images drawn from the evaluation's confusion matrix (``skinadv.stats``). Numbers
with neither (one seed and no confusion matrix, e.g. a robust-curve point) get NaN bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinadv.config import METHODS
from skinadv.data import CLASSES
from skinadv.data.dataset import HAM10000_COUNTS
from skinadv.results import METRICS, PROTOCOLS, VAL, ModelResult, metric_key
from skinadv.selection import best_per_method
from skinadv.stats import (
    CMMetric,
    Interval,
    cm_accuracy,
    cm_balanced_accuracy,
    cm_macro_f1,
    cm_recall,
    confusion_bootstrap,
    t_interval,
)

#: Flat-key prefixes of numbers (everything else in a record is identity).
VALUE_PREFIXES: tuple[str, ...] = (
    "clean_",
    *(f"{p}_" for p in PROTOCOLS),
    "robust_",
    "targeted_",
    VAL,
    "train_",
)
#: Prefix of training-cost columns (seconds, gradient evaluations): not fractions.
COST = "train_"
#: Suffixes of a number's interval bounds.
LOW, HIGH = "_ci_low", "_ci_high"
#: Note under a table whose rows include a model trained once.
ONE_SEED_NOTE = "one seed: intervals are a bootstrap over test images, not over training runs"

_CM_METRICS: dict[str, CMMetric] = {
    "accuracy": cm_accuracy,
    "balanced_accuracy": cm_balanced_accuracy,
    "macro_f1": cm_macro_f1,
    "mel_recall": cm_recall(CLASSES.index("mel")),
}


def _order(method: str | None, fraction: float | None) -> tuple[int, str, float]:
    """Vanilla first, then the paper's methods in order, then any other, by fraction."""
    if method is None:
        return (-1, "", 0.0)
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (rank, method, fraction or 0.0)


def sort_results(results: Sequence[ModelResult]) -> list[ModelResult]:
    """Vanilla, then methods x fractions, then any on-the-fly defence, then seed."""
    return sorted(results, key=lambda r: (*_order(r.method, r.fraction), r.cell, r.seed))


def by_cell(results: Sequence[ModelResult]) -> dict[str, list[ModelResult]]:
    """``{cell: its seeds' results}`` in table order."""
    out: dict[str, list[ModelResult]] = {}
    for r in sort_results(results):
        out.setdefault(r.cell, []).append(r)
    return out


def bootstrap_metrics(result: ModelResult, *, n_boot: int = 1000) -> dict[str, Interval]:
    """``{flat key: bootstrap interval}`` (fractions) for every metric of ``result`` whose
    evaluation kept its confusion matrix; the clean entry is shared by both protocols."""
    out: dict[str, Interval] = {}
    for protocol, ev in result.evaluations().items():
        for attack, m in ev.metrics.items():
            cm = m.get("confusion_matrix")
            if cm is None or not np.asarray(cm).sum():
                continue
            for metric in METRICS:
                key = metric_key(protocol, attack, metric)
                if key not in out:
                    out[key] = confusion_bootstrap(cm, _CM_METRICS[metric], n_boot=n_boot)
    return out


def _interval(values: pd.Series, seeds: int, boot: Interval | None) -> tuple[float, ...]:
    """(mean, low, high) in percent from the seeds' values (already percent)."""
    x = values.dropna().to_numpy(dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    if seeds == 1:
        b = boot.scaled(100.0) if boot is not None else None
        return (float(x[0]), *((b.low, b.high) if b else (math.nan, math.nan)))
    iv = t_interval(x)
    return (iv.mean, iv.low, iv.high)


def results_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per cell: ``cell, method, fraction, seeds``, then each flat metric in percent
    (the mean over the cell's seeds; training costs in their own units) followed by its
    ``_ci_low`` / ``_ci_high`` bounds.

    ``method`` and ``fraction`` are None / NaN for vanilla; ``fraction`` is NaN for a
    defence trained on the fly (``pgd-at@2_255``).

    Raises:
        ValueError: no results.
    """
    if not results:
        raise ValueError("no results to report")
    rows = []
    for cell, group in by_cell(results).items():
        df = pd.DataFrame([r.record() for r in group])
        values = [c for c in df.columns if c.startswith(VALUE_PREFIXES)]
        boot = bootstrap_metrics(group[0]) if len(group) == 1 else {}
        row = {
            "cell": cell,
            "method": group[0].method,
            "fraction": math.nan if group[0].fraction is None else float(group[0].fraction),
            "seeds": len(group),
        }
        for c in values:
            scale = 1.0 if c.startswith(COST) else 100.0  # fractions in percent
            mean, low, high = _interval(df[c].astype(float) * scale, len(group), boot.get(c))
            row.update({c: mean, c + LOW: low, c + HIGH: high})
        rows.append(row)
    return pd.DataFrame(rows)


def curve_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """Robust accuracy vs eps, long: one row per (cell, eps) with ``method, fraction,
    seeds`` and ``accuracy`` / ``balanced_accuracy`` in percent with t-interval bounds over
    the seeds that have the point (NaN bounds for one seed). Empty when no result has a
    curve."""
    rows = []
    for cell, group in by_cell(results).items():
        points: dict[float, list] = {}
        for r in group:
            for p in r.curve:
                points.setdefault(round(p.eps, 9), []).append(p)
        for eps, ps in sorted(points.items()):
            row = {
                "cell": cell,
                "method": group[0].method,
                "fraction": math.nan if group[0].fraction is None else group[0].fraction,
                "eps": eps,
                "seeds": len(ps),
            }
            for m in ("accuracy", "balanced_accuracy"):
                iv = t_interval([100.0 * getattr(p, m) for p in ps])
                row.update({m: iv.mean, m + LOW: iv.low, m + HIGH: iv.high})
            rows.append(row)
    return pd.DataFrame(rows)


#: Accuracy (%) of always predicting ``nv`` on the full HAM10000 (6705 of 10015: 66.9).
NV_FULL_DATA = 100.0 * HAM10000_COUNTS["nv"] / sum(HAM10000_COUNTS.values())


def nv_baseline(results: Sequence[ModelResult]) -> float | None:
    """Accuracy (%) of always predicting ``nv`` on the test set these results were scored
    on: the share of ``nv`` in the test labels, read from a clean confusion matrix (rows =
    true class), averaged over seeds (each seed has its own split). None when no result kept
    its confusion matrix."""
    nv, shares = CLASSES.index("nv"), {}
    for r in sort_results(results):  # the vanilla model first
        cm = r.transfer.metrics.get("clean", {}).get("confusion_matrix")
        if cm is None or r.seed in shares:
            continue
        cm = np.asarray(cm, dtype=np.float64)
        if cm.sum() > 0:
            shares[r.seed] = 100.0 * cm[nv].sum() / cm.sum()
    return float(np.mean(list(shares.values()))) if shares else None


def vanilla_row(frame: pd.DataFrame) -> pd.Series:
    """The vanilla model's row.

    Raises:
        ValueError: no vanilla model in the frame.
    """
    vanilla = frame[frame["method"].isna()]
    if vanilla.empty:
        raise ValueError("no vanilla result in the results")
    return vanilla.iloc[0]


def static_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The grid's cells: a method trained on a fixed adversarial fraction."""
    return frame[frame["method"].notna() & frame["fraction"].notna()]


def on_the_fly(frame: pd.DataFrame) -> pd.DataFrame:
    """Defences trained on the fly (a method without a fraction, e.g. ``pgd-at``)."""
    return frame[frame["method"].notna() & frame["fraction"].isna()]


def with_interval(frame: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """``cols`` with each number's bounds after it, where the frame has them."""
    out: list[str] = []
    for c in cols:
        out.append(c)
        if c + LOW in frame:
            out += [c + LOW, c + HIGH]
    return out


def curve_cells(curves: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    """The lines of the robust-accuracy figure: vanilla, then per method (static or on the
    fly) its cell with the highest validation robust balanced accuracy
    (``skinadv.selection``; without a validation split, its largest fraction): chosen
    without reading the test curve it draws."""
    if curves.empty:
        return []
    drawn = frame[frame["cell"].isin(set(curves["cell"]))]
    chosen = best_per_method(drawn, "robust")
    for method, rows in drawn[drawn["method"].notna()].groupby("method", sort=False):
        chosen.setdefault(str(method), str(rows.sort_values("fraction").iloc[-1]["cell"]))
    out = [str(c) for c in drawn.loc[drawn["method"].isna(), "cell"]]
    order = list(dict.fromkeys(drawn["method"].dropna()))  # table order
    return out + [chosen[str(m)] for m in order]


def eps_of(label: str) -> float:
    """``2_255`` -> 2/255, ``0.3`` -> 0.3 (the inverse of ``skinadv.results.eps_label``)."""
    k, sep, d = label.partition("_")
    return float(k) / float(d) if sep else float(label)


def robust_key(col: str) -> tuple[str, str] | None:
    """``robust_2_255_balanced_accuracy`` -> (``2_255``, ``balanced_accuracy``); None for
    any other column (bounds included)."""
    if not col.startswith("robust_") or col.endswith((LOW, HIGH)):
        return None
    for metric in sorted(METRICS, key=len, reverse=True):  # balanced_accuracy before accuracy
        if col.endswith("_" + metric):
            return col[len("robust_") : -len(metric) - 1], metric
    return None


def targeted_key(col: str) -> tuple[str, str, float] | None:
    """``targeted_mel_nv_2_255_success`` -> (``mel``, ``nv``, 2/255); None for any other
    column (bounds included). The inverse of ``TargetedPoint.key``."""
    if not (col.startswith("targeted_") and col.endswith("_success")):
        return None
    source, target, eps = col.removeprefix("targeted_").removesuffix("_success").split("_", 2)
    return source, target, eps_of(eps)


def robust_columns(frame: pd.DataFrame, metric: str) -> list[str]:
    """The frame's robust ``metric`` columns, by ascending eps."""
    keys = [(robust_key(c), c) for c in frame.columns]
    found = [(eps_of(k[0]), c) for k, c in keys if k is not None and k[1] == metric]
    return [c for _, c in sorted(found)]
