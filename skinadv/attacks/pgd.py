"""PGD: projected gradient ascent with random start and restarts, L-inf or L2."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skinadv.attacks._common import (
    _check_inputs,
    _check_norm,
    _check_steps,
    _flat_norm,
    _input_grad,
    _l2_project,
    _l2_step,
    _linf_bounds,
    _linf_step_,
    _target_labels,
    check_eps,
)


def _random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    # drawn on the CPU so a seed gives the same start on any device
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    else:
        delta = torch.randn(shape, generator=generator)
        r = torch.rand((shape[0], *([1] * (len(shape) - 1))), generator=generator)
        delta = delta / _flat_norm(delta, 2) * r * eps
    return torch.clamp(x + delta.to(device=x.device, dtype=x.dtype), 0.0, 1.0)


def _one_run(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
    random_start: bool,
    sign: float,
    generator: torch.Generator | None,
) -> Tensor:
    x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
    if norm == "linf":
        lo, hi = _linf_bounds(x, eps)
        for _ in range(steps):
            grad, _, _ = _input_grad(model, x_adv, labels)
            # in place when the gradient owns its memory; a model that broadcasts its input
            # (x.sum(), x.expand) gets an expanded gradient sign_() cannot write
            step = grad.sign_() if grad.is_contiguous() else grad.sign()
            x_adv = _linf_step_(x_adv, step, sign * alpha, lo, hi)
        return x_adv
    for _ in range(steps):
        grad, _, _ = _input_grad(model, x_adv, labels)
        x_adv = _l2_project(x_adv + sign * alpha * _l2_step(grad), x, eps)
    return x_adv


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    target: Tensor | int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD, from "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry 2018).

    [https://arxiv.org/abs/1706.06083]

    Threat model: white-box, L-inf (or L2) ball of radius ``eps``, untargeted by default.
    ``steps`` steps of size ``alpha`` (signed gradient for L-inf, unit-L2 gradient for L2),
    each projected back onto the eps-ball and clamped to [0, 1]; optionally from a uniform
    random start, repeated ``restarts`` times keeping, per example, the restart that fools
    the model (else the one with the highest loss). Paper: L-inf, eps 0.3, alpha 0.2, 50
    steps, random start. With ``steps=1, random_start=False, alpha=eps`` it is FGSM.

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        alpha: step size in pixel units (L-inf) or L2 length (L2).
        steps: iterations (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform point of the eps-ball.
        restarts: independent runs (>= 1), best kept per example.
        target: optional target label(s): descend the loss towards them.
        generator: CPU ``torch.Generator`` for the random starts (reproducible runs).

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device, inside the eps-ball.
    """
    check_eps(eps)
    check_eps(alpha, "alpha")
    steps = _check_steps(steps)
    restarts = _check_steps(restarts, "restarts")
    norm = _check_norm(norm)
    _check_inputs(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    tgt = _target_labels(target, y)
    labels = y if tgt is None else tgt
    sign = -1.0 if tgt is not None else 1.0
    if not random_start:
        restarts = 1  # every restart would be the same deterministic run
    best = None
    for _ in range(restarts):
        x_adv = _one_run(
            model,
            x,
            labels,
            eps=eps,
            alpha=alpha,
            steps=steps,
            norm=norm,
            random_start=random_start,
            sign=sign,
            generator=generator,
        )
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():
            logits = model(x_adv).float()
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        pred = logits.argmax(1)
        success = pred != y if tgt is None else pred == tgt
        objective = loss if tgt is None else -loss
        if best is None:
            best, best_success, best_obj = x_adv, success, objective
            continue
        better = (success & ~best_success) | ((success == best_success) & (objective > best_obj))
        best = torch.where(better.view(-1, 1, 1, 1), x_adv, best)
        best_success = best_success | success
        best_obj = torch.where(better, objective, best_obj)
    return best.detach()
