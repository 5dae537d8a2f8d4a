"""APGD: parameter-free PGD with an adaptive step size, on the CE (APGD-CE) or DLR loss.

The runs here also take a targeted loss; APGD-T (``apgd_t.py``) builds on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from skinadv.attacks._common import (
    LossFn,
    _check_inputs,
    _check_steps,
    _input_grad,
    _linf_project,
    ce_loss,
    check_eps,
)
from skinadv.attacks.pgd import _random_start

#: momentum weight of the new step (the paper's alpha; 1.0 on the first step)
MOMENTUM = 0.75

#: A targeted per-example loss: (logits (N, K), labels (N,), targets (N,)) -> (N,).
TargetedLossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference of Logits Ratio: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``.

    Shift- and scale-invariant in the logits (pi sorts them in decreasing order); positive
    exactly when the example is misclassified.

    Args:
        logits: (N, K) with K >= 3.
        labels: (N,) int64.

    Returns:
        (N,) loss.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs >= 3 classes, got {logits.shape[1]}")
    top, top_idx = logits.topk(3, dim=1)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_other = torch.where(top_idx[:, 0] == labels, top[:, 1], top[:, 0])
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def _checkpoints(steps: int) -> dict[int, int]:
    """``{step index: steps since the previous checkpoint}`` for ``steps`` iterations.

    The paper's p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as
    auto-attack computes it in whole steps (100 steps: 21, 40, 56, 69, 79, 86, 92, 98).
    """
    window = max(int(0.22 * steps), 1)
    shrink, least = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, last = {}, -1
    while last + window < steps:
        last += window
        out[last] = window
        window = max(window - shrink, least)
    return out


@dataclass
class _State:
    """Per-example state of the examples still being attacked (all (n, ...) tensors)."""

    idx: Tensor  # position in the batch
    x: Tensor
    y: Tensor
    target: Tensor  # the targeted loss's target class (y when the loss is untargeted)
    x_adv: Tensor
    x_prev: Tensor  # the iterate before x_adv (momentum)
    grad: Tensor
    step: Tensor  # (n, 1, 1, 1) step size eta
    x_best: Tensor  # highest loss so far, and its gradient
    grad_best: Tensor
    loss_best: Tensor
    loss_prev: Tensor  # loss at the previous iterate
    n_up: Tensor  # steps that raised the loss since the last checkpoint
    best_at_check: Tensor  # loss_best at the last checkpoint
    halved_at_check: Tensor  # whether the step was halved there
    fooled: Tensor
    x_fooled: Tensor  # the first misclassified iterate

    def take(self, keep: Tensor) -> _State:
        return _State(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


def _one_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x0: Tensor,
    loss_fn: LossFn | TargetedLossFn,
    *,
    target: Tensor | None = None,
    eps: float,
    steps: int,
    rho: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run from x0. Per example: the first misclassified iterate, else the
    highest-loss one; returns (x_out, loss_best, fooled). With ``target`` (N,) the loss is
    called as ``loss_fn(logits, y, target)``; fooled still means misclassified."""
    n = x.shape[0]
    x_out, loss_out = torch.empty_like(x), x.new_empty(n)
    fooled_out = torch.zeros(n, dtype=torch.bool, device=x.device)

    def loss_for(t: Tensor) -> LossFn:
        # the target travels with its examples as fooled ones leave the batch
        return loss_fn if target is None else lambda z, labels: loss_fn(z, labels, t)

    grad, loss, logits = _input_grad(model, x0, y, loss_for(target))
    fooled = logits.argmax(1) != y
    s = _State(
        idx=torch.arange(n, device=x.device),
        x=x,
        y=y,
        target=y if target is None else target,
        x_adv=x0,
        x_prev=x0,
        grad=grad,
        step=torch.full((n, 1, 1, 1), 2.0 * eps, dtype=x.dtype, device=x.device),
        x_best=x0,
        grad_best=grad,
        loss_best=loss,
        loss_prev=loss,
        n_up=torch.zeros(n, dtype=torch.int32, device=x.device),
        best_at_check=loss,
        halved_at_check=torch.ones(n, dtype=torch.bool, device=x.device),
        fooled=fooled,
        x_fooled=x0,
    )

    def write(s: _State) -> None:
        x_out[s.idx] = torch.where(s.fooled.view(-1, 1, 1, 1), s.x_fooled, s.x_best)
        loss_out[s.idx] = s.loss_best
        fooled_out[s.idx] = s.fooled

    def drop_fooled(s: _State) -> _State:
        # a fooled example's answer is fixed: write it out, attack the rest (one host sync)
        keep = (~s.fooled).nonzero().squeeze(1)
        if keep.numel() == s.idx.numel():
            return s
        write(s.take(s.fooled))
        return s.take(keep)

    s = drop_fooled(s)  # fooled at the random start
    checkpoints = _checkpoints(steps)
    for i in range(steps):
        if s.idx.numel() == 0:
            break
        a = MOMENTUM if i > 0 else 1.0
        z = _linf_project(s.x_adv + s.step * s.grad.sign(), s.x, eps)
        x_new = _linf_project(
            s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_prev), s.x, eps
        )
        grad, loss, logits = _input_grad(model, x_new, s.y, loss_for(s.target))
        new_fool = (logits.argmax(1) != s.y) & ~s.fooled
        better = loss > s.loss_best
        better4 = better.view(-1, 1, 1, 1)
        s = replace(
            s,
            x_prev=s.x_adv,
            x_adv=x_new,
            grad=grad,
            x_best=torch.where(better4, x_new, s.x_best),
            grad_best=torch.where(better4, grad, s.grad_best),
            loss_best=torch.where(better, loss, s.loss_best),
            n_up=s.n_up + (loss > s.loss_prev),
            loss_prev=loss,
            fooled=s.fooled | new_fool,
            x_fooled=torch.where(new_fool.view(-1, 1, 1, 1), x_new, s.x_fooled),
        )
        if i not in checkpoints:
            continue
        # halve eta where under rho of the window's steps raised the loss (paper's condition
        # 1), or where eta was kept and loss_best has not risen since (condition 2), and go
        # back to the best point
        halve = (s.n_up < rho * checkpoints[i]) | (
            ~s.halved_at_check & (s.best_at_check >= s.loss_best)
        )
        halve4 = halve.view(-1, 1, 1, 1)
        s = replace(
            s,
            step=torch.where(halve4, s.step / 2, s.step),
            x_adv=torch.where(halve4, s.x_best, s.x_adv),
            grad=torch.where(halve4, s.grad_best, s.grad),
            n_up=torch.zeros_like(s.n_up),
            best_at_check=s.loss_best,
            halved_at_check=halve,
        )
        s = drop_fooled(s)
    write(s)
    return x_out, loss_out, fooled_out


