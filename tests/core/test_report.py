"""Report: tables carry the results' numbers, sentences come from them, each sanity check
is shown once with the models it concerns, headers are human, files are written."""

from __future__ import annotations

import dataclasses
import itertools
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from skinadv.data import CLASSES
from skinadv.evaluation import Check, craft_transfer_sets, evaluate, sanity_checks
from skinadv.evaluation.metrics import metrics
from skinadv.report import (
    ONE_SEED_NOTE,
    PAPER_VANILLA,
    Example,
    build_report,
    results_frame,
    results_table,
    save_report,
    table2,
    to_markdown,
)
from skinadv.results import Evaluation, ModelResult, RobustPoint, cell_name
from skinadv.stats import cm_balanced_accuracy, confusion_bootstrap, t_interval

ATTACKS = {"fgsm": {"attack": "fgsm", "eps": 0.2}, "pgd": {"attack": "pgd", "eps": 0.3}}
TRANSFER_ACC = ("transfer_fgsm_accuracy", "transfer_pgd_accuracy")
CELLS = [(m, f) for m in ("fgsm", "pgd", "mix") for f in (0.2, 0.4, 0.6, 0.8)]


def _m(acc: float, **extra) -> dict:
    return {"accuracy": acc, "balanced_accuracy": acc - 0.1, **extra}


def result(
    method,
    fraction,
    seed=0,
    *,
    clean=0.6,
    t_fgsm=0.5,
    t_pgd=0.4,
    w_fgsm=0.3,
    w_pgd=0.1,
    val: tuple[float, float, float, float] | None = (0.55, 0.5, 0.45, 0.2),
) -> ModelResult:
    """A ModelResult built from Evaluations (balanced accuracy = accuracy - 0.1); ``val``:
    validation (clean, transfer FGSM, transfer PGD accuracy, robust balanced accuracy)."""
    clean_m = _m(clean, recall={"mel": 0.42, "nv": 0.9})
    tr = Evaluation(
        "transfer", 100, {"clean": clean_m, "fgsm": _m(t_fgsm), "pgd": _m(t_pgd)}, ATTACKS
    )
    wb = Evaluation(
        "whitebox", 100, {"clean": clean_m, "fgsm": _m(w_fgsm), "pgd": _m(w_pgd)}, ATTACKS
    )
    validation, val_robust = None, None
    if val is not None:
        validation = Evaluation(
            "transfer", 50, {"clean": _m(val[0]), "fgsm": _m(val[1]), "pgd": _m(val[2])}, ATTACKS
        )
        val_robust = RobustPoint(2 / 255, val[3] + 0.1, val[3])
    return ModelResult(
        cell_name(method, fraction),
        seed,
        tr,
        wb,
        method,
        fraction,
        validation=validation,
        val_robust=val_robust,
    )


def grid_results(*, seed: int = 0) -> list[ModelResult]:
    """Vanilla + 12 cells whose validation figures are drawn apart from their test figures,
    so a choice made on the test set differs from one made on the validation split."""
    rng = np.random.default_rng(seed)
    out = [result(None, None, seed, val=(0.6, 0.5, 0.4, 0.02))]
    for m, f in CELLS:
        a, v = (float(x) for x in rng.uniform(0.3, 0.7, size=2))
        out.append(
            result(
                m,
                f,
                seed,
                clean=a,
                t_fgsm=a - 0.01,
                t_pgd=a - 0.02,
                w_fgsm=0.05,
                w_pgd=0.01,
                val=(v, v - 0.01, v - 0.02, v / 2),
            )
        )
    return out


def report(results, **kw):
    kw.setdefault("checks", sanity_checks(results))
    return build_report(results, title=kw.pop("title", "t"), context=kw.pop("context", {}), **kw)


