"""CLI commands for the paper's experiment: ``train``, ``attack``, ``evaluate``.

A Typer app the main ``skinadv`` CLI merges in. The science is ``skinadv.experiment``'s, the
same functions the grid's tasks call, so a model trained here and a grid cell with the same
settings share a config hash. Every command prints a small rich table, or with ``--json``
machine-readable results only (on stdout). Bad input (data, config, arguments) gives one
``error: ...`` line on stderr and exit code 2; nothing is left half-written (models and npz
files are written atomically, last). ``evaluate`` lives in ``skinadv.commands.evaluate``;
the options the three share are declared once in ``skinadv.commands.experiment_shared``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from skinadv import experiment as exp
from skinadv.attacks import attack_name as resolve_name
from skinadv.attacks import craft
from skinadv.commands import (
    DataOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    console,
    model_sources,
    print_json,
    stdout_console,
    user_errors,
)
from skinadv.commands.evaluate import evaluate
from skinadv.commands.experiment_shared import (
    AttackOpt,
    ClassesOpt,
    DefenceEpsOpt,
    DefenceOpt,
    ModelNameOpt,
    ModelOpt,
    NormalizeOpt,
    SourceModelOpt,
    WeightsOpt,
    check_data,
    experiment_config,
    metrics_table,
    short,
    warn_synthetic,
)
from skinadv.config import DEFENCES, AdvTrainConfig, DefenceConfig, check_fraction
from skinadv.data import CLASSES
from skinadv.data.io import atomic_write_npz
from skinadv.evaluation import score
from skinadv.models import load_model, save_model
from skinadv.results import cell_name
from skinadv.training import (
    EpochStats,
    adversarial_pool,
    augment,
    prepare_data,
    select_device,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, attack and evaluate skin-lesion classifiers (paper protocol).",
)


def _defence(method: str | None, eps: str | None) -> DefenceConfig | None:
    """``--defence`` and ``--defence-eps`` as the grid's ``DefenceConfig`` (None: neither)."""
    if method is None and eps is None:
        return None
    if method is None or eps is None:
        raise ValueError("--defence and --defence-eps go together")
    if method not in DEFENCES:
        raise ValueError(f"unknown --defence {method!r}; choose one of {', '.join(DEFENCES)}")
    return DefenceConfig(method=method, eps=eps)


