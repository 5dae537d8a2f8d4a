"""Training cost of the paper CNN on one CPU thread: images/s, FLOPs per image, GFLOP/s and
its share of this core's measured fp32 and bf16 matmul peaks, fp32 beside bf16 autocast.

    PYTHONPATH=. python benchmarks/train_cost.py [--widths 8 16] [--batches 128 256 512]
        [--images 8192] [--epochs 2] [--threads 1]

Each setting is ``skinadv.training.fit`` (channels-last, Adam, the grid's loop) on random
28x28 images, fresh model, ``--epochs`` epochs; images/s is the best epoch's. fp32 and bf16
run back to back per setting so a change in the machine's load hits both alike. FLOPs are
matmul and convolution FLOPs of one training pass (``training_flops_per_image``); peaks are
the best of 3 timed 2048 x 2048 matmuls on the same thread count (``measured_peak``), timed
before and after the training runs, the better kept (what the core gave when least
contended: a busy machine otherwise flatters the shares), beside
the nominal figure from the CPU's flags and reported clock (``nominal_peaks``). Prints a
Markdown table for docs/benchmarks.md, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from skinadv.bench.flops import measured_peak, nominal_peaks, training_flops_per_image
from skinadv.config import TrainConfig
from skinadv.experiment import set_threads
from skinadv.models import paper_cnn
from skinadv.training import fit

PRECISIONS = ("fp32", "bf16")


def images_per_s(x, y, *, width: int, batch: int, precision: str, epochs: int) -> float:
    """The best epoch's training images/s of a fresh paper CNN under ``fit``."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=2e-3, precision=precision, seed=0)
    res = fit("paper_cnn", (x, y), cfg, model_kwargs={"width": width})
    return len(x) / min(s.seconds for s in res.history)


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    load_before, t0 = _load(), time.time()
    peaks = {p: measured_peak(p, args.threads) for p in PRECISIONS}
    nominal = nominal_peaks()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.images, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 7, args.images)
    rows: list[tuple[int, int, float, dict[str, float]]] = []
    for width in args.widths:
        flops = training_flops_per_image(paper_cnn(width=width))
        for batch in args.batches:
            ips = {
                p: images_per_s(x, y, width=width, batch=batch, precision=p, epochs=args.epochs)
                for p in PRECISIONS
            }
            rows.append((width, batch, flops, ips))
    after = {p: measured_peak(p, args.threads, cached=False) for p in PRECISIONS}
    peaks_seen = {p: f"{peaks[p] / 1e9:.1f} / {after[p] / 1e9:.1f}" for p in PRECISIONS}
    peaks = {p: max(peaks[p], after[p]) for p in PRECISIONS}
    lines = []
    for width, batch, flops, ips in rows:
        for p in PRECISIONS:
            gflops = ips[p] * flops / 1e9
            lines.append(
                f"| {width} | {batch} | {p} | {ips[p]:,.0f} | {flops / 1e6:.2f} | "
                f"{gflops:.1f} | {100 * gflops * 1e9 / peaks['fp32']:.1f} | "
                f"{100 * gflops * 1e9 / peaks['bf16']:.1f} | "
                + (f"{ips['bf16'] / ips['fp32']:.2f}x |" if p == "bf16" else "|")
            )
    nom = {p: nominal[p] / 1e9 if nominal[p] else float("nan") for p in PRECISIONS}
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, {time.time() - t0:.0f} s; "
        f"{nominal['model_name']} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"{nominal['ghz']:.2f} GHz reported), torch {torch.__version__}, "
        f"{args.threads} thread(s); load average (1, 5, 15 min) before: {load_before}, "
        f"after: {_load()}."
    )
    print(
        f"\nPeak per thread, measured (2048 x 2048 matmul, best of 3, the better of before "
        f"and after): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} "
        f"GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x); before / after: fp32 "
        f"{peaks_seen['fp32']}, bf16 {peaks_seen['bf16']}. Nominal per core at the reported clock: fp32 "
        f"{nom['fp32']:.0f} GFLOP/s ({nominal['fp32_per_cycle']} FLOP/cycle), bf16 "
        f"{nom['bf16']:.0f} GFLOP/s ({nominal['bf16_per_cycle']} FLOP/cycle, "
        f"{nominal['bf16_kind']}). Training: {args.images} random 28x28 images, best of "
        f"{args.epochs} epochs, `fit` (channels-last, Adam).\n"
    )
    print(
        "| width | batch | precision | images/s | MFLOP/image (train) | GFLOP/s | "
        "% of fp32 peak | % of bf16 peak | bf16 / fp32 |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
