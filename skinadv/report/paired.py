"""Differences a claim rests on, paired by seed (``skinadv.stats.paired_interval``).

Every model of one seed shares that seed's split and vanilla model, so "the defence
gains X points" is measured seed by seed: the defence's figure minus the vanilla model's
of the same seed, averaged over the seeds both have, with a Student-t 95 % interval over
those seeds. White-box minus transfer is paired the same way within one model. An
interval that covers 0 leaves the sign open: the report calls that difference unresolved.

Values are percentage points (the flat metrics are fractions, times 100).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from skinadv.report.frame import HIGH, LOW, by_cell, eps_of, robust_key
from skinadv.results import ModelResult, eps_label, eps_text
from skinadv.stats import Interval, covers_zero, paired_interval

#: Column prefix of a model's figure minus the vanilla model's of the same seed.
VS = "vs_vanilla_"
#: Column prefix of a model's white-box figure minus its transfer figure (same seed).
GAP = "wb_minus_tr_"
#: White-box − transfer is shown for these (attack, metric) pairs.
GAP_KEYS: tuple[tuple[str, str], ...] = (("pgd", "balanced_accuracy"), ("pgd", "accuracy"))
#: The selection budget when no result says which (``robust.select_eps``'s default).
DEFAULT_SELECT = "2_255"

PAIRED_NOTE = (
    "Percentage points, paired by seed: each seed's model minus the vanilla model of the "
    "same seed (same split), or its white-box minus its transfer figure; ± is the half-width "
    "of the 95 % t-interval over the n seeds paired; an interval that covers 0 is unresolved"
)
ONE_SEED_PAIRED_NOTE = (
    "Percentage points, one seed: a difference between two single runs has no interval over "
    "seeds, so none of these is resolved; rerun with several seeds"
)


def _per_seed(results: Sequence[ModelResult]) -> dict[str, dict[int, dict[str, float]]]:
    """``{cell: {seed: flat metrics in percent}}``."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for cell, group in by_cell(results).items():
        out[cell] = {r.seed: {k: 100.0 * v for k, v in r.flat_metrics().items()} for r in group}
    return out


def _robust_labels(results: Sequence[ModelResult]) -> list[str]:
    """The robust curve's budgets above 0 (``2_255``, ...), ascending."""
    eps = {round(p.eps, 9) for r in results for p in r.curve if p.eps > 0}
    return [eps_label(e) for e in sorted(eps)]


def select_label(results: Sequence[ModelResult]) -> str | None:
    """The budget models are chosen at (``robust.select_eps``, read from the validation
    figures) if the test curve has it, else 2/255, else the curve's smallest budget above 0;
    None without a robust curve."""
    labels = _robust_labels(results)
    chosen = [eps_label(r.val_robust.eps) for r in results if r.val_robust is not None]
    for label in [*chosen, DEFAULT_SELECT]:
        if label in labels:
            return label
    return labels[0] if labels else None


def compared_keys(results: Sequence[ModelResult]) -> list[str]:
    """The flat metrics compared with the vanilla model, clinical figures first: clean
    balanced accuracy and melanoma recall, robust balanced accuracy at each budget of the
    curve and melanoma recall at the selection budget (white-box PGD without a curve), then
    clean accuracy (the paper's figure)."""
    labels, sel = _robust_labels(results), select_label(results)
    keys = ["clean_balanced_accuracy", "clean_mel_recall"]
    if labels:
        keys += [f"robust_{e}_balanced_accuracy" for e in labels]
        keys.append(f"robust_{sel}_mel_recall")
    else:  # no curve: the paper's white-box PGD is the only figure under attack
        keys += ["whitebox_pgd_balanced_accuracy", "whitebox_pgd_mel_recall"]
    return [*keys, "clean_accuracy"]


def _pair(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], ka: str, kb: str):
    """The paired interval of ``a[seed][ka] - b[seed][kb]``; None when no seed has both."""
    x = {s: m[ka] for s, m in a.items() if ka in m}
    y = {s: m[kb] for s, m in b.items() if kb in m}
    return paired_interval(x, y) if set(x) & set(y) else None


