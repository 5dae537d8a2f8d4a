"""CLI commands for the paper's experiment: ``train``, ``attack``, ``evaluate``.

A Typer app the main ``skinadv`` CLI merges in. Every command prints a small rich table,
or with ``--json`` machine-readable results only (on stdout). Bad input (data, config,
arguments) gives one ``error: ...`` line on stderr and exit code 2; nothing is left
half-written (models and npz files are written atomically, last).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from skinadv.attacks import ATTACKS, craft
from skinadv.config import (
    AdvTrainConfig,
    ExperimentConfig,
    config_hash,
    describe_error,
    load_preset,
    parse_overrides,
)
from skinadv.data import CLASSES
from skinadv.data.io import atomic_write_npz
from skinadv.evaluation import craft_transfer_sets, sanity_checks, score
from skinadv.evaluation import evaluate as evaluate_model
from skinadv.models import load_model, save_model
from skinadv.training import (
    EpochStats,
    PreparedData,
    adversarial_pool,
    augment,
    fit,
    prepare_data,
    select_device,
)

log = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, attack and evaluate skin-lesion classifiers (paper protocol).",
)

#: data settings that define the split; a model remembers them so its test side is reused
SPLIT_KEYS = ("size", "test_size", "seed", "group_by_lesion", "oversample", "subset")

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Data SPEC: a HAM10000 folder, a .npz or .csv, s3://..., or synthetic:N:SEED.",
    ),
]
PresetOpt = Annotated[str, typer.Option("--preset", help="Preset name (quick, paper) or YAML.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting, e.g. --set train.epochs=2 (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input -> ``error: ...`` on stderr, exit 2; IO/numeric failures -> exit 1."""
    try:
        yield
    except typer.Exit:
        raise
    except ValueError as exc:  # DataError and pydantic's ValidationError are ValueErrors
        typer.echo(f"error: {describe_error(exc)}", err=True)
        raise typer.Exit(2) from None
    except (OSError, FloatingPointError) as exc:
        typer.echo(f"error: {describe_error(exc)}", err=True)
        raise typer.Exit(1) from None


def _config(
    preset: str, sets: list[str] | None, data: str, base_data: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The preset, then the model's own split settings, then --set, then --data."""
    overrides: dict[str, Any] = {}
    if base_data:
        overrides.update({f"data.{k}": base_data[k] for k in SPLIT_KEYS if k in base_data})
    overrides.update(parse_overrides(sets or []))
    overrides["data.spec"] = data
    return load_preset(preset, overrides)


def _emit_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _console() -> Console:
    return Console(highlight=False)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _metrics_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title=title)
    for col in ("set", "accuracy %", "balanced acc %", "macro F1 %", "mel recall %"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, m in rows:
        table.add_row(
            name,
            _pct(m["accuracy"]),
            _pct(m["balanced_accuracy"]),
            _pct(m["macro_f1"]),
            _pct(m["recall"].get("mel")),
        )
    return table


def _short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "recall")}


def _check_same_split(
    cfg: ExperimentConfig, meta: dict[str, Any], prep: PreparedData, what: str
) -> None:
    data = meta.get("data")
    if not data:
        return
    diff = [k for k in SPLIT_KEYS if k in data and data[k] != getattr(cfg.data, k)]
    if diff:
        raise ValueError(
            f"{what} was trained with other data settings "
            f"({', '.join(f'{k}={data[k]}' for k in diff)}): use the same "
            f"--preset/--set so its test side stays unseen"
        )
    fp = meta.get("data_fingerprint")
    if fp and fp != prep.fingerprint:
        raise ValueError(
            f"{what} was trained on other data (fingerprint {fp}, this --data "
            f"is {prep.fingerprint})"
        )


