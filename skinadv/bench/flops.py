"""What training costs in FLOPs, against what one core of this machine can do.

``training_flops_per_image`` counts a model's matmul and convolution FLOPs of one training
pass (forward + backward) with ``torch.utils.flop_counter``; ``measured_peak`` times a large
square matmul to get the attainable FLOP/s of one thread, fp32 and bf16; ``nominal_peaks``
derives the datasheet figure from the CPU's flags and clock; ``training_cost`` puts a
measured images/s beside both. ``train_cost_fields`` is what the grid records per model so
the report's "Training cost" table can do the same arithmetic later.

Only matmuls and convolutions are counted (what a peak is quoted for): BatchNorm, ReLU,
pooling, the loss and Adam's update run on vector units at memory speed and are left out,
so a small model's share of peak is low partly because its time goes there.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from skinadv.attacks.craft import bf16_supported

if TYPE_CHECKING:
    from skinadv.config import ExperimentConfig
    from skinadv.training import TrainResult

#: ``precision`` names (``TrainConfig.precision``) and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

_PEAKS: dict[tuple[torch.dtype, int, int], float] = {}


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown precision {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class _MatmulFlops(TorchDispatchMode):
    """Counts matmul and convolution FLOPs with torch's own formulas (``flop_registry``).

    Not ``FlopCounterMode``: that one enters a ``ModuleTracker``, whose module hooks are
    global, so counting in one thread broke models running in another (the grid's thread
    runner trains cells side by side). A dispatch mode is thread-local.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def training_flops_per_image(
    model: nn.Module,
    input_shape: tuple[int, ...] = (3, 28, 28),
    *,
    batch: int = 4,
    input_grad: bool = False,
) -> float:
    """Matmul and convolution FLOPs of one forward + backward training pass, per image.

    Counted on a copy of ``model`` in train mode (its weights, BatchNorm statistics and
    gradients are untouched) over a random batch, then divided by the batch.

    Args:
        model: any module taking (N, *input_shape) float input.
        input_shape: one image's shape, e.g. (3, 28, 28).
        batch: images in the counted batch (counts scale linearly; >= 2 for BatchNorm).
        input_grad: also count the gradient with respect to the input, as an attack step
            needs; training does not (the first layer's input gradient is skipped), so a
            single Linear layer counts 2x its forward FLOPs without it and 3x with it.

    Returns:
        FLOPs per image (a multiply-add is 2 FLOPs).
    """
    m = copy.deepcopy(model).train()
    p = next(m.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.rand(batch, *input_shape, device=device, requires_grad=input_grad)
    with _MatmulFlops() as counter:
        out = m(x)
        # the loss's own FLOPs are not matmuls: sum() stands in for cross-entropy
        out.float().sum().backward()
    return counter.total / batch


def attack_flops_per_image(model: nn.Module, input_shape: tuple[int, ...] = (3, 28, 28)) -> float:
    """Matmul and convolution FLOPs of one attack step per image: a forward pass and the
    gradient with respect to the input only (no weight gradients), as PGD takes it with
    ``torch.autograd.grad``. About two thirds of a training pass.

    Args:
        model: any module taking (N, *input_shape) float input.
        input_shape: one image's shape.

    Returns:
        FLOPs per image.
    """
    m = copy.deepcopy(model).eval().requires_grad_(False)
    p = next(m.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    batch = 4
    x = torch.rand(batch, *input_shape, device=device, requires_grad=True)
    with _MatmulFlops() as counter:
        # backward() on frozen weights computes what autograd.grad(loss, x) does
        m(x).float().sum().backward()
    return counter.total / batch


def measured_peak(
    dtype: torch.dtype | str = "fp32",
    threads: int = 1,
    *,
    size: int = 2048,
    repeats: int = 3,
    cached: bool = True,
) -> float:
    """This machine's attainable matmul FLOP/s per thread: the best of ``repeats`` timed
    ``size`` x ``size`` matmuls on ``threads`` torch threads (restored afterwards). Cached
    per process (dtype, threads, size) unless ``cached`` is False. On a busy machine this is what a core gave then,
    which is the fair yardstick for a training run timed under the same load.

    Args:
        dtype: ``torch.float32`` / ``"fp32"`` or ``torch.bfloat16`` / ``"bf16"`` (oneDNN:
            AMX where the CPU has it, else AVX512-BF16 dot products, else emulated in fp32;
            ``bf16_kind`` says which).
        threads: torch threads to time on; the result is divided by them.
        size: the square matrices' side (2048: about 17 GFLOP a product, compute bound).
        repeats: timed products after one untimed warm-up.
        cached: False times it again (e.g. before and after a benchmark on a busy machine)
            and caches the new figure.

    Returns:
        FLOP/s per thread (2 * size**3 per product).
    """
    dt = _dtype(dtype)
    key = (dt, int(threads), int(size))
    if cached and key in _PEAKS:
        return _PEAKS[key]
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.rand(size, size, generator=gen).to(dt)
        b = torch.rand(size, size, generator=gen).to(dt)
        torch.mm(a, b)  # warm-up: oneDNN picks and builds its kernel on first use
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    _PEAKS[key] = 2.0 * size**3 / best / max(1, int(threads))
    return _PEAKS[key]


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The first CPU's vendor, family, model name, clock (GHz, as the OS reports it: in a VM
    often the base clock, not the boost) and flags, from ``/proc/cpuinfo``; empty values
    where the file is missing (not Linux).

    Returns:
        ``{"vendor", "family", "model_name", "ghz", "flags"}`` (flags: a set of str).
    """
    info: dict[str, Any] = {"vendor": "", "family": 0, "model_name": "", "ghz": math.nan}
    flags: set[str] = set()
    try:
        text = Path(path).read_text()
    except OSError:
        return {**info, "flags": flags}
    for line in text.split("\n\n")[0].splitlines():
        k, _, v = (s.strip() for s in line.partition(":"))
        if k == "vendor_id":
            info["vendor"] = v
        elif k == "cpu family":
            info["family"] = int(v)
        elif k == "model name":
            info["model_name"] = v
        elif k == "cpu MHz":
            info["ghz"] = float(v) / 1000
        elif k == "flags":
            flags = set(v.split())
    return {**info, "flags": flags}


def bf16_kind(flags: set[str]) -> str:
    """How this CPU does bf16 matmuls: ``"AMX"`` (tile units, Sapphire Rapids and later),
    ``"AVX512-BF16"`` (VDPBF16PS dot products: Cooper Lake, AMD Zen 4) or ``"emulated"``
    (converted to fp32: no faster than fp32)."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "emulated"


def nominal_peaks(info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Datasheet FLOP/s of one core at the reported clock, fp32 and bf16.

    fp32: FMA units x fp32 lanes x 2 FLOP per cycle. Intel with AVX-512: 2 x 16 x 2 = 64;
    AMD Zen 4 (family 25) runs AVX-512 on 256-bit halves: 2 x 8 x 2 = 32; Zen 5 (26+): 64;
    AVX2 + FMA: 32. bf16: AMX 1024 FMA per cycle x 2 = 2048; AVX512-BF16 (VDPBF16PS: two
    products per fp32 lane, at the FMA rate) twice fp32; emulated: None.

    Args:
        info: ``cpu_info()`` (read when None).

    Returns:
        ``{"ghz", "fp32_per_cycle", "bf16_per_cycle", "fp32", "bf16", "bf16_kind",
        "model_name"}``; FLOP/s are NaN / None where the clock or the unit is unknown.
    """
    info = cpu_info() if info is None else info
    flags, vendor = info.get("flags", set()), info.get("vendor", "")
    if "avx512f" in flags:
        half = vendor == "AuthenticAMD" and info.get("family", 0) < 26
        fp32 = 32 if half else 64
    elif "fma" in flags:
        fp32 = 32
    else:
        fp32 = 8  # SSE: 4 lanes, a multiply and an add
    kind = bf16_kind(flags)
    bf16 = {"AMX": 2048, "AVX512-BF16": 2 * fp32}.get(kind)
    hz = float(info.get("ghz", math.nan)) * 1e9
    return {
        "model_name": info.get("model_name", ""),
        "ghz": hz / 1e9,
        "fp32_per_cycle": fp32,
        "bf16_per_cycle": bf16,
        "fp32": fp32 * hz,
        "bf16": None if bf16 is None else bf16 * hz,
        "bf16_kind": kind,
    }


def training_cost(
    images_per_s_per_thread: float,
    flops_per_image: float,
    precision: str,
    *,
    peaks: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A training throughput as FLOP/s and as a share of one thread's fp32 and bf16 peaks.

    Args:
        images_per_s_per_thread: training images/s divided by the torch threads used.
        flops_per_image: ``training_flops_per_image`` (for a defence that attacks every
            batch, multiply by its gradient evaluations per image first).
        precision: ``"fp32"`` or ``"bf16"`` (what the run used; ``share_of_own_peak`` is
            against that precision's peak).
        peaks: ``{"fp32": FLOP/s, "bf16": FLOP/s}`` per thread; None measures them
            (``measured_peak``, 1 thread).

    Returns:
        ``{"images_per_s_per_thread", "flops_per_image", "gflops_per_thread", "precision",
        "peak_fp32_gflops", "peak_bf16_gflops", "share_fp32_peak", "share_bf16_peak",
        "share_of_own_peak"}``; shares are fractions in [0, 1] (above 1 if the peak was
        measured under more load than the run).
    """
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(DTYPES)}")
    if peaks is None:
        peaks = {p: measured_peak(p) for p in DTYPES}
    flops = float(images_per_s_per_thread) * float(flops_per_image)
    share = {p: flops / peaks[p] if peaks.get(p) else math.nan for p in DTYPES}
    return {
        "images_per_s_per_thread": float(images_per_s_per_thread),
        "flops_per_image": float(flops_per_image),
        "gflops_per_thread": flops / 1e9,
        "precision": precision,
        "peak_fp32_gflops": peaks["fp32"] / 1e9,
        "peak_bf16_gflops": peaks["bf16"] / 1e9,
        "share_fp32_peak": share["fp32"],
        "share_bf16_peak": share["bf16"],
        "share_of_own_peak": share[precision],
    }


def train_cost_fields(trained: TrainResult, cfg: ExperimentConfig) -> dict[str, float]:
    """What a model's record needs beside ``TrainCost`` for the report's "Training cost"
    table: images trained on, torch threads, FLOPs per image of a training pass and of an
    attack step (on-the-fly defences' extra gradient evaluations), precision, and this
    process's per-thread peaks (1024 x 1024 matmuls: a fraction of a second, once per
    process).

    Args:
        trained: ``fit``'s result (its model, training-set size and epochs run).
        cfg: the experiment's settings (``train.precision``, ``data.size``).

    Returns:
        ``{"images", "threads", "flops_per_image", "attack_flops_per_image", "bf16",
        "peak_fp32_flops", "peak_bf16_flops"}`` (the peaks for a CPU run only), all float
        (flat as ``train_images``, ... in the record); ``bf16`` is 1.0 where training ran
        under bf16 autocast, else 0.0.
    """
    shape = (3, cfg.data.size, cfg.data.size)
    out = {
        # epochs run, not asked for: fast-at's guard may stop early
        "images": float(trained.n_train * len(trained.history)),
        "threads": float(torch.get_num_threads()),
        "flops_per_image": training_flops_per_image(trained.model, shape),
        "attack_flops_per_image": attack_flops_per_image(trained.model, shape),
        # what ran: fit falls back to fp32 where bf16 would only be emulated
        "bf16": float(cfg.train.precision == "bf16" and bf16_supported(trained.device)),
    }
    if torch.device(trained.device).type == "cpu":  # a CPU peak says nothing about a GPU run
        out["peak_fp32_flops"] = measured_peak("fp32", size=1024)
        out["peak_bf16_flops"] = measured_peak("bf16", size=1024)
    return out


__all__ = [
    "DTYPES",
    "attack_flops_per_image",
    "bf16_kind",
    "cpu_info",
    "measured_peak",
    "nominal_peaks",
    "train_cost_fields",
    "training_cost",
    "training_flops_per_image",
]
