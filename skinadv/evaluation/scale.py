"""What a budget does to an image: one test image attacked with PGD at a few eps, for the
report's eps scale (2/255 is invisible; the paper's 0.3, 77/255, destroys the lesion)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from skinadv.data import CLASSES
from skinadv.evaluation.evaluate import predict, run_attack


def eps_scale_images(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    eps_values: Sequence[float] = (2 / 255, 8 / 255, 0.3),
    *,
    seed: int = 0,
) -> list[tuple[float, np.ndarray, str]]:
    """``[(eps, image (H, W, 3) in [0, 1], the model's answer)]``: eps 0 (the clean image)
    then PGD-10 at each eps, on the first melanoma the model gets right (else the first
    image it gets right, else the first image)."""
    x, y = np.asarray(x, np.float32), np.asarray(y)
    pred, _ = predict(model, x)
    right = np.flatnonzero(pred == y)
    mel = right[y[right] == CLASSES.index("mel")]
    i = int(mel[0]) if mel.size else int(right[0]) if right.size else 0
    xi, yi = x[i : i + 1], y[i : i + 1]
    out = [(0.0, xi[0].transpose(1, 2, 0), CLASSES[int(pred[i])])]
    for eps in eps_values:
        spec = {"attack": "pgd", "eps": eps, "alpha": 2.5 * eps / 10, "steps": 10}
        adv = np.asarray(run_attack(model, xi, yi, {**spec, "random_start": True}, seed=seed))
        (p,), _ = predict(model, adv)
        out.append((float(eps), adv[0].transpose(1, 2, 0), CLASSES[int(p)]))
    return out


__all__ = ["eps_scale_images"]