class _Headers(HTMLParser):
    """Every table's header cells (text and title attribute) and first-row cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, list]] = []
        self._cell: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"th": [], "titles": [], "td": []})
        elif tag in ("th", "td"):
            self._cell = tag
            self.tables[-1][tag].append("")
            if tag == "th":
                self.tables[-1]["titles"].append(dict(attrs).get("title"))

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self._cell = None

    def handle_data(self, data):
        if self._cell:
            self.tables[-1][self._cell][-1] += data


def test_tables_equal_results_and_pick_best_split(tmp_path):
    results = grid_results()
    rep = report(results, context={"data": "synthetic"})
    t1 = rep.tables["table1_vanilla"].set_index("protocol")
    assert t1.loc["transfer", "fgsm_accuracy"] == pytest.approx(50.0)
    assert t1.loc["white-box", "pgd_accuracy"] == pytest.approx(10.0)
    assert t1.loc["white-box", "pgd_balanced_accuracy"] == pytest.approx(0.0)
    assert t1.loc["paper", "clean_accuracy"] == pytest.approx(70.19)
    assert t1.loc["transfer", "seeds"] == 1
    grid = rep.tables["grid_all_cells"]
    assert len(grid) == 12
    assert (
        list(zip(grid["method"], grid["fraction"], strict=True)) == CELLS
    )  # methods x fractions order
    for r in results[1:]:
        flat = r.flat_metrics()
        row = grid[(grid["method"] == r.method) & (grid["fraction"] == r.fraction)].iloc[0]
        assert row["clean_accuracy"] == pytest.approx(100 * flat["clean_accuracy"])
        assert row["transfer_pgd_accuracy"] == pytest.approx(100 * flat["transfer_pgd_accuracy"])
        assert row["whitebox_fgsm_balanced_accuracy"] == pytest.approx(
            100 * flat["whitebox_fgsm_balanced_accuracy"]
        )
        assert row["seeds"] == 1
    t2 = table2(results_frame(results))
    assert list(t2["method"]) == ["fgsm", "pgd", "mix"]
    picked_on_test = 0
    for _, row in t2.iterrows():
        cells = [r.flat_metrics() | {"f": r.fraction} for r in results if r.method == row["method"]]

        def rule(m, on=""):
            return sum(m[f"{on}{k}"] for k in ("clean_accuracy", *TRANSFER_ACC))

        best = max(cells, key=lambda m: rule(m, "val_"))  # the paper's rule, on validation
        assert row["best_fraction"] == best["f"]
        picked_on_test += max(cells, key=rule)["f"] == best["f"]
        assert row["whitebox_pgd_accuracy"] == pytest.approx(1.0)
        # its figures are the test set's, not the validation split's it was chosen on
        assert row["clean_accuracy"] == pytest.approx(100 * best["clean_accuracy"])
    assert picked_on_test < 3  # the test set would have chosen otherwise: this tests the rule
    assert list(t2["paper_fraction"]) == [0.2, 0.8, 0.6]
    # every cell is far below transfer under white-box: the report says so, once per attack
    overstates = [n for n in rep.notes if "overstates" in n]
    assert len(overstates) == 2
    assert all("every cell (12 of 12)" in n for n in overstates)
    files = save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Table 1" in html
    assert (tmp_path / "grid_all_cells.csv").read_text().count("\n") == 13
    assert set(files) >= {"report.md", "report.html", "accuracy_vs_fraction.png"}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_seeds_are_averaged_and_label_leaking_flagged():
    results = [
        result(None, None),
        result("pgd", 0.8, 0, clean=0.5, t_pgd=0.9),
        result("pgd", 0.8, 1, clean=0.7, t_pgd=0.9),
    ]
    frame = results_frame(results)
    row = frame[frame["method"] == "pgd"].iloc[0]
    assert row["clean_accuracy"] == pytest.approx(60.0) and row["seeds"] == 2
    rep = report(results)
    assert rep.tables["grid_all_cells"].loc[0, "seeds"] == 2
    assert rep.tables["table2_best_split"].loc[0, "seeds"] == 2
    leak = [n for n in rep.notes if "label leaking" in n]
    assert len(leak) == 1 and "pgd@0.8" in leak[0]
    assert "means over each model's seeds" in rep.headline


def test_some_cells_named_in_notes():
    results = [result(None, None), result("fgsm", 0.2, w_fgsm=0.45, w_pgd=0.35)]
    results.append(result("pgd", 0.8, w_fgsm=0.45, w_pgd=0.05))
    rep = report(results)
    pgd_gap = next(n for n in rep.notes if n.startswith("PGD:") and "overstates" in n)
    assert "1 of 2 cells (pgd@0.8)" in pgd_gap


def test_each_check_once_with_its_cells(tmp_path):
    """Label leaking in three models is one check naming the three, in HTML and Markdown."""
    results = [
        result(None, None),
        result("pgd", 0.6, clean=0.5, t_pgd=0.8),
        result("pgd", 0.8, 0, clean=0.5, t_pgd=0.93),
        result("pgd", 0.8, 1, clean=0.5, t_pgd=0.9),
        result("fgsm", 0.2),
    ]
    checks = sanity_checks(results)
    rep = report(results, checks=checks)
    save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    leak = next(c for c in checks if c.name == "no label leaking")
    assert leak.cells == ("pgd@0.6-s0", "pgd@0.8-s0", "pgd@0.8-s1")
    for c in checks:
        assert html.count(f"<code>{c.name.replace('<', '&lt;')}</code>") == 1
        assert md.count(f"`{c.name}`") == 1
    row = re.search(
        r"<tr><td class='warn'>WARN</td><td class='name'><code>no label leaking.*?</tr>", html
    )
    assert row and all(k in row.group(0) for k in leak.cells) and "fgsm@0.2-s0" not in row.group(0)
    md_line = next(ln for ln in md.splitlines() if "`no label leaking`" in ln)
    assert (
        md_line.startswith("- **WARN**")
        and "Concerns: pgd@0.6-s0, pgd@0.8-s0, pgd@0.8-s1" in md_line
    )
    assert "pgd@0.8-s0 transfer PGD 93.0 % vs clean 50.0 %" in md_line  # the worst case


def test_no_index_column_and_human_headers(tmp_path):
    rep = report(grid_results())
    save_report(rep, tmp_path)
    parser = _Headers()
    parser.feed((tmp_path / "report.html").read_text())
    glance, *tables = parser.tables  # the first screen's mini-table comes first
    assert glance["th"][:2] == ["Model", "Cell"] and glance["td"][0] == "no defence"
    t1, paired, t2 = tables[0], tables[1], tables[2]
    assert t1["th"][0] == "Protocol" and t1["td"][0] == "transfer"  # no index before it
    assert "Clean acc. (%)" in t1["th"] and "PGD bal. acc. (%)" in t1["th"]
    # balanced accuracy leads, accuracy (the paper's figure) follows
    assert t1["th"].index("Clean bal. acc. (%)") < t1["th"].index("Clean acc. (%)")
    assert paired["th"][0] == "Cell" and paired["td"][0] == "fgsm@0.2"
    assert "Clean bal. acc. − vanilla (points)" in paired["titles"]
    assert "PGD bal. acc., white-box − transfer (points)" in paired["titles"]
    assert t2["th"][0] == "Method" and t2["td"][0] == "fgsm"
    assert "PGD white-box bal. acc. (%)" in t2["titles"]  # full label on grouped columns
    assert {"Transfer (paper's protocol)", "White-box (honest)"} <= set(t2["th"])
    for t in tables:
        assert all(h.strip() for h in t["th"]), t["th"]  # pandas' empty index corner is gone
        assert not any("_" in h for h in t["th"]), t["th"]  # no machine names
    md = (tmp_path / "report.md").read_text().splitlines()
    heads = [a for a, b in itertools.pairwise(md) if a.startswith("| ") and b.startswith("|-")]
    assert heads[0].startswith("| Model | Cell | n (seeds) | Clean bal. acc. (%) |")
    assert heads[1].startswith("| Protocol | n (seeds) | Clean bal. acc. (%) |")
    assert any("PGD white-box bal. acc. (%)" in h for h in heads)
    assert not any("_" in h for h in heads)
    assert "70.19" in (tmp_path / "report.md").read_text()  # the paper's numbers as quoted
    csv = (tmp_path / "table1_vanilla.csv").read_text().splitlines()
    assert csv[0].startswith("protocol,seeds,clean_balanced_accuracy")  # no index column
    md_text = (tmp_path / "report.md").read_text()
    assert "*Always predicting nv: 66.9 % accuracy on the full data" in md_text  # no matrices


def test_headline_has_the_key_numbers(tmp_path):
    results = grid_results()
    rep = report(results)
    # the verdict opens: the paper's protocol against the honest one, with the seed count
    paper_rule = ("val_clean_accuracy", "val_transfer_fgsm_accuracy", *(["val_" + TRANSFER_ACC[1]]))
    best = max(results[1:], key=lambda r: sum(r.flat_metrics()[k] for k in paper_rule))
    flat = {k: 100 * v for k, v in best.flat_metrics().items()}
    tr, wb = (flat[f"{p}_pgd_accuracy"] for p in ("transfer", "whitebox"))
    tr_bal, wb_bal = (flat[f"{p}_pgd_balanced_accuracy"] for p in ("transfer", "whitebox"))
    assert rep.headline.startswith(
        "Under the paper's protocol the best static defence (chosen by the paper's rule on the "
        f"validation split), {best.cell}, keeps {tr_bal:.1f} % balanced accuracy against PGD at "
        f"eps 0.3 ({tr:.1f} % accuracy); re-running the attack against it leaves {wb_bal:.1f} % "
        f"({wb:.1f} % accuracy): white-box − transfer {wb_bal - tr_bal:+.1f} points (one seed: "
        "no interval over seeds, so unresolved)."
    )
    # the same cell against the vanilla model of its seed: one seed, so nothing resolved
    assert (
        "Against the vanilla model of the same seed (one seed, so no interval: none of these "
        f"is resolved) it changes clean balanced accuracy by {flat['clean_accuracy'] - 60:+.1f} "
        "points"
    ) in rep.headline
    assert (
        "The vanilla CNN reaches 50.0 % clean balanced accuracy and 42.0 % melanoma recall; "
        "its accuracy is 60.0 %"
    ) in rep.headline
    assert f"{PAPER_VANILLA['clean']:.2f} %" in rep.headline
    assert "always predicting nv: 66.9 % accuracy on the full data" in rep.headline
    assert (
        "its balanced accuracy falls to 20.0 % under FGSM (eps 0.2) and 0.0 % under PGD "
        "(eps 0.3); its accuracy to 30.0 % and 10.0 %"
    ) in rep.headline
    frame = results_frame(results)
    cells = frame[frame["method"].notna()]
    gap = (cells["transfer_pgd_accuracy"] - cells["whitebox_pgd_accuracy"]).mean()
    assert f"by {gap:.1f} points on average" in rep.headline
    assert "All 3 sanity checks pass" in rep.headline
    save_report(rep, tmp_path)
    assert "its accuracy is 60.0 %" in (tmp_path / "report.html").read_text()
    # the most robust on the validation split is named, with its test figures
    results.append(result("pgd", 1.0, clean=0.55, t_pgd=0.5, w_pgd=0.3, val=(0.6, 0.6, 0.6, 0.5)))
    assert (
        "The most robust model on the validation split is pgd@1 (PGD copies of 100 % of the "
        "training set): 20.0 % balanced accuracy under white-box PGD (30.0 % accuracy) at "
        "45.0 % clean balanced accuracy (55.0 % accuracy)."
    ) in report(results).headline


def test_report_from_real_evaluations(tiny_trained, tiny_test, tmp_path):
    """Real ``evaluate()`` output of a tiny model flows through checks and report."""
    x, y = tiny_test
    x, y = x[:100], y[:100]
    specs = {
        "fgsm": {"attack": "fgsm", "eps": 0.2},
        "pgd": {"attack": "pgd", "eps": 0.3, "alpha": 0.2, "steps": 3},
    }
    model = tiny_trained.model
    tr = evaluate(model, x, y, attacks=specs, transfer_sets=craft_transfer_sets(model, x, y, specs))
    vanilla = ModelResult("vanilla", 0, tr, tr.as_protocol("whitebox"))
    checks = sanity_checks([vanilla])
    rep = build_report([vanilla], title="real", context={"n": 100}, checks=checks)
    assert f"its accuracy is {100 * tr.accuracy():.1f} %" in rep.headline
    nv = 100 * (y == CLASSES.index("nv")).float().mean().item()  # always-nv on these images
    assert f"always predicting nv: {nv:.1f} % accuracy on this test set" in rep.headline
    assert rep.tables["grid_all_cells"].empty
    assert [c.name for c in rep.checks] == [c.name for c in checks]
    save_report(rep, tmp_path)
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_examples_figure_and_bad_input():
    x = np.random.default_rng(0).uniform(size=(28, 28, 3))
    ex = Example("fgsm", x, np.clip(x + 0.1, 0, 1), "bcc", "bcc", 0.99, "nv", 0.7)
    rep = report([result(None, None)], examples=[ex, ex])
    assert "adversarial_examples" in rep.figures
    with pytest.raises(ValueError, match="no results"):
        results_frame([])
    with pytest.raises(ValueError, match="no vanilla"):
        report([result("pgd", 0.8)])


def test_check_without_cells_renders(tmp_path):
    """A sweep check concerns no model: its row says so instead of listing none."""
    check = Check("accuracy -> 0 as eps grows", "warn", "1 of 3 comparisons: ...")
    rep = report([result(None, None)], checks=[check])
    save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<td class='cells'>–</td>" in html
    assert "1 of 1 sanity checks warn" in rep.headline


def console_text(results) -> str:
    from rich.console import Console

    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(results_table(results))
    return console.export_text()


def scored(cell, seed=0, *, right=(0.7, 0.5, 0.3), top=None):
    """A ModelResult from real ``metrics()`` of synthetic labels (with confusion matrices):
    P(correct) clean / FGSM / PGD per ``right``; a robust curve from ``top`` down."""
    m, _, f = cell.partition("@")  # vanilla, pgd@0.8, pgd-at@2_255 (trained on the fly)
    method, fraction = (None, None) if cell == "vanilla" else (m, None if "_" in f else float(f))
    rng = np.random.default_rng([seed, len(cell), int(100 * (fraction or 0))])
    y = rng.integers(0, 7, 300)
    right, flip = dict(zip(("clean", "fgsm", "pgd"), right, strict=True)), (y + 1) % 7
    ms = {k: metrics(y, np.where(rng.uniform(size=300) < p, y, flip)) for k, p in right.items()}
    ev = [Evaluation(p, 300, ms, ATTACKS) for p in ("transfer", "whitebox")]
    eps = (0.0, 1 / 255, 2 / 255, 8 / 255, 0.2, 0.3) if top is not None else ()
    acc = {e: (top + 0.02 * seed) / (1 + 30 * e) for e in eps}
    curve = tuple(RobustPoint(e, a, a - 0.1) for e, a in acc.items())
    # validation: the test figures again (selection agrees with the test set here)
    a = acc.get(2 / 255, right["pgd"])
    val_robust = RobustPoint(2 / 255, a, a - 0.1)
    return ModelResult(
        cell, seed, *ev, method, fraction, curve=curve, validation=ev[0], val_robust=val_robust
    )


def test_three_seeds_show_mean_and_interval(tmp_path):
    clean = [0.55, 0.6, 0.68]
    results = [result(None, None, s, clean=c) for s, c in enumerate(clean)]
    results += [result("pgd", 0.8, s, clean=c + 0.05) for s, c in enumerate(clean)]
    rep = report(results)
    save_report(rep, tmp_path)
    x = 100 * np.array(clean) + 5
    low, high = st.t.interval(0.95, 2, loc=x.mean(), scale=st.sem(x))
    grid = pd.read_csv(tmp_path / "grid_all_cells.csv").iloc[0]
    assert grid["seeds"] == 3 and grid["clean_accuracy"] == pytest.approx(x.mean())
    bounds = [grid["clean_accuracy_ci_low"], grid["clean_accuracy_ci_high"]]
    assert bounds == pytest.approx([low, high])  # scipy's t-interval over the 3 seeds
    t1 = pd.read_csv(tmp_path / "table1_vanilla.csv", index_col="protocol")
    assert t1.loc["transfer", "clean_accuracy_ci_high"] == pytest.approx(high - 5)
    # balanced accuracy (accuracy - 10 here, same spread) leads the row
    cell = f"{x.mean() - 10:.1f} ± {(high - low) / 2:.1f}"
    assert f"| pgd | 80 % | 3 | {cell} |" in (tmp_path / "report.md").read_text()
    parser = _Headers()
    parser.feed((tmp_path / "report.html").read_text())
    grid_html = parser.tables[-1]
    assert "n" in grid_html["th"] and grid_html["td"][2:4] == ["3", cell.replace(" ±", "\u202f±")]
    assert ONE_SEED_NOTE not in " ".join(rep.table_notes.values())
    assert "(n = 3)" in rep.headline and "paired over 3 seeds" in rep.headline
    text = console_text(results)  # the console: one row per cell, mean ± half-width, n
    assert f"{x.mean():.1f}" in text and f"±{(high - low) / 2:.1f}" in text and "n=3" in text
    assert f"{x.mean() - 10:.1f}" in text
    assert "pgd@0.8-s0" not in text and max(len(ln) for ln in text.splitlines()) <= 80


def test_one_seed_intervals_are_a_bootstrap(tmp_path):
    results = [scored("vanilla"), scored("pgd@0.8", right=(0.75, 0.7, 0.4))]
    rep = report(results)
    save_report(rep, tmp_path)
    tables = ("table1_vanilla", "table2_best_split", "grid_all_cells")
    assert all(rep.table_notes[t].startswith(ONE_SEED_NOTE) for t in tables)
    assert all(ONE_SEED_NOTE in (tmp_path / f).read_text() for f in ("report.html", "report.md"))
    # a difference of two single runs has no interval: the paired table says none is resolved
    assert "none of these is resolved" in rep.table_notes["paired_differences"]
    paired = rep.tables["paired_differences"].iloc[0]
    d = "vs_vanilla_clean_balanced_accuracy"
    flat = [r.flat_metrics()["clean_balanced_accuracy"] for r in results]
    assert paired[d] == pytest.approx(100 * (flat[1] - flat[0])) and np.isnan(paired[d + "_ci_low"])
    # the always-nv baseline: the share of nv among the test labels (the matrices' rows)
    cm = np.asarray(results[0].transfer.metrics["clean"]["confusion_matrix"])
    nv = 100 * cm[CLASSES.index("nv")].sum() / cm.sum()
    assert (
        f"Always predicting nv: {nv:.1f} % accuracy on this test set" in rep.table_notes[tables[0]]
    )
    row = pd.read_csv(tmp_path / "grid_all_cells.csv").iloc[0]
    cm = results[1].whitebox.metrics["pgd"]["confusion_matrix"]
    iv = confusion_bootstrap(cm, cm_balanced_accuracy).scaled(100)
    b = "whitebox_pgd_balanced_accuracy"
    low, mean, high = row[b + "_ci_low"], row[b], row[b + "_ci_high"]
    assert [low, high] == pytest.approx([iv.low, iv.high]) and low < mean < high
    assert row["seeds"] == 1 and "bootstrap over test images" in rep.headline


def test_robust_curve_and_defence_trained_on_the_fly(tmp_path):
    tops = {"vanilla": 0.2, "fgsm@0.2": 0.3, "pgd@0.4": 0.35, "pgd@0.8": 0.45, "pgd-at@2_255": 0.6}
    results = [scored(c, s, top=t) for c, t in tops.items() for s in range(3)]
    rep = report(results)
    save_report(rep, tmp_path)
    assert (tmp_path / "robust_vs_eps.png").is_file() and "robust_vs_eps" in rep.figures
    lines = ["vanilla", "fgsm@0.2", "pgd@0.8", "pgd-at@2_255"]  # each method's best cell
    assert list(rep.tables["robust_vs_eps"]["cell"]) == lines
    assert list(rep.tables["defences_on_the_fly"]["cell"]) == ["vanilla", "pgd-at@2_255"]
    assert set(rep.tables["grid_all_cells"]["method"]) == {"fgsm", "pgd"}
    bal = [[100 * (t + 0.02 * s) / (1 + 60 / 255) - 10 for s in range(3)] for t in (0.6, 0.2)]
    m, v = (f"{i.mean:.1f} ± {i.half_width:.1f} %" for i in map(t_interval, bal))
    # paired by seed: the curve gives the same gain on every seed here, so ± 0.0
    assert (
        "At eps 2/255 the most robust defence on the validation split is pgd-at@2_255: robust "
        f"balanced accuracy on the test set {m} against the vanilla model's {v} "
        f"({np.mean(bal[0]) - np.mean(bal[1]):+.1f} ± 0.0 points, paired over 3 seeds)."
    ) in rep.headline
    by = {r.key: r.flat_metrics()["clean_balanced_accuracy"] for r in results}
    pair = [[100 * by[f"{c}-s{s}"] for s in range(3)] for c in ("pgd-at@2_255", "vanilla")]
    ci = st.ttest_rel(*pair).confidence_interval()
    words = f"clean balanced accuracy by {np.mean(pair[0]) - np.mean(pair[1]):+.1f} ± "
    words += f"{(ci.high - ci.low) / 2:.1f} points"
    words += " (unresolved: its interval covers 0)" if ci.low <= 0 <= ci.high else ""
    after = rep.headline[rep.headline.index("At eps 2/255") :]
    assert "Against the vanilla model of the same seed, paired over 3 seeds, it changes" in after
    assert words in after
    assert "Defences trained on the fly" in (tmp_path / "report.html").read_text()
    assert "pgd-at@2_255" in console_text(results)


def test_training_cost_is_kept_in_its_own_units():
    """A model's training cost survives the JSON round trip, is a flat metric, and the
    report averages it over seeds without turning it into a percentage."""
    from skinadv.results import ModelResult as MR

    runs = [
        dataclasses.replace(
            scored("pgd-at@2_255", s), cost={"seconds": 40.0 + s, "grad_evals": 6e5}
        )
        for s in range(2)
    ]
    back = MR.from_dict(runs[1].to_dict())
    assert back.cost == {"seconds": 41.0, "grad_evals": 6e5}
    assert back.flat_metrics()["train_grad_evals"] == 6e5
    rep = report([scored("vanilla", s) for s in range(2)] + runs)
    row = rep.tables["defences_on_the_fly"].set_index("cell").loc["pgd-at@2_255"]
    assert row["train_seconds"] == pytest.approx(40.5) and row["train_grad_evals"] == 6e5
    assert "600,000" in to_markdown(rep)


def test_the_prefect_markdown_has_no_bare_cell_name():
    """Prefect's UI autolinks ``mix@0.6`` as an e-mail address: the artifact's Markdown
    (the report's, plus the models table) has every ``name@number`` in a code span."""
    import re

    from skinadv.report.markup import cells_as_code

    md = to_markdown(report(grid_results(seed=0) + grid_results(seed=1)))
    assert re.search(r"(?<![`\w])[a-z][\w-]*@\d", md)  # the report names cells bare
    out = cells_as_code(md + "\n| pgd-at@2_255 s0 | mix@0.6-s1 | `pgd@0.8` |\n")
    bare = [m for m in re.finditer(r"[A-Za-z][\w-]*@\d[\w.-]*", out)]
    assert bare
    for m in bare:
        assert out[m.start() - 1] == "`" and out[m.end()] == "`", out[m.start() - 20 : m.end() + 5]
    assert "``" not in out.replace("```", "")  # nothing wrapped twice
    assert (
        cells_as_code("write to a@b.org or see `fgsm@0.2`") == "write to a@b.org or see `fgsm@0.2`"
    )
