"""MI-FGSM: iterative FGSM with a momentum term on L1-normalised gradients."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skinadv.attacks._common import (
    _check_inputs,
    _check_steps,
    _flat_norm,
    _input_grad,
    _linf_project,
    _target_labels,
    check_eps,
)


def mifgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    decay: float = 1.0,
    target: Tensor | int | None = None,
) -> Tensor:
    """MI-FGSM, from "Boosting Adversarial Attacks with Momentum" (Dong et al., 2018).

    [https://arxiv.org/abs/1710.06081]

    Threat model: white-box (built for transfer), L-inf ball of radius ``eps``, untargeted
    by default. ``g <- decay * g + grad / ||grad||_1``; ``x <- clip(x + alpha * sign(g))``.

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        alpha: step size; None means ``eps / steps`` (the paper's choice).
        steps: iterations (>= 1).
        decay: momentum factor mu (>= 0; 0 gives I-FGSM).
        target: optional target label(s): descend the loss towards them.

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device, inside the eps-ball.
    """
    check_eps(eps)
    steps = _check_steps(steps)
    alpha = eps / steps if alpha is None else check_eps(alpha, "alpha")
    if not decay >= 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    _check_inputs(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    tgt = _target_labels(target, y)
    labels = y if tgt is None else tgt
    sign = -1.0 if tgt is not None else 1.0
    momentum = torch.zeros_like(x)
    x_adv = x.clone()
    for _ in range(steps):
        grad, _, _ = _input_grad(model, x_adv, labels)
        momentum = decay * momentum + grad / _flat_norm(grad, 1)
        x_adv = _linf_project(x_adv + sign * alpha * momentum.sign(), x, eps)
    return x_adv.detach()
