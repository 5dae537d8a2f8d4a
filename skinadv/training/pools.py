"""Static adversarial augmentation: the paper's defence.

Craft adversarial copies of a random fraction of the (oversampled) training set against the
vanilla model (FGSM, PGD, or half/half ``mix``), append them to the training set, and train
a freshly initialised model on the union.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from skinadv.attacks import craft
from skinadv.config import AttackConfig, check_fraction, check_method
from skinadv.data.io import atomic_write_npz
from skinadv.training.prep import ArrayLike, to_arrays

log = logging.getLogger(__name__)


def _n_take(fraction: float, n: int) -> int:
    return int(round(fraction * n))


@dataclass(frozen=True, eq=False)
class AdvPool:
    """Adversarial copies of a seeded random ``fraction`` of a training set.

    Attributes:
        method: ``fgsm``, ``pgd`` or ``mix``.
        fraction: the largest fraction it serves.
        seed: the permutation's (and the PGD random starts') seed.
        n_train: size of the training set it was crafted from.
        index: (k,) int64 rows of the training set, in a fixed seeded random order,
            k = round(fraction * n_train). Any prefix is a random subset, so smaller
            fractions are nested prefixes: 0.2 inside 0.4 inside 0.6 inside 0.8.
        x_adv: (k, 3, H, W) float32 in [0, 1], the adversarial copy of each row.
        y: (k,) int64 true labels.
        kinds: (k,) ``fgsm`` / ``pgd`` per row; ``mix`` alternates, so every prefix is
            half FGSM, half PGD.
        attack: the attack settings used (for records).
    """

    method: str
    fraction: float
    seed: int
    n_train: int
    index: np.ndarray
    x_adv: np.ndarray
    y: np.ndarray
    kinds: np.ndarray
    attack: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def count(self, fraction: float, n_train: int | None = None) -> int:
        """How many examples ``fraction`` stands for: round(fraction * n_train)."""
        check_fraction(fraction)
        if n_train is not None and n_train != self.n_train:
            raise ValueError(
                f"pool was crafted from {self.n_train} training examples, "
                f"not {n_train}: craft a pool for this training set"
            )
        k = _n_take(fraction, self.n_train)
        if k > len(self):
            raise ValueError(
                f"pool holds fraction {self.fraction} ({len(self)} examples); "
                f"fraction {fraction} needs {k}: craft for the largest fraction"
            )
        return k

    def indices(self, fraction: float, n_train: int | None = None) -> np.ndarray:
        """Training-set rows the first round(fraction * n) pool examples were crafted from."""
        return self.index[: self.count(fraction, n_train)]

    def take(self, fraction: float, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first round(fraction * n_train) adversarial examples: (x_adv, y)."""
        k = self.count(fraction, n_train)
        return self.x_adv[:k], self.y[:k]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to an uncompressed .npz atomically (adversarial floats do not compress)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "fraction": self.fraction,
            "seed": self.seed,
            "n_train": self.n_train,
            "attack": self.attack,
        }
        return atomic_write_npz(
            path,
            compress=False,
            index=self.index,
            x_adv=self.x_adv,
            y=self.y,
            kinds=self.kinds.astype(str),
            meta=np.array(json.dumps(meta)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> AdvPool:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(index=z["index"], x_adv=z["x_adv"], y=z["y"], kinds=z["kinds"], **meta)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not an adversarial pool file ({exc})") from exc


def adversarial_pool(
    source_model: nn.Module,
    train_x: ArrayLike,
    train_y: ArrayLike,
    *,
    method: str,
    fraction: float,
    attack_cfg: AttackConfig,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Any = None,
) -> AdvPool:
    """Craft adversarial copies of a seeded random ``fraction`` of the training set.

    Crafted once against ``source_model`` (the vanilla model) for the largest fraction;
    ``pool.take(f)`` then gives nested subsets for every smaller f.

    Args:
        source_model: the model the examples are crafted against (vanilla).
        train_x: (N, 3, H, W) float in [0, 1], the (oversampled) training images.
        train_y: (N,) int64 labels.
        method: ``fgsm``, ``pgd`` or ``mix`` (alternating FGSM / PGD, so half each).
        fraction: in (0, 1]: the largest fraction the pool must serve.
        attack_cfg: FGSM / PGD settings (``attack_cfg.fgsm``, ``attack_cfg.pgd``).
        seed: picks the rows and seeds the PGD random starts.
        device: where to craft (default: the model's device).
        progress: passed to ``craft``.
    """
    check_method(method)
    check_fraction(fraction)
    x, y = to_arrays((train_x, train_y))
    n = x.shape[0]
    k = _n_take(fraction, n)
    index = np.random.default_rng(seed).permutation(n)[:k].astype(np.int64)
    if method == "mix":
        kinds = np.where(np.arange(k) % 2 == 0, "fgsm", "pgd")
    else:
        kinds = np.full(k, method)
    x_adv = np.empty((k, *x.shape[1:]), dtype=np.float32)
    t0 = time.perf_counter()
    for kind in ("fgsm", "pgd"):
        rows = np.flatnonzero(kinds == kind)
        if rows.size == 0:
            continue
        src = torch.from_numpy(index[rows])
        adv = craft(
            source_model,
            x[src],
            y[src],
            kind,
            batch_size=attack_cfg.batch_size,
            device=device,
            seed=seed,
            progress=progress,
            **attack_cfg.kwargs(kind),
        )
        x_adv[rows] = adv.cpu().numpy()
    log.info(
        "crafted %s pool: %d of %d examples (fraction %.2f) in %.1f s",
        method,
        k,
        n,
        fraction,
        time.perf_counter() - t0,
    )
    used = {kind: attack_cfg.kwargs(kind) for kind in ("fgsm", "pgd") if (kinds == kind).any()}
    return AdvPool(
        method=method,
        fraction=fraction,
        seed=seed,
        n_train=n,
        index=index,
        x_adv=x_adv,
        y=y.numpy()[index],
        kinds=kinds,
        attack=used,
    )


#: ``AdvPool.attack`` / cell-hash tag of a mix pool composed by ``mix_pool``, not crafted
MIX_FROM_POOLS = "fgsm+pgd pools"


def composes_mix(methods: Iterable[str]) -> bool:
    """Whether a grid of ``methods`` takes its mix pool from its fgsm and pgd pools
    (``mix_pool``) rather than crafting it: only when it has all three."""
    return {"fgsm", "pgd", "mix"} <= set(methods)


def mix_pool(fgsm: AdvPool, pgd: AdvPool, *, fraction: float | None = None) -> AdvPool:
    """The ``mix`` pool composed from an FGSM pool and a PGD pool: no gradient evaluation.

    Even rows are the FGSM pool's, odd rows the PGD pool's, over the same seeded rows of the
    training set, so every prefix is half FGSM, half PGD and smaller fractions stay nested
    prefixes, as with ``adversarial_pool(method="mix")``. FGSM is deterministic, so the even
    rows are those a crafted mix pool would have (to float rounding); the odd rows differ
    from a crafted mix pool's only by PGD's random starts, which the PGD pool drew over all
    its rows rather than over the odd ones.

    Args:
        fgsm: a pool of ``method="fgsm"``.
        pgd: a pool of ``method="pgd"`` with the same seed, training set and rows.
        fraction: in (0, 1], the largest fraction the mix pool must serve; default the
            smaller of the two pools' fractions.

    Returns:
        An ``AdvPool`` of ``method="mix"``, round(fraction * n_train) rows; its ``attack``
        records both attacks' settings and ``source: "fgsm+pgd pools"``.

    Raises:
        ValueError: the pools are not an fgsm and a pgd pool, differ in seed, training set
            or rows, or hold less than ``fraction``.
    """
    for want, pool in (("fgsm", fgsm), ("pgd", pgd)):
        if pool.method != want:
            raise ValueError(f"mix_pool's {want} argument must be a {want} pool, not {pool.method}")
    if fgsm.seed != pgd.seed:
        raise ValueError(
            f"the fgsm pool has seed {fgsm.seed} and the pgd pool seed {pgd.seed}: a mix pool "
            "takes both from the same seeded rows"
        )
    if fgsm.n_train != pgd.n_train:
        raise ValueError(
            f"the fgsm pool was crafted from {fgsm.n_train} training examples and the pgd pool "
            f"from {pgd.n_train}: compose pools of the same training set"
        )
    fraction = check_fraction(min(fgsm.fraction, pgd.fraction) if fraction is None else fraction)
    k = _n_take(fraction, fgsm.n_train)
    for pool in (fgsm, pgd):
        if k > len(pool):
            raise ValueError(
                f"the {pool.method} pool holds fraction {pool.fraction} ({len(pool)} examples); "
                f"a mix pool of fraction {fraction} needs {k}"
            )
    if not np.array_equal(fgsm.index[:k], pgd.index[:k]):
        raise ValueError(
            "the fgsm and pgd pools were drawn from different training rows (index mismatch): "
            "craft both with adversarial_pool on the same training set and seed"
        )
    if not np.array_equal(fgsm.y[:k], pgd.y[:k]):
        raise ValueError("the fgsm and pgd pools' labels differ: not the same training set")
    even = np.arange(k) % 2 == 0
    kinds = np.where(even, "fgsm", "pgd")
    x_adv = np.where(even[:, None, None, None], fgsm.x_adv[:k], pgd.x_adv[:k])
    attack: dict[str, Any] = {
        kind: src.attack[kind]
        for kind, src in (("fgsm", fgsm), ("pgd", pgd))
        if (kinds == kind).any() and kind in src.attack
    }
    return AdvPool(
        method="mix",
        fraction=fraction,
        seed=fgsm.seed,
        n_train=fgsm.n_train,
        index=fgsm.index[:k].copy(),
        x_adv=x_adv.astype(np.float32, copy=False),
        y=fgsm.y[:k].copy(),
        kinds=kinds,
        attack={**attack, "source": MIX_FROM_POOLS},
    )


def augment(
    train_x: ArrayLike,
    train_y: ArrayLike,
    pool: AdvPool,
    fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The training set with exactly round(fraction * n) adversarial examples appended.

    Returns:
        (x, y) numpy arrays: x (n + k, 3, H, W) float32, y (n + k,) int64.
    """
    x, y = to_arrays((train_x, train_y))
    xa, ya = pool.take(fraction, x.shape[0])
    return (
        np.concatenate([x.numpy(), xa.astype(np.float32)]),
        np.concatenate([y.numpy(), ya.astype(np.int64)]),
    )
