"""The report's first screen: a mini-table of the vanilla model, the most robust static cell
and the most robust defence (the champions' notion), three plain sentences with the chance
level, and the eps scale in 255ths, before the long lead paragraph."""

from __future__ import annotations

import dataclasses

import numpy as np
from test_report import report, scored  # same folder (pytest prepends it)

from skinadv.report import save_report
from skinadv.report.glance import CHANCE, glance_table, in_255ths
from skinadv.report.frame import results_frame


def _results():
    tops = {"vanilla": 0.2, "fgsm@0.2": 0.3, "pgd@0.8": 0.45, "pgd-at@2_255": 0.6}
    return [scored(c, s, top=t) for c, t in tops.items() for s in range(3)]


def test_the_first_screen_holds_the_answer(tmp_path):
    results = _results()
    # AutoAttack measured on two seeds of the defence (``skinadv verify``)
    results = [
        dataclasses.replace(r, extra={"autoattack_2_255_balanced_accuracy": 0.30 + 0.01 * r.seed})
        if r.cell == "pgd-at@2_255" and r.seed < 2
        else r
        for r in results
    ]
    frame = results_frame(results)
    table = glance_table(frame, results)
    assert list(table["model"]) == ["no defence", "best static cell", "best defence"]
    assert list(table["cell"]) == ["vanilla", "pgd@0.8", "pgd-at@2_255"]
    d = table.set_index("cell").loc["pgd-at@2_255"]
    assert (
        d["robust_2_255_balanced_accuracy"]
        == frame.set_index("cell").loc["pgd-at@2_255", "robust_2_255_balanced_accuracy"]
    )
    assert np.isclose(d["autoattack_balanced_accuracy"], 30.5)  # mean over the 2 seeds
    assert table.set_index("cell")["autoattack_balanced_accuracy"].isna().sum() == 2

    rep = report(
        results,
        eps_scale=[(0.0, np.zeros((28, 28, 3)), "mel"), (2 / 255, np.zeros((28, 28, 3)), "nv")],
    )
    words = " ".join(rep.glance)
    assert len(rep.glance) == 3
    assert f"guessing gets {CHANCE:.1f} %" in words and "2/255" in words
    assert "The most robust defence, pgd-at@2_255," in words and "under AutoAttack" in words
    assert "77/255" in words
    save_report(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.index("## At a glance") < md.index("| no defence |") < md.index("## Table 1")
    assert (tmp_path / "eps_scale.png").is_file()
    html = (tmp_path / "report.html").read_text()
    assert html.index("At a glance") < html.index("class='lead'")
    assert in_255ths(0.3) == "77/255" and in_255ths(2 / 255) == "2/255"


def test_eps_scale_images_on_a_real_model(tiny_trained, tiny_test):
    from skinadv.evaluation.scale import eps_scale_images

    x, y = (t[:100].numpy() for t in tiny_test)
    images = eps_scale_images(tiny_trained.model, x, y, (2 / 255, 0.3))
    assert [e for e, _, _ in images] == [0.0, 2 / 255, 0.3]
    clean = images[0][1]
    for eps, img, _ in images[1:]:
        assert img.shape == (28, 28, 3)
        assert np.abs(img - clean).max() <= eps + 1e-6
    assert np.abs(images[2][1] - clean).max() > 0.2  # 77/255 is visible


def test_long_warnings_collapse_to_a_count(tmp_path):
    """A check that concerns 17 models shows "17 models" with the names behind a details
    element; a short one lists them; label leaking is explained once, in the glossary."""
    from skinadv.evaluation.checks import Check

    many = tuple(f"pgd@0.{i % 9 + 1}-s{i}" for i in range(17))
    checks = [
        Check("no label leaking", "warn", "transfer above clean", many),
        Check("pgd <= fgsm", "warn", "one model", ("fgsm@0.2-s0",)),
    ]
    rep = report(_results(), checks=checks)
    save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert "<details><summary>17 models</summary>" in text
        assert "Concerns: fgsm@0.2-s0." in text or "<td class='cells'>fgsm@0.2-s0</td>" in text
    assert md.count("Kurakin") == 1


def test_cell_names_link_to_their_mlflow_runs(tmp_path):
    url = "http://127.0.0.1:5000/#/experiments/1/runs/abc"
    rep = report(_results(), links={"pgd-at@2_255": url})
    save_report(rep, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert f"<a href='{url}' title='its MLflow run'>pgd-at@2_255</a>" in html


def test_a_single_model_report_names_its_model(tmp_path):
    """``skinadv evaluate --out`` on one model: the words name that model where the grid's
    say "the vanilla CNN" / "without a defence", and the grid's empty sections (best split,
    all cells) are left out; the same results without a subject keep the grid's page."""
    one = [scored("vanilla", 0, top=0.2)]
    rep = report(one, subject="lesions.pt2 (export)")
    save_report(rep, tmp_path / "one")
    md = (tmp_path / "one" / "report.md").read_text()
    assert "The model evaluated, lesions.pt2 (export), gets" in md
    assert "lesions.pt2 (export) reaches" in md and "## Table 1 — lesions.pt2 (export)" in md
    assert "| this model |" in md and "| no defence |" not in md
    for grid_words in ("vanilla CNN", "Without a defence", "## Table 2", "## All cells"):
        assert grid_words not in md, grid_words
    html = (tmp_path / "one" / "report.html").read_text()
    assert "lesions.pt2 (export)" in html and "All cells" not in html
    save_report(report(one), tmp_path / "grid")
    md = (tmp_path / "grid" / "report.md").read_text()
    assert "The vanilla CNN reaches" in md and "## Table 2" in md and "## All cells" in md
