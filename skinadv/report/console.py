"""The console's summary table, printed at the end of a grid and by ``skinadv report``.

Clinical figures lead: balanced accuracy and melanoma recall, clean and under attack (the
paper's PGD, and the ensemble's worst case at the selection budget when the run has a
robust curve); accuracy, the paper's figure, follows, with the always-``nv`` baseline in
the caption so a reader can tell a high accuracy from a model that never says anything
but "nevus".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skinadv.report.frame import HIGH, LOW, NV_FULL_DATA, eps_of, nv_baseline, results_frame
from skinadv.report.paired import select_label
from skinadv.results import ModelResult, eps_text

#: (group, header, flat key): the groups in the order a reader should read them.
Column = tuple[str, str, str]


def console_columns(results: Sequence[ModelResult]) -> list[Column]:
    """The table's number columns: balanced accuracy (clean, PGD transfer, PGD white-box,
    worst case at the selection budget), melanoma recall (clean, PGD white-box, worst
    case), accuracy (clean, FGSM and PGD transfer, PGD white-box)."""
    sel = select_label(results)
    at = eps_text(eps_of(sel)) if sel else ""
    cols: list[Column] = [
        ("bal", "clean", "clean_balanced_accuracy"),
        ("bal", "PGD tr", "transfer_pgd_balanced_accuracy"),
        ("bal", "PGD wb", "whitebox_pgd_balanced_accuracy"),
    ]
    if sel:
        cols.append(("bal", at, f"robust_{sel}_balanced_accuracy"))
    cols += [("mel", "clean", "clean_mel_recall"), ("mel", "PGD wb", "whitebox_pgd_mel_recall")]
    if sel:
        cols.append(("mel", at, f"robust_{sel}_mel_recall"))
    cols += [
        ("acc", "clean", "clean_accuracy"),
        ("acc", "PGD tr", "transfer_pgd_accuracy"),
        ("acc", "PGD wb", "whitebox_pgd_accuracy"),
    ]
    return cols


def baseline_words(results: Sequence[ModelResult]) -> str:
    """What a model that always says ``nv`` scores: "always predicting nv: 67.2 % accuracy
    on this test set (66.9 % on the full data), balanced accuracy 1/7 = 14.3 %, melanoma
    recall 0" (the full data's figure alone when no confusion matrix was kept)."""
    nv = nv_baseline(results)
    acc = (
        f"{NV_FULL_DATA:.1f} % accuracy on the full data"
        if nv is None
        else (f"{nv:.1f} % accuracy on this test set ({NV_FULL_DATA:.1f} % on the full data)")
    )
    return f"always predicting nv: {acc}, balanced accuracy 1/7 = 14.3 %, melanoma recall 0"


def results_table(results: Sequence[ModelResult]):
    """A rich table for the terminal: one row per model (vanilla, then methods x fractions,
    then defences trained on the fly), balanced accuracy, then melanoma recall, then
    accuracy (%), clean and under attack (see ``console_columns``; a column no model has is
    left out); fits 80 columns. With several seeds a row is a cell: the mean over its n
    seeds with the 95 % interval's half-width beneath. The caption states the always-``nv``
    baseline beside accuracy."""
    from rich import box
    from rich.table import Table

    frame = results_frame(results)
    several = int(frame["seeds"].max()) > 1
    columns = [c for c in console_columns(results) if c[2] in frame and frame[c[2]].notna().any()]
    caption = "bal: balanced accuracy, mel: melanoma recall, acc: accuracy"
    caption += "\ntr: transfer (the paper's protocol), wb: white-box"
    if any(c[2].startswith("robust_") for c in columns):
        caption += "; eps: worst case of the white-box ensemble"
    caption += f"\n{baseline_words(results)}"
    if several:
        caption += "\nmean over n seeds, ± half-width of the 95 % interval"
    table = Table(
        title="balanced accuracy | melanoma recall | accuracy (%)",
        caption=caption,
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    # the model name is never cut: a reader must know which row is which
    table.add_column("model", no_wrap=True)
    for group, head, _ in columns:
        table.add_column(f"{group}\n{head.replace(' ', chr(10))}", justify="right")

    def cell(row: pd.Series, key: str) -> str:
        v = row.get(key, np.nan)
        if pd.isna(v):
            return "-"
        half = (row.get(key + HIGH, np.nan) - row.get(key + LOW, np.nan)) / 2
        return f"{v:.1f}\n±{half:.1f}" if several and not pd.isna(half) else f"{v:.1f}"

    for _, row in frame.iterrows():
        name = f"{row['cell']}\nn={int(row['seeds'])}" if several else row["cell"]
        table.add_row(name, *(cell(row, key) for _, _, key in columns))
    return table


__all__ = ["baseline_words", "console_columns", "results_table"]