def _check_args(eps: float, steps: int, restarts: int, rho: float) -> tuple[int, int]:
    """APGD's argument checks; returns (steps, restarts) as ints."""
    check_eps(eps)
    steps = _check_steps(steps)
    restarts = _check_steps(restarts, "restarts")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return steps, restarts


def _keep_better(
    best: Tensor,
    best_loss: Tensor,
    fooled: Tensor,
    todo: Tensor,
    x_r: Tensor,
    loss_r: Tensor,
    fooled_r: Tensor,
) -> None:
    """In place: the examples ``todo`` (not yet fooled) take a later run's point where it
    fooled them or raised their loss."""
    better = fooled_r | (loss_r > best_loss[todo])
    best[todo] = torch.where(better.view(-1, 1, 1, 1), x_r, best[todo])
    best_loss[todo] = torch.where(better, loss_r, best_loss[todo])
    fooled[todo] = fooled_r


def _apgd_runs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn | TargetedLossFn,
    *,
    target: Tensor | None = None,
    eps: float,
    steps: int,
    restarts: int,
    rho: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``restarts`` APGD runs (arguments already checked, eps > 0); returns per example
    (x_adv, loss, fooled): the first fooled point, else the highest-loss one."""
    kw = {"eps": eps, "steps": steps, "rho": rho}
    x0 = _random_start(x, eps, "linf", generator)
    best, best_loss, fooled = _one_run(model, x, y, x0, loss_fn, target=target, **kw)
    for _ in range(restarts - 1):
        # later restarts only attack what is still classified right (as auto-attack does)
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        xt, yt = x[todo], y[todo]
        x0 = _random_start(xt, eps, "linf", generator)
        t = None if target is None else target[todo]
        _keep_better(
            best, best_loss, fooled, todo, *_one_run(model, xt, yt, x0, loss_fn, target=t, **kw)
        )
    return best, best_loss, fooled


def _apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    *,
    eps: float,
    steps: int,
    restarts: int,
    rho: float,
    generator: torch.Generator | None,
) -> Tensor:
    steps, restarts = _check_args(eps, steps, restarts, rho)
    _check_inputs(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    best, _, _ = _apgd_runs(
        model,
        x,
        y,
        loss_fn,
        eps=eps,
        steps=steps,
        restarts=restarts,
        rho=rho,
        generator=generator,
    )
    return best.detach()


def apgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-CE, from "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (Croce & Hein, 2020).

    [https://arxiv.org/abs/2003.01690]

    Threat model: white-box, L-inf ball of radius ``eps``, untargeted; loss: cross-entropy.
    Parameter-free PGD as in fra31/auto-attack's ``autoattack/autopgd_base.py``
    (``APGDAttack``): from a uniform random start, signed-gradient steps of size eta
    (initially 2 * eps) with momentum 0.75. At checkpoints (after 22, 41, 57, ... % of the
    steps) eta is halved, and the iterate sent back to the highest-loss point, where fewer
    than ``rho`` of the steps since the last checkpoint raised the loss, or where eta was
    kept last time and the best loss has not risen since. Two details follow the paper
    where auto-attack's code differs: a strict ``< rho``, and the first step is compared
    with the start's loss (the code compares it with 0).

    Per example it returns the first misclassified iterate, else the highest-loss one. A
    fooled example leaves the batch at the next checkpoint (one host sync there, none per
    step). Restarts attack only the examples not yet fooled and keep, per example, the
    fooled, else the highest-loss, result.

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        steps: iterations per run (>= 1; paper: 100), one forward and backward pass each,
            plus one at the start.
        restarts: runs from independent random starts (>= 1).
        rho: step-halving threshold in (0, 1] (paper: 0.75).
        generator: CPU ``torch.Generator`` for the random starts (reproducible runs).

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device, inside the eps-ball.
    """
    return _apgd(
        model,
        x,
        y,
        ce_loss,
        eps=eps,
        steps=steps,
        restarts=restarts,
        rho=rho,
        generator=generator,
    )


