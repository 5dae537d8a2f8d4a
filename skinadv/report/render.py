"""Assemble the report (``build_report``) and write it (``save_report``): CSV per table,
PNG per figure, ``report.md`` and one self-contained ``report.html``.

The page reads like a results section: a headline paragraph from the numbers, the tables
with human headers, figures inline, then each sanity check once with the models it
concerns. Both renderers (``markup``) walk the same ``page.sections`` so Markdown and HTML
say the same. Every number is a mean over seeds with its 95 % interval; CSV files keep
the bounds as ``<column>_ci_low`` / ``<column>_ci_high`` beside ``seeds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from skinadv.report.autoattack import autoattack_flags, autoattack_note, autoattack_table
from skinadv.report.console import baseline_words
from skinadv.report.cost import cost_note, cost_table
from skinadv.report.figures import (
    Example,
    curve_figure,
    eps_scale_figure,
    examples_figure,
    fig_png,
    fraction_figure,
)
from skinadv.report.frame import (
    LOW,
    ONE_SEED_NOTE,
    curve_cells,
    curve_frame,
    results_frame,
)
from skinadv.report.glance import glance_sentences, glance_table
from skinadv.report.markup import to_html, to_markdown
from skinadv.report.page import Report
from skinadv.report.paired import paired_note, paired_table
from skinadv.report.tables import (
    clinical_table,
    defences_table,
    grid_table,
    robust_table,
    table1,
    table2,
)
from skinadv.report.text import curve_images, headline, protocol_notes, verdict
from skinadv.results import ModelResult, Sweeps

if TYPE_CHECKING:
    from skinadv.evaluation.checks import Check


def sweep_table(rows: Sequence[Mapping[str, Any]], param: str) -> pd.DataFrame:
    """A sweep's rows as ``param, accuracy, balanced_accuracy`` (percent)."""
    df = pd.DataFrame(list(rows)).reindex(columns=[param, "accuracy", "balanced_accuracy"])
    df[["accuracy", "balanced_accuracy"]] = df[["accuracy", "balanced_accuracy"]] * 100.0
    return df.sort_values(param).reset_index(drop=True)


def bootstrapped(table: pd.DataFrame) -> bool:
    """Whether a table shows an interval for a model trained once (a bootstrap)."""
    if "seeds" not in table:
        return False
    one = table["seeds"] == 1
    bounds = [c for c in table.columns if c.endswith(LOW)]
    return bool(one.any() and bounds and table.loc[one, bounds].notna().any().any())


def curve_subset_note(results: Sequence[ModelResult]) -> str:
    """Under the robust table: the fixed test subset its curves were scored on, if any."""
    images = curve_images(results)
    if images is None:
        return ""
    return (
        f"Robust figures (this table, the figure above it and every robust_ column) are on a "
        f"fixed, class-stratified subset of {images}, the same for every model and the ones "
        f"skinadv verify attacks with AutoAttack; clean and paper-budget figures use the "
        f"whole test set."
    )


