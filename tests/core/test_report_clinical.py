"""Report, the figures a reader acts on: differences paired by seed (and called unresolved
where their interval covers 0), balanced accuracy and melanoma recall before accuracy, the
clinical and console views, and AutoAttack beside our ensemble."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats as st
from test_report import CELLS, console_text, grid_results, report, result, scored

from skinadv.report import (
    autoattack_table,
    paired_table,
    results_frame,
    save_report,
    verdict,
    verdict_cells,
)
from skinadv.results import ModelResult

# per seed, the defence's clean accuracy minus the vanilla model's: signs disagree, so the
# interval covers 0; its white-box PGD accuracy gains 0.20-0.25 on every seed
CLEAN_D = (0.02, -0.03, 0.015)
PGD_D = (0.20, 0.22, 0.25)


def _paired_grid() -> list[ModelResult]:
    """Vanilla and pgd@0.8 on seeds 0-2 (balanced accuracy = accuracy - 0.1)."""
    out = []
    for s, (dc, dp, base) in enumerate(zip(CLEAN_D, PGD_D, (0.55, 0.62, 0.68), strict=True)):
        out.append(result(None, None, s, clean=base, w_pgd=0.1))
        out.append(result("pgd", 0.8, s, clean=base + dc, w_pgd=0.1 + dp, t_pgd=0.5))
    return out


def _words(a, b) -> str:
    """scipy's paired interval of ``a - b`` as the verdict words it (seeds said once)."""
    ci = st.ttest_rel(a, b).confidence_interval()
    text = f"{np.mean(a) - np.mean(b):+.1f} ± {(ci.high - ci.low) / 2:.1f} points"
    return text + (" (unresolved: its interval covers 0)" if ci.low <= 0 <= ci.high else "")


def test_verdict_calls_an_interval_covering_zero_unresolved():
    results = _paired_grid()
    by = {r.key: {k: 100 * v for k, v in r.flat_metrics().items()} for r in results}

    def seeds(cell, key):
        return [by[f"{cell}-s{s}"][key] for s in range(3)]

    text = " ".join(verdict(results_frame(results), results))
    clean = _words(
        seeds("pgd@0.8", "clean_balanced_accuracy"), seeds("vanilla", "clean_balanced_accuracy")
    )
    key = "whitebox_pgd_balanced_accuracy"
    pgd = _words(seeds("pgd@0.8", key), seeds("vanilla", key))
    assert "(unresolved" in clean and "unresolved" not in pgd  # the data do what they should
    assert (
        "Against the vanilla model of the same seed, paired over 3 seeds, it changes clean "
        f"balanced accuracy by {clean}, "
    ) in text
    assert f"balanced accuracy under white-box PGD by {pgd}." in text
    # white-box − transfer of the same model, paired the same way
    gap = _words(seeds("pgd@0.8", key), seeds("pgd@0.8", "transfer_pgd_balanced_accuracy"))
    assert f"white-box − transfer {gap.split(' points')[0]} points, paired over 3 seeds" in text


def test_verdict_cells_are_the_models_it_names():
    """What ``skinadv verify`` checks: each cell the verdict names, once."""
    tops = {"vanilla": 0.2, "fgsm@0.2": 0.3, "pgd@0.8": 0.45, "pgd-at@2_255": 0.6}
    results = [scored(c, s, top=t) for c, t in tops.items() for s in range(2)]
    frame = results_frame(results)
    cells = verdict_cells(frame, results)

    def val(cell, *keys):  # the validation figures selection reads, mean over seeds
        return np.mean(
            [sum(r.validation_metrics()[k] for k in keys) for r in results if r.cell == cell]
        )

    rule = ("val_clean_accuracy", "val_transfer_fgsm_accuracy", "val_transfer_pgd_accuracy")
    static = max(["fgsm@0.2", "pgd@0.8"], key=lambda c: val(c, *rule))
    robust = max(
        tops.keys() - {"vanilla"}, key=lambda c: val(c, "val_robust_2_255_balanced_accuracy")
    )
    assert cells == list(dict.fromkeys([static, robust]))
    text = " ".join(verdict(frame, results))
    assert all(f", {c}, " in text or f" is {c}:" in text for c in cells)
    assert verdict_cells(results_frame(_paired_grid()), _paired_grid()) == ["pgd@0.8"]


