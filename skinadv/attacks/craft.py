"""``craft``: run an attack over a whole data set in batches, in eval mode, reproducibly."""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks._common import AttackFn, Progress, attack_copy

log = logging.getLogger(__name__)


def resolve_attack(attack: str | AttackFn) -> AttackFn:
    """An attack function from its name in ``ATTACKS`` (or the function itself)."""
    from skinadv.attacks.registry import ATTACKS  # here: the attacks import craft's helpers

    if callable(attack):
        return attack
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[attack]


def as_tensor(a: Any, dtype: torch.dtype) -> Tensor:
    """numpy array or tensor -> tensor of ``dtype`` (no copy when already right)."""
    t = a if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.to(dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def progress_bar(
    total: int,
    description: str,
    progress: Progress | bool | None,
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; report to a callback, a rich bar (on a terminal), or nowhere.

    ``progress``: a ``(done, total)`` callback; ``None`` shows a rich bar on stderr when it
    is a terminal; ``False`` shows nothing.
    """
    done = 0
    if callable(progress):

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress(done, total)

        yield advance
        return
    if progress is None and sys.stderr.isatty() and total > 0:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        columns = (
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
        return
    yield lambda n: None


def craft(
    model: nn.Module,
    images: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    attack: str | AttackFn,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: Progress | bool | None = None,
    **attack_kwargs: Any,
) -> Tensor:
    """Craft adversarial examples for a whole set, batch by batch.

    The model is put in eval() for the attack (BatchNorm statistics frozen, dropout off)
    and every submodule's previous mode is restored afterwards; parameter gradients are
    never touched. The attack runs on ``attack_copy(model)`` (BatchNorm folded into the
    convolutions, frozen weights, channels-last images), the same function to float
    rounding, about twice as fast on a CPU. The results stay on the device until the last
    batch is done, then come back in one copy.

    Args:
        model: returns logits.
        images: (N, 3, H, W) float in [0, 1] (tensor or numpy).
        labels: (N,) int64 true labels.
        attack: a name in ``ATTACKS`` (``fgsm``, ``pgd``, ``mifgsm``, ``apgd_ce``,
            ``apgd_dlr``) or an attack function.
        batch_size: examples per attack call.
        device: where to compute (default: the model's device). The model is moved there
            for the call and moved back afterwards.
        seed: seeds the random starts (attacks taking a ``generator``): same seed, data and
            batch size, same output (the starts are drawn on the CPU, so on any device).
        progress: a ``(done, total)`` callback, None (a rich bar on a terminal) or False.
        **attack_kwargs: the attack's own arguments (``eps``, ``alpha``, ``steps``, ...); an
            (N,) ``target`` is sliced per batch.

    Returns:
        x_adv: (N, 3, H, W) float32 in [0, 1], detached, on ``images``' device (CPU for
        numpy input).
    """
    fn = resolve_attack(attack)
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", "attack")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x_all = as_tensor(images, torch.float32)
    y_all = as_tensor(labels, torch.long)
    if x_all.ndim != 4 or y_all.shape != (x_all.shape[0],):
        raise ValueError(
            f"images must be (N, C, H, W) and labels (N,); got "
            f"{tuple(x_all.shape)} and {tuple(y_all.shape)}"
        )
    out_device = x_all.device
    try:
        model_device = next(model.parameters()).device
    except StopIteration:
        model_device = torch.device("cpu")
    dev = torch.device(device) if device is not None else model_device
    kwargs = dict(attack_kwargs)
    target = kwargs.pop("target", None)
    target_t = None
    if target is not None and not isinstance(target, int):
        target_t = as_tensor(target, torch.long)
    params = inspect.signature(fn).parameters
    if "generator" in params and "generator" not in kwargs and seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(int(seed))
    n = x_all.shape[0]
    out = torch.empty(x_all.shape, dtype=x_all.dtype, device=dev)  # on the device: one copy back
    if dev != model_device:
        model.to(dev)
    try:
        with eval_mode(model), progress_bar(n, f"{name}", progress) as advance:
            fast = attack_copy(model)
            layout = torch.channels_last if fast is not model else torch.contiguous_format
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                xb = x_all[start:stop].to(dev).contiguous(memory_format=layout)
                yb = y_all[start:stop].to(dev)
                if target is not None:
                    kwargs["target"] = target if target_t is None else target_t[start:stop].to(dev)
                out[start:stop] = fn(fast, xb, yb, **kwargs)
                advance(stop - start)
    finally:
        if dev != model_device:
            model.to(model_device)
    log.debug("crafted %d %s examples (%s)", n, name, attack_kwargs)
    return out.to(out_device)
