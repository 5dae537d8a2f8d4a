"""What a grid task asks Ray for, and what it does with what Ray gave it.

Each model task asks for 1 CPU and, on a cluster with GPUs, a fraction of one GPU: several
cells share a GPU. The share comes from the cell's GPU memory (``skinadv.training.
footprint``: estimated from the config, or measured) against the GPU's memory, and from a
lone cell's measured utilisation where known. Settings (environment of the driver):

    SKINADV_GPU_PER_CELL    a fixed share (e.g. 0.25), overriding everything below
    SKINADV_CELL_GPU_MB     a measured per-cell peak (MiB, context included), instead of
                            the estimate: each model run on a GPU logs ``gpu_peak_mib``
    SKINADV_CELL_GPU_UTIL   a lone cell's measured GPU utilisation (0-1]: no more cells than
                            it takes to keep the GPU busy
    SKINADV_GPU_MEMORY_GB   the workers' GPU memory (default: the driver's GPU 0 if it has
                            one, else 16 GiB, the smallest common data-centre GPU)

A task that Ray gave a GPU share on a node without real CUDA (a logical GPU, a broken
driver) trains on the CPU, with one warning line per worker process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from skinadv.config import ExperimentConfig
from skinadv.training import footprint

logger = logging.getLogger(__name__)

GPU_SHARE_ENV = "SKINADV_GPU_PER_CELL"
CELL_MEMORY_ENV = "SKINADV_CELL_GPU_MB"
CELL_UTIL_ENV = "SKINADV_CELL_GPU_UTIL"
GPU_MEMORY_ENV = "SKINADV_GPU_MEMORY_GB"
DEFAULT_GPU_MEMORY = 16 * 2**30


@dataclass(frozen=True)
class GpuPlan:
    """How the cells share a GPU, and from what."""

    share: float
    cells: int
    cell_bytes: int | None
    device_bytes: int | None
    source: str  # "fixed", "measured" or "estimated"

    def describe(self) -> str:
        if self.source == "fixed":
            return f"{self.share:g} GPU per cell ({GPU_SHARE_ENV})"
        assert self.cell_bytes is not None and self.device_bytes is not None
        return (
            f"{self.share:g} GPU per cell: {self.cells} cell(s) of {self.cell_bytes / 2**20:,.0f}"
            f" MiB ({self.source}) per {self.device_bytes / 2**30:.0f} GiB GPU"
        )


def _float_env(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is connected to (a CPU head with GPU workers
    counts), else the CUDA devices this process sees."""
    try:
        import ray

        if ray.is_initialized():
            gpus = float(ray.cluster_resources().get("GPU", 0.0))
            if gpus:
                return gpus
    except Exception:  # no Ray here: fall back to this process's view
        pass
    import torch

    return float(torch.cuda.device_count())


def device_memory() -> int:
    """The workers' GPU memory in bytes: ``SKINADV_GPU_MEMORY_GB``, else this process's GPU 0,
    else ``DEFAULT_GPU_MEMORY``."""
    gb = _float_env(GPU_MEMORY_ENV)
    if gb is not None:
        return int(gb * 2**30)
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return DEFAULT_GPU_MEMORY


def gpu_plan(cfg: ExperimentConfig, n_train: int) -> GpuPlan:
    """The GPU share per cell for ``cfg`` on ``n_train`` training images (see the module)."""
    fixed = _float_env(GPU_SHARE_ENV)
    if fixed is not None:
        if not 0.0 < fixed <= 1.0:
            raise ValueError(f"{GPU_SHARE_ENV}={fixed:g}: a GPU share is in (0, 1]")
        return GpuPlan(fixed, int(1 / fixed), None, None, "fixed")
    measured = _float_env(CELL_MEMORY_ENV)
    if measured is not None:
        cell, source = int(measured * 2**20), "measured"
    else:
        largest = round(n_train * (1 + max(cfg.fractions, default=0.0)))
        cell, source = footprint.cell_memory(cfg, largest).total, "estimated"
    device = device_memory()
    cells = footprint.cells_per_gpu(cell, device, utilisation=_float_env(CELL_UTIL_ENV))
    return GpuPlan(footprint.gpu_share(cells), cells, cell, device, source)


def cell_resources(cfg: ExperimentConfig, n_train: Callable[[], int]) -> dict[str, float]:
    """Ray resources of one model task: 1 CPU (torch threads match), plus its GPU share
    (``gpu_plan``) when the cluster has GPUs; ``n_train`` (the training set's size, which
    may mean waiting for the data) is called only then."""
    if not cluster_gpus():
        return {"num_cpus": 1}
    plan = gpu_plan(cfg, n_train())
    logger.info("GPU packing: %s", plan.describe())
    return {"num_cpus": 1, "num_gpus": plan.share}


def assigned() -> dict[str, float]:
    """The resources Ray assigned the current task ({} outside a Ray worker)."""
    try:
        import ray

        if ray.is_initialized():
            return dict(ray.get_runtime_context().get_assigned_resources())
    except Exception:  # not inside a Ray worker
        pass
    return {}


def reset_gpu_peak() -> None:
    """Start measuring this task's GPU memory peak (``gpu_peak``); nothing without CUDA."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak() -> dict[str, float]:
    """``{"gpu_peak_mib": ...}``: the memory this process's allocator held at most since
    ``reset_gpu_peak``, plus the CUDA context estimate: the measured figure
    ``SKINADV_CELL_GPU_MB`` wants. Empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {}
    held = torch.cuda.max_memory_reserved() + footprint.CUDA_CONTEXT_BYTES
    return {"gpu_peak_mib": held / 2**20}


_warned_no_cuda = False


def use_assigned_gpu(resources: dict[str, float]) -> str | None:
    """With a GPU share from Ray (``resources``): ``cuda`` when CUDA works here, else
    ``cpu``, which ``train.device=auto`` picks then, with one warning line per process.
    None without a share (Ray hides the GPUs from the task then)."""
    global _warned_no_cuda
    share = resources.get("GPU", 0.0)
    if not share:
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if not _warned_no_cuda:
        _warned_no_cuda = True
        logger.warning(
            "Ray assigned %g GPU (CUDA_VISIBLE_DEVICES=%s) but CUDA is not available on this "
            "node: training on the CPU",
            share,
            os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
    return "cpu"
