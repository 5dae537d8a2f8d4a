"""The training loop: Adam on cross-entropy, clean or with an on-the-fly defence."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from skinadv.config import DefenceConfig, ModelConfig, TrainConfig
from skinadv.data import Dataset
from skinadv.models import create_model
from skinadv.training.defences import Guard, loss_fn
from skinadv.training.prep import ArrayLike, to_arrays
from skinadv.training.recipe import flip_batch, lr_scheduler, steps_per_epoch, train_autocast

log = logging.getLogger(__name__)


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as torch understands it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


@dataclass(frozen=True)
class EpochStats:
    """What the per-epoch hook gets (e.g. to log to MLflow with ``step=epoch``)."""

    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch (cross-entropy; TRADES' loss for trades)
    train_acc: float  # accuracy on what was trained on (adversarial for pgd-at / fast-at)
    seconds: float  # wall time of the epoch
    guard_acc: float | None = None  # fast-at: PGD accuracy on the guard's training batch
    lr: float | None = None  # the learning rate at the end of the epoch (after its last step)

    def as_dict(self) -> dict[str, float]:
        """The fields that have a value (``guard_acc`` only for fast-at)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


EpochHook = Callable[[EpochStats], None]


@dataclass(frozen=True)
class TrainCost:
    """What a training run cost. Evaluations are counted in images: one forward+backward
    pass over one image is one gradient evaluation (clean training: 1 per image per epoch;
    pgd-at k + 1; trades k + 2 plus 1 forward; fast-at 2).

    Attributes:
        seconds: wall time of the whole run.
        grad_evals: forward+backward passes for training (attack steps and updates).
        forwards: forward-only passes for training (trades' clean attack target).
        guard_evals: forward+backward passes of fast-at's guard (PGD on its batch), apart.
    """

    seconds: float = 0.0
    grad_evals: int = 0
    forwards: int = 0
    guard_evals: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class TrainResult:
    """A trained model (eval mode) and how it got there.

    ``defence`` is the ``DefenceConfig.name`` (None: clean training). ``kept_epoch`` is the
    epoch whose weights the model holds: the last one, or for fast-at the best one restored
    when its guard was triggered (``guard_triggered``).
    """

    model: nn.Module
    history: list[EpochStats]
    seconds: float
    device: str
    n_train: int
    model_config: dict[str, Any] = field(default_factory=dict)
    cost: TrainCost = field(default_factory=TrainCost)
    defence: str | None = None
    guard_triggered: bool = False
    kept_epoch: int | None = None

    @property
    def final(self) -> EpochStats:
        return self.history[-1]


def _stream_seed(seed: int, stream: int) -> int:
    """An independent seed per random stream of one training seed."""
    return (seed * 1_000_003 + stream) % 2**63


def _make_model(
    model_or_name: nn.Module | str | ModelConfig, model_kwargs: dict[str, Any] | None
) -> nn.Module:
    if isinstance(model_or_name, ModelConfig):
        return create_model(model_or_name.name, **model_or_name.kwargs())
    if isinstance(model_or_name, str):
        return create_model(model_or_name, **(model_kwargs or {}))
    return model_or_name


