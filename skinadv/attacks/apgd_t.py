"""APGD-T: APGD on the targeted DLR loss, towards each of the top-k other classes in turn."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skinadv.attacks._common import _check_inputs, _check_steps
from skinadv.attacks.apgd import _apgd_runs, _check_args, _keep_better


def dlr_targeted_loss(logits: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """Targeted Difference of Logits Ratio:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

    pi sorts the logits in decreasing order. Shift- and scale-invariant in the logits;
    positive exactly when the target's logit beats the true class's (so the example is
    misclassified).

    Args:
        logits: (N, K) with K >= 4.
        labels: (N,) int64 true labels.
        target: (N,) int64 target classes.

    Returns:
        (N,) loss.
    """
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs >= 4 classes, got {logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _top_other_classes(model: nn.Module, x: Tensor, y: Tensor, k: int) -> Tensor:
    """(N, k) int64: per example the k classes other than y with the highest clean logits,
    highest first (auto-attack's targets 2, 3, ... of the sorted clean logits)."""
    with torch.no_grad():
        logits = model(x).float()
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs >= 4 classes, got {logits.shape[1]}")
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.topk(min(k, logits.shape[1] - 1), dim=1).indices


def apgd_t(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    n_target_classes: int = 6,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-T, from "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (Croce & Hein, 2020).

    [https://arxiv.org/abs/2003.01690]

    Threat model: white-box, L-inf ball of radius ``eps``, untargeted success (any wrong
    class) reached through targeted runs; loss: the targeted DLR loss
    (``dlr_targeted_loss``, needs >= 4 classes). As fra31/auto-attack's
    ``autoattack/autopgd_base.py`` (``APGDAttack_targeted``): the targets are the
    ``n_target_classes`` classes other than the true one with the highest clean logits,
    tried in that order; each target gets ``restarts`` APGD runs (step-size schedule and
    momentum as in ``apgd_ce``), and attacks only the examples no earlier target or restart
    fooled. With 7 classes the default 6 tries every other class.

    Per example it returns the first misclassified point found, else the highest-loss one
    over all targets (auto-attack returns the clean image there; either way it is not
    fooled). Cost: up to ``n_target_classes`` times ``apgd_dlr``'s on images it cannot
    fool, about the same on those the first target fools.

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        steps: iterations per run (>= 1; paper: 100).
        restarts: runs per target class from independent random starts (>= 1).
        rho: step-halving threshold in (0, 1] (paper: 0.75).
        n_target_classes: how many target classes to try (>= 1; at most K - 1 are used;
            auto-attack's standard version: 9 of CIFAR-10's 10).
        generator: CPU ``torch.Generator`` for the random starts (reproducible runs).

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device, inside the eps-ball.
    """
    steps, restarts = _check_args(eps, steps, restarts, rho)
    n_target_classes = _check_steps(n_target_classes, "n_target_classes")
    _check_inputs(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    targets = _top_other_classes(model, x, y, n_target_classes)
    kw = {"eps": eps, "steps": steps, "restarts": restarts, "rho": rho, "generator": generator}
    best, best_loss, fooled = _apgd_runs(model, x, y, dlr_targeted_loss, target=targets[:, 0], **kw)
    for j in range(1, targets.shape[1]):
        # later targets only attack what is still classified right
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        run = _apgd_runs(model, x[todo], y[todo], dlr_targeted_loss, target=targets[todo, j], **kw)
        _keep_better(best, best_loss, fooled, todo, *run)
    return best.detach()
