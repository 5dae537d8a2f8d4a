"""The report's sentences, generated from the numbers: the headline and the protocol notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from skinadv.report.tables import ATTACKS, PAPER_VANILLA
from skinadv.results import ModelResult

if TYPE_CHECKING:
    from skinadv.evaluation.checks import Check

# White-box this many points below transfer is called out in the report.
GAP_WARN_POINTS = 10.0
# Accuracy under attack this many points above clean accuracy is called label leaking.
LEAK_POINTS = 1.0
# Below this white-box PGD accuracy (%), no cell is called a defence.
HOLDS_POINTS = 1.0

METHOD_WORDS = {"fgsm": "FGSM", "pgd": "PGD", "mix": "half FGSM, half PGD"}


def _cell_words(row: pd.Series) -> str:
    """``pgd@0.8 (PGD copies of 80 % of the training set)``."""
    what = METHOD_WORDS.get(row["method"], row["method"])
    return f"{row['cell']} ({what} copies of {100 * row['fraction']:.0f} % of the training set)"


def _eps(results: Sequence[ModelResult], attack: str) -> str:
    for r in results:
        eps = r.whitebox.eps(attack)
        if eps is not None:
            return f" (eps {eps:g})"
    return ""


def _where(names: Sequence[str], total: int, noun: str = "cell") -> str:
    """``every cell (12 of 12)`` or ``2 of 12 cells (pgd@0.6, pgd@0.8)``."""
    if len(names) == total:
        return f"every {noun} ({total} of {total})"
    return f"{len(names)} of {total} {noun}s ({', '.join(names)})"


def headline(
    frame: pd.DataFrame, results: Sequence[ModelResult], checks: Sequence[Check] = ()
) -> str:
    """The lead paragraph: the vanilla model's clean and white-box numbers beside the
    paper's, the best defence by white-box PGD accuracy, how far transfer overstates
    white-box, label leaking, and the sanity checks' verdict.

    Args:
        frame: ``results_frame(results)`` (percent, mean over seeds).
        results: the same results (for the attacks' eps).
        checks: the sanity checks, counted.
    """
    v = frame[frame["method"].isna()].iloc[0]
    s = [
        (
            f"The vanilla CNN reaches {v['clean_accuracy']:.1f} % clean accuracy "
            f"({v['clean_balanced_accuracy']:.1f} % balanced; the paper reports "
            f"{PAPER_VANILLA['clean']:.2f} %)."
        )
    ]
    wb = {a: v.get(f"whitebox_{a}_accuracy", np.nan) for a in ATTACKS}
    if not any(np.isnan(x) for x in wb.values()):
        s.append(
            f"Attacked white-box it keeps {wb['fgsm']:.1f} % under FGSM{_eps(results, 'fgsm')} "
            f"and {wb['pgd']:.1f} % under PGD{_eps(results, 'pgd')}, where the paper reports "
            f"{PAPER_VANILLA['fgsm']:.2f} % and {PAPER_VANILLA['pgd']:.2f} %."
        )
    cells = frame[frame["method"].notna()]
    if not cells.empty and "whitebox_pgd_accuracy" in cells:
        # ties (all 0 % is common) go to the higher clean accuracy
        best = cells.sort_values(["whitebox_pgd_accuracy", "clean_accuracy"]).iloc[-1]
        if best["whitebox_pgd_accuracy"] < HOLDS_POINTS:
            s.append(
                f"No adversarially trained cell resists white-box PGD: the best, "
                f"{_cell_words(best)}, keeps {best['whitebox_pgd_accuracy']:.1f} % at "
                f"{best['clean_accuracy']:.1f} % clean accuracy."
            )
        else:
            s.append(
                f"The best defence by white-box PGD accuracy is {_cell_words(best)}: "
                f"{best['whitebox_pgd_accuracy']:.1f} % under white-box PGD at "
                f"{best['clean_accuracy']:.1f} % clean accuracy."
            )
        gap = cells["transfer_pgd_accuracy"] - cells["whitebox_pgd_accuracy"]
        worst = cells.loc[gap.idxmax()]
        s.append(
            f"Scored the paper's way, on PGD examples crafted against the vanilla model, the "
            f"{len(cells)} cells reach {cells['transfer_pgd_accuracy'].min():.1f}–"
            f"{cells['transfer_pgd_accuracy'].max():.1f} %: transfer overstates white-box PGD "
            f"accuracy by {gap.mean():.1f} points on average (up to {gap.max():.1f}, "
            f"{worst['cell']})."
        )
        leak = cells["transfer_pgd_accuracy"] > cells["clean_accuracy"] + LEAK_POINTS
        if leak.any():
            s.append(
                f"In {int(leak.sum())} of {len(cells)} cells the transfer PGD accuracy is above "
                "the clean accuracy: label leaking, not robustness."
            )
    if int(frame["seeds"].max()) > 1:
        s.append("Numbers are means over each model's seeds.")
    if checks:
        warned = sum(not c.ok for c in checks)
        s.append(
            f"{warned} of {len(checks)} sanity checks warn (see below)."
            if warned
            else f"All {len(checks)} sanity checks pass."
        )
    return " ".join(s)


def protocol_notes(frame: pd.DataFrame) -> list[str]:
    """Where the protocols disagree, one sentence per attack and kind: white-box far below
    transfer (transfer overstates robustness), and attacks that 'help' (label leaking)."""
    cells = frame[frame["method"].notna()]
    notes = []
    for attack in ATTACKS:
        t, w = cells.get(f"transfer_{attack}_accuracy"), cells.get(f"whitebox_{attack}_accuracy")
        if t is None or w is None:
            continue
        gap = t - w
        far = cells[gap > GAP_WARN_POINTS]
        if not far.empty:
            i = gap.idxmax()
            notes.append(
                f"{attack.upper()}: in {_where(list(far['cell']), len(cells))} the transfer "
                f"accuracy is more than {GAP_WARN_POINTS:.0f} points above the white-box "
                f"accuracy (by {gap[far.index].min():.1f}–{gap.max():.1f} points; largest: "
                f"{cells.loc[i, 'cell']}, {t[i]:.1f} % vs {w[i]:.1f} %). The transfer figure "
                "overstates these models' robustness."
            )
    for attack in ATTACKS:
        t = frame.get(f"transfer_{attack}_accuracy")
        if t is None:
            continue
        over = t - frame["clean_accuracy"]
        leak = frame[over > LEAK_POINTS]
        if not leak.empty:
            i = over.idxmax()
            notes.append(
                f"{attack.upper()}: the transfer accuracy is above the clean accuracy in "
                f"{_where(list(leak['cell']), len(frame), 'model')}; largest: "
                f"{frame.loc[i, 'cell']}, {t[i]:.1f} % vs clean "
                f"{frame.loc[i, 'clean_accuracy']:.1f} %. A sign of label leaking (Kurakin et "
                "al. 2017), not of robustness."
            )
    return notes
