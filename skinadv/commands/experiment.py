"""CLI commands for the paper's experiment: ``train``, ``attack``, ``evaluate``.

A Typer app the main ``skinadv`` CLI merges in. The science is ``skinadv.experiment``'s, the
same functions the grid's tasks call, so a model trained here and a grid cell with the same
settings share a config hash. Every command prints a small rich table, or with ``--json``
machine-readable results only (on stdout). Bad input (data, config, arguments) gives one
``error: ...`` line on stderr and exit code 2; nothing is left half-written (models and npz
files are written atomically, last).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.table import Table

from skinadv import experiment as exp
from skinadv.attacks import ATTACKS, craft
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
from skinadv.config import (
    AdvTrainConfig,
    ExperimentConfig,
    check_fraction,
    load_preset,
    parse_overrides,
)
from skinadv.data import CLASSES
from skinadv.data.io import atomic_write_npz
from skinadv.evaluation import sanity_checks, score
from skinadv.models import load_model, save_model
from skinadv.results import PROTOCOLS, ModelResult, cell_name
from skinadv.training import (
    EpochStats,
    PreparedData,
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

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="A classifier of (N, 3, H, W) pixels in [0, 1] -> logits over 7 classes: a model "
        "written by 'train', a TorchScript file, a torch.export program (.pt2), "
        "package.module:factory with --weights, or an MLflow models:/NAME@ALIAS, "
        "models:/NAME/VERSION or runs:/RUN_ID/PATH.",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", help="State dict for a package.module:factory --model (file or MLflow URI)."
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="The model's output order, e.g. akiec,bcc,bkl,df,nv,vasc,mel or hmnist "
        "(default: akiec,bcc,bkl,df,mel,nv,vasc, = dermamnist).",
    ),
]
NormalizeOpt = Annotated[
    tuple[str, str] | None,
    typer.Option(
        "--normalize",
        metavar="MEAN STD",
        help="The model expects (x - MEAN) / STD: 3 comma-separated values each, or 1; "
        "attacks stay in [0, 1] pixels.",
    ),
]


def _config(
    preset: str, sets: list[str] | None, data: str, base_data: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The preset, then the model's own split settings, then --set, then --data."""
    overrides: dict[str, Any] = {}
    if base_data:
        overrides.update({f"data.{k}": base_data[k] for k in exp.SPLIT_KEYS if k in base_data})
    overrides.update(parse_overrides(sets or []))
    overrides["data.spec"] = data
    return load_preset(preset, overrides)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _metrics_table(title: str, rows: list[tuple[str, Mapping[str, Any]]]) -> Table:
    """One row per (label, ``metrics()`` dict)."""
    table = Table(title=title)
    table.add_column("set")
    for col in ("accuracy %", "balanced acc %", "macro F1 %", "mel recall %"):
        table.add_column(col, justify="right")
    for name, m in rows:
        values = (m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["recall"].get("mel"))
        table.add_row(name, *map(_pct, values))
    return table


def _short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "recall")}


def _check_data(
    meta: Mapping[str, Any], cfg: ExperimentConfig, prep: PreparedData, what: str
) -> None:
    """A skinadv model's split and data must be these (``check_model_data``); a foreign
    model records neither, so only its input size was checked (``model_sources.check``)."""
    if meta.get("source") == "skinadv":
        exp.check_model_data(meta, cfg, prep.fingerprint, what)


