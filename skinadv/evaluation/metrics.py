"""Classification metrics (scikit-learn), melanoma first."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    recall_score,
)

from skinadv.data import CLASSES

#: Order for listings: melanoma sensitivity first, then the canonical order.
REPORT_ORDER: tuple[str, ...] = ("mel", *(c for c in CLASSES if c != "mel"))


def metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy alone misleads on HAM10000 (always ``nv`` scores ~67 %), so report more.

    Args:
        y_true: (N,) int labels in canonical order.
        y_pred: (N,) int predicted labels.
        probs: optional (N, 7) class probabilities (adds ``mean_confidence`` and ``nll``).

    Returns:
        ``n``, ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present),
        ``macro_f1``, ``recall`` ({class: recall or None when absent}, ``mel`` first), and
        ``confusion_matrix`` (7 x 7 nested list, rows = true, columns = predicted).
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    y_pred = np.asarray(y_pred).astype(np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("metrics of an empty set")
    labels = list(range(len(CLASSES)))
    present = np.bincount(y_true, minlength=len(CLASSES)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a small subset
        recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        out: dict[str, Any] = {
            "n": int(y_true.size),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
    by_name = {c: (float(recall[i]) if present[i] else None) for i, c in enumerate(CLASSES)}
    out["recall"] = {c: by_name[c] for c in REPORT_ORDER}
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (y_true.size, len(CLASSES)):
            raise ValueError(f"probs must be (N, {len(CLASSES)}), got {probs.shape}")
        out["mean_confidence"] = float(probs.max(1).mean())
        probs = np.clip(probs, 1e-12, 1.0)
        probs = probs / probs.sum(1, keepdims=True)  # float32 softmax sums drift from 1
        out["nll"] = float(log_loss(y_true, probs, labels=labels))
    return out
