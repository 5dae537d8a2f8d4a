"""What ``skinadv.memory.keep_freed_memory`` buys: PGD and training throughput in fresh
processes with the allocator policy on and off, alternated round by round (side by side).

    PYTHONPATH=. python benchmarks/malloc_reuse.py [--rounds 3] [--threads 2] [--width 16]

Each round starts one child process per setting (``SKINADV_KEEP_FREED_MEMORY=1`` / ``0``);
a child times ``craft`` (PGD-50, eps 8/255, 250 images, batch 250) and ``fit`` (2 epochs of
4000 images, batch 128) on random images after a warm-up, and counts its minor page
faults. Prints the medians over rounds and the ratios kept / default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, time, torch
from skinadv.attacks import craft
from skinadv.config import TrainConfig
from skinadv.experiment import set_threads
from skinadv.memory import keep_freed_memory
from skinadv.models import create_model
from skinadv.training import fit
threads, width = int(sys.argv[1]), int(sys.argv[2])
set_threads(threads)
torch.manual_seed(0)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
model = create_model("paper_cnn", width=width).eval()
x, y = torch.rand(250, 3, 28, 28), torch.randint(0, 7, (250,))
pgd = dict(eps=8 / 255, alpha=2 / 255, steps=50)
craft(model, x, y, "pgd", batch_size=250, seed=0, progress=False, **{**pgd, "steps": 5})
f0, t0 = faults(), time.perf_counter()
craft(model, x, y, "pgd", batch_size=250, seed=0, progress=False, **pgd)
attack = (250 / (time.perf_counter() - t0), faults() - f0)
xt, yt = torch.rand(4000, 3, 28, 28), torch.randint(0, 7, (4000,))
cfg = TrainConfig(epochs=2, batch_size=128, lr=2e-3, seed=0, device="cpu")
fit("paper_cnn", (xt[:500], yt[:500]), cfg, model_kwargs={"width": width})  # warm-up
f0, t0 = faults(), time.perf_counter()
fit("paper_cnn", (xt, yt), cfg, model_kwargs={"width": width})
train = (2 * 4000 / (time.perf_counter() - t0), faults() - f0)
print(json.dumps({"kept": keep_freed_memory(), "pgd50_img_s": attack[0],
                  "pgd50_faults": attack[1], "train_img_s": train[0], "train_faults": train[1]}))
"""


def child(keep: bool, threads: int, width: int) -> dict:
    env = {**os.environ, "SKINADV_KEEP_FREED_MEMORY": "1" if keep else "0"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(width)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.rounds):
        for keep in (False, True):
            runs[keep].append(child(keep, args.threads, args.width))
            m = runs[keep][-1]
            print(
                f"round {r + 1} {'kept   ' if keep else 'default'}: PGD-50 "
                f"{m['pgd50_img_s']:.0f} img/s ({m['pgd50_faults']} faults), training "
                f"{m['train_img_s']:.0f} img/s ({m['train_faults']} faults)",
                flush=True,
            )
    assert all(m["kept"] for m in runs[True]), "keep_freed_memory did not apply (not glibc?)"
    med = {
        k: {f: statistics.median(m[f] for m in v) for f in v[0] if f != "kept"}
        for k, v in runs.items()
    }
    for f in ("pgd50_img_s", "train_img_s"):
        print(
            f"{f}: default {med[False][f]:.0f}, kept {med[True][f]:.0f}, "
            f"kept / default {med[True][f] / med[False][f]:.2f}x"
        )


if __name__ == "__main__":
    main()
