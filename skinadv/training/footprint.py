"""How much GPU a grid cell needs, and so how many cells share one GPU.

A cell trains one model and attacks it. On a GPU its peak memory is, per process: the CUDA
context, the model with its gradients and Adam's two moments, the whole training set (``fit``
moves it to the GPU once), and the activations of the larger of a training batch (kept for
the backward pass, with their gradients) and an attack batch (PGD back-propagates to the
input). ``cell_memory`` estimates it from the config, without a GPU; a measured peak
(``torch.cuda.max_memory_allocated`` of one cell plus the context) can replace it.

``cells_per_gpu`` packs by memory and, where a lone cell's GPU utilisation was measured, by
throughput too: cells that already keep the GPU busy gain nothing from sharing it.

The per-image footprint and the batch size chosen from a CUDA device's free memory
(``device_batch_size``, used by ``craft`` and ``predict``) live in ``skinadv.memory``, which
the attacks can import without a cycle; they are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skinadv.config import ExperimentConfig
from skinadv.memory import (
    ATTACK_BUFFERS,
    FLOAT_BYTES,
    MAX_AUTO_BATCH,
    MEMORY_HEADROOM,
    activation_bytes_per_image,
    attack_bytes_per_image,
    choose_batch_size,
    device_batch_size,
)
from skinadv.models import create_model

CUDA_CONTEXT_BYTES = 512 * 2**20  # context + cuDNN workspace + allocator slack, per process
MAX_CELLS_PER_GPU = 8  # beyond this, the per-process contexts and CPU feeding dominate


@dataclass(frozen=True)
class CellFootprint:
    """A cell's estimated GPU memory, by part (bytes)."""

    context: int
    model: int
    data: int
    activations: int

    @property
    def total(self) -> int:
        return self.context + self.model + self.data + self.activations


def cell_memory(cfg: ExperimentConfig, n_train: int) -> CellFootprint:
    """A cell's peak GPU memory for ``cfg`` on ``n_train`` training images (the largest
    cell's: the training set plus its adversarial share)."""
    model = create_model(cfg.model.name, **cfg.model.kwargs())
    params = sum(p.numel() for p in model.parameters())
    per_image = activation_bytes_per_image(model, cfg.data.size)
    batch = max(cfg.train.batch_size, cfg.attack.batch_size)
    return CellFootprint(
        context=CUDA_CONTEXT_BYTES,
        model=4 * params * FLOAT_BYTES,  # weights, gradients, Adam's m and v
        data=n_train * 3 * cfg.data.size**2 * FLOAT_BYTES + n_train * 8,  # images + labels
        activations=2 * batch * per_image,  # saved for backward + their gradients
    )


def cells_per_gpu(cell_bytes: int, device_bytes: int, *, utilisation: float | None = None) -> int:
    """How many cells one GPU holds: as many as fit in its memory (with headroom), no more
    than a measured lone-cell ``utilisation`` (0-1] says it takes to keep the GPU busy, and
    at most ``MAX_CELLS_PER_GPU``; at least one.

    Raises:
        ValueError: sizes not positive, or ``utilisation`` outside (0, 1].
    """
    if cell_bytes <= 0 or device_bytes <= 0:
        raise ValueError(f"cell and device memory must be > 0, got {cell_bytes}, {device_bytes}")
    n = min(MAX_CELLS_PER_GPU, int(device_bytes * MEMORY_HEADROOM // cell_bytes))
    if utilisation is not None:
        if not 0.0 < utilisation <= 1.0:
            raise ValueError(f"GPU utilisation of one cell must be in (0, 1], got {utilisation}")
        n = min(n, math.ceil(1.0 / utilisation - 1e-9))
    return max(1, n)


def gpu_share(cells: int) -> float:
    """The fractional GPU request that lets ``cells`` run on one GPU: 1/cells, rounded down
    to Ray's precision (1e-4) so that ``cells`` shares sum to no more than 1."""
    return math.floor(10_000 / cells) / 10_000


__all__ = [
    "ATTACK_BUFFERS",
    "CUDA_CONTEXT_BYTES",
    "FLOAT_BYTES",
    "MAX_AUTO_BATCH",
    "MAX_CELLS_PER_GPU",
    "MEMORY_HEADROOM",
    "CellFootprint",
    "activation_bytes_per_image",
    "attack_bytes_per_image",
    "cell_memory",
    "cells_per_gpu",
    "choose_batch_size",
    "device_batch_size",
    "gpu_share",
]
