"""Report: tables carry the records' numbers, notes flag protocol gaps, files are written."""

from __future__ import annotations

import numpy as np
import pytest

from skinadv.report import (
    Example,
    build_report,
    flatten_metrics,
    records_frame,
    records_table,
    save_report,
    table2,
)


def record(method, fraction, seed=0, *, clean=0.6, t_fgsm=0.5, t_pgd=0.4, w_fgsm=0.3, w_pgd=0.1):
    nested = {
        "transfer": {
            "clean": {
                "accuracy": clean,
                "balanced_accuracy": clean - 0.1,
                "recall": {"mel": 0.42, "nv": 0.9},
            },
            "fgsm": {"accuracy": t_fgsm, "balanced_accuracy": t_fgsm - 0.1},
            "pgd": {"accuracy": t_pgd, "balanced_accuracy": t_pgd - 0.1},
        },
        "whitebox": {
            "fgsm": {"accuracy": w_fgsm, "balanced_accuracy": w_fgsm - 0.1},
            "pgd": {"accuracy": w_pgd, "balanced_accuracy": w_pgd - 0.1},
        },
    }
    return {
        "cell": f"{method}@{fraction}",
        "method": method,
        "fraction": fraction,
        "seed": seed,
        **flatten_metrics(nested),
    }


def grid_records():
    recs = [record(None, None)]
    rng = np.random.default_rng(0)
    for m in ("fgsm", "pgd", "mix"):
        for f in (0.2, 0.4, 0.6, 0.8):
            a = float(rng.uniform(0.3, 0.7))
            recs.append(
                record(m, f, clean=a, t_fgsm=a - 0.01, t_pgd=a - 0.02, w_fgsm=0.05, w_pgd=0.01)
            )
    return recs


def test_flatten_reads_mel_recall():
    flat = record(None, None)
    assert flat["clean_mel_recall"] == pytest.approx(0.42)
    assert flat["whitebox_pgd_accuracy"] == pytest.approx(0.1)


def test_tables_equal_records_and_pick_best_split(tmp_path):
    recs = grid_records()
    rep = build_report(recs, title="t", context={"data": "synthetic"})
    t1 = rep.tables["table1_vanilla"]
    assert t1.loc["transfer", "fgsm_acc"] == pytest.approx(50.0)
    assert t1.loc["whitebox", "pgd_acc"] == pytest.approx(10.0)
    assert t1.loc["paper", "clean_acc"] == pytest.approx(70.19)
    grid = rep.tables["grid_all_cells"]
    assert len(grid) == 12
    for r in recs[1:]:
        row = grid[(grid["method"] == r["method"]) & (grid["fraction"] == r["fraction"])].iloc[0]
        assert row["clean_acc"] == pytest.approx(100 * r["clean_accuracy"])
        assert row["transfer_pgd_acc"] == pytest.approx(100 * r["transfer_pgd_accuracy"])
        assert row["whitebox_fgsm_bal_acc"] == pytest.approx(
            100 * r["whitebox_fgsm_balanced_accuracy"]
        )
    t2 = table2(records_frame(recs))
    for _, row in t2.iterrows():
        cells = [r for r in recs[1:] if r["method"] == row["method"]]
        best = max(
            cells,
            key=lambda r: (
                r["clean_accuracy"] + r["transfer_fgsm_accuracy"] + r["transfer_pgd_accuracy"]
            ),
        )
        assert row["best_fraction"] == best["fraction"]
    # every cell is far below transfer under white-box: the report must say so
    assert sum("overstates" in n for n in rep.notes) == 24
    files = save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Table 1" in html
    assert (tmp_path / "grid_all_cells.csv").read_text().count("\n") == 13
    assert set(files) >= {"report.md", "report.html", "accuracy_vs_fraction.png"}


def test_seeds_are_averaged_and_label_leaking_flagged():
    recs = [
        record(None, None),
        record("pgd", 0.8, 0, clean=0.5, t_pgd=0.9),
        record("pgd", 0.8, 1, clean=0.7, t_pgd=0.9),
    ]
    frame = records_frame(recs)
    row = frame[frame["method"] == "pgd"].iloc[0]
    assert row["clean_accuracy"] == pytest.approx(60.0) and row["seeds"] == 2
    rep = build_report(recs)
    assert any("label leaking" in n for n in rep.notes)


def test_examples_figure_and_empty_input():
    x = np.random.default_rng(0).uniform(size=(28, 28, 3))
    ex = Example("fgsm", x, np.clip(x + 0.1, 0, 1), "bcc", "bcc", 0.99, "nv", 0.7)
    rep = build_report([record(None, None)], examples=[ex, ex])
    assert "adversarial_examples" in rep.figures
    with pytest.raises(ValueError, match="no results"):
        records_frame([])


def test_terminal_table_keeps_cell_names_at_80_columns():
    """The console table of the grid: every row's cell name whole even on a narrow terminal,
    in method then fraction order, with the records' numbers in percent."""
    from rich.console import Console

    recs = grid_records()
    recs[0]["cell"] = "vanilla"
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(records_table(recs))
    lines = console.export_text().splitlines()
    rows = [ln.split("│")[1].strip() for ln in lines if ln.startswith("│")]
    assert rows == ["vanilla"] + [f"{m}@{f}" for m in ("fgsm", "pgd", "mix")
                                  for f in (0.2, 0.4, 0.6, 0.8)]
    pgd04 = next(ln for ln in lines if "│ pgd@0.4 " in ln or "│  pgd@0.4 " in ln)
    clean = next(r for r in recs if r["cell"] == "pgd@0.4")["clean_accuracy"]
    assert f"{100 * clean:.1f}" in pgd04
    assert max(len(ln) for ln in lines) <= 80
