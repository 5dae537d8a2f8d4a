"""On-the-fly adversarial training: every batch is attacked as it is used.

Per-batch losses for ``fit(..., defence=...)``: PGD-AT (Madry et al. 2018), TRADES (Zhang
et al. 2019), N-FGSM (de Jorge et al. 2022) and fast AT (Wong et al. 2020), plus fast AT's
guard against catastrophic overfitting. Each loss returns what it cost in gradient evaluations, counted in images: a
forward+backward pass over one image is one evaluation (clean training: 1 per image).

Crafting mode: every attack here runs with the model in eval() and the update in train().
TRADES' reference code does the same; MadryLab's ``robustness`` and Wong's
``fast_adversarial`` craft in train mode. Eval mode because (1) in train mode each of the k
crafting forwards would pull BatchNorm's running statistics towards half-crafted inputs,
k extra updates per batch; (2) dropout is off, so the attack ascends the same deterministic
model that ``craft`` attacks at test time. The price: early in training the running
statistics lag the batch statistics, so the first batches are attacked slightly off target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skinadv.attacks import eval_mode, pgd
from skinadv.attacks._common import _input_grad, _linf_project
from skinadv.config import DefenceConfig

log = logging.getLogger(__name__)

#: fast AT's guard: PGD steps and images of the fixed training batch it measures
GUARD_STEPS = 5
GUARD_SIZE = 256
#: TRADES' random start: x + 0.001 * N(0, 1) (the reference code's constant)
TRADES_START_STD = 0.001


@dataclass(frozen=True)
class BatchLoss:
    """One batch's training loss and what it cost.

    Attributes:
        loss: scalar to backpropagate (the update's graph attached).
        logits: (N, K) detached logits of the examples trained on, for the training accuracy
            (adversarial for pgd-at / fast-at, clean for trades and clean training).
        grad_evals: forward+backward passes, in images (attack steps + the update).
        forwards: forward-only passes, in images (trades' clean target).
    """

    loss: Tensor
    logits: Tensor
    grad_evals: int
    forwards: int = 0


#: (model in train mode, x (N, 3, H, W) in [0, 1], y (N,), defence, generator) -> BatchLoss
LossFn = Callable[[nn.Module, Tensor, Tensor, DefenceConfig | None, torch.Generator], BatchLoss]


def clean_loss(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig | None, gen: torch.Generator
) -> BatchLoss:
    """Cross-entropy on the clean batch (no defence)."""
    logits = model(x)
    return BatchLoss(F.cross_entropy(logits, y), logits.detach(), x.shape[0])


def pgd_at_loss(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig, gen: torch.Generator
) -> BatchLoss:
    """PGD-AT, from "Towards Deep Learning Models Resistant to Adversarial Attacks".

    [https://arxiv.org/abs/1706.06083] (Madry et al., 2018)

    Threat model: L-inf ball of radius ``defence.eps``. The batch is replaced by PGD-k
    examples (random start, step 2.5 * eps / k unless ``alpha``), trained on with CE.
    Cost: k + 1 gradient evaluations per image.
    """
    n = x.shape[0]
    steps = defence.steps if defence.eps > 0 else 0  # pgd returns x itself at eps 0
    with eval_mode(model):
        x_adv = pgd(
            model,
            x,
            y,
            eps=defence.eps,
            alpha=defence.step_size(),
            steps=defence.steps,
            random_start=True,
            generator=gen,
        )
    logits = model(x_adv)
    return BatchLoss(F.cross_entropy(logits, y), logits.detach(), (steps + 1) * n)


def _kl_ascent(model: nn.Module, x: Tensor, defence: DefenceConfig, gen: torch.Generator) -> Tensor:
    """TRADES' inner maximisation: k signed steps up KL(f(x) || f(x_adv)) in the eps-ball."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    x_adv = _linf_project(x + TRADES_START_STD * noise, x, defence.eps)
    alpha = defence.step_size()
    for _ in range(defence.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)  # parameter .grad untouched
        x_adv = _linf_project(x_adv.detach() + alpha * grad.sign(), x, defence.eps)
    return x_adv.detach()


def trades_loss(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig, gen: torch.Generator
) -> BatchLoss:
    """TRADES, from "Theoretically Principled Trade-off between Robustness and Accuracy".

    [https://arxiv.org/abs/1901.08573] (Zhang et al., 2019)

    Threat model: L-inf ball of radius ``defence.eps``. Loss
    CE(f(x), y) + beta * KL(f(x) || f(x_adv)) (batch mean), x_adv maximising the KL by k
    signed steps from x + 0.001 * N(0, 1). Cost per image: k attack steps and 2 in the
    update (the clean and the adversarial image both go forward and backward), plus one
    forward-only pass (the clean target of the attack).
    """
    n = x.shape[0]
    if defence.eps > 0:
        with eval_mode(model):
            x_adv = _kl_ascent(model, x, defence, gen)
        steps, forwards = defence.steps, n
    else:
        x_adv, steps, forwards = x, 0, 0
    logits = model(x)
    logits_adv = model(x_adv)
    robust = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean"
    )
    loss = F.cross_entropy(logits, y) + defence.beta * robust
    return BatchLoss(loss, logits.detach(), (steps + 2) * n, forwards)


def fast_at_loss(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig, gen: torch.Generator
) -> BatchLoss:
    """Fast AT, from "Fast is better than free: Revisiting adversarial training".

    [https://arxiv.org/abs/2001.03994] (Wong et al., 2020)

    Threat model: L-inf ball of radius ``defence.eps``. FGSM from a uniform random start in
    [-eps, eps], step 1.25 * eps unless ``alpha``, projected back onto the ball; trained on
    with CE. Cost: 2 gradient evaluations per image. Pair with ``Guard``.
    """
    n = x.shape[0]
    if defence.eps == 0:
        return clean_loss(model, x, y, defence, gen)
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * defence.eps
    x0 = torch.clamp(x + delta.to(device=x.device, dtype=x.dtype), 0.0, 1.0)
    with eval_mode(model):
        grad, _, _ = _input_grad(model, x0, y)
    x_adv = _linf_project(x0 + defence.step_size() * grad.sign(), x, defence.eps)
    logits = model(x_adv)
    return BatchLoss(F.cross_entropy(logits, y), logits.detach(), 2 * n)


def n_fgsm_example(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig, gen: torch.Generator
) -> Tensor:
    """N-FGSM's training example: x + noise, one signed-gradient step, no projection.

    The noise is uniform in +-``defence.noise`` * eps, the step ``defence.step_size()``
    (eps unless ``alpha``); the result is clamped to the image range [0, 1] only, so it may
    lie up to (noise + 1) * eps from x, as in the paper's reference code.

    Args:
        model: attacked as it is (the caller picks its mode).
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64 labels.
        defence: eps, noise, alpha; gen: CPU generator for the noise.

    Returns:
        (N, 3, H, W) float in [0, 1], detached.
    """
    bound = defence.noise * defence.eps
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * bound
    x0 = torch.clamp(x + noise.to(device=x.device, dtype=x.dtype), 0.0, 1.0)
    grad, _, _ = _input_grad(model, x0, y)
    return torch.clamp(x0 + defence.step_size() * grad.sign(), 0.0, 1.0).detach()


def n_fgsm_loss(
    model: nn.Module, x: Tensor, y: Tensor, defence: DefenceConfig, gen: torch.Generator
) -> BatchLoss:
    """N-FGSM, from "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training".

    [https://arxiv.org/abs/2202.01181] (de Jorge et al., 2022)

    Threat model: L-inf, training budget ``defence.eps``. FGSM from uniform noise in
    +-2 eps with a step of eps and no projection back to the eps-ball: the stronger noise
    and the unclipped step avoid catastrophic overfitting without a guard, at FGSM's cost
    (2 gradient evaluations per image).
    """
    if defence.eps == 0:
        return clean_loss(model, x, y, defence, gen)
    with eval_mode(model):
        x_adv = n_fgsm_example(model, x, y, defence, gen)
    logits = model(x_adv)
    return BatchLoss(F.cross_entropy(logits, y), logits.detach(), 2 * x.shape[0])


LOSSES: dict[str, LossFn] = {
    "pgd-at": pgd_at_loss,
    "trades": trades_loss,
    "n-fgsm": n_fgsm_loss,
    "fast-at": fast_at_loss,
}


def loss_fn(defence: DefenceConfig | None) -> LossFn:
    """The per-batch loss for a defence (clean cross-entropy for None)."""
    return clean_loss if defence is None else LOSSES[defence.method]


# --------------------------------------------------------------------------- fast AT's guard


def guard_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, seed: int) -> float:
    """PGD-5 accuracy (step 2.5 * eps / 5, seeded random start) on a batch, in eval mode."""
    gen = torch.Generator().manual_seed(seed)  # the same start every epoch: comparable
    with eval_mode(model):
        x_adv = pgd(
            model, x, y, eps=eps, alpha=2.5 * eps / GUARD_STEPS, steps=GUARD_STEPS, generator=gen
        )
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())


