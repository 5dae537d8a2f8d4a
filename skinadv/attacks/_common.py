"""Pieces shared by the attacks: argument checks, the input gradient, projections."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

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

    Returns (grad, loss (N,), logits (N, K)), all detached, logits and loss float32 even
    under bfloat16 autocast. ``torch.autograd.grad`` leaves every parameter's ``.grad``
    untouched.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv).float()  # under bf16 autocast: the loss in float32
        loss = loss_fn(logits, labels)
        # sum: each example's gradient is its own, whatever the batch size
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad.detach(), loss.detach(), logits.detach()


def attack_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of an eval-mode ``model`` that is cheaper to attack, computing the same function.

    Every BatchNorm that directly follows a convolution inside an ``nn.Sequential`` is folded
    into it (in eval mode BN is an affine map of the conv's output), the parameters are
    frozen (``requires_grad=False``: autograd records no weight paths) and, with
    ``channels_last``, the weights are stored channels-last (oneDNN's and cuDNN's fast
    layout). Logits agree with ``model``'s to float rounding (~1e-7). A model with a module
    in train mode is returned as it is.

    The folding walks the modules instead of tracing them with ``torch.fx``: fx patches
    ``nn.Module.__call__`` process-wide while it traces, which broke models running in other
    threads at that moment (``NameError: module is not installed as a submodule``).

    Measured on 2 CPU threads (quick-preset CNN, PGD-50, 500 real images): about 2x the
    images/s of attacking the model itself. The copy shares nothing with ``model``, so a
    caller that trains ``model`` must make a new copy after each update.
    """
    if any(m.training for m in model.modules()):
        return model
    fast = copy.deepcopy(model)
    _fold_batchnorm_(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast


def _fold_batchnorm_(module: nn.Module) -> None:
    """In place: each ``Conv2d`` followed by a ``BatchNorm2d`` in a ``Sequential`` becomes
    one conv (``fuse_conv_bn_eval``) followed by an ``Identity``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fold_batchnorm_(child)
    if not isinstance(module, nn.Sequential):
        return
    for i in range(len(module) - 1):
        conv, bn = module[i], module[i + 1]
        if (
            type(conv) is nn.Conv2d
            and type(bn) is nn.BatchNorm2d
            and bn.track_running_stats
            and bn.num_features == conv.out_channels
        ):
            module[i] = fuse_conv_bn_eval(conv, bn)
            module[i + 1] = nn.Identity()


def _linf_bounds(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-pixel (lo, hi) of the L-inf ball of radius eps around x, within [0, 1]."""
    return (x - eps).clamp_(0.0, 1.0), (x + eps).clamp_(0.0, 1.0)


def _linf_step_(x_adv: Tensor, step: Tensor, alpha: float, lo: Tensor, hi: Tensor) -> Tensor:
    """In place: ``x_adv + alpha * step`` projected onto the box [lo, hi] (``_linf_bounds``),
    the same point as ``_linf_project`` up to float rounding, in three fused passes."""
    x_adv.add_(step, alpha=alpha)
    return torch.minimum(torch.maximum(x_adv, lo, out=x_adv), hi, out=x_adv)


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


__all__ = ["NORMS", "AttackFn", "Progress", "attack_copy", "check_eps"]
