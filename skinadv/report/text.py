"""The report's sentences, generated from the numbers: the verdict and headline, and the
protocol notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from skinadv import selection as select
from skinadv.report.autoattack import autoattack_flags, autoattack_table
from skinadv.report.console import baseline_words
from skinadv.report.frame import (
    HIGH,
    LOW,
    eps_of,
    robust_key,
    static_cells,
    vanilla_row,
)
from skinadv.report.paired import (
    GAP,
    VS,
    difference_words,
    key_words,
    paired_differences,
    select_label,
)
from skinadv.report.tables import ATTACKS, PAPER_VANILLA, eps_text
from skinadv.results import ModelResult
from skinadv.stats import Interval

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
    if pd.isna(row["fraction"]):
        return f"{row['cell']} (adversarial examples crafted on the fly in training)"
    what = METHOD_WORDS.get(row["method"], row["method"])
    return f"{row['cell']} ({what} copies of {100 * row['fraction']:.0f} % of the training set)"


def _pm(row: pd.Series, key: str) -> str:
    """``61.0 ± 2.3 %`` (the 95 % interval's half-width), or ``61.0 %`` without one."""
    half = (row.get(key + HIGH, np.nan) - row.get(key + LOW, np.nan)) / 2
    return f"{row[key]:.1f} %" if pd.isna(half) else f"{row[key]:.1f} ± {half:.1f} %"


def _seeds(*rows: pd.Series) -> str:
    """``3 seeds``, ``3 seeds each``, ``3 and 1 seeds``, ``one seed``."""
    n = [int(r["seeds"]) for r in rows]
    words = "one seed" if n[0] == 1 else f"{n[0]} seeds"
    if len(set(n)) > 1:
        return " and ".join(map(str, n)) + " seeds"
    return words + (" each" if len(n) > 1 else "")


def _row(frame: pd.DataFrame, cell: str | None) -> pd.Series | None:
    return None if cell is None else frame[frame["cell"] == cell].iloc[0]


def _changes(diffs: dict[str, Interval], keys: Sequence[str]) -> str:
    """The sentence on what a model changes against the vanilla model of the same seed
    ("..., paired over 3 seeds, it changes clean balanced accuracy by -1.2 ± 0.8 points
    (unresolved: ...) and ...") for the ``vs_vanilla_`` differences of ``keys`` that were
    measured; empty when none was."""
    ivs = [(k, diffs[VS + k]) for k in keys if VS + k in diffs]
    if not ivs:
        return ""
    n = {iv.n for _, iv in ivs}
    once = len(n) == 1
    parts = [f"{key_words(k)} by {difference_words(iv, seeds=not once)}" for k, iv in ivs]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if not once:
        how = ""
    elif min(n) > 1:
        how = f", paired over {min(n)} seeds,"
    else:
        how = " (one seed, so no interval: none of these is resolved)"
    return f"Against the vanilla model of the same seed{how} it changes {text}."


def _robust_key(frame: pd.DataFrame, results: Sequence[ModelResult], metric: str) -> str | None:
    """``robust_<select eps>_<metric>`` when the frame has it."""
    sel = select_label(results)
    key = f"robust_{sel}_{metric}"
    return key if sel and key in frame and frame[key].notna().any() else None


def verdict_cells(frame: pd.DataFrame, results: Sequence[ModelResult]) -> list[str]:
    """The cells the verdict names, chosen on the validation split as ``verdict`` chooses
    them: the best static defence by the paper's rule, then the most robust defence at the
    selection budget (when the run has a robust curve); each once. What ``skinadv verify``
    checks with AutoAttack, besides the champions."""
    at_bal = _robust_key(frame, results, "balanced_accuracy")
    named = [select.best(static_cells(frame), "paper")]
    if at_bal:
        named.append(select.best(frame[frame["method"].notna()].dropna(subset=[at_bal]), "robust"))
    return list(dict.fromkeys(c for c in named if c is not None))


def curve_images(results: Sequence[ModelResult]) -> str | None:
    """The fixed test subset the robust curves were scored on ("500 test images"); None
    when they were scored on the whole test set."""
    sizes = sorted({p.n_images for r in results for p in r.curve if p.n_images})
    return f"{' / '.join(map(str, sizes))} test images" if sizes else None


def verdict(frame: pd.DataFrame, results: Sequence[ModelResult]) -> list[str]:
    """The opening sentences, in clinical figures (balanced accuracy, melanoma recall) with
    accuracy beside them, each difference paired by seed ("+X ± w points, paired over n
    seeds"; "unresolved" where its interval covers 0): what the paper's protocol says of the
    best static defence against what the honest one says, what that defence changes against
    the vanilla model, and, with robust curves, which defence holds at the selection budget
    and at what cost. Every "best" is chosen on the validation split (``skinadv.selection``)
    and then reported on the test set; without a validation split nothing is named best."""
    s = []
    diffs = paired_differences(results)
    at_bal = _robust_key(frame, results, "balanced_accuracy")
    at_mel = _robust_key(frame, results, "mel_recall")
    best = _row(frame, select.best(static_cells(frame), "paper"))
    if best is not None and not pd.isna(best.get("whitebox_pgd_accuracy", np.nan)):
        d = diffs.get(best["cell"], {})
        gap = d.get(GAP + "pgd_balanced_accuracy")
        s.append(
            f"Under the paper's protocol the best static defence (chosen by the paper's rule "
            f"on the validation split), {best['cell']}, keeps "
            f"{_pm(best, 'transfer_pgd_balanced_accuracy')} balanced accuracy against "
            f"PGD{_eps(results, 'pgd', 'at eps')} ({_pm(best, 'transfer_pgd_accuracy')} "
            f"accuracy); re-running the attack against it leaves "
            f"{_pm(best, 'whitebox_pgd_balanced_accuracy')} "
            f"({_pm(best, 'whitebox_pgd_accuracy')} accuracy)"
            + (f": white-box − transfer {difference_words(gap)}." if gap else ".")
        )
        attacked = [at_bal] if at_bal else ["whitebox_pgd_balanced_accuracy"]
        s.append(_changes(d, ["clean_balanced_accuracy", "clean_mel_recall", *attacked]))
    if at_bal:
        eps = eps_text(eps_of(robust_key(at_bal)[0]))
        v = vanilla_row(frame)
        m = _row(
            frame, select.best(frame[frame["method"].notna()].dropna(subset=[at_bal]), "robust")
        )
        if m is not None:
            lead = (
                f"At eps {eps} the most robust defence on the validation split is {m['cell']}: "
                f"robust balanced accuracy on {curve_images(results) or 'the test set'} {_pm(m, at_bal)}"
            )
            d = diffs.get(m["cell"], {})
            if pd.isna(v.get(at_bal, np.nan)) or VS + at_bal not in d:
                s.append(f"{lead} ({_seeds(m)}; the vanilla model has no robust curve).")
            else:
                keys = [k for k in (at_mel, "clean_balanced_accuracy", "clean_mel_recall") if k]
                s.append(
                    f"{lead} against the vanilla model's {_pm(v, at_bal)} "
                    f"({difference_words(d[VS + at_bal])})."
                )
                s.append(_changes(d, keys))
    return [x for x in s if x]


def _seeds_sentence(frame: pd.DataFrame) -> str:
    n = frame["seeds"].astype(int)
    if n.max() == 1:
        bounds = frame[[c for c in frame.columns if c.endswith(LOW)]]
        if bounds.notna().any().any():
            return (
                "Each model was trained once (one seed): ± is a bootstrap over test images, "
                "not over training runs."
            )
        return "Each model was trained once (one seed), so no interval can be given."
    counts = f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}–{n.max()}"
    out = (
        f"Numbers are means over each model's seeds ({counts}); ± is the half-width of the "
        "95 % t-interval over seeds."
    )
    if n.min() == 1:
        out += " For models trained once it is a bootstrap over test images."
    return out