class Guard:
    """Catastrophic-overfitting guard for fast AT (Wong et al. 2020, section 5.2).

    After each epoch, PGD accuracy on a fixed seeded batch of the training data (trained on,
    as Wong's early stopping uses a training batch: overfitting to FGSM shows there too).
    When it drops more than ``drop`` below the best so far, ``check`` says stop and
    ``restore`` loads the best epoch's weights.

    Args:
        x: (N, 3, H, W) float in [0, 1] training images; y: (N,) labels (both on the device).
        eps: the training budget; drop: the accuracy drop that trips it (a fraction).
        seed: picks the batch and the PGD random starts.
    """

    def __init__(self, x: Tensor, y: Tensor, *, eps: float, drop: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(x.shape[0], generator=gen)[:GUARD_SIZE].to(x.device)
        self.x, self.y = x[idx], y[idx]
        self.eps, self.drop, self.seed = eps, drop, seed
        self.best_acc = float("-inf")
        self.best_epoch: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.triggered_epoch: int | None = None
        self.evals = 0  # gradient evaluations spent measuring, in images

    def check(self, model: nn.Module, epoch: int) -> float:
        """Measure after ``epoch``; returns the accuracy (``self.tripped`` says stop)."""
        acc = guard_accuracy(model, self.x, self.y, eps=self.eps, seed=self.seed)
        self.evals += GUARD_STEPS * self.x.shape[0]
        if acc < self.best_acc - self.drop:
            self.triggered_epoch = epoch
            log.warning(
                "fast-at guard: PGD accuracy %.3f after epoch %d, best %.3f (epoch %d): "
                "catastrophic overfitting, restoring epoch %d",
                acc,
                epoch,
                self.best_acc,
                self.best_epoch,
                self.best_epoch,
            )
        elif acc >= self.best_acc:
            self.best_acc, self.best_epoch = acc, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return acc

    @property
    def tripped(self) -> bool:
        return self.triggered_epoch is not None

    def restore(self, model: nn.Module) -> int:
        """Load the best epoch's weights into ``model``; returns that epoch."""
        assert self.best_state is not None and self.best_epoch is not None
        model.load_state_dict(self.best_state)
        return self.best_epoch


__all__ = [
    "GUARD_SIZE",
    "GUARD_STEPS",
    "LOSSES",
    "BatchLoss",
    "Guard",
    "LossFn",
    "clean_loss",
    "fast_at_loss",
    "guard_accuracy",
    "loss_fn",
    "n_fgsm_example",
    "n_fgsm_loss",
    "pgd_at_loss",
    "trades_loss",
]
