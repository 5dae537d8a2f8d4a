"""The report's tables: ``ModelResult``s in, pandas frames out.

Frames keep machine column names (the flat metric keys of ``skinadv.results``, values in
percent, averaged over seeds) so the CSV files stay stable; ``column_label`` turns a name
into the human header the Markdown and HTML show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinadv.report.autoattack import SQUARE
from skinadv.report.frame import (
    HIGH,
    LOW,
    eps_of,
    on_the_fly,
    robust_columns,
    robust_key,
    static_cells,
    targeted_key,
    vanilla_row,
    with_interval,
)
from skinadv.report.paired import GAP, VS
from skinadv.results import METRICS, PROTOCOLS, VAL, eps_text, metric_key
from skinadv.selection import best_per_method

#: The paper's two attacks, in table order.
ATTACKS: tuple[str, ...] = ("fgsm", "pgd")

#: The paper's numbers (percent): Table 1 and the best split per method (Table 2).
PAPER_VANILLA = {"clean": 70.19, "fgsm": 57.21, "pgd": 37.69}
PAPER_BEST = {
    "fgsm": {"fraction": 0.2, "clean": 69.64, "fgsm": 69.49, "pgd": 69.54},
    "pgd": {"fraction": 0.8, "clean": 75.33, "fgsm": 75.23, "pgd": 75.13},
    "mix": {"fraction": 0.6, "clean": 67.34, "fgsm": 66.70, "pgd": 66.00},
}

#: Clinical figures lead, accuracy (the paper's figure) beside them.
_BAL_ACC = ("balanced_accuracy", "accuracy")
_CLINICAL = ("balanced_accuracy", "mel_recall", "accuracy")


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """Vanilla model under each protocol: clean / FGSM / PGD balanced accuracy, melanoma
    recall and accuracy (each with its interval), and the paper's Table 1 (accuracy only).
    A metric not scored under attack (melanoma recall of an older run) is left out."""
    v = vanilla_row(frame)
    names = [f"{a}_{m}" for m in _CLINICAL for a in ("clean", *ATTACKS)]
    names = [n for n in names if n.startswith("clean_") or _scored(frame, n)]
    rows: list[dict[str, Any]] = []
    for p in PROTOCOLS:
        row: dict[str, Any] = {"protocol": "white-box" if p == "whitebox" else p}
        row["seeds"] = v["seeds"]
        for a in ("clean", *ATTACKS):
            for m in _CLINICAL:
                key = metric_key(p, a, m)
                for end in ("", LOW, HIGH):
                    row[f"{a}_{m}{end}"] = v.get(key + end, np.nan)
        rows.append(row)
    rows.append({"protocol": "paper", **{f"{a}_accuracy": x for a, x in PAPER_VANILLA.items()}})
    cols = ["protocol", "seeds", *(n + e for n in names for e in ("", LOW, HIGH))]
    return pd.DataFrame(rows, columns=cols)


def _scored(frame: pd.DataFrame, name: str) -> bool:
    """Whether ``fgsm_mel_recall`` (say) was scored under some protocol for some model."""
    keys = [f"{p}_{name}" for p in PROTOCOLS]
    return any(k in frame and frame[k].notna().any() for k in keys)


def grid_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every static cell (method x fraction): clean balanced accuracy, melanoma recall and
    accuracy, then balanced accuracy and accuracy under each attack and protocol, each with
    its interval."""
    cols = [
        "clean_balanced_accuracy",
        "clean_mel_recall",
        "clean_accuracy",
        *(metric_key(p, a, m) for p in PROTOCOLS for a in ATTACKS for m in _BAL_ACC),
    ]
    cols = ["method", "fraction", "seeds", *with_interval(frame, cols)]
    return static_cells(frame).reindex(columns=cols).reset_index(drop=True)


def best_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method, the cell the paper's rule ranks first on the validation split (the mean
    of clean, transfer FGSM and transfer PGD accuracy; ``skinadv.selection``): no test
    figure is read to choose it. Empty without a validation split."""
    cells = static_cells(frame)
    chosen = set(best_per_method(cells, "paper").values())
    return cells[cells["cell"].isin(chosen)].reset_index(drop=True)


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Best split per method (see ``best_cells``), white-box beside transfer, then the
    paper's best cell for that method."""
    cols = [
        "clean_balanced_accuracy",
        "clean_mel_recall",
        "clean_accuracy",
        *(
            k
            for p in PROTOCOLS
            for k in (
                metric_key(p, "pgd", "balanced_accuracy"),
                metric_key(p, "pgd", "accuracy"),
                metric_key(p, "fgsm", "accuracy"),
            )
        ),
    ]
    cols = ["method", "fraction", "seeds", *with_interval(frame, cols)]
    out = best_cells(frame).reindex(columns=cols).rename(columns={"fraction": "best_fraction"})
    for key in ("fraction", "clean", *ATTACKS):
        col = f"paper_{key}" if key == "fraction" else f"paper_{key}_accuracy"
        out[col] = [PAPER_BEST.get(m, {}).get(key, np.nan) for m in out["method"]]
    return out