def fit(
    model_or_name: nn.Module | str | ModelConfig,
    train: Dataset | tuple[ArrayLike, ArrayLike],
    cfg: TrainConfig,
    *,
    on_epoch: EpochHook | None = None,
    model_kwargs: dict[str, Any] | None = None,
    defence: DefenceConfig | None = None,
) -> TrainResult:
    """Train with Adam on cross-entropy over logits, clean or adversarially on the fly.

    Args:
        model_or_name: a model to train in place, or a registry name / ModelConfig for a
            freshly initialised model (``torch.manual_seed(cfg.seed)`` first, so the same
            seed gives the same initial weights).
        train: a Dataset (uint8 images are scaled to [0, 1]) or (x, y): x (N, 3, H, W) float
            in [0, 1], y (N,) int64.
        cfg: epochs, batch size, learning rate and its schedule, flips, precision, weight
            decay, seed, device (``skinadv.config.TrainConfig``).
        on_epoch: called after every epoch with an ``EpochStats``.
        model_kwargs: factory arguments when ``model_or_name`` is a name.
        defence: attack every batch as it is used (``pgd-at``, ``trades``, ``fast-at``; see
            ``skinadv.training.defences``); None trains on clean batches.

    Returns:
        TrainResult with the model in eval mode. Same seed and data on the CPU, same weights
        (the attacks' random starts come from a generator seeded from ``cfg.seed``).
    """
    device = select_device(cfg.device)
    x, y = to_arrays(train)
    torch.manual_seed(cfg.seed)
    model = _make_model(model_or_name, model_kwargs)
    # channels-last: 1.75x the images/s of the default layout for the paper CNN on one CPU
    # thread (max-pooling and the conv kernels are much faster in it); the model goes back
    # to the default layout at the end, so what is saved and scored is as before
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":  # the whole set fits on a GPU: no per-batch host copies
        x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    sched = lr_scheduler(opt, cfg, cfg.epochs * steps_per_epoch(n, cfg.batch_size))
    order_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, 1))
    flip_gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, 3))
    autocast = train_autocast(cfg, device)
    batch_loss = loss_fn(defence)
    guard = None
    if defence is not None and defence.method == "fast-at" and defence.eps > 0:
        guard = Guard(
            x.to(device),
            y.to(device),
            eps=defence.eps,
            drop=defence.guard_drop,
            seed=_stream_seed(cfg.seed, 2),
        )
    label = "clean" if defence is None else defence.name
    history: list[EpochStats] = []
    grad_evals = forwards = 0
    kept_epoch = 0
    t_start = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        # summed on the device, read back once per epoch: no host sync per step
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if idx.numel() < 2:  # BatchNorm cannot train on a batch of one
                continue
            xb, yb = x[idx.to(x.device)].to(device), y[idx.to(y.device)].to(device)
            if cfg.augment == "flips":  # before the defence: it attacks what is trained on
                xb = flip_batch(xb, flip_gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:
                out = batch_loss(model, xb, yb, defence, attack_gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            grad_evals += out.grad_evals
            forwards += out.forwards
            total_loss += out.loss.detach().double() * idx.numel()
            correct += (out.logits.argmax(1) == yb).sum()
            seen += idx.numel()
        mean_loss = float(total_loss) / max(seen, 1)
        if not np.isfinite(mean_loss):
            raise FloatingPointError(
                f"training diverged: loss {mean_loss} at epoch {epoch} (lower train.lr?)"
            )
        guard_acc = guard.check(model, epoch) if guard is not None else None
        stats = EpochStats(
            epoch,
            mean_loss,
            int(correct) / max(seen, 1),
            time.perf_counter() - t0,
            guard_acc,
            opt.param_groups[0]["lr"],
        )
        history.append(stats)
        kept_epoch = epoch
        log.info(
            "%s epoch %d/%d: loss %.4f, train acc %.4f, %.1f s",
            label,
            epoch,
            cfg.epochs,
            stats.loss,
            stats.train_acc,
            stats.seconds,
        )
        if on_epoch is not None:
            on_epoch(stats)
        if guard is not None and guard.tripped:
            kept_epoch = guard.restore(model)
            break
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    seconds = time.perf_counter() - t_start
    return TrainResult(
        model=model,
        history=history,
        seconds=seconds,
        device=str(device),
        n_train=n,
        model_config=dict(getattr(model, "skinadv_config", {})),
        cost=TrainCost(seconds, grad_evals, forwards, guard.evals if guard else 0),
        defence=None if defence is None else defence.name,
        guard_triggered=guard is not None and guard.tripped,
        kept_epoch=kept_epoch,
    )
