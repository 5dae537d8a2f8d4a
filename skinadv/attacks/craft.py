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
from skinadv.memory import device_batch_size

log = logging.getLogger(__name__)

#: ``craft``'s arithmetic: float32, or bfloat16 autocast (convolutions and matmuls in bf16)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def bf16_supported(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: a CUDA GPU that says so, or a CPU whose
    oneDNN has bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 autocast is emulated."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu" and torch.backends.mkldnn.is_available():
        try:  # a private op: a build without it has no oneDNN bf16 to speak of
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _autocast(precision: str, dev: torch.device) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if not bf16_supported(dev):
        log.warning("bf16 on %s is emulated here (no native bf16): expect it to be slower", dev)
    return torch.autocast(dev.type, dtype=torch.bfloat16)


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
    precision: str = "fp32",
    fit_memory: bool = False,
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
        precision: ``"fp32"``, or ``"bf16"``: the attack's forward and backward passes under
            bfloat16 autocast (the adversarial images themselves stay float32, so the eps
            bound and [0, 1] hold exactly). On a CPU with AVX512-BF16 (quick CNN, PGD-50
            on 501 real images) it was 1.35-1.5x as fast on 2 threads and 1.5-2x on 1,
            robust accuracy 0.2-0.4 points lower (29.9 vs 30.1 %); APGD-CE lost 0.4-1.5
            points, so check an attack before trusting it in bf16 (docs/benchmarks.md).
            Not the default: the science path's numbers stay float32.
        fit_memory: on CUDA, choose the batch size from the free device memory and the
            model's per-image footprint (``skinadv.memory.device_batch_size``) instead of
            ``batch_size``; on a CPU ``batch_size`` is kept. Off by default: cells packed on one GPU
            (``cells_per_gpu``) are sized for the configured batch, and the choice depends
            on what else holds memory, so outputs are reproducible only at a fixed size.
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
    amp = _autocast(precision, dev)
    if fit_memory:
        batch_size = device_batch_size(model, dev, batch_size, size=x_all.shape[-1])
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
                with amp:
                    out[start:stop] = fn(fast, xb, yb, **kwargs)
                advance(stop - start)
    finally:
        if dev != model_device:
            model.to(model_device)
    log.debug("crafted %d %s examples (%s, %s)", n, name, precision, attack_kwargs)
    return out.to(out_device)
