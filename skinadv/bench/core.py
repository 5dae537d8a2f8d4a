"""``run_bench``: the whole benchmark as one JSON-ready dict (attacks, training, grid cost)."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from skinadv import __version__
from skinadv.attacks.craft import bf16_supported
from skinadv.bench.attacks import LIBRARIES, attack_specs, attack_throughput
from skinadv.bench.grid_cost import grid_cost
from skinadv.bench.training import training_throughput
from skinadv.config import TrainConfig, load_preset
from skinadv.data import load_dataset, split, stratified_subset
from skinadv.memory import keep_freed_memory
from skinadv.training import fit, prepare_data, select_device

log = logging.getLogger(__name__)

#: what the JSON holds for Ray scaling and orchestration unless ``skinadv bench --ray`` (an
#: adapter: this package imports no Ray) fills them in
NOT_RUN = {"status": "not run (pass --ray)"}


@dataclass(frozen=True)
class BenchSettings:
    """What ``run_bench`` measures, and on how much.

    Attributes:
        data: a data spec (the canonical 28x28 npz of HAM10000).
        n_images: real test images attacked.
        train_images: real images the attacked model is trained on (clean, 3 ... epochs).
        width: the paper CNN's width (quick preset 16, paper 32).
        train_epochs: epochs of the attacked model.
        eps: L-inf budget of every attack (pixel units).
        pgd_steps: PGD step counts benchmarked; apgd_steps: APGD-CE's (0: none).
        batch_sizes: candidates; each library runs at its fastest.
        repeats: timed runs per attack and library (median); budget_s: a library stops
            repeating an attack once its runs of it took this long (None: never).
        libraries: which columns.
        fit_images, fit_epochs, pool_steps, pgd_at_steps: the training benchmark.
        grid_preset: the preset whose grid is costed.
        device: ``cpu`` or ``cuda[:N]``.
        bf16: add the ``skinadv-bf16`` column (``craft(precision="bf16")``); None: where the
            device runs bfloat16 natively (``bf16_supported``: a CUDA GPU that says so, a
            CPU with AVX512-BF16 / AMX).
        seed: data subset, training and random starts.
    """

    data: str
    n_images: int = 500
    train_images: int = 2400
    width: int = 16
    train_epochs: int = 2
    eps: float = 8 / 255  # 2/255 barely moves the quick model (it says nv for 86 %)
    pgd_steps: tuple[int, ...] = (10, 50)
    apgd_steps: int = 50
    batch_sizes: tuple[int, ...] = (250, 500)
    repeats: int = 3
    budget_s: float | None = 20.0
    libraries: tuple[str, ...] = LIBRARIES
    fit_images: int = 2000
    fit_epochs: int = 1
    pool_steps: int = 10
    pgd_at_steps: int = 5
    grid_preset: str = "quick"
    device: str = "cpu"
    bf16: bool | None = None
    seed: int = 0


def quick(data: str, device: str = "cpu") -> BenchSettings:
    """``--quick``: the quick preset's CNN, 500 real images, APGD-CE-20, at most 15 s of runs
    per attack and library after the first (ART's PGD-50 takes over a minute on 2 cores)."""
    return BenchSettings(data=data, device=device, apgd_steps=20, budget_s=15.0, fit_images=1000)


def full(data: str, device: str = "cpu") -> BenchSettings:
    """The default: the paper's CNN (width 32), 2000 images, larger batches (GPU-sized)."""
    on_gpu = device.startswith("cuda")
    return BenchSettings(
        data=data,
        n_images=2000,
        train_images=6000,
        width=32,
        train_epochs=3,
        batch_sizes=(512, 1024, 2048, 4096) if on_gpu else (250, 500, 1000),
        repeats=5,
        budget_s=None,
        fit_images=6000,
        pool_steps=50,
        grid_preset="paper",
        device=device,
    )


def run_bench(settings: BenchSettings, report: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready dict (see ``skinadv.bench.markdown``).

    ``report`` gets a line of progress after each step. Raises ValueError for a bad device
    or data spec (before any work).
    """
    device = select_device(settings.device)
    kept = keep_freed_memory()  # before any work: every library runs under one policy
    t_start = time.perf_counter()
    ds = load_dataset(settings.data)
    total = settings.train_images + settings.n_images
    train, test = split(
        stratified_subset(ds, total, seed=settings.seed),
        test_size=settings.n_images / total,
        seed=settings.seed,
    )
    cfg = TrainConfig(
        epochs=settings.train_epochs,
        batch_size=128,
        lr=2e-3,
        seed=settings.seed,
        device=str(device),
    )
    model = fit("paper_cnn", train, cfg, model_kwargs={"width": settings.width}).model
    model.to(device).eval()
    report(f"model trained ({time.perf_counter() - t_start:.0f} s)")
    x, y = (torch.from_numpy(a).to(device) for a in test.to_float())
    specs = attack_specs(settings.eps, settings.pgd_steps, settings.apgd_steps)
    attacks = attack_throughput(
        model,
        x,
        y,
        specs,
        libraries=settings.libraries,
        batch_sizes=settings.batch_sizes,
        repeats=settings.repeats,
        budget_s=settings.budget_s,
        seed=settings.seed,
        bf16=bf16_supported(device) if settings.bf16 is None else settings.bf16,
        report=report,
    )
    fx, fy = train.to_float()
    n_fit = min(settings.fit_images, len(fy))
    training = training_throughput(
        fx[:n_fit],
        fy[:n_fit],
        model,
        width=settings.width,
        epochs=settings.fit_epochs,
        eps=settings.eps,
        pool_steps=settings.pool_steps,
        pgd_at_steps=settings.pgd_at_steps,
        device=str(device),
        seed=settings.seed,
    )
    report("training throughput measured")
    grid = preset_grid_cost(settings.grid_preset, settings.data)
    return {
        "skinadv_version": __version__,
        "settings": {**asdict(settings), "device": str(device)},
        "machine": machine(device, freed_memory_kept=kept),
        "attacks": attacks,
        "training": training,
        "grid_cost": grid,
        "ray_scaling": dict(NOT_RUN),
        "orchestration": dict(NOT_RUN),
        "seconds": time.perf_counter() - t_start,
    }


def preset_grid_cost(preset: str, data: str) -> dict[str, Any]:
    """``grid_cost`` of a preset's grid on ``data`` (its training set after oversampling)."""
    cfg = load_preset(preset, {"data.spec": data})
    n_train = len(prepare_data(cfg.data).train)
    out = grid_cost(
        cfg.methods,
        cfg.fractions,
        n_train=n_train,
        pgd_steps=cfg.attack.pgd.steps,
        seeds=len(cfg.seeds),
    )
    return {"preset": preset, **out}


def machine(device: torch.device, *, freed_memory_kept: bool) -> dict[str, Any]:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        # every library in the process shares the allocator policy (skinadv.memory)
        "keep_freed_memory": freed_memory_kept,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def tiny(data: str, **overrides: Any) -> BenchSettings:
    """A few seconds' worth (tests): dozens of images, a width-4 CNN, a few steps."""
    base = BenchSettings(
        data=data,
        n_images=48,
        train_images=300,
        width=4,
        train_epochs=1,
        pgd_steps=(5,),
        apgd_steps=5,
        batch_sizes=(24, 48),
        repeats=1,
        fit_images=128,
        pool_steps=2,
        pgd_at_steps=2,
        bf16=False,  # its own test: the tests run where bf16 may be emulated (slow)
    )
    return replace(base, **overrides)
