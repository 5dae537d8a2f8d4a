"""The report's first screen: three plain sentences and a mini-table (the vanilla model, the
most robust static cell and the most robust defence trained on the fly), in the figures a
clinician reads, with the eps scale in 255ths and the chance level."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinadv import selection as select
from skinadv.report.frame import HIGH, LOW, nv_baseline, on_the_fly, static_cells, vanilla_row
from skinadv.results import ModelResult, eps_label
from skinadv.stats import t_interval

#: Balanced accuracy of guessing (7 classes), in percent.
CHANCE = 100 / 7
#: What the mini-table shows, in order, when the run has a robust curve at these budgets.
ROBUST_COLUMNS = (
    "clean_balanced_accuracy",
    "robust_2_255_balanced_accuracy",
    "robust_8_255_balanced_accuracy",
    "autoattack_balanced_accuracy",
    "robust_2_255_mel_recall",
)
#: ... and without one: the paper's budgets, white-box.
PAPER_COLUMNS = (
    "clean_balanced_accuracy",
    "clean_mel_recall",
    "whitebox_pgd_balanced_accuracy",
    "transfer_pgd_balanced_accuracy",
)
AUTOATTACK_AT = 2 / 255


def in_255ths(eps: float) -> str:
    """``0.3`` -> ``77/255`` (76.5, rounded half up); ``2/255`` -> ``2/255``."""
    return f"{int(eps * 255 + 0.5 + 1e-9):d}/255"


#: the role of the one model of a single-model report (``skinadv evaluate``)
SUBJECT_ROLE = "this model"


def glance_cells(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """``[(role, cell)]``: the vanilla model, the most robust static cell and the most robust
    defence trained on the fly, each chosen on the validation split as the verdict and the
    champions choose (``selection.best(..., "robust")``; the paper's rule for static cells
    when the run has no validation robust figure)."""
    out = [("no defence", str(vanilla_row(frame)["cell"]))]
    static = static_cells(frame)
    cell = select.best(static, "robust") or select.best(static, "paper")
    if cell:
        out.append(("best static cell", cell))
    cell = select.best(on_the_fly(frame), "robust")
    if cell:
        out.append(("best defence", cell))
    return out


def _autoattack(results: Sequence[ModelResult], cell: str) -> tuple[float, float, float]:
    """Mean AutoAttack balanced accuracy (%) at 2/255 over the cell's verified seeds, with
    its t-interval bounds (NaN for one seed or none)."""
    key = f"autoattack_{eps_label(AUTOATTACK_AT)}_balanced_accuracy"
    vals = [100 * float(r.extra[key]) for r in results if r.cell == cell and key in r.extra]
    if not vals:
        return np.nan, np.nan, np.nan
    if len(vals) == 1:
        return vals[0], np.nan, np.nan
    iv = t_interval(vals)
    return iv.mean, iv.low, iv.high


def glance_table(
    frame: pd.DataFrame, results: Sequence[ModelResult], single: bool = False
) -> pd.DataFrame:
    """The mini-table: ``model`` (its role; ``SUBJECT_ROLE`` for the one model of a
    ``single``-model report), ``cell``, ``seeds``, then each figure of ``ROBUST_COLUMNS`` (or
    ``PAPER_COLUMNS`` without a robust curve at 2/255) with its interval bounds;
    AutoAttack's only when ``skinadv verify`` or ``--autoattack-eps`` measured it."""
    robust = (
        "robust_2_255_balanced_accuracy" in frame
        and frame["robust_2_255_balanced_accuracy"].notna().any()
    )
    wanted = ROBUST_COLUMNS if robust else PAPER_COLUMNS
    rows = []
    for role, cell in glance_cells(frame):
        src = frame[frame["cell"] == cell].iloc[0]
        row = {"model": SUBJECT_ROLE if single else role, "cell": cell, "seeds": int(src["seeds"])}
        for col in wanted:
            if col == "autoattack_balanced_accuracy":
                row[col], row[col + LOW], row[col + HIGH] = _autoattack(results, cell)
            elif col in src:
                row.update({c: src.get(c, np.nan) for c in (col, col + LOW, col + HIGH)})
        rows.append(row)
    table = pd.DataFrame(rows)
    empty = [c for c in wanted if c in table and table[c].isna().all()]
    return table.drop(columns=[c + s for c in empty for s in ("", LOW, HIGH)])


def _pct(row: pd.Series, key: str) -> str:
    v = row.get(key, np.nan)
    return "–" if pd.isna(v) else f"{v:.1f} %"


def glance_sentences(
    table: pd.DataFrame,
    frame: pd.DataFrame,
    results: Sequence[ModelResult],
    subject: str | None = None,
) -> list[str]:
    """Three plain sentences over the mini-table: what the undefended model (or the one
    ``subject`` of a single-model report) scores and what an invisible attack leaves of it,
    what the best defence buys and costs, and what the paper's budgets do."""
    rows = {r["model"]: r for _, r in table.iterrows()}
    v = rows[SUBJECT_ROLE if subject else "no defence"]
    nv = nv_baseline(results)
    base = f" (always answering 'nevus' scores {nv:.1f} % accuracy)" if nv is not None else ""
    who = f"The model evaluated, {subject}," if subject else "Without a defence the classifier"
    s = [
        f"{who} gets {_pct(v, 'clean_balanced_accuracy')} balanced "
        f"accuracy on clean test images, where guessing gets {CHANCE:.1f} %{base}."
    ]
    if "robust_2_255_balanced_accuracy" in table:
        s[0] += (
            " An attack that changes each pixel by at most 2/255, invisible to the eye, "
            f"brings it to {_pct(v, 'robust_2_255_balanced_accuracy')}."
        )
        d = rows.get("best defence", rows.get("best static cell"))
        if d is not None:
            aa = d.get("autoattack_balanced_accuracy", np.nan)
            checked = "" if pd.isna(aa) else f" ({aa:.1f} % under AutoAttack)"
            s.append(
                f"The most robust defence, {d['cell']}, keeps "
                f"{_pct(d, 'robust_2_255_balanced_accuracy')}{checked} at 2/255 and "
                f"{_pct(d, 'robust_8_255_balanced_accuracy')} at 8/255, for "
                f"{_pct(d, 'clean_balanced_accuracy')} on clean images."
            )
    wb = frame.get("whitebox_pgd_balanced_accuracy")
    paper = "At the paper's budgets (eps 0.2 and 0.3, that is 51/255 and 77/255, where the"
    paper += " lesion is visibly destroyed) white-box attacks leave almost nothing"
    if wb is not None and wb.notna().any():
        paper += f": at most {wb.max():.1f} % balanced accuracy for any model here"
    s.append(
        paper + "; the paper's higher figures come from scoring attacks crafted against "
        "another model (transfer), and from label leaking."
    )
    return s


__all__ = [
    "CHANCE",
    "SUBJECT_ROLE",
    "glance_cells",
    "glance_sentences",
    "glance_table",
    "in_255ths",
]
