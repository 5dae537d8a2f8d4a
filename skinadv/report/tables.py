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

from skinadv.config import METHODS
from skinadv.results import METRICS, PROTOCOLS, ModelResult, metric_key

#: The paper's two attacks, in table order.
ATTACKS: tuple[str, ...] = ("fgsm", "pgd")

#: The paper's numbers (percent): Table 1 and the best split per method (Table 2).
PAPER_VANILLA = {"clean": 70.19, "fgsm": 57.21, "pgd": 37.69}
PAPER_BEST = {
    "fgsm": {"fraction": 0.2, "clean": 69.64, "fgsm": 69.49, "pgd": 69.54},
    "pgd": {"fraction": 0.8, "clean": 75.33, "fgsm": 75.23, "pgd": 75.13},
    "mix": {"fraction": 0.6, "clean": 67.34, "fgsm": 66.70, "pgd": 66.00},
}

_ACC_BAL = ("accuracy", "balanced_accuracy")


def _order(method: str | None, fraction: float | None) -> tuple[int, str, float]:
    """Vanilla first, then the paper's methods in order, then any other, by fraction."""
    if method is None:
        return (-1, "", 0.0)
    rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (rank, method, fraction or 0.0)


def sort_results(results: Sequence[ModelResult]) -> list[ModelResult]:
    """Vanilla, then methods x fractions, then seed."""
    return sorted(results, key=lambda r: (*_order(r.method, r.fraction), r.seed))


def results_frame(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per cell: ``cell, method, fraction, seeds`` and every flat metric in percent,
    the mean over the cell's seeds (``method`` and ``fraction`` are None for vanilla)."""
    if not results:
        raise ValueError("no results to report")
    records = [r.record() for r in sort_results(results)]
    df = pd.DataFrame(records)
    values = [c for c in df.columns if c.startswith(("clean_", *(f"{p}_" for p in PROTOCOLS)))]
    df[values] = df[values].astype(float) * 100.0
    grouped = df.groupby("cell", sort=False)
    out = grouped[values].mean()
    ident = grouped[["method", "fraction"]].first()  # one method / fraction per cell
    out.insert(0, "seeds", grouped.size())
    out.insert(0, "fraction", ident["fraction"].astype(float))
    out.insert(0, "method", ident["method"])
    return out.reset_index()


def _vanilla(frame: pd.DataFrame) -> pd.Series:
    vanilla = frame[frame["method"].isna()]
    if vanilla.empty:
        raise ValueError("no vanilla result in the results")
    return vanilla.iloc[0]


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["method"].notna()]


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """Vanilla model: clean / FGSM / PGD accuracy and balanced accuracy under each protocol,
    and the paper's Table 1 (accuracy only)."""
    v = _vanilla(frame)
    cols = [f"{a}_{m}" for a in ("clean", *ATTACKS) for m in _ACC_BAL]
    rows: list[dict[str, Any]] = [
        {
            "protocol": "white-box" if p == "whitebox" else p,
            "seeds": v["seeds"],
            **{
                f"{a}_{m}": v.get(metric_key(p, a, m), np.nan)
                for a in ("clean", *ATTACKS)
                for m in _ACC_BAL
            },
        }
        for p in PROTOCOLS
    ]
    rows.append({"protocol": "paper", **{f"{a}_accuracy": x for a, x in PAPER_VANILLA.items()}})
    return pd.DataFrame(rows, columns=["protocol", "seeds", *cols])