def _eps(results: Sequence[ModelResult], attack: str, words: str = "") -> str:
    """`` (eps 0.3)``, or `` at eps 0.3`` given ``words="at eps"``; empty when unknown."""
    for r in results:
        eps = r.whitebox.eps(attack)
        if eps is not None:
            return f" {words} {eps:g}" if words else f" (eps {eps:g})"
    return ""


def _where(names: Sequence[str], total: int, noun: str = "cell") -> str:
    """``every cell (12 of 12)`` or ``2 of 12 cells (pgd@0.6, pgd@0.8)``."""
    if len(names) == total:
        return f"every {noun} ({total} of {total})"
    return f"{len(names)} of {total} {noun}s ({', '.join(names)})"


def headline(
    frame: pd.DataFrame,
    results: Sequence[ModelResult],
    checks: Sequence[Check] = (),
    subject: str | None = None,
) -> str:
    """The lead paragraph: the verdict (``verdict``), the vanilla model's clean and
    white-box numbers beside the paper's, the best defence by white-box PGD accuracy, how
    far transfer overstates white-box, label leaking, how many seeds, and the sanity
    checks' verdict.

    Args:
        frame: ``results_frame(results)`` (percent, mean over seeds).
        results: the same results (for the attacks' eps).
        checks: the sanity checks, counted.
        subject: the one model of a single-model report (``skinadv evaluate``), named in
            place of "the vanilla CNN".
    """
    v = vanilla_row(frame)
    s = verdict(frame, results)
    mel = v.get("clean_mel_recall", np.nan)
    s.append(
        f"{subject or 'The vanilla CNN'} reaches {v['clean_balanced_accuracy']:.1f} % clean "
        "balanced accuracy"
        + ("" if pd.isna(mel) else f" and {mel:.1f} % melanoma recall")
        + f"; its accuracy is {v['clean_accuracy']:.1f} % (the paper reports "
        f"{PAPER_VANILLA['clean']:.2f} %; {baseline_words(results)})."
    )
    wb = {a: v.get(f"whitebox_{a}_accuracy", np.nan) for a in ATTACKS}
    wb_bal = {a: v.get(f"whitebox_{a}_balanced_accuracy", np.nan) for a in ATTACKS}
    if not any(np.isnan(x) for x in [*wb.values(), *wb_bal.values()]):
        s.append(
            f"Attacked white-box its balanced accuracy falls to {wb_bal['fgsm']:.1f} % under "
            f"FGSM{_eps(results, 'fgsm')} and {wb_bal['pgd']:.1f} % under "
            f"PGD{_eps(results, 'pgd')}; its accuracy to {wb['fgsm']:.1f} % and "
            f"{wb['pgd']:.1f} %, where the paper reports {PAPER_VANILLA['fgsm']:.2f} % and "
            f"{PAPER_VANILLA['pgd']:.2f} %."
        )
    # static cells and defences trained on the fly; the best chosen on the validation split
    best = _row(frame, select.best(frame[frame["method"].notna()], "robust"))
    if best is not None and not pd.isna(best.get("whitebox_pgd_accuracy", np.nan)):
        figures = (
            f"{best['whitebox_pgd_balanced_accuracy']:.1f} % balanced accuracy under white-box "
            f"PGD ({best['whitebox_pgd_accuracy']:.1f} % accuracy) at "
            f"{best['clean_balanced_accuracy']:.1f} % clean balanced accuracy "
            f"({best['clean_accuracy']:.1f} % accuracy)"
        )
        if best["whitebox_pgd_accuracy"] < HOLDS_POINTS:
            s.append(
                f"No adversarially trained model resists white-box PGD: the most robust on "
                f"the validation split, {_cell_words(best)}, keeps {figures}."
            )
        else:
            s.append(
                f"The most robust model on the validation split is {_cell_words(best)}: {figures}."
            )
    cells = static_cells(frame)
    if not cells.empty and "whitebox_pgd_accuracy" in cells:
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
    s.append(_seeds_sentence(frame))
    s += _autoattack_sentence(results)
    if checks:
        warned = sum(not c.ok for c in checks)
        s.append(
            f"{warned} of {len(checks)} sanity checks warn (see below)."
            if warned
            else f"All {len(checks)} sanity checks pass."
        )
    return " ".join(s)


def _autoattack_sentence(results: Sequence[ModelResult]) -> list[str]:
    """Whether AutoAttack (``skinadv verify``) agrees with our ensemble; nothing when it was
    not run."""
    table = autoattack_table(results)
    if table.empty:
        return []
    models = len(table[["cell", "seed"]].drop_duplicates())
    flags = autoattack_flags(table)
    if not flags:
        text = (
            f"AutoAttack, run on {models} model(s), is never more than 1 point below our "
            "ensemble and shows no sign of gradient masking."
        )
    else:
        text = (
            f"AutoAttack, run on {models} model(s), raises {len(flags)} warning(s): see "
            '"AutoAttack vs our ensemble".'
        )
    return [text]


def protocol_notes(frame: pd.DataFrame) -> list[str]:
    """Where the protocols disagree, one sentence per attack and kind: white-box far below
    transfer (transfer overstates robustness), and attacks that 'help' (label leaking)."""
    cells = static_cells(frame)
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
                f"{frame.loc[i, 'clean_accuracy']:.1f} %: label leaking (see above)."
            )
    return notes
