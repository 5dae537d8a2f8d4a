"""The training recipe around the loop: learning-rate schedules and training-time flips.

Both act on training only: attacks, pools and scoring never see a flipped image, and the
schedule only moves the optimiser's learning rate.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import Tensor

from skinadv.attacks.craft import bf16_supported
from skinadv.config import TrainConfig

log = logging.getLogger(__name__)

#: onecycle's start (lr / DIV) and end (lr / DIV / FINAL_DIV): torch's OneCycleLR defaults
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in an epoch of ``n`` images: ``fit`` skips a last batch of one."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0)


def final_lr(cfg: TrainConfig) -> float:
    """The learning rate the schedule ends at (after the last step)."""
    if cfg.schedule == "onecycle":
        return cfg.lr / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
    if cfg.schedule == "cosine":
        return 0.0
    return cfg.lr


def lr_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-batch scheduler ``cfg.schedule`` names (None for ``constant``).

    Args:
        opt: the optimiser, built with ``lr=cfg.lr``.
        cfg: ``schedule``, ``lr`` (the peak) and ``warmup`` (share of the steps warming up).
        total_steps: optimiser steps of the whole run (``epochs * steps_per_epoch``).
    """
    if cfg.schedule == "constant" or total_steps < 1:
        return None
    if cfg.schedule == "onecycle" and total_steps >= 3:
        # OneCycleLR's last lr is the one of its step total_steps - 1: one more, so that the
        # lr after the run's last step is the final one; each of its two phases needs at
        # least one step (a shorter run, e.g. one epoch of a few batches, divides by zero)
        n = total_steps + 1
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=n,
            pct_start=min(max(cfg.warmup, 2.0 / n), 1.0 - 1.0 / n),
            anneal_strategy="cos",
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
            cycle_momentum=False,  # Adam's betas stay as they are
        )
    # cosine (or a onecycle run too short for OneCycleLR: the same shape, warm-up then cosine)
    warm = min(round(cfg.warmup * total_steps), total_steps - 1) if total_steps >= 3 else 0

    def factor(step: int) -> float:  # step: optimiser steps taken so far
        if step < warm:
            return (step + 1) / (warm + 1)
        t = min(step - warm, total_steps - warm) / max(total_steps - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def flip_batch(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image flipped left-right and up-down, each with probability 1/2.

    Args:
        x: (N, C, H, W) images (any dtype, any memory format).
        gen: CPU generator drawing the flips (reproducible training).

    Returns:
        (N, C, H, W): a new tensor; ``x`` is untouched.
    """
    coins = (torch.rand(x.shape[0], 2, generator=gen) < 0.5).to(x.device)
    x = torch.where(coins[:, 0].view(-1, 1, 1, 1), x.flip(3), x)
    return torch.where(coins[:, 1].view(-1, 1, 1, 1), x.flip(2), x)


def train_autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for ``precision: bf16`` where the device has native bf16 kernels;
    float32 (with a warning) where bf16 would only be emulated, which is slower than fp32."""
    if cfg.precision != "bf16":
        return contextlib.nullcontext()
    if not bf16_supported(device):
        log.warning("train.precision bf16: no native bf16 on %s, training in float32", device)
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
