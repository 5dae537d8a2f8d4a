"""``skinadv evaluate``'s robustness evaluation beyond the two protocols: the robust curve's
settings from the command line, AutoAttack at named budgets, the one-model report and its
MLflow run.

The science is the grid's (``skinadv.experiment``: ``robustness_curve``,
``targeted_attacks``; ``skinadv.evaluation.autoattack.verify``, as ``skinadv verify`` runs
it), so a model scored here and a grid cell carry the same metric names
(``ModelResult.flat_metrics``). MLflow only through ``skinadv.tracking``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from torch import nn

from skinadv.attacks import attack_name
from skinadv.config import ExperimentConfig, RobustConfig
from skinadv.data import Dataset
from skinadv.evaluation.checks import Check
from skinadv.results import ModelResult, eps_text

CurveEpsOpt = Annotated[
    str | None,
    typer.Option(
        "--eps",
        help="Budgets of the worst-case robust curve, comma list, e.g. 2/255,8/255 "
        "(default: the preset's robust.eps; none: no curve).",
    ),
]
CurveAttacksOpt = Annotated[
    str | None,
    typer.Option(
        "--attacks",
        help="The curve's attacks, worst case per image, e.g. pgd,apgd-ce,apgd-t "
        "(default: the preset's robust.attacks).",
    ),
]
TargetedOpt = Annotated[
    str | None,
    typer.Option(
        "--targeted",
        help="Targeted attacks, e.g. 'mel->nv,nv->mel' (default: the preset's robust.targeted).",
    ),
]
TargetedEpsOpt = Annotated[
    str | None,
    typer.Option(
        "--targeted-eps",
        help="Their budgets, e.g. 2/255,8/255 (default: the preset's, else robust.select_eps).",
    ),
]
AutoAttackEpsOpt = Annotated[
    str | None,
    typer.Option(
        "--autoattack-eps",
        help="Also run AutoAttack (reference, standard version) at these budgets, e.g. 2/255, "
        "beside our ensemble on the curve's images (default: off).",
    ),
]
ReportOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Write the grid's report for this model (report.md, report.html, CSVs, PNGs) "
        "into this folder.",
    ),
]
EvalExperimentOpt = Annotated[
    str,
    typer.Option(
        "--experiment",
        help="MLflow experiment of the run logged when MLFLOW_TRACKING_URI is set "
        "(default: the grid's, so the model sits beside its cells).",
    ),
]


def eps_list(text: str, flag: str) -> list[float]:
    """``"2/255,8/255"`` -> ``[2/255, 8/255]`` (ascending, each in (0, 1]); ValueError
    naming ``flag`` otherwise."""
    from skinadv.commands.verify import parse_eps_list

    try:
        return parse_eps_list(text)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--eps", flag)) from None


def _items(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def robust_config(
    cfg: ExperimentConfig,
    *,
    eps: str | None = None,
    attacks: str | None = None,
    targeted: str | None = None,
    targeted_eps: str | None = None,
) -> ExperimentConfig:
    """``cfg`` with the robust section's curve and targeted attacks as the flags say
    (validated as a preset's); targeted pairs without any budget take ``select_eps``."""
    robust = cfg.robust.model_dump()
    if eps is not None:
        robust["eps"] = eps_list(eps, "--eps")
    if attacks is not None:
        robust["attacks"] = [attack_name(a) for a in _items(attacks)]
    if targeted is not None:
        robust["targeted"] = _items(targeted)
    if targeted_eps is not None:
        robust["targeted_eps"] = eps_list(targeted_eps, "--targeted-eps")
    if robust["targeted"] and not robust["targeted_eps"]:
        robust["targeted_eps"] = [robust["select_eps"]]
    return cfg.model_copy(update={"robust": RobustConfig.model_validate(robust)})


def robust_images(cfg: ExperimentConfig, test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The curve's images: ``robust.n_images`` of the test set, stratified (seed 0: the
    grid's and ``skinadv verify``'s subset), or all of them."""
    from skinadv.evaluation.subset import stratified_indices

    x, y = test.to_float()
    n = cfg.robust.n_images
    if n is not None and n < len(y):
        idx = stratified_indices(np.asarray(y), n, seed=0)
        x, y = x[idx], y[idx]
    return torch.from_numpy(x), torch.from_numpy(y)


def autoattack_metrics(
    cfg: ExperimentConfig,
    model: nn.Module,
    test: Dataset,
    eps_values: Sequence[float],
    *,
    cell: str,
    seed: int,
    device: str | torch.device,
    on_point: Any = None,
) -> tuple[dict[str, float], list[str]]:
    """AutoAttack beside our ensemble (``verify``, as ``skinadv verify`` runs it) on the
    curve's images. Returns (``autoattack_2_255_accuracy``, ``ensemble_...``, ... as
    ``skinadv verify`` logs them; the flags raised)."""
    from skinadv.commands.verify import _spec_for, ensemble_attacks
    from skinadv.evaluation.autoattack import verify
    from skinadv.evaluation.verify_report import VerifiedModel

    x, y = robust_images(cfg, test)
    comps = verify(
        model, x, y, eps_values, functools.partial(_spec_for, cfg), ensemble_attacks(cfg),
        batch_size=cfg.attack.batch_size, seed=seed, device=device, on_point=on_point,
    )  # fmt: skip
    seconds = sum(c.autoattack.seconds for c in comps)
    verified = VerifiedModel(cell, seed, None, "evaluate", tuple(comps), seconds)
    return verified.metrics(), verified.flags()


def for_report(result: ModelResult) -> ModelResult:
    """The renderer reads one model as the row every other is compared with (the vanilla
    row): a grid cell or defence evaluated alone stands there under its own cell name."""
    if result.method is None:
        return result
    return dataclasses.replace(result, method=None, fraction=None)


def write_report(
    result: ModelResult,
    out: Path,
    *,
    title: str,
    context: Mapping[str, Any],
    checks: Sequence[Check],
    subject: str | None = None,
) -> dict[str, Path]:
    """The grid's report (``build_report`` / ``save_report``) for this one model, named
    ``subject`` in its words (e.g. ``net.pt2 (export)``) where the grid's name the vanilla
    CNN."""
    from skinadv.report import build_report, save_report

    report = build_report(
        [for_report(result)], title=title, context=context, checks=checks, subject=subject
    )
    written = save_report(report, out)
    import matplotlib.pyplot as plt

    for fig in report.figures.values():
        plt.close(fig)
    return written


def mlflow_configured() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def log_run(
    experiment: str,
    result: ModelResult,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    files: Sequence[Path] = (),
    name: str | None = None,
) -> str:
    """One MLflow run owned here from start to end (named ``name``, default ``evaluate
    CELL``): the grid cells' metric names (``flat_metrics``, plus AutoAttack's ``extra``),
    ``evaluation.json`` and the report's files. It carries no config-hash tag, so the grid
    never reuses it as a trained cell."""
    from skinadv import tracking

    name = name or f"evaluate {result.cell}"
    with tracking.owned_run(
        experiment, name=name, kind="evaluation", params=params,
        tags={tracking.TAG_CELL: result.cell, **tags},
    ) as run_id:  # fmt: skip
        tracking.log_metrics(run_id, {**result.flat_metrics(), **result.extra})
        tracking.log_result(run_id, dataclasses.replace(result, run_id=run_id).to_dict())
        if files:
            tracking.log_artifact_files(run_id, list(files), "report")
    return run_id


def _row(accuracy: Any, balanced: Any, mel: Any) -> dict[str, Any]:
    """A row as ``_metrics_table`` reads it (``metrics()``'s keys; no macro F1 here)."""
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": None,
            "recall": {"mel": mel}}  # fmt: skip


