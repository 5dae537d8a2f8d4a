"""Model selection reads the validation split only: scrambling or dropping every test
figure changes nothing that is chosen, and the choices follow the validation figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from test_report import grid_results, result  # same folder (pytest prepends it)

from skinadv import selection
from skinadv.report import results_frame, table2
from skinadv.report.frame import curve_cells, curve_frame
from skinadv.results import ModelResult, RobustPoint


def _results() -> list[ModelResult]:
    """Three seeds of vanilla + 12 cells, and two defences whose test curves rank them the
    other way round from their validation scores."""
    out = [r for seed in range(3) for r in grid_results(seed=seed)]
    for seed in range(3):
        for cell, val, test in (("pgd-at@2_255", 0.4, 0.1), ("pgd-at@8_255", 0.3, 0.5)):
            r = result("pgd-at", 1.0, seed, val=(0.5, 0.5, 0.5, val + 0.01 * seed))
            curve = (RobustPoint(2 / 255, test + 0.1, test),)
            out.append(dataclasses.replace(r, cell=cell, fraction=None, curve=curve))
    return out


def _choices(frame: pd.DataFrame, results: list[ModelResult]) -> dict:
    curves = curve_frame(results)
    return {
        "table2": list(table2(frame)["cell"]) if "cell" in table2(frame) else None,
        "best_split": selection.best_per_method(frame[frame["fraction"].notna()], "paper"),
        "best_paper": selection.best(frame, "paper"),
        "best_robust": selection.best(frame, "robust"),
        "per_method": selection.best_per_method(frame, "robust"),
        "curve": curve_cells(curves, frame),
        "champions": {m: r.key for m, r in selection.champions(results).items()},
    }


def test_selection_never_reads_a_test_metric():
    results = _results()
    frame = results_frame(results)
    chosen = _choices(frame, results)
    test_cols = [
        c
        for c in frame.columns
        if c not in selection.IDENTITY and not c.startswith("val_") and c != "cell"
    ]
    assert len(test_cols) > 30  # the frame does carry test figures to be tempted by
    rng = np.random.default_rng(0)
    scrambled = frame.copy()
    for c in test_cols:  # every test figure replaced by noise
        scrambled[c] = rng.uniform(0, 100, len(frame))
    # and the results' own test evaluations and curves shuffled between models
    perm = rng.permutation(len(results))
    shuffled = [
        dataclasses.replace(
            r,
            transfer=results[j].transfer,
            whitebox=results[j].whitebox,
            curve=results[j].curve,
        )
        for r, j in zip(results, perm, strict=True)
    ]
    assert _choices(scrambled, shuffled)["champions"] == chosen["champions"]
    assert {k: v for k, v in _choices(scrambled, results).items() if k != "table2"} == {
        k: v for k, v in chosen.items() if k != "table2"
    }
    assert selection.best_per_method(frame.drop(columns=test_cols), "paper") == (
        selection.best_per_method(frame, "paper")
    )  # with no test column at all, the same choice
    # the choices are the validation figures' argmax
    assert chosen["per_method"]["pgd-at"] == "pgd-at@2_255"  # its test curve is the worse one
    assert chosen["curve"][-1] == "pgd-at@2_255"
    champ = selection.champions(results)["pgd-at"]
    assert (champ.cell, champ.seed) == ("pgd-at@2_255", 2)  # the seed with the best val score
    for method, cell in chosen["best_split"].items():
        rows = frame[frame["method"] == method]
        score = rows[list(selection.PAPER_RULE)].mean(axis=1)
        assert cell == rows.loc[score.idxmax(), "cell"]


def test_without_a_validation_split_nothing_is_chosen():
    results = [result(None, None, val=None), result("pgd", 0.8, val=None)]
    frame = results_frame(results)
    assert selection.best(frame, "paper") is None and selection.champions(results) == {}
    assert table2(frame).empty


def test_the_champion_comes_from_the_most_robust_cell():
    """One notion of "most robust": the cell with the best validation mean over seeds (what
    the verdict names), then its best seed; not a lucky seed of a weaker cell."""

    def model(cell: str, seed: int, v: float) -> ModelResult:
        r = result("pgd-at", 1.0, seed, val=(0.5, 0.5, 0.5, v))
        return dataclasses.replace(r, cell=cell, fraction=None)

    strong = [model("pgd-at@2_255", s, v) for s, v in enumerate((0.40, 0.41, 0.42))]
    lucky = [model("pgd-at@8_255", s, v) for s, v in enumerate((0.10, 0.50, 0.10))]
    champ = selection.champions(strong + lucky)["pgd-at"]
    assert (champ.cell, champ.seed) == ("pgd-at@2_255", 2)
    frame = results_frame(strong + lucky)
    assert selection.best(frame, "robust") == champ.cell