def _warn_synthetic(prep: PreparedData) -> None:
    if prep.test.synthetic:
        console.print("[yellow]synthetic data: these numbers say nothing about HAM10000[/]")


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
    source_model: Annotated[
        Path | None, typer.Option(help="The vanilla model the pool is crafted against.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a freshly initialised model (vanilla, or with static adversarial augmentation)."""
    with user_errors():
        cfg = _config(preset, set_, data)
        seed = cfg.train.seed if seed is None else seed
        adv = None
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

        def on_epoch(s: EpochStats) -> None:
            if not json_out:
                console.print(
                    f"epoch {s.epoch}/{cfg.train.epochs}: loss {s.loss:.4f}, "
                    f"train acc {100 * s.train_acc:.2f} %, {s.seconds:.1f} s",
                    highlight=False,
                )

        result = exp.train_model(cfg, train_set, seed=seed, on_epoch=on_epoch)
        xt, yt = prep.test.to_float()
        clean = score(result.model, xt, yt)
        summary = {
            **cell,
            "seed": seed,
            "adv": adv.model_dump() if adv else None,
            "synthetic": prep.test.synthetic,
            "test_clean": _short(clean),
        }
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
    stdout_console.print(_metrics_table(title, [("clean", clean)]))
    stdout_console.print(
        f"trained on {result.n_train} images ({n_adv} adversarial) in "
        f"{result.seconds:.1f} s -> {out}\nconfig hash {cell['config_hash']}"
    )
    _warn_synthetic(prep)


@app.command()
def attack(
    model: ModelOpt,
    data: DataOpt,
    attack_name: Annotated[str, typer.Option("--attack", help="fgsm, pgd or mifgsm.")] = "pgd",
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
        if attack_name not in ATTACKS:
            raise ValueError(f"unknown attack {attack_name!r}; choose one of {', '.join(ATTACKS)}")
        if out is not None and out.suffix != ".npz":
            raise ValueError(f"--out {out}: adversarial images are written as a .npz file")
        net, meta = model_sources.load(model, weights=weights, classes=classes, normalize=normalize)
        cfg = _config(preset, set_, data, meta.get("data"))
        kwargs = cfg.attack.kwargs(attack_name)
        for flag, value in (("eps", eps), ("alpha", alpha), ("steps", steps)):
            if value is None:
                continue
            if flag not in kwargs:
                raise ValueError(f"--{flag} does not apply to {attack_name}")
            kwargs[flag] = value
        # check the settings before any work (the attack's own validation)
        cfg.attack.model_validate({**cfg.attack.model_dump(), attack_name: kwargs})
        net.to(select_device(cfg.train.device))
        model_sources.check(net, meta, cfg.data.size, f"--model {model}")
        prep = prepare_data(cfg.data)
        _check_data(meta, cfg, prep, f"--model {model}")
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
        "clean": _short(clean),
        "adversarial": _short(adv),
        "max_linf": linf,
        "out": str(out) if out else None,
        "synthetic": prep.test.synthetic,
    }
    if json_out:
        print_json(payload)
        return
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    title = f"white-box {attack_name} ({settings}) on {len(prep.test)} test images"
    stdout_console.print(_metrics_table(title, [("clean", clean), (attack_name, adv)]))
    if out is not None:
        stdout_console.print(f"adversarial images -> {out}")
    _warn_synthetic(prep)


@app.command()
def evaluate(
    model: ModelOpt,
    data: DataOpt,
    protocol: Annotated[
        str,
        typer.Option(
            help="transfer (sets crafted against --source-model), whitebox "
            "(attacks re-run against --model), or both."
        ),
    ] = "both",
    source_model: Annotated[
        Path | None, typer.Option(help="The vanilla model for transfer (default: --model).")
    ] = None,
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    normalize: NormalizeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a model on clean, FGSM and PGD test sets under the transfer / white-box protocols.

    With --json: ``ModelResult.to_dict()`` (only the protocols asked for), plus the model,
    its transfer source, flat ``results`` and the sanity ``checks``.
    """
    with user_errors():
        protocols = PROTOCOLS if protocol == "both" else (protocol,)
        if protocol != "both" and protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose transfer, whitebox or both")
        net, meta = model_sources.load(model, weights=weights, classes=classes, normalize=normalize)
        cfg = _config(preset, set_, data, meta.get("data"))
        device = select_device(cfg.train.device)
        net.to(device)
        model_sources.check(net, meta, cfg.data.size, f"--model {model}")
        prep = prepare_data(cfg.data)
        _check_data(meta, cfg, prep, f"--model {model}")
        method, fraction = exp.model_cell(meta)
        seed = int(meta.get("seed", cfg.train.seed))  # the model's: it seeds the attacks
        source, source_path, source_seed = net, model, seed
        if source_model is not None and "transfer" in protocols:
            source, src_meta = load_model(source_model, device)
            exp.check_model_data(src_meta, cfg, prep.fingerprint, f"--source-model {source_model}")
            source_path = source_model
            source_seed = int(src_meta.get("seed", seed))  # as the grid crafts them
            if meta.get("vanilla_hash") not in (None, src_meta.get("config_hash")):
                console.print(f"[yellow]note:[/] {source_model} is not {model}'s vanilla model")
        sets = None
        if "transfer" in protocols:
            sets = exp.transfer_sets(cfg, source, prep.test, seed=source_seed)
        both, result = protocols == PROTOCOLS, None
        if both and (source is net or method is not None):
            # the grid's path; a vanilla model's own transfer sets are its white-box attacks
            result = exp.evaluate_both(
                cfg, net, prep.test, sets, method=method, fraction=fraction, seed=seed
            )
        else:  # one protocol, or a vanilla model scored on another model's transfer sets
            evals = {
                p: exp.score_protocol(cfg, net, prep.test, p, sets=sets, seed=seed)
                for p in protocols
            }
            if both:
                cell = cell_name(method, fraction)
                result = ModelResult(cell, seed, method=method, fraction=fraction, **evals)
        evals = result.evaluations() if result else evals
        checks = sanity_checks([result]) if result else []  # the checks compare protocols
    # ModelResult.to_dict(); for one protocol, the same shape with that protocol alone
    payload = result.to_dict() if result else {"cell": cell_name(method, fraction), "seed": seed}
    if result is None:
        payload |= {"method": method, "fraction": fraction, "run_id": None}
        payload["evaluation"] = {p: ev.to_dict() for p, ev in evals.items()}
    payload |= {
        "model": str(model),
        "model_source": meta["source"],
        "config_hash": meta.get("config_hash"),
        "source_model": str(source_path),
        "n_test": len(prep.test),
        "synthetic": prep.test.synthetic,
        "attacks": exp.attack_specs(cfg),
        "results": {
            p: {
                k: _short(m) | {"confusion_matrix": m["confusion_matrix"]}
                for k, m in ev.metrics.items()
            }
            for p, ev in evals.items()
        },
        "checks": [c.as_dict() for c in checks],
    }
    if json_out:
        print_json(payload)
        return
    first = next(iter(evals.values()))
    rows = [("clean", first.metrics["clean"])]
    rows += [(f"{p} / {a}", ev.metrics[a]) for p, ev in evals.items() for a in ev.attack_names]
    title = (
        f"{Path(model).name}: {payload['cell']} (seed {seed}, config {meta.get('config_hash')}) on "
        f"{len(prep.test)} test images (transfer source: {Path(source_path).name})"
    )
    stdout_console.print(_metrics_table(title, rows))
    for c in checks:
        style = "green" if c.ok else "yellow"
        stdout_console.print(f"[{style}]{c.status}[/] {c.name}: {c.detail}", soft_wrap=True)
    _warn_synthetic(prep)
