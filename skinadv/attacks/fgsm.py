"""FGSM: one signed-gradient step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skinadv.attacks._common import _check_inputs, _input_grad, _target_labels, check_eps


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, target: Tensor | int | None = None
) -> Tensor:
    """FGSM, from "Explaining and Harnessing Adversarial Examples" (Goodfellow et al., 2015).

    [https://arxiv.org/abs/1412.6572]

    Threat model: white-box, L-inf ball of radius ``eps``, untargeted by default. One step
    ``x + eps * sign(grad_x CE(model(x), y))``, clamped to [0, 1] (paper: eps = 0.2).

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        target: optional target label(s) (int or (N,)): step *down* the loss towards them.

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device,
        ``||x_adv - x||_inf <= eps``.
    """
    check_eps(eps)
    _check_inputs(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    tgt = _target_labels(target, y)
    grad, _, _ = _input_grad(model, x, y if tgt is None else tgt)
    sign = -1.0 if tgt is not None else 1.0
    return torch.clamp(x + sign * eps * grad.sign(), 0.0, 1.0).detach()
