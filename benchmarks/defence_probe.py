"""PGD-AT against the vanilla model on a small real set, over seeds (the setting of
tests/core/test_defences.py::test_pgd_at_beats_vanilla_under_whitebox_pgd).

700 real training images (100 per class, drawn from a 2000-image stratified real subset),
paper_cnn width 8, 5 epochs; 500 held-out real test images; white-box PGD-10 at eps 2/255.
Prints mean ± the half-width of the 95 % t-interval over the seeds.

    python benchmarks/defence_probe.py ../shared/data/ham10000/ham10000_28x28_rgb.npz \\
        --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from skinadv.config import DefenceConfig, ModelConfig, TrainConfig
from skinadv.data import load_dataset, split, stratified_subset
from skinadv.evaluation import evaluate
from skinadv.stats import t_interval
from skinadv.training import fit

EPS = 2 / 255
WHITEBOX = {"pgd": {"attack": "pgd", "eps": EPS, "alpha": EPS / 4, "steps": 10}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", help="the canonical 28x28 HAM10000 npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test = split(
        stratified_subset(load_dataset(args.npz), 2500, seed=0), test_size=0.2, seed=0
    )
    rng = np.random.default_rng(0)
    idx = np.concatenate(
        [
            rng.choice(rows, 100, replace=rows.size < 100)
            for rows in (np.flatnonzero(train.labels == c) for c in range(7))
        ]
    )
    xy = train.subset(rng.permutation(idx)).to_float()
    x_test, y_test = test.to_float()
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        cfg = TrainConfig(epochs=5, batch_size=32, lr=2e-3, device="cpu", seed=seed)
        robust = {}
        for name, defence in [
            ("vanilla", None),
            ("pgd-at", DefenceConfig(method="pgd-at", eps=EPS)),
        ]:
            model = fit(ModelConfig(width=8), xy, cfg, defence=defence).model
            m = evaluate(model, x_test, y_test, attacks=WHITEBOX, protocol="whitebox").metrics
            robust[name] = 100 * m["pgd"]["accuracy"]
            for k, v in [
                ("clean bal. acc.", m["clean"]["balanced_accuracy"]),
                ("PGD-10 2/255 acc.", m["pgd"]["accuracy"]),
                ("PGD-10 2/255 bal. acc.", m["pgd"]["balanced_accuracy"]),
            ]:
                rows.setdefault(f"{name} {k}", []).append(100 * v)
        rows.setdefault("pgd-at - vanilla, PGD-10 2/255 acc. (points)", []).append(
            robust["pgd-at"] - robust["vanilla"]
        )
        print(f"seed {seed} done", flush=True)
    print(f"\n{'figure':46} mean ± 95 % half-width (n = {len(args.seeds)} seeds), %")
    for name, values in rows.items():
        iv = t_interval(values)
        print(f"{name:46} {iv.mean:6.1f} ± {iv.half_width:.1f}")


if __name__ == "__main__":
    main()