def paired_differences(results: Sequence[ModelResult]) -> dict[str, dict[str, Interval]]:
    """``{cell: {column: interval in points}}`` for every model but the vanilla one:
    ``vs_vanilla_<flat key>`` (the model minus the vanilla model of the same seed) for each
    of ``compared_keys``, and ``wb_minus_tr_<attack>_<metric>`` (its white-box minus its
    transfer figure). A column is missing where no seed has both figures.

    Raises:
        ValueError: no vanilla model among the results.
    """
    seeds = _per_seed(results)
    vanilla = next((c for c, g in by_cell(results).items() if g[0].is_vanilla), None)
    if vanilla is None:
        raise ValueError("no vanilla result in the results")
    keys = compared_keys(results)
    out: dict[str, dict[str, Interval]] = {}
    for cell, runs in seeds.items():
        if cell == vanilla:
            continue  # its transfer sets are its own white-box attacks: nothing to pair
        row: dict[str, Interval | None] = {VS + k: _pair(runs, seeds[vanilla], k, k) for k in keys}
        for attack, metric in GAP_KEYS:
            wb, tr = (f"{p}_{attack}_{metric}" for p in ("whitebox", "transfer"))
            row[f"{GAP}{attack}_{metric}"] = _pair(runs, runs, wb, tr)
        out[cell] = {k: iv for k, iv in row.items() if iv is not None}
    return out


def paired_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """The paired differences as a table: one row per model but the vanilla one (``cell,
    seeds``: the seeds paired with the vanilla model), then each
    ``vs_vanilla_*`` and ``wb_minus_tr_*`` column in points with its ``_ci_low`` /
    ``_ci_high`` bounds (NaN for one seed). Empty when only the vanilla model was run."""
    diffs = paired_differences(results)
    keys = [VS + k for k in compared_keys(results)]
    keys += [f"{GAP}{a}_{m}" for a, m in GAP_KEYS]
    rows = []
    for cell, cols in diffs.items():
        n = [iv.n for k, iv in cols.items() if k.startswith(VS)]
        row = {"cell": cell, "seeds": max(n, default=0)}
        for k in keys:
            iv = cols.get(k)
            mean, low, high = (math.nan,) * 3 if iv is None else (iv.mean, iv.low, iv.high)
            row.update({k: mean, k + LOW: low, k + HIGH: high})
        rows.append(row)
    cols = ["cell", "seeds"]
    cols += [k + end for k in keys for end in ("", LOW, HIGH)]
    table = pd.DataFrame(rows, columns=cols)
    # a column no model has (e.g. melanoma recall under attack not scored) is left out
    empty = [k for k in keys if table[k].isna().all()]
    return table.drop(columns=[k + end for k in empty for end in ("", LOW, HIGH)])


def paired_note(table: pd.DataFrame) -> str:
    """The line under the paired table: how to read it (one seed: why nothing is resolved)."""
    one = table.empty or int(table["seeds"].max()) <= 1
    return ONE_SEED_PAIRED_NOTE if one else PAIRED_NOTE


# --------------------------------------------------------------------------- words

_WORDS = {
    "clean_balanced_accuracy": "clean balanced accuracy",
    "clean_mel_recall": "clean melanoma recall",
    "clean_accuracy": "clean accuracy",
    "whitebox_pgd_balanced_accuracy": "balanced accuracy under white-box PGD",
    "whitebox_pgd_mel_recall": "melanoma recall under white-box PGD",
    "whitebox_pgd_accuracy": "accuracy under white-box PGD",
}


def key_words(key: str) -> str:
    """``robust_2_255_balanced_accuracy`` -> "robust balanced accuracy at eps 2/255"."""
    robust = robust_key(key)
    if robust is not None:
        eps, metric = robust
        what = {"mel_recall": "melanoma recall under attack"}.get(
            metric, "robust " + metric.replace("_", " ")
        )
        return f"{what} at eps {eps_text(eps_of(eps))}"
    return _WORDS.get(key, key.replace("_", " "))


def difference_words(iv: Interval, *, seeds: bool = True) -> str:
    """A difference as the verdict says it: "+5.2 ± 1.3 points, paired over 3 seeds", with
    "(unresolved: its interval covers 0)" where it does; for one seed, that there is no
    interval, so nothing is resolved. ``seeds=False``: the caller says how many seeds (or
    that there was one), so neither the count nor the one-seed remark is repeated here."""
    if iv.n < 2 or math.isnan(iv.half_width):
        if not seeds:
            return f"{iv.mean:+.1f} points"
        return f"{iv.mean:+.1f} points (one seed: no interval over seeds, so unresolved)"
    text = f"{iv.mean:+.1f} ± {iv.half_width:.1f} points"
    text += f", paired over {iv.n} seeds" if seeds else ""
    return text + (" (unresolved: its interval covers 0)" if covers_zero(iv) else "")


__all__ = [
    "GAP",
    "GAP_KEYS",
    "PAIRED_NOTE",
    "VS",
    "compared_keys",
    "difference_words",
    "key_words",
    "paired_differences",
    "paired_note",
    "paired_table",
    "select_label",
]
