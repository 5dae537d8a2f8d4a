"""Training throughput of the paper CNN in the default layout against channels-last (what
``skinadv.training.fit`` uses), on one CPU thread, same process, same random images.

    PYTHONPATH=. python benchmarks/train_layout.py [--threads 1] [--width 16] [--images 11249]

Prints seconds per epoch for each layout (3 epochs each) and the ratio of the best epochs.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from skinadv.models import paper_cnn


def epoch_seconds(x, y, *, width: int, batch: int, channels_last: bool, epochs: int) -> list:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = paper_cnn(width=width).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        t0 = time.perf_counter()
        for start in range(0, len(x), batch):
            idx = perm[start : start + batch]
            xb = x[idx].contiguous(memory_format=fmt)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--images", type=int, default=11249)  # the quick preset's training side
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(args.images, 3, 28, 28)
    y = torch.randint(0, 7, (args.images,))
    best = {}
    for channels_last in (False, True):
        name = "channels-last" if channels_last else "default"
        secs = epoch_seconds(
            x,
            y,
            width=args.width,
            batch=args.batch,
            channels_last=channels_last,
            epochs=args.epochs,
        )
        best[name] = min(secs)
        rate = args.images / best[name]
        print(f"{name:14s} epochs {[round(s, 2) for s in secs]} s, {rate:.0f} img/s")
    print(f"channels-last / default: {best['default'] / best['channels-last']:.2f}x")


if __name__ == "__main__":
    main()
