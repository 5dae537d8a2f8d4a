"""The grid's report: ``ModelResult``s in, tables, figures and a results-section page out.

Pure (no Prefect, Ray or MLflow): ``build_report`` assembles pandas tables, matplotlib
figures and sentences generated from the numbers; ``save_report`` writes CSV, PNG,
Markdown and one self-contained HTML file; ``results_table`` is the console view::

    checks = sanity_checks(results, sweeps)
    report = build_report(results, title="grid", context={"preset": "quick"}, checks=checks)
    save_report(report, "out/report")

Every number is a mean over seeds with a 95 % interval (``skinadv.stats``: Student t over
seeds; one seed: a bootstrap over test images), shown as "61.0 ± 2.3" beside n.

Differences a claim rests on (a defence against the vanilla model, white-box against
transfer) are paired by seed: the mean per-seed difference with its t-interval over the
seeds both share (``paired``); one whose interval covers 0 is called unresolved.

Modules: ``frame`` (results to frames of means and intervals), ``paired`` (differences
paired by seed), ``tables`` (the tables, column labels, the paper's numbers), ``console``
(the terminal's summary table), ``cost`` (training images/s and FLOP/s per thread against
the CPU's peaks), ``autoattack`` (``skinadv verify``'s AutoAttack figures beside our
ensemble's), ``figures``, ``text`` (verdict, headline and protocol notes), ``page`` (the
report object and its sections), ``markup`` (Markdown and HTML), ``render`` (assembly and
files).
"""

from skinadv.report.autoattack import autoattack_flags, autoattack_table
from skinadv.report.console import results_table
from skinadv.report.cost import cost_table
from skinadv.report.figures import Example, curve_figure, examples_figure, fraction_figure
from skinadv.report.frame import ONE_SEED_NOTE, curve_frame, nv_baseline, results_frame
from skinadv.report.paired import paired_differences, paired_table
from skinadv.report.render import Report, build_report, save_report, to_html, to_markdown
from skinadv.report.tables import (
    PAPER_BEST,
    PAPER_VANILLA,
    defences_table,
    grid_table,
    robust_table,
    table1,
    table2,
)
from skinadv.report.text import headline, protocol_notes, verdict, verdict_cells

__all__ = [
    "ONE_SEED_NOTE",
    "PAPER_BEST",
    "PAPER_VANILLA",
    "Example",
    "Report",
    "autoattack_flags",
    "autoattack_table",
    "build_report",
    "cost_table",
    "curve_figure",
    "curve_frame",
    "defences_table",
    "examples_figure",
    "fraction_figure",
    "grid_table",
    "headline",
    "nv_baseline",
    "paired_differences",
    "paired_table",
    "protocol_notes",
    "results_frame",
    "results_table",
    "robust_table",
    "save_report",
    "table1",
    "table2",
    "to_html",
    "to_markdown",
    "verdict",
    "verdict_cells",
]
