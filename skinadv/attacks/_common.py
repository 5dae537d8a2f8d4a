"""Pieces shared by the attacks: argument checks, the input gradient, projections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The threat models the attacks support (the single definition; config re-exports it).
NORMS: tuple[str, ...] = ("linf", "l2")


def check_eps(eps: float, what: str = "eps") -> float:
    """``eps`` is a perturbation budget in [0, 1] pixel units; negative makes no sense."""
    if not eps >= 0:  # also catches NaN
        raise ValueError(f"{what} must be >= 0 (a budget in [0, 1] pixel units), got {eps}")
    return eps


class AttackFn(Protocol):
    """``attack(model, x, y, **kwargs) -> x_adv``: (N, 3, H, W) in [0, 1], detached."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: object) -> Tensor: ...


#: A progress callback: (done, total) -> None.
Progress = Callable[[int, int], None]


def _check_steps(steps: int, what: str = "steps") -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {steps}")
    return int(steps)


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def _check_inputs(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must be (N,) = ({x.shape[0]},), got shape {tuple(y.shape)}")


def _target_labels(target: Tensor | int | None, y: Tensor) -> Tensor | None:
    """``target`` as an (N,) label tensor on y's device (an int means every example)."""
    if target is None:
        return None
    t = torch.as_tensor(target, dtype=torch.long, device=y.device)
    if t.ndim == 0:
        t = t.expand_as(y)
    if t.shape != y.shape:
        raise ValueError(f"target must be an int or (N,) = {tuple(y.shape)}, got {tuple(t.shape)}")
    return t


#: A per-example loss: (logits (N, K), labels (N,)) -> (N,).
LossFn = Callable[[Tensor, Tensor], Tensor]


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy, (N,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def _input_grad(
    model: nn.Module, x_adv: Tensor, labels: Tensor, loss_fn: LossFn = ce_loss
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of a per-example loss (default cross-entropy) w.r.t. the input only.

    Returns (grad, loss (N,), logits (N, K)), all detached. ``torch.autograd.grad`` leaves
    every parameter's ``.grad`` untouched.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = loss_fn(logits, labels)
        # sum: each example's gradient is its own, whatever the batch size
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad.detach(), loss.detach(), logits.detach()


def _flat_norm(t: Tensor, p: float) -> Tensor:
    """Per-example p-norm of (N, ...) as an (N, 1, 1, 1) tensor."""
    return t.flatten(1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def _linf_project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Nearest point of the L-inf ball of radius eps around x, clamped to [0, 1]."""
    return torch.clamp(x + torch.clamp(x_adv - x, -eps, eps), 0.0, 1.0)


def _l2_project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Nearest point of the L2 ball of radius eps around x (per example), clamped to [0, 1]."""
    delta = x_adv - x
    factor = torch.clamp(eps / _flat_norm(delta, 2), max=1.0)
    return torch.clamp(x + delta * factor, 0.0, 1.0)


def _l2_step(grad: Tensor) -> Tensor:
    """Unit-L2 ascent direction per example."""
    return grad / _flat_norm(grad, 2)


__all__ = ["NORMS", "AttackFn", "Progress", "check_eps"]
