"""Model selection, from the validation split only.

Every choice of a model — the paper's best split per method (Table 2), the defence the
verdict names, the lines of the robust-accuracy figure, the champion registered per method
— reads validation figures (the ``val_*`` columns of a results frame, a result's
``validation_metrics()``) and nothing else: a model chosen on the test set is flattered by
the very numbers then reported for it. Each function first cuts its input down to the
identity columns and the validation columns (``validation_view``), so a test metric cannot
be read even by mistake.

Two rules:
    ``paper``: the mean of clean, transfer-FGSM and transfer-PGD accuracy (the paper's rule
        for its best split), on the validation split;
    ``robust``: white-box robust balanced accuracy at ``robust.select_eps`` on the
        validation split.
Ties go to the higher validation clean balanced accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from skinadv.results import VAL, ModelResult, eps_text

Rule = Literal["paper", "robust"]
#: the paper's rule for its best split (Table 2), read on the validation split
PAPER_RULE = ("val_clean_accuracy", "val_transfer_fgsm_accuracy", "val_transfer_pgd_accuracy")
TIE_BREAK = "val_clean_balanced_accuracy"
IDENTITY = ("cell", "method", "fraction", "seeds")
_BOUNDS = ("_ci_low", "_ci_high")


def validation_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The identity columns and the validation means of a results frame, nothing else."""
    cols = [
        c for c in frame.columns if c in IDENTITY or (c.startswith(VAL) and not c.endswith(_BOUNDS))
    ]
    return frame[cols]


def robust_column(columns: Sequence[str]) -> str | None:
    """``val_robust_2_255_balanced_accuracy``, when the frame has it."""
    return next(
        (c for c in columns if c.startswith(VAL + "robust_") and c.endswith("_balanced_accuracy")),
        None,
    )


def scores(frame: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """``cell``, ``method``, ``score``, ``tie`` per row that has the rule's validation
    figures (rows without them are left out; empty without a validation split)."""
    view = validation_view(frame)
    if rule == "paper":
        cols = list(PAPER_RULE)
    else:
        col = robust_column(list(view.columns))
        cols = [col] if col else []
    if not cols or not set(cols) <= set(view.columns):
        return pd.DataFrame(columns=["cell", "method", "score", "tie"])
    out = view[["cell", "method"]].copy()
    out["score"] = view[cols].mean(axis=1, skipna=False)
    out["tie"] = view[TIE_BREAK] if TIE_BREAK in view else 0.0
    return out.dropna(subset=["score"])


def best(frame: pd.DataFrame, rule: Rule) -> str | None:
    """The cell of ``frame``'s rows that ``rule`` ranks first; None when none can be ranked."""
    s = scores(frame, rule)
    if s.empty:
        return None
    return str(s.sort_values(["score", "tie"], kind="stable").iloc[-1]["cell"])


def best_per_method(frame: pd.DataFrame, rule: Rule) -> dict[str, str]:
    """``{method: cell}``: per method of ``frame``'s rows (vanilla left out), the cell that
    ``rule`` ranks first, in the frame's order of methods."""
    s = scores(frame[frame["method"].notna()], rule)
    out: dict[str, str] = {}
    for method in dict.fromkeys(s["method"]):
        rows = s[s["method"] == method].sort_values(["score", "tie"], kind="stable")
        out[str(method)] = str(rows.iloc[-1]["cell"])
    return out


def champions(results: Sequence[ModelResult]) -> dict[str, ModelResult]:
    """``{method: model}``: per method, one trained model (a cell and a seed): from the cell
    with the highest validation robust balanced accuracy *averaged over its seeds* (the
    report's one notion of "most robust", ``best(..., "robust")``), the seed with the
    highest validation figure (ties: validation clean balanced accuracy). Models without a
    validation score are never chosen; the vanilla model is left out."""
    ranked: dict[str, dict[str, list[tuple[tuple[float, float], ModelResult]]]] = {}
    for r in results:
        if r.is_vanilla:
            continue
        val = r.validation_metrics()
        key = robust_column(list(val))
        if key is None:
            continue
        rank = (val[key], val.get(TIE_BREAK, 0.0))
        ranked.setdefault(str(r.method), {}).setdefault(r.cell, []).append((rank, r))
    out = {}
    for method, cells in ranked.items():
        cell = max(cells, key=lambda c: tuple(np.mean([rank for rank, _ in cells[c]], axis=0)))
        out[method] = max(cells[cell], key=lambda m: m[0])[1]
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def training_eps(r: ModelResult) -> str:
    """The budget a model was trained at: a defence's (``pgd-at@2_255`` -> ``2/255``), or
    the pool's attack budget(s) for a static cell (``fgsm 0.2``, ``fgsm 0.2, pgd 0.3``)."""
    if r.fraction is None and "@" in r.cell:
        return r.cell.partition("@")[2].replace("_", "/")
    attacks = ("fgsm", "pgd") if r.method == "mix" else (str(r.method),)
    return ", ".join(f"{a} {r.transfer.eps(a):g}" for a in attacks if r.transfer.eps(a) is not None)


def champion_card(r: ModelResult, *, experiment: str) -> tuple[str, dict[str, str]]:
    """A champion's model card: a description in words and tags holding its figures (test
    figures in percent, as scored once; the validation figure it was chosen by)."""
    val = r.validation_metrics()
    key = robust_column(list(val)) or ""
    at = "–" if r.val_robust is None else eps_text(r.val_robust.eps)
    flat = r.flat_metrics()
    # every white-box budget it was scored at: the robust curve's and the paper's attacks'
    paper = [r.whitebox.eps(a) for a in ("fgsm", "pgd")] if r.whitebox is not None else []
    tested = ", ".join(
        eps_text(e) for e in sorted({p.eps for p in r.curve} | {e for e in paper if e})
    )
    lines = [
        f"{r.cell}, seed {r.seed}, from experiment {experiment!r}: of every {r.method} model "
        f"trained, the most robust on the validation split (white-box PGD at eps {at}: "
        f"balanced accuracy {_pct(val.get(key))}).",
        f"Trained at eps {training_eps(r)}.",
        f"Test set (scored once): clean accuracy {_pct(flat.get('clean_accuracy'))}, "
        f"balanced {_pct(flat.get('clean_balanced_accuracy'))}, melanoma recall "
        f"{_pct(flat.get('clean_mel_recall'))}.",
    ]
    lines += [
        f"Worst case over {', '.join(p.attacks)} at eps {eps_text(p.eps)}: accuracy "
        f"{_pct(p.accuracy)}, balanced {_pct(p.balanced_accuracy)}."
        for p in r.curve
        if p.eps > 0
    ]
    tags = {
        "method": str(r.method),
        "cell": r.cell,
        "seed": str(r.seed),
        "train_eps": training_eps(r),
        "tested_eps": tested or "none",
        "selected_by": key,
        key: f"{val[key]:.4f}" if key in val else "",
        **{k: f"{flat[k]:.4f}" for k in sorted(flat) if k.startswith(("clean_", "robust_"))},
    }
    return " ".join(lines), {k: v for k, v in tags.items() if k and v}


__all__ = [
    "PAPER_RULE",
    "Rule",
    "best",
    "best_per_method",
    "champion_card",
    "champions",
    "robust_column",
    "scores",
    "validation_view",
]