def _robust(frame: pd.DataFrame, metrics: Sequence[str] = _BAL_ACC) -> list[str]:
    """Robust-curve columns at eps > 0 (eps 0 is the clean accuracy, shown already)."""
    cols = [c for m in metrics for c in robust_columns(frame, m)]
    return [c for c in cols if eps_of(robust_key(c)[0]) > 0]


def defences_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Defences trained on the fly (``pgd-at``, ``trades``, ...) beside the vanilla model:
    clean balanced accuracy, melanoma recall and accuracy, white-box PGD balanced accuracy
    and accuracy, and robust balanced accuracy at each eps of the curve when there is one
    (``robust_table`` has all metrics), then what training cost. Empty when no such defence
    was run."""
    rows = on_the_fly(frame)
    if rows.empty:
        return rows.reindex(columns=["cell", "seeds"])
    cols = [
        "clean_balanced_accuracy",
        "clean_mel_recall",
        "clean_accuracy",
        "whitebox_pgd_balanced_accuracy",
        "whitebox_pgd_accuracy",
        *_robust(frame, ["balanced_accuracy"]),
        "train_seconds",
        "train_grad_evals",
    ]
    rows = pd.concat([frame[frame["method"].isna()], rows])
    return rows.reindex(columns=["cell", "seeds", *with_interval(frame, cols)]).reset_index(
        drop=True
    )


def robust_table(frame: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """The robust-accuracy figure's lines (``curve_cells``) as numbers: worst-case balanced
    accuracy, melanoma recall and accuracy at each eps > 0."""
    rows = frame.set_index("cell").loc[list(cells)].reset_index()
    cols = _robust(frame, _CLINICAL)
    return rows.reindex(columns=["cell", "seeds", *with_interval(frame, cols)])


def clinical_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The clinical view, one row per model: melanoma recall clean, under white-box PGD and
    under the worst case at each eps of the curve, then the success rate of each targeted
    attack (``mel`` -> ``nv``: a missed cancer; ``nv`` -> ``mel``: a false alarm). Empty when
    the run scored no targeted attack and no robust curve."""
    targeted = sorted((c for c in frame.columns if targeted_key(c)), key=targeted_key)
    robust = _robust(frame, ["mel_recall"])
    if not (targeted or robust):
        return frame.iloc[0:0].reindex(columns=["cell", "seeds"])
    cols = [
        "clean_balanced_accuracy",
        "clean_mel_recall",
        "whitebox_pgd_mel_recall",
        *robust,
        *targeted,
    ]
    return frame.reindex(columns=["cell", "seeds", *with_interval(frame, cols)])


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    """A column's header: ``full`` standing alone (Markdown, CSV readers), or ``short``
    under a ``group`` header spanning its neighbours (HTML)."""

    full: str
    short: str
    group: str | None = None


_PLAIN = {
    "model": "Model",
    "cell": "Cell",
    "method": "Method",
    "fraction": "Adv. fraction",
    "best_fraction": "Best fraction",
    "seeds": "n (seeds)",
    "protocol": "Protocol",
    "paper_fraction": "Paper's fraction",
    "seed": "Seed",
    "train_seconds": "Training time (s)",
    "train_grad_evals": "Training cost (gradient evaluations, images)",
    "registered": "MLflow registered model",
    # training cost (skinadv.report.cost)
    "models": "n (models)",
    "precision": "Precision",
    "threads": "Threads",
    "images_per_s_per_thread": "Training images/s per thread",
    "grad_evals_per_image": "Gradient evaluations per image",
    "gflops_per_thread": "GFLOP/s per thread",
    "share_fp32_peak": "Share of fp32 peak (%)",
    "share_bf16_peak": "Share of bf16 peak (%)",
    # sweeps
    "eps": "PGD eps",
    "steps": "PGD steps",
    "restarts": "PGD restarts",
    "accuracy": "Acc. (%)",
    "balanced_accuracy": "Bal. acc. (%)",
    # AutoAttack vs our ensemble
    "budget": "Eps (L-inf)",
    "n_images": "n (images)",
    "autoattack_minus_ensemble_accuracy": "AutoAttack − ensemble, acc. (points)",
    SQUARE: "Images only Square fooled",
}
_METRIC_WORDS = {
    "accuracy": "acc.",
    "balanced_accuracy": "bal. acc.",
    "macro_f1": "macro F1",
    "mel_recall": "mel. recall",
}
GROUPS = {
    "transfer": "Transfer (paper's protocol)",
    "whitebox": "White-box (honest)",
    "paper": "The paper's best cell",
    "robust_accuracy": "Robust acc. (%), worst case, by eps",
    "robust_balanced_accuracy": "Robust bal. acc. (%), worst case, by eps",
    "robust_mel_recall": "Robust mel. recall (%), worst case, by eps",
    "val": "Validation split",
    "targeted": "Targeted PGD success (%), source -> target at eps",
    "vs_vanilla": "Model − vanilla of the same seed (points)",
    "wb_minus_tr": "White-box − transfer, same model (points)",
    "aa_balanced_accuracy": "Bal. acc. (%)",
    "aa_mel_recall": "Mel. recall (%)",
    "aa_accuracy": "Acc. (%)",
}
#: Signed differences in points: shown as "+1.2".
SIGNED = (VS, GAP, "autoattack_minus_")
_SIDES = {"autoattack": "AutoAttack", "ensemble": "Our ensemble"}
_PROTOCOL_WORDS = {"transfer": "transfer", "whitebox": "white-box"}


