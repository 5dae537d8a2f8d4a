"""The grid's report: ``ModelResult``s in, tables, figures and a results-section page out.

Pure (no Prefect, Ray or MLflow): ``build_report`` assembles pandas tables, matplotlib
figures and sentences generated from the numbers; ``save_report`` writes CSV, PNG,
Markdown and one self-contained HTML file; ``results_table`` is the console view::

    checks = sanity_checks(results, sweeps)
    report = build_report(results, title="grid", context={"preset": "quick"}, checks=checks)
    save_report(report, "out/report")

Modules: ``tables`` (frames, column labels, the paper's numbers, the console table),
``figures``, ``text`` (headline and protocol notes), ``render`` (assembly and files).
"""

from skinadv.report.figures import Example, examples_figure, fraction_figure
from skinadv.report.render import Report, build_report, save_report, to_html, to_markdown
from skinadv.report.tables import (
    PAPER_BEST,
    PAPER_VANILLA,
    grid_table,
    results_frame,
    results_table,
    table1,
    table2,
)
from skinadv.report.text import headline, protocol_notes

__all__ = [
    "PAPER_BEST",
    "PAPER_VANILLA",
    "Example",
    "Report",
    "build_report",
    "examples_figure",
    "fraction_figure",
    "grid_table",
    "headline",
    "protocol_notes",
    "results_frame",
    "results_table",
    "save_report",
    "table1",
    "table2",
    "to_html",
    "to_markdown",
]
