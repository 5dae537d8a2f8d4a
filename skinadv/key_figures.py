"""A grid's key figures: the few numbers its MLflow parent run carries as metrics, so the
runs table answers "how good is vanilla, how robust is the best defence" without the
report. Pure: results in, numbers out (fractions in [0, 1], means over seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from skinadv import selection
from skinadv.report.frame import results_frame, vanilla_row
from skinadv.report.paired import select_label
from skinadv.results import ModelResult

#: the vanilla model's figures carried by the parent run (``vanilla_<key>``)
VANILLA_KEYS = (
    "clean_balanced_accuracy",
    "clean_accuracy",
    "clean_mel_recall",
    "whitebox_pgd_balanced_accuracy",
)


@dataclass(frozen=True)
class KeyFigures:
    """What a grid's parent run shows first.

    Args:
        metrics: ``n_models``, ``n_cells``, ``n_seeds``; ``vanilla_<key>`` for
            ``VANILLA_KEYS`` (and ``vanilla_robust_<eps>_balanced_accuracy``); with a robust
            curve and a validation split, ``best_robust_<eps>_balanced_accuracy`` and
            ``best_clean_balanced_accuracy`` of ``best_cell``. Fractions in [0, 1], means
            over the cell's seeds (counts for ``n_*``).
        best_cell: the most robust defence at the selection budget, chosen on the
            validation split as the report's verdict and the champions choose it; None
            without a robust curve or a validation split.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    best_cell: str | None = None


def _fraction(row: pd.Series, key: str) -> float | None:
    v = row.get(key)
    return None if v is None or pd.isna(v) else float(v) / 100


def key_figures(results: Sequence[ModelResult]) -> KeyFigures:
    """The parent run's metrics from every model's result.

    Args:
        results: the vanilla model, the cells and the defences, any number of seeds each.

    Returns:
        ``KeyFigures``; the ``vanilla_*`` figures only where a vanilla model is among them.
    """
    if not results:
        return KeyFigures()
    frame = results_frame(results)  # percent, mean over seeds, one row per cell
    metrics: dict[str, float | None] = {
        "n_models": float(len(results)),
        "n_cells": float(len(frame)),
        "n_seeds": float(len({r.seed for r in results})),
    }
    sel = select_label(results)
    robust = f"robust_{sel}_balanced_accuracy" if sel else None
    if frame["method"].isna().any():
        v = vanilla_row(frame)
        for key in (*VANILLA_KEYS, *([robust] if robust else [])):
            metrics[f"vanilla_{key}"] = _fraction(v, key)
    best = None
    if robust and robust in frame:
        trained = frame[frame["method"].notna()].dropna(subset=[robust])
        best = selection.best(trained, "robust")
        if best is not None:
            row = frame[frame["cell"] == best].iloc[0]
            metrics[f"best_{robust}"] = _fraction(row, robust)
            metrics["best_clean_balanced_accuracy"] = _fraction(row, "clean_balanced_accuracy")
    return KeyFigures({k: v for k, v in metrics.items() if v is not None}, best)
