"""Memory per image, batch sizes chosen from a CUDA device's free memory, and the CPU
allocator's policy for freed memory.

Used by ``craft(..., fit_memory=True)`` and ``predict(..., fit_memory=True)``, and by
``skinadv.training.footprint`` (a grid cell's GPU memory); ``keep_freed_memory`` by the
processes that train and attack (the CLI, the grid's workers, the benchmarks). Imports only
torch, so the attacks can use it without an import cycle.
"""

from __future__ import annotations

import ctypes
import logging
import os

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

#: glibc's mallopt parameters (malloc.h) and the values ``keep_freed_memory`` sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
MMAP_THRESHOLD = 32 * 2**20
#: free memory a process keeps at the top of its heap instead of returning it to the OS
TRIM_THRESHOLD = 512 * 2**20
#: set to 0 to leave the C library's allocator as it is (e.g. to measure the difference)
KEEP_FREED_MEMORY_ENV = "SKINADV_KEEP_FREED_MEMORY"
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let this process reuse freed tensor memory instead of page-faulting it back in.

    PyTorch has no caching allocator on the CPU: every activation, gradient and attack
    buffer is a fresh ``malloc``. glibc serves the large ones with ``mmap`` or trims them
    off the heap when freed, so the next training step or attack step touches new pages
    and the kernel zero-fills each one: on this project's 2-core machine that page
    faulting took about a third of a PGD step (``aten::fill_`` and ``threshold_backward``
    on fresh buffers led the profile). This sets glibc's mmap threshold to its maximum
    (32 MiB) and keeps up to 512 MiB of freed memory in the heap, so buffers are reused.
    Measured (quick-preset CNN, fresh processes with it on and off, alternated): PGD-50
    1.49x the images/s on 2 threads and 1.22x on 1, training 1.02x
    (``benchmarks/malloc_reuse.py``).

    Process-wide and idempotent; a no-op returning False where the C library is not glibc
    (macOS, musl) or ``SKINADV_KEEP_FREED_MEMORY=0``. The cost is resident memory: a
    process keeps its peak (up to 512 MiB more) until it exits.
    """
    global _kept
    if _kept is not None:
        return _kept
    _kept = False
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return _kept
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
            return _kept
        # mallopt returns 1 on success; both, or the heap would still be trimmed
        _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except OSError:
        pass
    log.debug("keep freed memory: %s", _kept)
    return _kept


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