def apgd_dlr(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-DLR, from "Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks" (Croce & Hein, 2020).

    [https://arxiv.org/abs/2003.01690]

    Threat model: white-box, L-inf ball of radius ``eps``, untargeted; loss: the Difference
    of Logits Ratio (``dlr_loss``, needs >= 3 classes), which is unchanged by shifting or
    rescaling the logits, so it sees through saturated softmax outputs that stall CE.
    Step-size schedule, restarts and the returned points as in ``apgd_ce``.

    Args:
        model: returns logits; its mode is the caller's choice (``craft`` sets eval()).
        x: (N, 3, H, W) float in [0, 1].
        y: (N,) int64 true labels.
        eps: budget in [0, 1] pixel units (>= 0).
        steps: iterations per run (>= 1; paper: 100).
        restarts: runs from independent random starts (>= 1).
        rho: step-halving threshold in (0, 1] (paper: 0.75).
        generator: CPU ``torch.Generator`` for the random starts (reproducible runs).

    Returns:
        x_adv: (N, 3, H, W) float in [0, 1], detached, on x's device, inside the eps-ball.
    """
    return _apgd(
        model,
        x,
        y,
        dlr_loss,
        eps=eps,
        steps=steps,
        restarts=restarts,
        rho=rho,
        generator=generator,
    )
