"""What ``train``, ``attack`` and ``evaluate`` share: their options (each declared once)
and the helpers that read the preset, check a model's data and print the results table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from skinadv import experiment as exp
from skinadv.attacks import ATTACKS
from skinadv.commands import console
from skinadv.config import DEFENCES, ExperimentConfig, load_preset, parse_overrides
from skinadv.models import MODELS
from skinadv.results import cell_name
from skinadv.training import PreparedData

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


SourceModelOpt = Annotated[
    str | None,
    typer.Option(
        "--source-model",
        help="The vanilla model: train crafts its adversarial pool against it (a skinadv "
        "checkpoint); evaluate scores on the transfer sets crafted against it (any --model "
        "source; default: --model).",
    ),
]
AttackOpt = Annotated[
    str,
    typer.Option(
        "--attack",
        help=f"One of {', '.join(ATTACKS)} (apgd-ce and apgd_ce alike); settings from the "
        "preset's attack section (apgd for the three APGD attacks).",
    ),
]


DefenceOpt = Annotated[
    str | None,
    typer.Option(
        "--defence",
        help=f"Train adversarially on the fly: {', '.join(DEFENCES)} (the grid's defences; "
        "needs --defence-eps).",
    ),
]
DefenceEpsOpt = Annotated[
    str | None,
    typer.Option("--defence-eps", help="The defence's L-inf training budget, e.g. 8/255."),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        help=f"Registered architecture: {', '.join(MODELS)} (default: the preset's model.name).",
    ),
]


def experiment_config(
    preset: str, sets: list[str] | None, data: str, base_data: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The preset, then the model's own split settings, then --set, then --data."""
    overrides: dict[str, Any] = {}
    if base_data:
        overrides.update({f"data.{k}": base_data[k] for k in exp.SPLIT_KEYS if k in base_data})
    overrides.update(parse_overrides(sets or []))
    overrides["data.spec"] = data
    return load_preset(preset, overrides)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def metrics_table(title: str, rows: list[tuple[str, Mapping[str, Any]]]) -> Table:
    """One row per (label, ``metrics()`` dict)."""
    table = Table(title=title)
    table.add_column("set")
    for col in ("accuracy %", "balanced acc %", "macro F1 %", "mel recall %"):
        table.add_column(col, justify="right")
    for name, m in rows:
        values = (m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["recall"].get("mel"))
        table.add_row(name, *map(pct, values))
    return table


def short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "recall")}


def check_data(
    meta: Mapping[str, Any], cfg: ExperimentConfig, prep: PreparedData, what: str
) -> None:
    """A skinadv model's split and data must be these (``check_model_data``); a foreign
    model records neither, so only its input size was checked (``model_sources.check``)."""
    if meta.get("source") == "skinadv":
        exp.check_model_data(meta, cfg, prep.fingerprint, what)


def cell_of(meta: Mapping[str, Any], method: str | None, fraction: float | None) -> str:
    """The model's cell name: as it was saved (``vanilla``, ``pgd@0.4``, ``n-fgsm@8_255``),
    else from its method and fraction; a foreign model is scored as the reference row."""
    if meta.get("cell"):
        return str(meta["cell"])
    return str(method) if method is not None and fraction is None else cell_name(method, fraction)


def warn_synthetic(prep: PreparedData) -> None:
    if prep.test.synthetic:
        console.print("[yellow]synthetic data: these numbers say nothing about HAM10000[/]")
