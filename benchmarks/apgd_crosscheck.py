"""APGD-CE / APGD-DLR against torchattacks' independent APGD and our PGD, over seeds.

For each training seed: paper_cnn width 8, 8 epochs on 3000 real HAM10000 images (the
setting of tests/core/test_apgd.py), then robust accuracy on the same 500 real test images
at eps 2/255 and 8/255 with 100-step APGD (ours and torchattacks') and 20-step PGD.
Prints each figure as mean ± the half-width of the 95 % t-interval over the seeds, and the
time of our APGD divided by torchattacks' on the same images in the same run.

    python benchmarks/apgd_crosscheck.py \
        ../shared/data/ham10000/ham10000_28x28_rgb.npz --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import torch

from skinadv.attacks import craft
from skinadv.config import TrainConfig
from skinadv.data import load_dataset, split, stratified_subset
from skinadv.evaluation import score
from skinadv.stats import t_interval
from skinadv.training import fit

EPS = {"2/255": 2 / 255, "8/255": 8 / 255}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", help="the canonical 28x28 HAM10000 npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    import torchattacks

    torch.set_num_threads(1)
    train, test = split(
        stratified_subset(load_dataset(args.npz), 3500, seed=1), test_size=1 / 7, seed=1
    )
    x, y = (torch.from_numpy(a) for a in test.to_float())
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-3, seed=seed, device="cpu")
        model = fit("paper_cnn", train, cfg, model_kwargs={"width": 8}).model
        rows.setdefault("clean", []).append(100 * score(model, x, y)["accuracy"])
        for label, eps in EPS.items():
            for loss in ("ce", "dlr"):
                t0 = time.perf_counter()
                ours = craft(
                    model,
                    x,
                    y,
                    f"apgd_{loss}",
                    eps=eps,
                    steps=100,
                    restarts=1,
                    seed=0,
                    batch_size=len(x),
                )
                t_ours = time.perf_counter() - t0
                atk = torchattacks.APGD(
                    model, norm="Linf", eps=eps, steps=100, n_restarts=1, seed=0, loss=loss
                )
                t0 = time.perf_counter()
                with torch.random.fork_rng(devices=[]):
                    theirs = atk(x, y)
                t_theirs = time.perf_counter() - t0
                a_ours = 100 * score(model, ours, y)["accuracy"]
                a_theirs = 100 * score(model, theirs, y)["accuracy"]
                rows.setdefault(f"APGD-{loss.upper()} ours {label}", []).append(a_ours)
                rows.setdefault(f"APGD-{loss.upper()} torchattacks {label}", []).append(a_theirs)
                # the seeds move robust accuracy a lot: the per-seed gap is the cross-check
                gap = f"APGD-{loss.upper()} ours - torchattacks {label}"
                rows.setdefault(gap, []).append(a_ours - a_theirs)
                rows.setdefault(f"time ours / torchattacks APGD-{loss.upper()} {label}", []).append(
                    t_ours / t_theirs
                )
            pgd = craft(
                model,
                x,
                y,
                "pgd",
                eps=eps,
                alpha=2.5 * eps / 20,
                steps=20,
                random_start=True,
                seed=0,
                batch_size=len(x),
            )
            rows.setdefault(f"PGD-20 {label}", []).append(100 * score(model, pgd, y)["accuracy"])
        print(f"seed {seed} done", flush=True)
    n = len(args.seeds)
    print(f"\n{'figure':48} mean ± 95 % half-width (n = {n} seeds)")
    for name, values in rows.items():
        iv = t_interval(values)
        unit = "x" if name.startswith("time") else " %"
        print(f"{name:48} {iv.mean:6.2f}{unit} ± {iv.half_width:.2f}")


if __name__ == "__main__":
    main()
