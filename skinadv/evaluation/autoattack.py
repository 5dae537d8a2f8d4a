"""AutoAttack's standard version (the reference implementation) beside our own ensemble.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", Croce & Hein 2020, https://arxiv.org/abs/2003.01690. Threat model: white-box
(APGD-CE, APGD-T, FAB-T) then black-box (Square, 5000 queries), L-inf, per-example worst
case. This module runs fra31's own code (PyPI ``pyautoattack`` 0.2.0, imported as
``pyautoattack``), the way RobustBench does, with the targeted attacks aimed at every other
class (``n_target_classes`` = classes - 1: 6 for HAM10000's 7; the package's default of 9
assumes at least 10 classes).

The four attacks run one after another, each on the images the earlier ones left correctly
classified, exactly as ``AutoAttack.run_standard_evaluation`` does (one call per attack on
the images still robust: the batches, hence the seeded random starts, are the same as in a
single call), so the figure is the package's and we also learn which attack fooled which
image. That gives AutoAttack's own gradient-masking check: images that only the black-box
Square attack fools, after every white-box attack failed on them.

Beside it, ``verify`` runs our worst-case ensemble (``robust_curve``) on the same images, so
the two figures compare like for like; ``flags`` says where they disagree. No MLflow here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks.craft import as_tensor, eval_mode
from skinadv.evaluation.evaluate import predict
from skinadv.evaluation.metrics import metrics
from skinadv.evaluation.robust import SpecFor, robust_curve
from skinadv.evaluation.subset import stratified_indices
from skinadv.results import RobustPoint, eps_text

log = logging.getLogger(__name__)

#: AutoAttack's standard version, in its order: three white-box attacks, then Square.
STANDARD: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
WHITE_BOX: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t")
SQUARE_QUERIES = 5000  # the standard version's; lower only in fast unit tests
#: a flag is raised when AutoAttack reads more than this many points below the ensemble
GAP_POINTS = 1.0
REFERENCE = "pyautoattack==0.2.0"


def reference_autoattack() -> type:
    """The reference ``AutoAttack`` class (fra31/auto-attack, PyPI ``pyautoattack``).

    Raises:
        ImportError: with the install line when the package is missing.
    """
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        raise ImportError(
            f"AutoAttack's reference implementation is not installed: "
            f"pip install --no-deps {REFERENCE} (or make setup)"
        ) from exc
    return AutoAttack


def make_adversary(
    model: nn.Module,
    eps: float,
    *,
    num_classes: int = 7,
    seed: int = 0,
    device: str | torch.device = "cpu",
    square_queries: int = SQUARE_QUERIES,
) -> Any:
    """``AutoAttack(model, norm='Linf', eps=eps, version='standard', seed=seed)`` with both
    targeted attacks aimed at the ``num_classes - 1`` other classes.

    Args:
        model: returns logits for (N, 3, H, W) inputs in [0, 1].
        eps: L-inf budget in [0, 1] pixel units.
        square_queries: Square's query budget (5000 in the standard version).

    Returns:
        The reference package's ``AutoAttack`` object, standard version.
    """
    adversary = reference_autoattack()(
        model, norm="Linf", eps=float(eps), version="standard", device=str(device), seed=seed
    )
    adversary.apgd_targeted.n_target_classes = num_classes - 1
    adversary.fab.n_target_classes = num_classes - 1
    adversary.square.n_queries = int(square_queries)
    return adversary


@dataclass(frozen=True)
class AutoAttackPoint:
    """AutoAttack at one budget on a set of images.

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        n: images attacked.
        accuracy, balanced_accuracy: after all four attacks, fractions in [0, 1].
        mel_recall: melanoma recall after all four (None without melanoma images).
        after: robust accuracy after each attack, cumulative (``clean`` first).
        fooled_by: images each attack fooled first (an image counts for one attack only).
        seconds: wall time of the four attacks.
        pred: (N,) predicted class per image under the attack (clean prediction where none
            fooled it).
    """

    eps: float
    n: int
    accuracy: float
    balanced_accuracy: float
    mel_recall: float | None
    after: Mapping[str, float]
    fooled_by: Mapping[str, int]
    seconds: float
    pred: np.ndarray = field(repr=False, compare=False)

    @property
    def square_extra(self) -> int:
        """Images only Square fooled, after every white-box attack failed on them."""
        return int(self.fooled_by.get("square", 0))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "pred"}
        return {**out, "after": dict(self.after), "fooled_by": dict(self.fooled_by)}


def autoattack_point(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float,
    *,
    num_classes: int = 7,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device = "cpu",
    square_queries: int = SQUARE_QUERIES,
) -> AutoAttackPoint:
    """AutoAttack's standard version at ``eps``, attack by attack (see the module docstring).

    Args:
        model: returns logits for inputs in [0, 1]; put in eval mode for the run.
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64 labels.
        eps: L-inf budget in [0, 1] pixel units, > 0.
        num_classes: the model's classes (the targeted attacks take the others).
        batch_size: AutoAttack's batch size.
        seed: AutoAttack's seed (each attack is seeded with it).
        device: where the attacks run.
        square_queries: Square's budget; keep the standard 5000 outside fast tests.

    Returns:
        The per-image worst case over the four attacks.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive for AutoAttack, got {eps}")
    xt, yt = as_tensor(x, torch.float32), as_tensor(y, torch.long)
    labels = yt.numpy()
    t0 = time.perf_counter()
    with eval_mode(model):
        pred, _ = predict(model, xt, batch_size=batch_size, device=device)
        robust = pred == labels
        after = {"clean": float(robust.mean())}
        fooled_by: dict[str, int] = {}
        adversary = make_adversary(
            model, eps, num_classes=num_classes, seed=seed, device=device,
            square_queries=square_queries,
        )  # fmt: skip
        for attack in STANDARD:
            idx = np.flatnonzero(robust)
            fooled_by[attack] = 0
            if idx.size:
                adversary.attacks_to_run = [attack]
                _, y_adv = adversary.run_standard_evaluation(
                    xt[idx], yt[idx], batch_size=batch_size
                )
                adv_pred = y_adv.cpu().numpy()
                fooled = adv_pred != labels[idx]
                pred[idx[fooled]] = adv_pred[fooled]
                robust[idx[fooled]] = False
                fooled_by[attack] = int(fooled.sum())
            after[attack] = float(robust.mean())
            log.info("eps %s: robust accuracy after %s %.4f", eps_text(eps), attack, after[attack])
    m = metrics(labels, pred)
    return AutoAttackPoint(
        eps=float(eps),
        n=int(labels.size),
        accuracy=m["accuracy"],
        balanced_accuracy=m["balanced_accuracy"],
        mel_recall=m["recall"].get("mel"),
        after=after,
        fooled_by=fooled_by,
        seconds=time.perf_counter() - t0,
        pred=pred,
    )


