"""The report's "Training cost" table: per kind of model, training images/s per thread and
the FLOP/s that is, as a share of one thread's fp32 and bf16 matmul peak.

It reads what the grid records per model (``ModelResult.cost``: ``TrainCost`` plus
``skinadv.bench.flops.train_cost_fields``): seconds, gradient evaluations, forwards, images
trained on, torch threads, FLOPs per training pass and per attack step, precision, and the
peaks measured in the training process. A record from before those fields gets dashes
where they are needed (images fall back to gradient evaluations for models trained on
fixed data, threads to 1, the grid's Ray workers' count).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinadv.results import ModelResult

#: The table's columns, in order.
COLUMNS: tuple[str, ...] = (
    "cell",
    "models",
    "precision",
    "threads",
    "images_per_s_per_thread",
    "grad_evals_per_image",
    "gflops_per_thread",
    "share_fp32_peak",
    "share_bf16_peak",
)
STATIC = "static cells"


def _kind(r: ModelResult) -> str:
    """``vanilla``, ``static cells`` (every method and fraction together: the same training
    on more images) or the on-the-fly defence's cell name (``pgd-at@2_255``)."""
    if r.is_vanilla:
        return "vanilla"
    return STATIC if r.fraction is not None else r.cell


def _get(cost: dict[str, float], key: str) -> float:
    v = cost.get(key)
    return math.nan if v is None else float(v)


def _work(r: ModelResult) -> tuple[float, float, float, float]:
    """(images, thread-seconds, FLOPs, gradient evaluations) of one model; NaN where its
    record lacks the field. FLOPs: one training pass per image trained on, an attack step
    for every further gradient evaluation (PGD-AT's k steps, fast-at's guard; TRADES' second
    update pass counted as one too, a slight undercount), half an attack step per
    forward-only pass."""
    c = dict(r.cost)
    evals = _get(c, "grad_evals")
    images = _get(c, "images")
    if math.isnan(images) and (r.is_vanilla or r.fraction is not None):
        images = evals  # trained on fixed data: one gradient evaluation per image
    threads = _get(c, "threads")
    threads = 1.0 if math.isnan(threads) else threads
    train, attack = _get(c, "flops_per_image"), _get(c, "attack_flops_per_image")
    extra = evals + _get(c, "guard_evals") - images
    flops = images * train + extra * attack + _get(c, "forwards") * attack / 2
    if extra == 0 and c.get("forwards", 0) == 0:  # fixed data: no attack step to price
        flops = images * train
    return images, _get(c, "seconds") * threads, flops, evals


def _precision(rs: Sequence[ModelResult]) -> str:
    flags = {r.cost.get("bf16") for r in rs}
    if flags == {1.0}:
        return "bf16"
    if flags <= {0.0, None}:
        return "fp32"  # older records: fp32 was the only precision then
    return "mixed"


def _peaks(rs: Sequence[ModelResult]) -> dict[str, float]:
    """Per-thread peaks (FLOP/s), the median over the models that recorded them."""
    out = {}
    for p in ("fp32", "bf16"):
        v = [float(r.cost[f"peak_{p}_flops"]) for r in rs if f"peak_{p}_flops" in r.cost]
        out[p] = float(np.median(v)) if v else math.nan
    return out


def cost_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per kind of model: vanilla, the static cells together, each on-the-fly
    defence. Per thread: images trained on (every epoch counts) over training seconds x
    torch threads, gradient evaluations per image trained on, GFLOP/s (matmul and conv
    FLOPs, ``_work``), and that as a percentage of the fp32 and bf16 matmul peak measured
    in the training processes. Empty when no model recorded its training time.

    Args:
        results: the grid's models, any number of seeds.

    Returns:
        Columns ``COLUMNS``; shares in percent.
    """
    groups: dict[str, list[ModelResult]] = {}
    for r in results:
        if r.cost.get("seconds"):
            groups.setdefault(_kind(r), []).append(r)
    rows = []
    for kind, rs in groups.items():
        images, thread_s, flops, evals = (float(sum(v)) for v in zip(*map(_work, rs)))
        threads = {r.cost.get("threads", 1.0) for r in rs}
        peaks = _peaks(rs)
        gflops = flops / thread_s / 1e9
        rows.append(
            {
                "cell": kind,
                "models": len(rs),
                "precision": _precision(rs),
                "threads": threads.pop() if len(threads) == 1 else math.nan,
                "images_per_s_per_thread": images / thread_s,
                "grad_evals_per_image": evals / images,
                "gflops_per_thread": gflops,
                "share_fp32_peak": 100 * gflops * 1e9 / peaks["fp32"],
                "share_bf16_peak": 100 * gflops * 1e9 / peaks["bf16"],
            }
        )
    order = {"vanilla": 0, STATIC: 1}
    rows.sort(key=lambda row: (order.get(row["cell"], 2), row["cell"]))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def cost_note(results: Sequence[ModelResult]) -> str:
    """The line under the table: the peaks it is measured against, and how they were got."""
    peaks = _peaks([r for r in results if r.cost.get("seconds")])
    if any(math.isnan(v) for v in peaks.values()):
        return "Peaks not recorded by these runs (a grid from before the field): no shares"
    return (
        f"One thread's matmul peak, timed in the training processes (a 1024 x 1024 matmul, "
        f"best of 3, median over models): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 "
        f"{peaks['bf16'] / 1e9:.1f} GFLOP/s; BatchNorm, ReLU, pooling and Adam are not "
        f"counted as FLOPs, but take time"
    )


__all__ = ["COLUMNS", "cost_note", "cost_table"]