@app.command()
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the model (.pt + .json).")],
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Training seed, as one of grid's --seeds (default: train.seed)."),
    ] = None,
    adv_method: Annotated[str | None, typer.Option(help="Augment with fgsm, pgd or mix.")] = None,
    adv_fraction: Annotated[
        float | None, typer.Option(help="Share of the training set to augment, in (0, 1].")
    ] = None,
    pool_fraction: Annotated[
        float | None,
        typer.Option(
            help="Craft the pool for this fraction, as the grid does for its largest "
            "(default: --adv-fraction); the cell takes --adv-fraction of it."
        ),
    ] = None,
    source_model: SourceModelOpt = None,
    defence: DefenceOpt = None,
    defence_eps: DefenceEpsOpt = None,
    model_name: ModelNameOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a freshly initialised model: vanilla, with static adversarial augmentation
    (--adv-method), or adversarially on the fly (--defence), as the grid trains its cells."""
    with user_errors():
        sets = [*(set_ or []), *([f"model.name={model_name}"] if model_name else [])]
        cfg = experiment_config(preset, sets, data)
        seed = cfg.train.seed if seed is None else seed
        adv, defence_cfg = None, _defence(defence, defence_eps)
        if defence_cfg is not None and (adv_method or adv_fraction or source_model):
            raise ValueError(
                "--defence trains on the fly: it takes no --adv-method, "
                "--adv-fraction or --source-model"
            )
        if adv_method is not None or adv_fraction is not None:
            if adv_method is None or adv_fraction is None:
                raise ValueError("--adv-method and --adv-fraction go together")
            adv = AdvTrainConfig(method=adv_method, fraction=adv_fraction)
            pool_fraction = adv.fraction if pool_fraction is None else pool_fraction
            if check_fraction(pool_fraction) < adv.fraction:
                raise ValueError(f"--pool-fraction {pool_fraction} is below --adv-fraction")
            if source_model is None:
                raise ValueError("--adv-method needs --source-model (the vanilla model)")
        elif source_model is not None or pool_fraction is not None:
            raise ValueError("--source-model and --pool-fraction go with --adv-method")
        if out.suffix != ".pt":
            raise ValueError(f"--out {out}: a model file must end in .pt")
        device = select_device(cfg.train.device)
        prep = prepare_data(cfg.data)
        vanilla_hash = exp.vanilla_hash(cfg, prep.fingerprint, seed)
        train_set: Any = prep.train
        n_adv, cell = 0, {"cell": "vanilla", "config_hash": vanilla_hash}
        if adv is not None:
            src, src_meta = load_model(source_model, device)
            what = f"--source-model {source_model}"
            exp.check_model_data(src_meta, cfg, prep.fingerprint, what)
            exp.check_vanilla(src_meta, vanilla_hash, what)
            x, y = prep.train.to_float()
            kw = {"attack_cfg": cfg.attack, "seed": seed}
            pool = adversarial_pool(src, x, y, method=adv.method, fraction=pool_fraction, **kw)
            train_set = augment(x, y, pool, adv.fraction)
            n_adv = len(train_set[1]) - len(y)
            h = exp.cell_hash(vanilla_hash, cfg, adv.method, adv.fraction, seed, pool_fraction)
            cell = {
                "cell": cell_name(adv.method, adv.fraction),
                "config_hash": h,
                "vanilla_hash": vanilla_hash,
                "method": adv.method,
                "fraction": adv.fraction,
                "pool_fraction": pool_fraction,
            }
        elif defence_cfg is not None:  # keyed as the grid's train_defence keys it
            cell = {
                "cell": defence_cfg.name,
                "config_hash": exp.defence_hash(vanilla_hash, defence_cfg),
                "vanilla_hash": vanilla_hash,
                "method": defence_cfg.method,
                "fraction": None,
                "defence": defence_cfg.model_dump(),
            }

        def on_epoch(s: EpochStats) -> None:
            if not json_out:
                console.print(
                    f"epoch {s.epoch}/{cfg.train.epochs}: loss {s.loss:.4f}, "
                    f"train acc {100 * s.train_acc:.2f} %, {s.seconds:.1f} s",
                    highlight=False,
                )

        result = exp.train_model(cfg, train_set, seed=seed, on_epoch=on_epoch, defence=defence_cfg)
        xt, yt = prep.test.to_float()
        clean = score(result.model, xt, yt)
        summary = {
            **cell,
            "seed": seed,
            "adv": adv.model_dump() if adv else None,
            "synthetic": prep.test.synthetic,
            "test_clean": short(clean),
        }
        if result.guard_triggered:  # fast-at's catastrophic-overfitting guard
            summary["guard"] = f"restored epoch {result.kept_epoch}"
        meta = {
            **summary,
            "preset": cfg.name,
            "data": cfg.data.model_dump(),
            "train": cfg.train.model_dump(),
            "attack": cfg.attack.model_dump(),
            "source_model": str(source_model) if source_model else None,
            "data_fingerprint": prep.fingerprint,
            "history": [s.as_dict() for s in result.history],
        }
        save_model(result.model, out, {"image_size": cfg.data.size, **meta})
    payload = {
        "model": str(out),
        **summary,
        "n_train": result.n_train,
        "n_adversarial": n_adv,
        "n_test": len(prep.test),
        "seconds": round(result.seconds, 2),
        "final_loss": result.final.loss,
        "final_train_acc": result.final.train_acc,
    }
    if json_out:
        print_json(payload)
        return
    title = f"{cell['cell']} model (seed {seed}), test set ({len(prep.test)} images)"
    stdout_console.print(metrics_table(title, [("clean", clean)]))
    stdout_console.print(
        f"trained on {result.n_train} images ({n_adv} adversarial) in "
        f"{result.seconds:.1f} s -> {out}\nconfig hash {cell['config_hash']}"
    )
    warn_synthetic(prep)


@app.command()
def attack(
    model: ModelOpt,
    data: DataOpt,
    attack_name: AttackOpt = "pgd",
    eps: Annotated[float | None, typer.Option("--eps", help="Budget, [0, 1] pixels.")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Step size.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Iterations.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the adversarial test images as a canonical .npz."),
    ] = None,
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    normalize: NormalizeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Attack a model on its test split and score it (white-box)."""
    with user_errors():
        attack_name = resolve_name(attack_name)
        if out is not None and out.suffix != ".npz":
            raise ValueError(f"--out {out}: adversarial images are written as a .npz file")
        net, meta = model_sources.load(model, weights=weights, classes=classes, normalize=normalize)
        cfg = experiment_config(preset, set_, data, meta.get("data"))
        given = {"eps": eps, "alpha": alpha, "steps": steps}
        own = cfg.attack.kwargs(attack_name)
        for flag, value in given.items():
            if value is not None and flag not in own:
                raise ValueError(f"--{flag} does not apply to {attack_name}")
        # the settings checked before any work, in the attack's config section (apgd_ce's
        # is ``apgd``)
        updated = {k: v for k, v in given.items() if v is not None}
        kwargs = cfg.attack.with_kwargs(attack_name, **updated).kwargs(attack_name)
        net.to(select_device(cfg.train.device))
        model_sources.check(net, meta, cfg.data.size, f"--model {model}")
        prep = prepare_data(cfg.data)
        check_data(meta, cfg, prep, f"--model {model}")
        xt, yt = prep.test.to_float()
        seed = int(meta.get("seed", cfg.train.seed))  # the model's: it seeds the attacks
        batch = cfg.attack.batch_size
        x_adv = craft(net, xt, yt, attack_name, batch_size=batch, seed=seed, **kwargs)
        spec = {"attack": attack_name, **kwargs}
        clean, adv = score(net, xt, yt), score(net, x_adv, yt)
        linf = float((x_adv - torch.from_numpy(xt)).abs().max())
        if out is not None:
            adv_np = x_adv.numpy()
            pixels = np.clip(np.rint(adv_np.transpose(0, 2, 3, 1) * 255), 0, 255)
            arrays = {
                "images": pixels.astype(np.uint8),
                "labels": yt,
                "class_names": np.array(CLASSES),
                "x_adv": adv_np,
                "attack": np.array(json.dumps(spec)),
            }
            if prep.test.image_id is not None:
                arrays["image_id"] = prep.test.image_id.astype(str)
            if prep.test.lesion_id is not None:
                arrays["lesion_id"] = prep.test.lesion_id.astype(str)
            atomic_write_npz(out, **arrays)
    payload = {
        "model": str(model),
        "model_source": meta["source"],
        "config_hash": meta.get("config_hash"),
        "attack": spec,
        "seed": seed,
        "n_test": len(prep.test),
        "clean": short(clean),
        "adversarial": short(adv),
        "max_linf": linf,
        "out": str(out) if out else None,
        "synthetic": prep.test.synthetic,
    }
    if json_out:
        print_json(payload)
        return
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    title = f"white-box {attack_name} ({settings}) on {len(prep.test)} test images"
    stdout_console.print(metrics_table(title, [("clean", clean), (attack_name, adv)]))
    if out is not None:
        stdout_console.print(f"adversarial images -> {out}")
    warn_synthetic(prep)


app.command()(evaluate)