@dataclass(frozen=True)
class Comparison:
    """AutoAttack and our ensemble at one budget on the same images.

    Args:
        autoattack: the reference's figure.
        ensemble: ours (worst case over ``ensemble.attacks``).
        ensemble_seconds: wall time of our ensemble at this budget (its sweep shares work
            across budgets, so this is the budget's share).
    """

    autoattack: AutoAttackPoint
    ensemble: RobustPoint
    ensemble_seconds: float = 0.0

    @property
    def eps(self) -> float:
        return self.autoattack.eps

    def gap_points(self, metric: str = "accuracy") -> float:
        """Ensemble minus AutoAttack, in percentage points (> 0: ours reads high)."""
        return 100 * (getattr(self.ensemble, metric) - getattr(self.autoattack, metric))

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "autoattack": self.autoattack.to_dict(),
            "ensemble": self.ensemble.to_dict(),
            "ensemble_seconds": self.ensemble_seconds,
            "flags": flags(self),
        }


def square_flag(c: Comparison) -> str | None:
    """AutoAttack's own check: Square (black-box) fooled images every white-box attack
    left, a sign of gradient masking."""
    k = c.autoattack.square_extra
    if k == 0:
        return None
    return (
        f"Square (black-box) fooled {k} of {c.autoattack.n} images that APGD-CE, APGD-T and "
        f"FAB-T left at eps {eps_text(c.eps)}: a sign of gradient masking"
    )


def gap_flag(c: Comparison, points: float = GAP_POINTS) -> str | None:
    """AutoAttack more than ``points`` below our ensemble (accuracy or balanced accuracy):
    the ensemble overstates robustness."""
    gaps = {m: c.gap_points(m) for m in ("accuracy", "balanced_accuracy")}
    over = {m: g for m, g in gaps.items() if g > points}
    if not over:
        return None
    words = ", ".join(f"{m.replace('_', ' ')} by {g:.1f} points" for m, g in over.items())
    return (
        f"AutoAttack reads below our ensemble at eps {eps_text(c.eps)} ({words}): the "
        f"ensemble ({', '.join(c.ensemble.attacks)}) overstates robustness"
    )


def flags(c: Comparison) -> list[str]:
    """Every check that fails for ``c`` (empty: none)."""
    return [f for f in (square_flag(c), gap_flag(c)) if f]


def verify(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps_values: Sequence[float],
    spec_for: SpecFor,
    attacks: Sequence[str],
    *,
    num_classes: int = 7,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device = "cpu",
    square_queries: int = SQUARE_QUERIES,
    on_point: Any = None,
) -> list[Comparison]:
    """AutoAttack (reference) and our worst-case ensemble at each eps, on the same images.

    Args:
        model: the model scored (white-box), logits for inputs in [0, 1].
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64 labels.
        eps_values: L-inf budgets in [0, 1] pixel units, each > 0 (reported ascending).
        spec_for, attacks: our ensemble, as ``robust_curve`` takes them.
        num_classes, batch_size, seed, device, square_queries: see ``autoattack_point``.
        on_point: called with each ``Comparison`` as it is done (progress).

    Returns:
        One ``Comparison`` per eps, ascending.
    """
    eps_sorted = sorted(float(e) for e in eps_values)
    bad = [e for e in eps_sorted if not e > 0]
    if bad or not eps_sorted:
        raise ValueError(f"eps must be positive, got {list(eps_values)}")
    xt, yt = as_tensor(x, torch.float32), as_tensor(y, torch.long)
    out = []
    for eps in eps_sorted:
        t0 = time.perf_counter()
        (ens,) = robust_curve(
            model, xt, yt, [eps], spec_for, attacks, batch_size=batch_size, device=device, seed=seed
        )
        ens_s = time.perf_counter() - t0
        aa = autoattack_point(
            model, xt, yt, eps, num_classes=num_classes, batch_size=batch_size, seed=seed,
            device=device, square_queries=square_queries,
        )  # fmt: skip
        c = Comparison(aa, ens, ens_s)
        if on_point is not None:
            on_point(c)
        out.append(c)
    return out


__all__ = [
    "GAP_POINTS",
    "REFERENCE",
    "SQUARE_QUERIES",
    "STANDARD",
    "WHITE_BOX",
    "AutoAttackPoint",
    "Comparison",
    "autoattack_point",
    "flags",
    "gap_flag",
    "make_adversary",
    "reference_autoattack",
    "square_flag",
    "stratified_indices",
    "verify",
]
