"""Vanilla models on all of the data under several training recipes, over seeds.

The project's own ``prepare_data`` and split (the rigorous preset's data section: all 10015
images, lesion-grouped, 10 % validation, oversampled training side), ``fit`` and
``evaluate``. For each recipe: clean accuracy, balanced accuracy and melanoma recall on the
test set, mean ± the half-width of the 95 % t-interval over the seeds, seconds per model
and training images/s on one thread.

    python benchmarks/recipe_probe.py ../shared/data/ham10000/ham10000_28x28_rgb.npz \\
        --seeds 0 1 2 --recipe width=8,epochs=3 --recipe width=8,epochs=3,precision=bf16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from skinadv.config import ModelConfig, TrainConfig, load_preset
from skinadv.evaluation.evaluate import predict
from skinadv.evaluation.metrics import metrics
from skinadv.stats import t_interval
from skinadv.training import fit, prepare_data

BASE = {
    "width": 8,
    "epochs": 3,
    "batch_size": 128,
    "lr": 0.004,
    "schedule": "onecycle",
    "augment": "flips",
    "precision": "fp32",
}


def parse_recipe(text: str) -> dict:
    out = dict(BASE)
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k not in BASE:
            raise SystemExit(f"unknown recipe key {k!r}; keys: {', '.join(BASE)}")
        out[k] = type(BASE[k])(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the HAM10000 folder or the canonical 28x28 npz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--recipe", action="append", default=[], help="comma-separated overrides of " + str(BASE)
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_cfg = load_preset("rigorous").data.model_copy(update={"spec": args.data, "subset": None})
    data = prepare_data(data_cfg)
    x, y = data.train.to_float()
    xt, yt = data.test.to_float()
    print(f"train {len(y)} (oversampled), test {len(yt)}, {args.threads} thread(s)")
    print("| recipe | clean acc. | clean bal. acc. | mel recall | s per model | train img/s |")
    print("|---|---|---|---|---|---|")
    for text in args.recipe or [""]:
        r = parse_recipe(text)
        vals: dict[str, list[float]] = {"accuracy": [], "balanced_accuracy": [], "mel": []}
        secs, ips = [], []
        for seed in args.seeds:
            cfg = TrainConfig(
                epochs=r["epochs"],
                batch_size=r["batch_size"],
                lr=r["lr"],
                schedule=r["schedule"],
                augment=r["augment"],
                precision=r["precision"],
                seed=seed,
                device="cpu",
            )
            t0 = time.perf_counter()
            res = fit(ModelConfig(width=r["width"]), (x, y), cfg)
            secs.append(time.perf_counter() - t0)
            ips.append(r["epochs"] * len(y) / secs[-1])
            m = metrics(yt.numpy() if hasattr(yt, "numpy") else yt, predict(res.model, xt)[0])
            vals["accuracy"].append(100 * m["accuracy"])
            vals["balanced_accuracy"].append(100 * m["balanced_accuracy"])
            vals["mel"].append(100 * m["recall"]["mel"])
        cells = []
        for k in ("accuracy", "balanced_accuracy", "mel"):
            iv = t_interval(vals[k])
            cells.append(f"{iv.mean:.1f} ± {iv.half_width:.1f}")
        label = ",".join(f"{k}={v}" for k, v in r.items() if BASE[k] != v) or "base"
        print(
            f"| {label} | {' | '.join(cells)} | {np.mean(secs):.0f} | {np.mean(ips):.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