def build_report(
    results: Sequence[ModelResult],
    *,
    title: str,
    context: Mapping[str, Any],
    checks: Sequence[Check],
    examples: Sequence[Example] = (),
    sweeps: Sweeps | None = None,
    champions: Sequence[Mapping[str, Any]] = (),
    eps_scale: Sequence[tuple[float, Any, str]] = (),
    links: Mapping[str, str] | None = None,
    subject: str | None = None,
) -> Report:
    """Tables, figures and sentences from every model's results.

    Args:
        results: the vanilla model, the grid's cells and any defence trained on the fly,
            any number of seeds each.
        title: the page title.
        context: what was run (experiment, data, preset, ...), shown under the title.
        checks: ``sanity_checks(results, sweeps)``.
        examples: attacked images for the examples figure.
        sweeps: the sanity sweeps (eps / steps / restarts), shown as small tables.
        champions: one row per method's registered champion (``method``, ``registered``,
            ``cell``, ``seed``, the validation figure it was chosen by).
        eps_scale: ``eps_scale_images``' output: one image clean and attacked at each eps.
        links: ``{cell: URL}``, the MLflow run each cell name links to in the HTML page.
        subject: a single-model report (``skinadv evaluate``): the one model's name, e.g.
            ``net.pt2 (export)``. The words name it where the grid's say "the vanilla
            CNN", and the grid's empty sections (best split, all cells) are left out.

    Raises:
        ValueError: no results, or no vanilla model among them.
    """
    frame = results_frame(results)
    glance = glance_table(frame, results, single=subject is not None)
    tables = {
        "at_a_glance": glance,
        "table1_vanilla": table1(frame),
        "paired_differences": paired_table(results),
        "table2_best_split": table2(frame),
        "grid_all_cells": grid_table(frame),
    }
    notes = {}
    if tables["paired_differences"].empty:  # the vanilla model alone
        del tables["paired_differences"]
    else:
        notes["paired_differences"] = paired_note(tables["paired_differences"])
    figures = {}
    if not tables["grid_all_cells"].empty:  # a vanilla-only run has no fraction axis
        figures["accuracy_vs_fraction"] = fraction_figure(frame)
    curves = curve_frame(results)
    if not curves.empty:
        drawn = curve_cells(curves, frame)
        figures["robust_vs_eps"] = curve_figure(curves, drawn)
        tables["robust_vs_eps"] = robust_table(frame, drawn)
        subset = curve_subset_note(results)
        if subset:
            notes["robust_vs_eps"] = subset
    defences = defences_table(frame)
    if not defences.empty:
        tables["defences_on_the_fly"] = defences
    cost = cost_table(results)
    if not cost.empty:
        tables["training_cost"] = cost
        notes["training_cost"] = cost_note(results)
    if champions:
        tables["champions"] = pd.DataFrame(list(champions))
    clinical = clinical_table(frame)
    if not clinical.empty:
        tables["clinical"] = clinical
    autoattack = autoattack_table(results)
    if not autoattack.empty:
        tables["autoattack"] = autoattack
        notes["autoattack"] = autoattack_note(autoattack)
    for name, t in tables.items():
        if name not in notes and bootstrapped(t):
            notes[name] = ONE_SEED_NOTE
    # accuracy stands beside what a model that always says "nevus" would score
    nv = baseline_words(results)
    notes["table1_vanilla"] = "; ".join(
        [n for n in (notes.get("table1_vanilla"), nv[0].upper() + nv[1:]) if n]
    )
    for param, rows in (sweeps or {}).items():
        if rows:
            tables[f"sweep_{param}"] = sweep_table(rows, param)
    if examples:
        figures["adversarial_examples"] = examples_figure(examples)
    if eps_scale:
        figures["eps_scale"] = eps_scale_figure(eps_scale)
    return Report(
        title=title,
        headline=headline(frame, results, checks, subject=subject),
        tables=tables,
        figures=figures,
        notes=protocol_notes(frame),
        checks=list(checks),
        context={k: str(v) for k, v in context.items()},
        table_notes=notes,
        table_flags={"autoattack": autoattack_flags(autoattack)} if not autoattack.empty else {},
        verdict=" ".join(verdict(frame, results)),
        glance=glance_sentences(glance, frame, results, subject=subject),
        links=dict(links or {}),
        subject=subject,
    )


def save_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write each table as CSV (no index column; each number's interval bounds as
    ``<column>_ci_low`` / ``<column>_ci_high``), figures as PNG, ``report.md`` and a
    self-contained ``report.html``, each file atomically.

    Returns:
        ``{file name: path}``.
    """
    from skinadv.data.io import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        written[name] = atomic_write_bytes(out_dir / name, data)

    for name, df in report.tables.items():
        put(f"{name}.csv", df.to_csv(index=False).encode())
    for name, fig in report.figures.items():
        put(f"{name}.png", fig_png(fig))
    put("report.md", to_markdown(report).encode())
    put("report.html", to_html(report).encode())
    return written


__all__ = ["Report", "build_report", "save_report", "sweep_table", "to_html", "to_markdown"]
