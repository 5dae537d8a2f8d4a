"""Targeted attacks between two classes: the clinical failure modes.

``mel`` -> ``nv`` turns a melanoma into a benign nevus (a missed cancer); ``nv`` -> ``mel``
turns a nevus into a melanoma (a false alarm, an unneeded excision). Each pair is attacked
with targeted white-box PGD (descending the cross-entropy towards the target class) on the
test images of the source class that the model gets right when clean; the success rate is
the share of those the model then calls the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks.craft import as_tensor
from skinadv.data import CLASSES
from skinadv.evaluation.evaluate import predict, run_attack
from skinadv.results import TargetedPoint


def parse_pair(pair: str) -> tuple[str, str]:
    """``"mel->nv"`` -> ``("mel", "nv")``; ValueError naming the classes otherwise."""
    source, sep, target = pair.partition("->")
    source, target = source.strip(), target.strip()
    if not sep or source not in CLASSES or target not in CLASSES or source == target:
        raise ValueError(
            f"targeted pair {pair!r}: write it as 'source->target' with two different "
            f"classes of {', '.join(CLASSES)} (e.g. 'mel->nv')"
        )
    return source, target


def targeted_success(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    pairs: Sequence[str],
    eps_values: Sequence[float],
    spec_for: Any,
    *,
    batch_size: int = 256,
    seed: int | None = 0,
) -> list[TargetedPoint]:
    """Success rate of targeted PGD for each ``source->target`` pair at each eps.

    Args:
        model: the model attacked (white-box).
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64 labels.
        pairs: ``["mel->nv", "nv->mel"]``.
        eps_values: L-inf budgets in [0, 1] pixel units.
        spec_for: ``spec_for("pgd", eps)`` -> the PGD settings at that budget.
        batch_size, seed: passed to ``craft``.
    """
    xt, yt = as_tensor(x, torch.float32), as_tensor(y, torch.long)
    labels = yt.numpy()
    pred, _ = predict(model, xt)
    out = []
    for pair in pairs:
        source, target = (CLASSES.index(c) for c in parse_pair(pair))
        idx = np.flatnonzero((labels == source) & (pred == source))
        for eps in sorted(float(e) for e in eps_values):
            success = None
            if idx.size:
                spec: Mapping[str, Any] = {
                    "attack": "pgd",
                    **spec_for("pgd", eps),
                    "target": target,
                }
                x_adv = run_attack(model, xt[idx], yt[idx], spec, batch_size=batch_size, seed=seed)
                adv_pred, _ = predict(model, x_adv)
                success = float(np.mean(adv_pred == target))
            out.append(TargetedPoint(CLASSES[source], CLASSES[target], eps, int(idx.size), success))
    return out
