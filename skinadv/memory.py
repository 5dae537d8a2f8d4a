"""Memory per image, and batch sizes chosen from a CUDA device's free memory.

Used by ``craft(..., fit_memory=True)`` and ``predict(..., fit_memory=True)``, and by
``skinadv.training.footprint`` (a grid cell's GPU memory). Imports only torch, so the attacks
can use it without an import cycle.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

FLOAT_BYTES = 4
MEMORY_HEADROOM = 0.9  # of the device's memory, what the batches (or packed cells) may fill
#: input-sized float32 tensors an attack holds per image (x, x_adv, its bounds, the gradient,
#: the random start, the output buffer): small beside the activations, counted anyway
ATTACK_BUFFERS = 7
#: the largest batch ``device_batch_size`` picks: past a few thousand 28x28 images a GPU is
#: busy already, and a bigger batch only delays the first result
MAX_AUTO_BATCH = 8192


def activation_bytes_per_image(model: nn.Module, size: int) -> int:
    """Bytes of every leaf module's output for one ``size`` x ``size`` image (float32)."""
    total = 0

    def hook(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * FLOAT_BYTES

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size, device=device))
        finally:
            for m, training in modes:
                m.training = training
    finally:
        for h in handles:
            h.remove()
    return total + 3 * size * size * FLOAT_BYTES  # the input (an attack's gradient target)


def attack_bytes_per_image(model: nn.Module, size: int, *, backward: bool = True) -> int:
    """Peak bytes one ``size`` x ``size`` image adds to a batch: with ``backward`` (an
    attack), the activations kept for the input gradient and their gradients plus the
    attack's input-sized buffers; without (evaluation), the activations once."""
    acts = activation_bytes_per_image(model, size)
    if not backward:
        return acts
    return 2 * acts + ATTACK_BUFFERS * 3 * size * size * FLOAT_BYTES


def choose_batch_size(
    configured: int,
    *,
    device_type: str,
    free_bytes: int,
    per_image_bytes: int,
    headroom: float = MEMORY_HEADROOM,
    max_batch: int = MAX_AUTO_BATCH,
) -> int:
    """The batch size for a device: on CUDA as many images as ``headroom`` of its free
    memory holds (at most ``max_batch``, at least 1); elsewhere ``configured``.

    Raises:
        ValueError: ``configured`` < 1, ``per_image_bytes`` <= 0 or ``free_bytes`` < 0.
    """
    if configured < 1:
        raise ValueError(f"batch size must be >= 1, got {configured}")
    if device_type != "cuda":
        return configured  # a CPU's memory is not the limit; the configured size was measured
    if per_image_bytes <= 0 or free_bytes < 0:
        raise ValueError(
            f"per-image bytes must be > 0 and free bytes >= 0, got {per_image_bytes}, {free_bytes}"
        )
    return max(1, min(max_batch, int(free_bytes * headroom // per_image_bytes)))


def device_batch_size(
    model: nn.Module,
    device: str | torch.device,
    configured: int,
    *,
    size: int = 28,
    backward: bool = True,
    free_bytes: int | None = None,
) -> int:
    """``choose_batch_size`` for ``model`` on ``device``: on CUDA from its free memory
    (``torch.cuda.mem_get_info``, or ``free_bytes``) and ``attack_bytes_per_image``; on a
    CPU ``configured``, with no probe run."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return choose_batch_size(configured, device_type=dev.type, free_bytes=0, per_image_bytes=1)
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(dev)
    per_image = attack_bytes_per_image(model, size, backward=backward)
    n = choose_batch_size(
        configured, device_type="cuda", free_bytes=free_bytes, per_image_bytes=per_image
    )
    log.info(
        "batch size %d on %s (%.0f MiB free, %.1f KiB per image)",
        n,
        dev,
        free_bytes / 2**20,
        per_image / 2**10,
    )
    return n
