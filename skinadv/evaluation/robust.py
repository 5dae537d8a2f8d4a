"""White-box robust accuracy as eps grows, worst case over an ensemble of attacks.

An image counts as robust at a budget only if every attack of the ensemble leaves it
correctly classified (auto-attack's per-example worst case, Croce & Hein 2020). Two facts
make the sweep cheap: an image fooled at eps is fooled at any larger eps (the same
perturbation lies in the larger ball), so each budget attacks only the images still robust
at the previous one; and each attack of the ensemble attacks only the images the earlier
ones did not fool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks.craft import as_tensor
from skinadv.evaluation.evaluate import predict, run_attack
from skinadv.evaluation.metrics import metrics
from skinadv.results import RobustPoint

log = logging.getLogger(__name__)

#: ``spec_for(attack, eps) -> attack spec`` (``{"attack": "pgd", "eps": ..., ...}``).
SpecFor = Callable[[str, float], Mapping[str, Any]]


def robust_curve(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps_values: Sequence[float],
    spec_for: SpecFor,
    attacks: Sequence[str] = ("pgd",),
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> list[RobustPoint]:
    """Worst-case robust accuracy, balanced accuracy and melanoma recall at each eps.

    Args:
        model: the model attacked (white-box).
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64 labels.
        eps_values: L-inf budgets in [0, 1] pixel units (any order; reported ascending).
        spec_for: the attack spec for an attack name at a budget.
        attacks: the ensemble, in the order they are run (cheap first pays: later attacks
            only see the images the earlier ones could not fool).
        batch_size, device, seed: passed to ``craft``.

    Returns:
        One ``RobustPoint`` per eps, ascending; accuracy is non-increasing in eps.
    """
    xt, yt = as_tensor(x, torch.float32), as_tensor(y, torch.long)
    labels = yt.numpy()
    pred, _ = predict(model, xt, device=device)
    robust = pred == labels  # wrong on clean images is wrong at every budget
    points = []
    for eps in sorted(float(e) for e in eps_values):
        for name in attacks:
            idx = np.flatnonzero(robust)
            if eps == 0.0 or idx.size == 0:
                break
            spec = {"attack": name, **spec_for(name, eps)}
            x_adv = run_attack(
                model, xt[idx], yt[idx], spec, batch_size=batch_size, device=device, seed=seed
            )
            adv_pred, _ = predict(model, x_adv, device=device)
            fooled = adv_pred != labels[idx]
            pred[idx[fooled]] = adv_pred[fooled]
            robust[idx[fooled]] = False
        m = metrics(labels, pred)
        points.append(
            RobustPoint(
                eps=eps,
                accuracy=m["accuracy"],
                balanced_accuracy=m["balanced_accuracy"],
                mel_recall=m["recall"].get("mel"),
                attacks=tuple(attacks),
            )
        )
        log.info("eps %.4f: robust accuracy %.4f", eps, m["accuracy"])
    return points
