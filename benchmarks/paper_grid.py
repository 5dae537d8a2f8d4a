"""The paper grid's science on one machine, with the library alone (no Prefect, Ray, MLflow).

Vanilla model, its FGSM / PGD transfer sets, one adversarial pool per method (fgsm, pgd,
mix; mix built from the other two, as the grid does) for the largest fraction, the 12 cells
(3 methods x 4 fractions, nested subsets of the pools), each scored under both protocols
(transfer and white-box): what ``skinadv grid`` runs, step for step through
``skinadv.experiment``, printing the wall time of every step. Meant for a GPU machine with
torch, numpy, pandas, scikit-learn, matplotlib, pydantic and PyYAML (no Ray, Prefect or
MLflow, and skinadv need not be installed): copy the repository and the 28x28 npz there,
then from the repository's root

    PYTHONPATH=. python benchmarks/paper_grid.py ham10000_28x28_rgb.npz        # paper preset
    PYTHONPATH=. python benchmarks/paper_grid.py NPZ --subset 600 --epochs 1   # CPU check

Accuracies are on the test split, in %: clean, then FGSM / PGD under each protocol.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

from skinadv import experiment as exp
from skinadv.config import load_preset
from skinadv.memory import keep_freed_memory
from skinadv.training import adversarial_pool, augment, composes_mix, mix_pool, prepare_data

TIMES: dict[str, float] = {}


@contextmanager
def timed(step: str):
    t0 = time.perf_counter()
    yield
    TIMES[step] = time.perf_counter() - t0
    print(f"{step:28} {TIMES[step]:8.1f} s", flush=True)


def accuracies(result) -> dict[str, float]:
    out = {"clean": 100 * result.transfer.metrics["clean"]["accuracy"]}
    for protocol, ev in result.evaluations().items():
        for attack in ev.attack_names:
            out[f"{protocol} {attack}"] = 100 * ev.metrics[attack]["accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", help="the canonical 28x28 HAM10000 npz")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--subset", type=int, help="a stratified subset of this many images")
    ap.add_argument("--epochs", type=int, help="training epochs (preset's by default)")
    ap.add_argument("--pgd-steps", type=int, help="PGD steps (preset's by default)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write times and accuracies here")
    args = ap.parse_args()
    keep_freed_memory()  # as the CLI and the grid's workers do
    overrides = {"data.spec": args.npz, "train.device": args.device}
    for key, value in (
        ("data.subset", args.subset),
        ("train.epochs", args.epochs),
        ("attack.pgd.steps", args.pgd_steps),
    ):
        if value is not None:
            overrides[key] = value
    cfg = load_preset(args.preset, overrides)
    seed = args.seed
    t_all = time.perf_counter()
    with timed("prepare data"):
        prep = prepare_data(cfg.data)
    print(f"train {len(prep.train)} (after oversampling), test {len(prep.test)}")
    with timed("train vanilla"):
        vanilla = exp.train_model(cfg, prep.train, seed=seed)
    with timed("transfer sets"):
        sets = exp.transfer_sets(cfg, vanilla.model, prep.test, seed=seed, val=prep.val)
    with timed("score vanilla"):
        results = {
            "vanilla": exp.evaluate_both(
                cfg, vanilla.model, prep.test, sets, seed=seed, val=prep.val
            )
        }
    x, y = prep.train.to_float()
    pools = {}
    for method in sorted(cfg.methods, key=lambda m: m == "mix"):  # mix last: it reuses
        if composes_mix(cfg.methods) and method == "mix":  # as the grid does
            with timed("pool mix (from the fgsm and pgd pools)"):
                pools[method] = mix_pool(pools["fgsm"], pools["pgd"], fraction=max(cfg.fractions))
            continue
        with timed(f"pool {method}"):
            pools[method] = adversarial_pool(
                vanilla.model,
                x,
                y,
                method=method,
                fraction=max(cfg.fractions),
                attack_cfg=cfg.attack,
                seed=seed,
                progress=False,
            )
    for method in cfg.methods:
        for fraction in cfg.fractions:
            name = f"{method}@{fraction:g}"
            with timed(f"cell {name}"):
                cell = exp.train_model(cfg, augment(x, y, pools[method], fraction), seed=seed)
                results[name] = exp.evaluate_both(
                    cfg,
                    cell.model,
                    prep.test,
                    sets,
                    method=method,
                    fraction=fraction,
                    seed=seed,
                    val=prep.val,
                )
    TIMES["total"] = time.perf_counter() - t_all
    print(f"{'total':28} {TIMES['total']:8.1f} s\n")
    table = {name: accuracies(r) for name, r in results.items()}
    cols = list(next(iter(table.values())))
    print(f"{'model':12}" + "".join(f"{c:>18}" for c in cols))
    for name, row in table.items():
        print(f"{name:12}" + "".join(f"{row[c]:18.2f}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps({"seconds": TIMES, "accuracy": table}, indent=2))


if __name__ == "__main__":
    main()