def test_paired_table_equals_scipy():
    results = _paired_grid()
    row = paired_table(results).set_index("cell").loc["pgd@0.8"]
    assert row["seeds"] == 3
    # without a robust curve, white-box PGD is the figure under attack compared
    for col, d in (
        ("vs_vanilla_clean_accuracy", CLEAN_D),
        ("vs_vanilla_clean_balanced_accuracy", CLEAN_D),
        ("vs_vanilla_whitebox_pgd_balanced_accuracy", PGD_D),
    ):
        ci = st.ttest_rel(100 * np.array(d), np.zeros(3)).confidence_interval()
        assert row[col] == pytest.approx(100 * np.mean(d))
        bounds = (row[col + "_ci_low"], row[col + "_ci_high"])
        assert bounds == (pytest.approx(ci.low), pytest.approx(ci.high))
    # white-box − transfer of the same model: 0.1 + d - 0.5 on each seed
    gap = 100 * (0.1 + np.array(PGD_D) - 0.5)
    assert row["wb_minus_tr_pgd_accuracy"] == pytest.approx(gap.mean())
    # a seed the vanilla model lacks is left out of the pairing
    assert paired_table([*results, result("pgd", 0.8, 9)]).loc[0, "seeds"] == 3


def test_paired_section_and_labels(tmp_path):
    rep = report(_paired_grid())
    save_report(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Paired differences — each model against the vanilla model" in md
    assert md.index("## Paired differences") < md.index("## Table 2")
    line = next(ln for ln in md.splitlines() if ln.startswith("| pgd@0.8 | 3 |"))
    assert f"| {100 * np.mean(CLEAN_D):+.1f} ± " in line  # signed, with its half-width
    assert "an interval that covers 0 is unresolved" in rep.table_notes["paired_differences"]
    assert (tmp_path / "paired_differences.csv").is_file()


AA = {
    "autoattack_2_255_accuracy": 0.50,
    "autoattack_2_255_balanced_accuracy": 0.41,
    "autoattack_2_255_mel_recall": 0.30,
    "ensemble_2_255_accuracy": 0.53,
    "ensemble_2_255_balanced_accuracy": 0.415,
    "ensemble_2_255_mel_recall": 0.31,
    "autoattack_2_255_square_extra": 2.0,
    "autoattack_8_255_accuracy": 0.300,
    "ensemble_8_255_accuracy": 0.305,
    "autoattack_8_255_square_extra": 0.0,
    "autoattack_n_images": 400.0,
}


def test_autoattack_beside_the_ensemble(tmp_path):
    """``skinadv verify``'s figures (ModelResult.extra, kept by the JSON form) become a
    table with both figures and the image count, and its two warnings are raised: AutoAttack
    more than 1 point below the ensemble, and images only Square fooled."""
    checked = dataclasses.replace(scored("pgd-at@2_255", 1, top=0.5), extra=AA)
    assert ModelResult.from_dict(checked.to_dict()).extra == AA
    results = [scored("vanilla", 1, top=0.2), ModelResult.from_dict(checked.to_dict())]
    table = autoattack_table(results).set_index("budget")
    assert list(table.index) == pytest.approx([2 / 255, 8 / 255])
    at2 = table.loc[table.index[0]]
    assert (at2["cell"], at2["seed"], at2["n_images"]) == ("pgd-at@2_255", 1, 400)
    assert at2["autoattack_balanced_accuracy"] == pytest.approx(41.0)
    assert at2["ensemble_balanced_accuracy"] == pytest.approx(41.5)
    assert at2["autoattack_minus_ensemble_accuracy"] == pytest.approx(-3.0)
    rep = report(results)
    flags = rep.table_flags["autoattack"]
    # 2/255: 3 points below (accuracy; balanced accuracy is within 1) and 2 Square-only
    # images; 8/255: within 1 point and none
    assert len(flags) == 2 and all("at eps 2/255" in f for f in flags)
    assert "accuracy 50.0 % vs 53.0 %" in flags[0] and "balanced" not in flags[0]
    assert "fooled 2 images" in flags[1] and "gradient masking" in flags[1]
    assert "raises 2 warning(s)" in rep.headline
    save_report(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## AutoAttack vs our ensemble" in md
    assert "| AutoAttack bal. acc. (%) | Our ensemble bal. acc. (%) |" in md
    assert "(400 images)" in md and "stratified subset" in md
    # no figures, no table; agreement within a point raises nothing
    assert autoattack_table([scored("vanilla")]).empty
    calm = {k: v for k, v in AA.items() if "2_255" not in k}
    rep = report([results[0], dataclasses.replace(checked, extra=calm)])
    assert not rep.table_flags["autoattack"] and "never more than 1 point below" in rep.headline


def test_report_reads_mel_recall_and_percent():
    r = result(None, None)
    assert r.flat_metrics()["clean_mel_recall"] == pytest.approx(0.42)
    frame = results_frame([r])
    assert frame.loc[0, "clean_mel_recall"] == pytest.approx(42.0)
    assert frame.loc[0, "whitebox_pgd_accuracy"] == pytest.approx(10.0)


def test_terminal_table_keeps_cell_names_at_80_columns():
    """The console table of the grid: every row's model name whole even on a narrow
    terminal, in method then fraction order, balanced accuracy and melanoma recall before
    accuracy, with the results' numbers in percent and the always-nv baseline below."""
    results = grid_results()[::-1]  # order comes from the table, not the input
    text = console_text(results)
    lines = text.splitlines()
    rule = next(i for i, ln in enumerate(lines) if set(ln.strip()) == {"─"})
    body = [ln for ln in lines[rule + 1 :] if ln.strip() and "│" not in ln][: len(results)]
    rows = [ln.split()[0] for ln in body]
    assert rows == ["vanilla"] + [f"{m}@{f}" for m, f in CELLS]
    pgd04 = next(r for r in results if r.cell == "pgd@0.4").flat_metrics()
    line = body[rows.index("pgd@0.4")].split()
    # bal: clean, PGD tr, PGD wb; mel: clean (no recall under attack here); acc: clean,
    # PGD tr, PGD wb
    keys = ["clean_balanced_accuracy", "transfer_pgd_balanced_accuracy"]
    keys += ["whitebox_pgd_balanced_accuracy", "clean_mel_recall", "clean_accuracy"]
    keys += ["transfer_pgd_accuracy", "whitebox_pgd_accuracy"]
    assert line[1:] == [f"{100 * pgd04[k]:.1f}" for k in keys]
    assert "always predicting nv: 66.9 % accuracy" in " ".join(text.split())
    assert max(len(ln) for ln in lines) <= 80
    assert not any("…" in ln for ln in lines)  # nothing cut


def test_clinical_view_and_champions_tables(tmp_path):
    """Targeted success rates and melanoma recall under attack get their own table with
    human headers; registered champions are listed with the validation figure that chose
    them."""
    from skinadv.results import TargetedPoint

    results = [
        dataclasses.replace(
            scored(cell, s, top=0.4),
            targeted=(
                TargetedPoint("mel", "nv", 2 / 255, 20, 0.25 + 0.05 * s),
                TargetedPoint("nv", "mel", 2 / 255, 90, 0.1),
            ),
        )
        for cell in ("vanilla", "pgd-at@2_255")
        for s in range(2)
    ]
    champ = {
        "method": "pgd-at",
        "registered": "skinadv-x-pgd-at v1 @robust-champion",
        "cell": "pgd-at@2_255",
        "seed": 1,
        "val_robust_2_255_balanced_accuracy": 31.0,
    }
    rep = report(results, champions=[champ])
    save_report(rep, tmp_path)
    clinical = rep.tables["clinical"].set_index("cell")
    assert clinical.loc["vanilla", "targeted_mel_nv_2_255_success"] == pytest.approx(27.5)
    assert clinical.loc["vanilla", "seeds"] == 2
    assert "whitebox_pgd_mel_recall" in clinical and "clean_mel_recall" in clinical
    md = (tmp_path / "report.md").read_text()
    assert "Targeted mel -> nv at eps 2/255, success (%)" in md
    assert "| pgd-at | skinadv-x-pgd-at v1 @robust-champion | pgd-at@2_255 | 1 | 31.0 |" in md
    assert "Validation: Robust bal. acc. at eps 2/255 (%)" in md
    assert "The clinical view" in (tmp_path / "report.html").read_text()
