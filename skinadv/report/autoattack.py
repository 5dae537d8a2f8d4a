"""AutoAttack against our white-box ensemble, for the models ``skinadv verify`` checked.

``skinadv verify`` runs AutoAttack (the reference implementation) on the models the
verdict and the champions name, and logs on each model's MLflow run, per budget
(``eps_label``: ``2_255``), on one fixed stratified subset of the test set:

- ``autoattack_<eps>_accuracy``, ``_balanced_accuracy``, ``_mel_recall``: under AutoAttack;
- ``ensemble_<eps>_accuracy``, ...: our worst case over PGD, APGD-CE, APGD-DLR on the same
  images;
- ``autoattack_<eps>_square_extra``: images Square (gradient-free) fooled that the
  white-box attacks left: a sign of gradient masking;
- ``autoattack_n_images``: the subset's size.

They reach the report as ``ModelResult.extra`` (or as flat keys of ``record()``); values
are fractions except the two counts. One row per model (a cell and a seed, not a mean over
seeds) and budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from skinadv.report.frame import eps_of, sort_results
from skinadv.results import ModelResult, eps_text

AA, ENS = "autoattack_", "ensemble_"
N_IMAGES = "autoattack_n_images"
SQUARE = "square_extra"
#: The metrics both sides report, clinical first.
AA_METRICS: tuple[str, ...] = ("balanced_accuracy", "mel_recall", "accuracy")
#: AutoAttack this many points below our ensemble: the ensemble overstates robustness.
BELOW_POINTS = 1.0


def parse_key(key: str) -> tuple[str, str, str] | None:
    """``autoattack_2_255_balanced_accuracy`` -> (``autoattack``, ``2_255``,
    ``balanced_accuracy``); ``ensemble_...`` likewise; ``autoattack_2_255_square_extra`` ->
    (``autoattack``, ``2_255``, ``square_extra``); None for any other key (the image count
    included)."""
    for prefix in (AA, ENS):
        if not key.startswith(prefix) or key == N_IMAGES:
            continue
        rest = key.removeprefix(prefix)
        names = (*AA_METRICS, SQUARE) if prefix == AA else AA_METRICS
        for name in sorted(names, key=len, reverse=True):  # balanced_accuracy first
            if rest.endswith("_" + name) and len(rest) > len(name) + 1:
                return prefix[:-1], rest[: -len(name) - 1], name
    return None


def _figures(r: ModelResult) -> Mapping[str, Any]:
    """A model's AutoAttack and ensemble figures, wherever they were put."""
    flat = {**r.record(), **r.extra}
    return {k: v for k, v in flat.items() if k == N_IMAGES or parse_key(k) is not None}


def autoattack_table(results: Sequence[ModelResult]) -> pd.DataFrame:
    """One row per checked model and budget: ``cell, seed, budget, n_images``, then for
    each metric AutoAttack's figure beside the ensemble's (``autoattack_<metric>``,
    ``ensemble_<metric>``, percent), ``autoattack_minus_ensemble_accuracy`` (points) and
    ``square_extra`` (images). Empty when no result carries AutoAttack figures."""
    rows = []
    for r in sort_results(results):
        figures = _figures(r)
        by_eps: dict[str, dict[str, float]] = {}
        for k, v in figures.items():
            parsed = parse_key(k)
            if parsed is not None:
                side, eps, name = parsed
                by_eps.setdefault(eps, {})[f"{side}_{name}"] = float(v)
        for eps in sorted(by_eps, key=eps_of):
            got = by_eps[eps]
            row: dict[str, Any] = {
                "cell": r.cell,
                "seed": r.seed,
                "budget": eps_of(eps),
                "n_images": figures.get(N_IMAGES, math.nan),
            }
            for m in AA_METRICS:
                for side in ("autoattack", "ensemble"):
                    row[f"{side}_{m}"] = 100.0 * got.get(f"{side}_{m}", math.nan)
            row["autoattack_minus_ensemble_accuracy"] = (
                row["autoattack_accuracy"] - row["ensemble_accuracy"]
            )
            row[SQUARE] = got.get(f"autoattack_{SQUARE}", math.nan)
            rows.append(row)
    cols = ["cell", "seed", "budget", "n_images"]
    cols += [f"{s}_{m}" for m in AA_METRICS for s in ("autoattack", "ensemble")]
    cols += ["autoattack_minus_ensemble_accuracy", SQUARE]
    table = pd.DataFrame(rows, columns=cols)
    # a metric neither side reported (e.g. no melanoma in the subset) is left out
    return table.drop(columns=[c for c in cols[4:] if table[c].isna().all()])


def autoattack_note(table: pd.DataFrame) -> str:
    """The line under the table: which figure is which, and on what images."""
    n = sorted({int(x) for x in table.get("n_images", pd.Series()).dropna()})
    images = f"{'/'.join(map(str, n))} images" if n else "n images"
    return (
        "AutoAttack: the reference implementation (standard version); ensemble: our "
        "worst case over the white-box attacks; both on the same fixed, stratified subset of "
        f"the test set ({images}), for one trained model each (cell and seed), not a mean "
        "over seeds"
    )


def autoattack_flags(table: pd.DataFrame) -> list[str]:
    """One sentence per warning: AutoAttack more than ``BELOW_POINTS`` below our ensemble
    (the ensemble overstates robustness), and images only Square fooled (gradient
    masking)."""
    out = []
    for row in table.to_dict("records"):
        who = f"{row['cell']} (seed {row['seed']}) at eps {eps_text(row['budget'])}"
        below = [
            f"{m.replace('_', ' ')} {row[f'autoattack_{m}']:.1f} % vs {row[f'ensemble_{m}']:.1f} %"
            for m in AA_METRICS
            if row.get(f"autoattack_{m}", math.nan)
            < row.get(f"ensemble_{m}", math.nan) - BELOW_POINTS
        ]
        if below:
            out.append(
                f"{who}: AutoAttack is more than {BELOW_POINTS:.0f} point below our ensemble "
                f"({'; '.join(below)}): our ensemble overstates this model's robustness."
            )
        extra = row.get(SQUARE, math.nan)
        if extra > 0:
            out.append(
                f"{who}: Square, which uses no gradient, fooled {extra:g} images the white-box "
                "attacks left: a sign of gradient masking; trust AutoAttack's figure, not ours."
            )
    return out


__all__ = [
    "AA_METRICS",
    "BELOW_POINTS",
    "N_IMAGES",
    "autoattack_flags",
    "autoattack_note",
    "autoattack_table",
    "parse_key",
]