def robust_rows(result: ModelResult) -> list[tuple[str, dict[str, Any]]]:
    """Console rows: the curve (per-image worst case), then AutoAttack at its budgets."""
    from skinadv.report.autoattack import parse_key

    rows = [
        (f"robust {eps_text(p.eps)} ({'+'.join(p.attacks)})",
         _row(p.accuracy, p.balanced_accuracy, p.mel_recall))
        for p in result.curve
    ]  # fmt: skip
    keys = [parse_key(k) for k in result.extra]
    labels = sorted({k[1] for k in keys if k and k[0] == "autoattack"})
    for label in labels:
        got = {m: result.extra.get(f"autoattack_{label}_{m}")
               for m in ("accuracy", "balanced_accuracy", "mel_recall")}  # fmt: skip
        text = eps_text(float(label.split("_")[0]) / 255) if "_255" in label else label
        rows.append((f"AutoAttack {text}", _row(*got.values())))
    return rows


def targeted_lines(result: ModelResult) -> list[str]:
    return [
        f"targeted {t.source}->{t.target} at {eps_text(t.eps)}: "
        + ("-" if t.success is None else f"{100 * t.success:.1f} %")
        + f" of {t.n} correctly classified {t.source} images"
        for t in result.targeted
    ]


__all__ = [
    "AutoAttackEpsOpt",
    "CurveAttacksOpt",
    "CurveEpsOpt",
    "EvalExperimentOpt",
    "ReportOutOpt",
    "TargetedEpsOpt",
    "TargetedOpt",
    "autoattack_metrics",
    "eps_list",
    "for_report",
    "log_run",
    "mlflow_configured",
    "robust_config",
    "robust_images",
    "robust_rows",
    "targeted_lines",
    "write_report",
]