def column_label(col: str) -> Label:
    """``whitebox_pgd_balanced_accuracy`` -> "PGD white-box bal. acc. (%)" (short "PGD bal.
    acc. (%)" under "White-box ..."); identity columns get a plain word."""
    if col == "seeds":  # "n" in the narrow HTML header, spelled out elsewhere
        return Label(_PLAIN[col], "n")
    if col in _PLAIN:
        return Label(_PLAIN[col], _PLAIN[col])
    if col.startswith(VAL):
        inner = column_label(col.removeprefix(VAL))
        return Label(f"Validation: {inner.full}", inner.short, GROUPS["val"])
    if col.startswith((VS, GAP)):
        return _difference_label(col)
    side, _, metric = col.partition("_")
    if side in _SIDES and metric in METRICS:
        words = _METRIC_WORDS[metric]
        group = GROUPS[f"aa_{metric}"]
        return Label(f"{_SIDES[side]} {words} (%)", _SIDES[side], group)
    targeted = targeted_key(col)
    if targeted is not None:
        source, target, eps = targeted
        at = eps_text(eps)
        return Label(
            f"Targeted {source} -> {target} at eps {at}, success (%)",
            f"{source}→{target} {at}",
            GROUPS["targeted"],
        )
    robust = robust_key(col)
    if robust is not None:
        eps, metric = robust
        words, at = _METRIC_WORDS[metric], eps_text(eps_of(eps))
        return Label(f"Robust {words} at eps {at} (%)", at, GROUPS.get(f"robust_{metric}"))
    head, _, rest = col.partition("_")
    protocol = head if head in (*PROTOCOLS, "paper") else None
    if protocol:
        head, _, rest = rest.partition("_")
    metric = rest if rest in METRICS else None
    if metric is None:
        return Label(col, col)
    attack = "Clean" if head == "clean" else head.upper()
    words = _METRIC_WORDS[metric]
    short = f"{attack} {words} (%)"
    if protocol is None:
        return Label(short, short)
    if protocol == "paper":
        full = f"Paper's {'clean' if head == 'clean' else attack} {words} (%)"
    else:
        full = f"{attack} {_PROTOCOL_WORDS[protocol]} {words} (%)"
    return Label(full, short, GROUPS[protocol])


def _difference_label(col: str) -> Label:
    """``vs_vanilla_clean_balanced_accuracy`` -> "Clean bal. acc. − vanilla (points)" (short
    "Clean bal. acc."); ``wb_minus_tr_pgd_accuracy`` -> "PGD acc., white-box − transfer
    (points)" (short "PGD acc.")."""
    if col.startswith(VS):
        inner = column_label(col.removeprefix(VS))
        short = inner.short.removesuffix(" (%)")
        if inner.group and inner.group.startswith("Robust"):  # "2/255" alone says too little
            short = inner.full.removesuffix(" (%)")
        return Label(
            f"{inner.full.removesuffix(' (%)')} − vanilla (points)", short, GROUPS["vs_vanilla"]
        )
    attack, _, metric = col.removeprefix(GAP).partition("_")
    short = f"{attack.upper()} {_METRIC_WORDS.get(metric, metric)}"
    return Label(f"{short}, white-box − transfer (points)", short, GROUPS["wb_minus_tr"])


def format_value(col: str, v: Any, *, quoted: bool = False) -> str:
    """Fractions as "80 %", counts as integers, ours with one decimal, the paper's numbers
    as it quotes them (2 decimals: ``quoted`` or a ``paper_`` column); missing as a dash.
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if col in ("fraction", "best_fraction", "paper_fraction"):
        return f"{100 * float(v):.0f} %"
    if col in ("train_grad_evals", "images_per_s_per_thread"):
        return f"{float(v):,.0f}"
    if col in ("seeds", "seed", "steps", "restarts", "n_images", "models", "threads"):
        return str(int(v))
    if col in ("eps", "budget"):
        return eps_text(float(v))
    if col == SQUARE:
        return f"{float(v):g}"
    if col.startswith(SIGNED):
        return f"{float(v):+.1f}"
    if isinstance(v, (float, np.floating)):
        return f"{v:.2f}" if quoted or col.startswith("paper_") else f"{v:.1f}"
    return str(v)