@app.command()
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the model (.pt + .json).")],
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    adv_method: Annotated[
        str | None, typer.Option("--adv-method", help="Adversarial augmentation: fgsm, pgd or mix.")
    ] = None,
    adv_fraction: Annotated[
        float | None,
        typer.Option("--adv-fraction", help="Share of the training set to augment, in (0, 1]."),
    ] = None,
    source_model: Annotated[
        Path | None,
        typer.Option(
            "--source-model", help="The vanilla model the adversarial examples are crafted against."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a freshly initialised model (vanilla, or with static adversarial augmentation)."""
    with _user_errors():
        cfg = _config(preset, set_, data)
        adv = None
        if adv_method is not None or adv_fraction is not None:
            if adv_method is None or adv_fraction is None:
                raise ValueError("--adv-method and --adv-fraction go together")
            adv = AdvTrainConfig(method=adv_method, fraction=adv_fraction)
            if source_model is None:
                raise ValueError("--adv-method needs --source-model (the vanilla model)")
        elif source_model is not None:
            raise ValueError("--source-model is only used with --adv-method/--adv-fraction")
        if out.suffix != ".pt":
            raise ValueError(f"--out {out}: a model file must end in .pt")
        device = select_device(cfg.train.device)
        prep = prepare_data(cfg.data)
        x, y = prep.train.to_float()
        n_adv = 0
        if adv is not None:
            src, src_meta = load_model(source_model, device)
            _check_same_split(cfg, src_meta, prep, f"--source-model {source_model}")
            pool = adversarial_pool(
                src,
                x,
                y,
                method=adv.method,
                fraction=adv.fraction,
                attack_cfg=cfg.attack,
                seed=cfg.train.seed,
            )
            x, y = augment(x, y, pool, adv.fraction)
            n_adv = len(pool)

        def on_epoch(s: EpochStats) -> None:
            if not json_out:
                typer.echo(
                    f"epoch {s.epoch}/{cfg.train.epochs}: loss {s.loss:.4f}, "
                    f"train acc {100 * s.train_acc:.2f} %, {s.seconds:.1f} s",
                    err=True,
                )

        result = fit(cfg.model, (x, y), cfg.train, on_epoch=on_epoch)
        xt, yt = prep.test.to_float()
        clean = score(result.model, xt, yt)
        meta = {
            "image_size": cfg.data.size,
            "class_names": list(CLASSES),
            "preset": cfg.name,
            "data": cfg.data.model_dump(),
            "train": cfg.train.model_dump(),
            "attack": cfg.attack.model_dump(),
            "adv": adv.model_dump() if adv else None,
            "source_model": str(source_model) if source_model else None,
            "data_fingerprint": prep.fingerprint,
            "synthetic": prep.test.synthetic,
            "config_hash": config_hash(
                {"cfg": cfg.model_dump(mode="json"), "adv": adv.model_dump() if adv else None}
            ),
            "history": [s.as_dict() for s in result.history],
            "test_clean": _short(clean),
        }
        save_model(result.model, out, meta)
    payload = {
        "model": str(out),
        "n_train": result.n_train,
        "n_adversarial": n_adv,
        "n_test": len(prep.test),
        "seconds": round(result.seconds, 2),
        "final_loss": result.final.loss,
        "final_train_acc": result.final.train_acc,
        "test_clean": _short(clean),
        "adv": meta["adv"],
        "synthetic": meta["synthetic"],
        "config_hash": meta["config_hash"],
    }
    if json_out:
        _emit_json(payload)
        return
    con = _console()
    kind = "vanilla" if adv is None else f"{adv.method} {adv.fraction:g}"
    con.print(
        _metrics_table(f"{kind} model, test set ({len(prep.test)} images)", [("clean", clean)])
    )
    con.print(
        f"trained on {result.n_train} images ({n_adv} adversarial) in "
        f"{result.seconds:.1f} s -> {out}"
    )
    if prep.test.synthetic:
        con.print("[yellow]synthetic data: these numbers say nothing about HAM10000[/]")


@app.command()
def attack(
    model: Annotated[Path, typer.Option("--model", help="A model written by 'train'.")],
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
    json_out: JsonOpt = False,
) -> None:
    """Attack a model on its test split and score it (white-box)."""
    with _user_errors():
        if attack_name not in ATTACKS:
            raise ValueError(f"unknown attack {attack_name!r}; choose one of {', '.join(ATTACKS)}")
        if out is not None and out.suffix != ".npz":
            raise ValueError(f"--out {out}: adversarial images are written as a .npz file")
        net, meta = load_model(model)
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
        device = select_device(cfg.train.device)
        net.to(device)
        prep = prepare_data(cfg.data)
        _check_same_split(cfg, meta, prep, f"--model {model}")
        xt, yt = prep.test.to_float()
        x_adv = craft(
            net,
            xt,
            yt,
            attack_name,
            batch_size=cfg.attack.batch_size,
            seed=cfg.train.seed,
            **kwargs,
        )
        clean, adv = score(net, xt, yt), score(net, x_adv, yt)
        linf = float((x_adv - torch.from_numpy(xt)).abs().max())
        if out is not None:
            adv_np = x_adv.numpy()
            arrays = {
                "images": np.clip(np.rint(adv_np.transpose(0, 2, 3, 1) * 255), 0, 255).astype(
                    np.uint8
                ),
                "labels": yt,
                "class_names": np.array(CLASSES),
                "x_adv": adv_np,
                "attack": np.array(json.dumps({"attack": attack_name, **kwargs})),
            }
            if prep.test.image_id is not None:
                arrays["image_id"] = prep.test.image_id.astype(str)
            if prep.test.lesion_id is not None:
                arrays["lesion_id"] = prep.test.lesion_id.astype(str)
            atomic_write_npz(out, **arrays)
    payload = {
        "model": str(model),
        "attack": {"attack": attack_name, **kwargs},
        "n_test": len(prep.test),
        "clean": _short(clean),
        "adversarial": _short(adv),
        "max_linf": linf,
        "out": str(out) if out else None,
        "synthetic": prep.test.synthetic,
    }
    if json_out:
        _emit_json(payload)
        return
    con = _console()
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    con.print(
        _metrics_table(
            f"white-box {attack_name} ({settings}) on {len(prep.test)} test images",
            [("clean", clean), (attack_name, adv)],
        )
    )
    if out is not None:
        con.print(f"adversarial images -> {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="A model written by 'train'.")],
    data: DataOpt,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="transfer (test sets crafted against --source-model), whitebox "
            "(attacks re-run against --model), or both.",
        ),
    ] = "both",
    source_model: Annotated[
        Path | None,
        typer.Option(
            "--source-model",
            help="The vanilla model for the transfer protocol (default: --model itself).",
        ),
    ] = None,
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a model on clean, FGSM and PGD test sets under the transfer / white-box protocols."""
    with _user_errors():
        protocols = {
            "both": ("transfer", "whitebox"),
            "transfer": ("transfer",),
            "whitebox": ("whitebox",),
        }.get(protocol)
        if protocols is None:
            raise ValueError(f"unknown protocol {protocol!r}; choose transfer, whitebox or both")
        net, meta = load_model(model)
        cfg = _config(preset, set_, data, meta.get("data"))
        device = select_device(cfg.train.device)
        net.to(device)
        prep = prepare_data(cfg.data)
        _check_same_split(cfg, meta, prep, f"--model {model}")
        source, source_path = net, model
        if source_model is not None and "transfer" in protocols:
            source, src_meta = load_model(source_model, device)
            _check_same_split(cfg, src_meta, prep, f"--source-model {source_model}")
            source_path = source_model
        xt, yt = prep.test.to_float()
        attacks = cfg.attack.specs(("fgsm", "pgd"))
        kw = {"batch_size": cfg.attack.batch_size, "seed": cfg.train.seed}
        results: dict[str, Any] = {}
        if "transfer" in protocols:
            sets = craft_transfer_sets(source, xt, yt, attacks, **kw)
            results["transfer"] = evaluate_model(
                net, xt, yt, attacks=attacks, protocol="transfer", transfer_sets=sets, **kw
            )
        if "whitebox" in protocols:
            results["whitebox"] = evaluate_model(
                net, xt, yt, attacks=attacks, protocol="whitebox", **kw
            )
        checks = sanity_checks({"models": {model.stem: results}})
    payload = {
        "model": str(model),
        "source_model": str(source_path),
        "n_test": len(prep.test),
        "synthetic": prep.test.synthetic,
        "attacks": attacks,
        "results": {
            p: {
                k: _short(m) | {"confusion_matrix": m["confusion_matrix"]}
                for k, m in ev["metrics"].items()
            }
            for p, ev in results.items()
        },
        "checks": [c.as_dict() for c in checks],
    }
    if json_out:
        _emit_json(payload)
        return
    con = _console()
    rows = [
        (f"{p} / {k}" if k != "clean" else "clean", m)
        for p, ev in results.items()
        for k, m in ev["metrics"].items()
        if k != "clean" or p == next(iter(results))
    ]
    con.print(
        _metrics_table(
            f"{model.name} on {len(prep.test)} test images "
            f"(transfer source: {Path(source_path).name})",
            rows,
        )
    )
    for c in checks:
        style = "green" if c.ok else "yellow"
        con.print(f"[{style}]{c.status}[/] {c.name}: {c.detail}", soft_wrap=True)
    if prep.test.synthetic:
        con.print("[yellow]synthetic data: these numbers say nothing about HAM10000[/]")


def main() -> None:  # pragma: no cover - for `python -m skinadv.commands.experiment`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
