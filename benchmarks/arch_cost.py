"""Training cost per epoch of the registry's architectures at their input sizes, side by
side: the paper CNN (width 16) at 28x28 and 64x64, and ResNet-18 (width 64, MedMNIST's
DermaMNIST baseline) at 28x28, each under ``skinadv.training.fit`` with the rigorous
preset's recipe (Adam, batch 256, one-cycle, flips, bf16 autocast) on random images.

    PYTHONPATH=. python benchmarks/arch_cost.py [--images 2048] [--rounds 3] [--threads 2]

The settings take turns, one epoch each, for ``--rounds`` rounds, and each keeps its best
epoch's images/s, so a change in the machine's load hits them alike; the ratio to the paper
CNN at 28 is the figure to trust on a shared machine. Seconds per epoch are for the
rigorous split's 33789 training images (10015 images, lesion-grouped, oversampled).
Prints a Markdown table with the matmul + convolution FLOPs of one training pass per image
and the load average before and after.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from skinadv.bench.flops import training_flops_per_image
from skinadv.config import TrainConfig
from skinadv.experiment import set_threads
from skinadv.models import create_model
from skinadv.training import fit

N_TRAIN = 33789  # the rigorous preset's training images after oversampling
SETTINGS = (  # (label, registry name, factory kwargs, image size)
    ("paper CNN (width 16) at 28", "paper_cnn", {"width": 16, "dropout": 0.3}, 28),
    ("paper CNN (width 16) at 64", "paper_cnn", {"width": 16, "dropout": 0.3}, 64),
    ("ResNet-18 (width 64) at 28", "resnet18", {"width": 64, "dropout": 0.0}, 28),
)


def epoch_images_per_s(name: str, kwargs: dict, x: np.ndarray, y: np.ndarray) -> float:
    cfg = TrainConfig(
        epochs=1, batch_size=256, lr=4e-3, schedule="onecycle", warmup=0.25, augment="flips",
        precision="bf16", seed=0,
    )  # fmt: skip
    res = fit(name, (x, y), cfg, model_kwargs=kwargs)
    return len(x) / res.history[0].seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    rng = np.random.default_rng(0)
    data = {}
    for _, _, _, size in SETTINGS:
        x = rng.uniform(size=(args.images, 3, size, size)).astype(np.float32)
        data[size] = (x, rng.integers(0, 7, args.images))
    best = {label: 0.0 for label, *_ in SETTINGS}
    for _ in range(args.rounds):
        for label, name, kwargs, size in SETTINGS:
            best[label] = max(best[label], epoch_images_per_s(name, kwargs, *data[size]))
    base = best[SETTINGS[0][0]]
    print(f"{args.threads} torch threads, {args.images} images per epoch, best of "
          f"{args.rounds}; load average before {load_before}, after "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")  # fmt: skip
    print("| model | GFLOPs per training image | images/s | s per epoch (33789 images) | "
          "cost vs paper CNN at 28 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for label, name, kwargs, size in SETTINGS:
        flops = training_flops_per_image(create_model(name, **kwargs), (3, size, size))
        print(f"| {label} | {flops / 1e9:.3f} | {best[label]:,.0f} | "
              f"{N_TRAIN / best[label]:,.0f} | {base / best[label]:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