def grid_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell (method x fraction): clean metrics, then accuracy and balanced accuracy
    under each attack and protocol."""
    cols = [
        "method",
        "fraction",
        "seeds",
        "clean_accuracy",
        "clean_balanced_accuracy",
        "clean_mel_recall",
        *(metric_key(p, a, m) for p in PROTOCOLS for a in ATTACKS for m in _ACC_BAL),
    ]
    return _cells(frame).reindex(columns=cols).reset_index(drop=True)


def best_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method, the cell with the highest mean of clean, transfer FGSM and transfer PGD
    accuracy: the paper's choice of best split."""
    cells = _cells(frame)
    if cells.empty:
        return cells
    score = cells[["clean_accuracy", "transfer_fgsm_accuracy", "transfer_pgd_accuracy"]].mean(
        axis=1
    )
    best = [score[cells["method"] == m].idxmax() for m in cells["method"].unique()]
    return cells.loc[best].reset_index(drop=True)


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Best split per method (see ``best_cells``), white-box beside transfer, then the
    paper's best cell for that method."""
    cols = [
        "method",
        "fraction",
        "seeds",
        "clean_accuracy",
        "clean_balanced_accuracy",
        *(
            k
            for p in PROTOCOLS
            for k in (
                metric_key(p, "fgsm", "accuracy"),
                metric_key(p, "pgd", "accuracy"),
                metric_key(p, "pgd", "balanced_accuracy"),
            )
        ),
    ]
    out = best_cells(frame).reindex(columns=cols).rename(columns={"fraction": "best_fraction"})
    for key in ("fraction", "clean", *ATTACKS):
        col = f"paper_{key}" if key == "fraction" else f"paper_{key}_accuracy"
        out[col] = [PAPER_BEST.get(m, {}).get(key, np.nan) for m in out["method"]]
    return out


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    """A column's header: ``full`` standing alone (Markdown, CSV readers), or ``short``
    under a ``group`` header spanning its neighbours (HTML)."""

    full: str
    short: str
    group: str | None = None


_PLAIN = {
    "cell": "Cell",
    "method": "Method",
    "fraction": "Adv. fraction",
    "best_fraction": "Best fraction",
    "seeds": "Seeds",
    "protocol": "Protocol",
    "paper_fraction": "Paper's fraction",
    # sweeps
    "eps": "PGD eps",
    "steps": "PGD steps",
    "restarts": "PGD restarts",
    "accuracy": "Acc. (%)",
    "balanced_accuracy": "Bal. acc. (%)",
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
}
_PROTOCOL_WORDS = {"transfer": "transfer", "whitebox": "white-box"}


def column_label(col: str) -> Label:
    """``whitebox_pgd_balanced_accuracy`` -> "PGD white-box bal. acc. (%)" (short "PGD bal.
    acc. (%)" under "White-box ..."); identity columns get a plain word."""
    if col in _PLAIN:
        return Label(_PLAIN[col], _PLAIN[col])
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


def format_value(col: str, v: Any, *, quoted: bool = False) -> str:
    """Fractions as "80 %", counts as integers, ours with one decimal, the paper's numbers
    as it quotes them (2 decimals: ``quoted`` or a ``paper_`` column); missing as a dash.
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if col in ("fraction", "best_fraction", "paper_fraction"):
        return f"{100 * float(v):.0f} %"
    if col in ("seeds", "steps", "restarts"):
        return str(int(v))
    if col == "eps":  # small budgets read as k/255
        k = float(v) * 255
        return f"{round(k)}/255" if 0 < k < 25.5 and abs(k - round(k)) < 1e-6 else f"{v:g}"
    if isinstance(v, (float, np.floating)):
        return f"{v:.2f}" if quoted or col.startswith("paper_") else f"{v:.1f}"
    return str(v)


# --------------------------------------------------------------------------- console


def results_table(results: Sequence[ModelResult]):
    """A rich table for the terminal: one row per model (vanilla, then methods x fractions),
    accuracy then balanced accuracy (%) clean / transfer / white-box; fits 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="accuracy | balanced accuracy (%)",
        caption="tr: transfer (the paper's protocol), wb: white-box",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    # the model name is never cut: a reader must know which row is which
    table.add_column("model", no_wrap=True)
    columns = [("clean", None)] + [(a, p) for p in PROTOCOLS for a in ATTACKS]
    short = {"transfer": "tr", "whitebox": "wb"}
    for metric, prefix in (("accuracy", "acc"), ("balanced_accuracy", "bal")):
        for attack, protocol in columns:
            name = "clean" if protocol is None else f"{attack.upper()} {short[protocol]}"
            table.add_column(f"{prefix}\n{name}", justify="right")
    ordered = sort_results(results)
    one_seed = len({r.seed for r in ordered}) <= 1
    for r in ordered:
        flat = r.flat_metrics()
        values = [flat.get(metric_key(p, a, m)) for m in _ACC_BAL for a, p in columns]
        table.add_row(
            r.cell if one_seed else r.key,
            *("-" if v is None else f"{100 * v:.1f}" for v in values),
        )
    return table
