"""Training throughput (images/s): clean, static adversarial (the paper's defence: a
crafted pool appended to the training set) and on-the-fly PGD-AT."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from torch import nn

from skinadv.attacks import craft
from skinadv.config import DefenceConfig, TrainConfig
from skinadv.training import fit


def training_throughput(
    x: np.ndarray,
    y: np.ndarray,
    source: nn.Module,
    *,
    width: int,
    epochs: int = 1,
    batch_size: int = 128,
    eps: float = 2 / 255,
    pool_fraction: float = 0.8,
    pool_steps: int = 10,
    pgd_at_steps: int = 5,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Images/s of ``fit`` on (x, y) three ways, each from a fresh paper CNN of ``width``.

    Args:
        x: (N, 3, H, W) float32 in [0, 1]; y: (N,) int64.
        source: the model the static pool is crafted against (the vanilla model).
        pool_fraction: static adversarial: PGD-``pool_steps`` copies of this fraction of
            (x, y) are appended (crafting timed apart, as ``crafting``).
        pgd_at_steps: PGD-AT: every batch replaced by PGD-k examples (step 2.5 eps / k).

    Returns:
        ``{"clean" | "static_adversarial" | "pgd_at": {images_per_s, images, seconds,
        grad_evals}, "crafting": {images_per_s, images, seconds}, "settings": {...}}``.
        Images counts every image trained on over all epochs (the union for static).
    """
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=2e-3, seed=seed, device=device)
    kw = {"model_kwargs": {"width": width}}
    k = int(round(pool_fraction * len(x)))

    t0 = time.perf_counter()
    x_adv = craft(
        source,
        x[:k],
        y[:k],
        "pgd",
        eps=eps,
        alpha=2.5 * eps / pool_steps,
        steps=pool_steps,
        seed=seed,
        progress=False,
    )
    craft_s = time.perf_counter() - t0
    union = (np.concatenate([x, x_adv.numpy()]), np.concatenate([y, y[:k]]))
    runs = {
        "clean": fit("paper_cnn", (x, y), cfg, **kw),
        "static_adversarial": fit("paper_cnn", union, cfg, **kw),
        "pgd_at": fit(
            "paper_cnn",
            (x, y),
            cfg,
            defence=DefenceConfig(method="pgd-at", eps=eps, steps=pgd_at_steps),
            **kw,
        ),
    }
    out: dict[str, Any] = {}
    for name, res in runs.items():
        images = res.n_train * len(res.history)
        out[name] = {
            "images_per_s": images / res.seconds,
            "images": images,
            "seconds": res.seconds,
            "grad_evals": res.cost.grad_evals,
        }
    out["crafting"] = {"images_per_s": k / craft_s, "images": k, "seconds": craft_s}
    out["settings"] = {
        "n_train": len(x),
        "width": width,
        "epochs": epochs,
        "batch_size": batch_size,
        "eps": eps,
        "pool_fraction": pool_fraction,
        "pool_steps": pool_steps,
        "pgd_at_steps": pgd_at_steps,
    }
    return out
