"""Assemble the report (``build_report``) and write it (``save_report``): CSV per table,
PNG per figure, ``report.md`` and one self-contained ``report.html``.

The page reads like a results section: a headline paragraph from the numbers, the tables
with human headers, figures inline, then each sanity check once with the models it
concerns. Both renderers walk the same ``sections`` so Markdown and HTML say the same.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd

from skinadv.report.figures import Example, examples_figure, fig_png, fraction_figure
from skinadv.report.tables import (
    GROUPS,
    column_label,
    format_value,
    grid_table,
    results_frame,
    table1,
    table2,
)
from skinadv.report.text import headline, protocol_notes
from skinadv.results import ModelResult, Sweeps

if TYPE_CHECKING:
    from skinadv.evaluation.checks import Check


@dataclass
class Report:
    """Everything the gather step produces; ``save_report`` writes it out.

    Tables keep machine column names (flat metric keys, values in %); the renderers
    label them.
    """

    title: str
    headline: str
    tables: dict[str, pd.DataFrame]
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)


def sweep_table(rows: Sequence[Mapping[str, Any]], param: str) -> pd.DataFrame:
    """A sweep's rows as ``param, accuracy, balanced_accuracy`` (percent)."""
    df = pd.DataFrame(list(rows)).reindex(columns=[param, "accuracy", "balanced_accuracy"])
    df[["accuracy", "balanced_accuracy"]] = df[["accuracy", "balanced_accuracy"]] * 100.0
    return df.sort_values(param).reset_index(drop=True)


def build_report(
    results: Sequence[ModelResult],
    *,
    title: str,
    context: Mapping[str, Any],
    checks: Sequence[Check],
    examples: Sequence[Example] = (),
    sweeps: Sweeps | None = None,
) -> Report:
    """Tables, figures and sentences from every model's results.

    Args:
        results: the vanilla model and the grid's cells, any number of seeds each.
        title: the page title.
        context: what was run (experiment, data, preset, ...), shown under the title.
        checks: ``sanity_checks(results, sweeps)``.
        examples: attacked images for the examples figure.
        sweeps: the sanity sweeps (eps / steps / restarts), shown as small tables.

    Raises:
        ValueError: no results, or no vanilla model among them.
    """
    frame = results_frame(results)
    tables = {
        "table1_vanilla": table1(frame),
        "table2_best_split": table2(frame),
        "grid_all_cells": grid_table(frame),
    }
    for param, rows in (sweeps or {}).items():
        if rows:
            tables[f"sweep_{param}"] = sweep_table(rows, param)
    figures = {}
    if not tables["grid_all_cells"].empty:  # a vanilla-only run has no fraction axis
        figures["accuracy_vs_fraction"] = fraction_figure(frame)
    if examples:
        figures["adversarial_examples"] = examples_figure(examples)
    return Report(
        title=title,
        headline=headline(frame, results, checks),
        tables=tables,
        figures=figures,
        notes=protocol_notes(frame),
        checks=list(checks),
        context={k: str(v) for k, v in context.items()},
    )


# --------------------------------------------------------------------------- page layout

PROTOCOLS_TEXT = (
    (
        "Transfer",
        (
            "the FGSM and PGD test sets are crafted once against the vanilla model and "
            "every model is scored on them (what the paper's numbers imply)."
        ),
    ),
    (
        "White-box",
        "each attack is re-run against the model being scored: the honest robustness figure.",
    ),
)
_CAPTIONS = {
    "table1_vanilla": "The CNN trained without adversarial examples. Its transfer sets were "
    "crafted against this very model, so the two protocols coincide here; the paper reports "
    "accuracy only.",
    "table2_best_split": "Per method, the fraction with the highest mean of clean, transfer "
    "FGSM and transfer PGD accuracy (the paper's rule), white-box beside transfer, and the "
    "paper's best cell.",
    "accuracy_vs_fraction": "Solid: transfer (the paper's protocol); dashed: white-box. "
    "Fraction 0 is the vanilla model; stars are the paper's best cell (clean, FGSM, PGD).",
    "grid_all_cells": "Every cell. Mel. recall: melanoma sensitivity on clean images.",
    "sweeps": "PGD accuracy as one setting grows, on a subset of the test set (the grid "
    "sweeps the vanilla model).",
    "checks": 'Carlini et al. 2019, "On Evaluating Adversarial Robustness": each check '
    "once, with the models (cell-seed) it concerns.",
    "adversarial_examples": "Images the vanilla model classifies correctly and gets wrong "
    "under attack; the perturbation is amplified for display.",
}
_GROUP_KIND = {text: kind for kind, text in GROUPS.items()}  # CSS class per group


def sections(report: Report) -> list[tuple[str, str, str, Any]]:
    """``(heading, caption, kind, payload)`` in page order; kind is ``table``, ``tables``,
    ``figure``, ``notes`` or ``checks``."""
    out: list[tuple[str, str, str, Any]] = [
        ("Table 1 — the vanilla model", _CAPTIONS["table1_vanilla"], "table", "table1_vanilla"),
        (
            "Table 2 — best split per method",
            _CAPTIONS["table2_best_split"],
            "table",
            "table2_best_split",
        ),
    ]
    if "accuracy_vs_fraction" in report.figures:
        out.append(
            (
                "Accuracy vs adversarial fraction",
                _CAPTIONS["accuracy_vs_fraction"],
                "figure",
                "accuracy_vs_fraction",
            )
        )
    if report.notes:
        out.append(("Where the two protocols disagree", "", "notes", report.notes))
    out.append(("Sanity checks", _CAPTIONS["checks"], "checks", report.checks))
    out.append(("All cells", _CAPTIONS["grid_all_cells"], "table", "grid_all_cells"))
    sweeps = [n for n in report.tables if n.startswith("sweep_")]
    if sweeps:
        out.append(("Attack strength sweeps", _CAPTIONS["sweeps"], "tables", sweeps))
    if "adversarial_examples" in report.figures:
        out.append(
            (
                "Adversarial examples",
                _CAPTIONS["adversarial_examples"],
                "figure",
                "adversarial_examples",
            )
        )
    return out


def _numeric(df: pd.DataFrame, col: str) -> bool:
    return col not in ("method", "protocol", "cell")


def _quoted(cols: Sequence[str], row: Sequence[Any]) -> bool:
    """Table 1's paper row: numbers as the paper quotes them."""
    return dict(zip(cols, row)).get("protocol") == "paper"


# --------------------------------------------------------------------------- Markdown


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table with human headers and no index column."""
    cols = list(df.columns)
    lines = [
        "| " + " | ".join(column_label(c).full for c in cols) + " |",
        "|" + "|".join("---:" if _numeric(df, c) else "---" for c in cols) + "|",
    ]
    for row in df.itertuples(index=False):
        q = _quoted(cols, row)
        lines.append(
            "| " + " | ".join(format_value(c, v, quoted=q) for c, v in zip(cols, row)) + " |"
        )
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", ""]
    if report.context:
        parts += [" · ".join(f"{k}: {v}" for k, v in report.context.items()), ""]
    parts += [report.headline, ""]
    parts += [f"- **{term}**: {text}" for term, text in PROTOCOLS_TEXT] + [""]
    for heading, caption, kind, payload in sections(report):
        parts += [f"## {heading}", ""]
        if caption:
            parts += [f"*{caption}*", ""]
        if kind == "table":
            parts += [markdown_table(report.tables[payload]), ""]
        elif kind == "tables":
            parts += [markdown_table(report.tables[n]) + "\n" for n in payload]
        elif kind == "figure":
            parts += [f"![{payload}]({payload}.png)", ""]
        elif kind == "notes":
            parts += [f"- {n}" for n in payload] + [""]
        elif kind == "checks":
            parts += [_md_check(c) for c in payload] or ["No sanity checks were run."]
            parts.append("")
    return "\n".join(parts)


def _md_check(c: Check) -> str:
    cells = f" Concerns: {', '.join(c.cells)}." if c.cells else ""
    return f"- **{c.status.upper()}** `{c.name}`: {c.detail}.{cells}"


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 max-width:1200px;margin:24px auto;padding:0 20px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 6px;padding-bottom:3px;border-bottom:1px solid #d8dee4}
.meta{color:#59636e;font-size:13px;margin:0 0 14px}
.lead{font-size:16px;background:#f6f8fa;border-left:4px solid #0969da;padding:10px 16px;
 margin:0 0 10px}
.protocols{font-size:14px;color:#333;margin:0;padding-left:20px}
.caption{color:#59636e;font-size:13px;margin:0 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 8px}
th,td{border:1px solid #d8dee4;padding:3px 7px}
th{background:#f6f8fa;font-weight:600;vertical-align:bottom;text-align:right;
 max-width:92px;line-height:1.25}
th.group{text-align:center;vertical-align:middle;max-width:none}
th.transfer{background:#eaf2fc}th.whitebox{background:#fcecea}th.paper{background:#fbf6e6}
td{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.text,th.text{text-align:left}
.start{border-left:2px solid #8c959f}
tbody tr:nth-child(even) td{background:#fafbfc}
table.checks{width:100%}
table.checks td{white-space:normal;text-align:left;vertical-align:top}
table.checks td.name{white-space:nowrap}
table.checks td.cells{font-size:12px;color:#444;width:30%}
.pass{color:#1a7f37;font-weight:600}.warn{color:#bc4c00;font-weight:600}
.notes li{margin:4px 0}
.sweeps{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
tr.sep td{border-top:2px solid #8c959f}
img.figure{max-width:100%;display:block}
"""


def html_table(df: pd.DataFrame) -> str:
    """A table with human headers, no index column, and one header spanning each group of
    columns (transfer / white-box / the paper's)."""
    esc = html.escape
    cols = list(df.columns)
    labels = [column_label(c) for c in cols]
    grouped = any(lab.group for lab in labels)
    starts = {i for i in range(1, len(cols)) if labels[i].group != labels[i - 1].group}

    def attrs(i: int, *classes: str) -> str:
        cls = [*classes, "start" if i in starts else "", "" if _numeric(df, cols[i]) else "text"]
        cls = [c for c in cls if c]
        return f" class='{' '.join(cls)}'" if cls else ""

    top, bottom = [], []
    i = 0
    for group, run in itertools.groupby(labels, key=lambda lab: lab.group):
        run = list(run)
        if group is None:
            for lab in run:
                span = " rowspan='2'" if grouped else ""
                top.append(f"<th{span}{attrs(i)} title='{esc(lab.full)}'>{esc(lab.short)}</th>")
                i += 1
        else:
            kind = _GROUP_KIND.get(group, "")
            top.append(f"<th colspan='{len(run)}'{attrs(i, 'group', kind)}>{esc(group)}</th>")
            for lab in run:
                bottom.append(f"<th{attrs(i, kind)} title='{esc(lab.full)}'>{esc(lab.short)}</th>")
                i += 1
    head = "<tr>" + "".join(top) + "</tr>" + ("<tr>" + "".join(bottom) + "</tr>" if bottom else "")
    body, method = [], None
    for row in df.itertuples(index=False):
        values = dict(zip(cols, row))
        # a rule between methods in the grid table
        sep = " class='sep'" if method is not None and values.get("method") != method else ""
        method = values.get("method")
        q = _quoted(cols, row)
        tds = "".join(
            f"<td{attrs(j)}>{esc(format_value(c, v, quoted=q))}</td>"
            for j, (c, v) in enumerate(values.items())
        )
        body.append(f"<tr{sep}>{tds}</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _html_checks(checks: Sequence[Check]) -> str:
    if not checks:
        return "<p>No sanity checks were run.</p>"
    esc = html.escape
    rows = "".join(
        f"<tr><td class='{esc(c.status)}'>{esc(c.status.upper())}</td>"
        f"<td class='name'><code>{esc(c.name)}</code></td><td>{esc(c.detail)}</td>"
        f"<td class='cells'>{esc(', '.join(c.cells)) or '–'}</td></tr>"
        for c in checks
    )
    head = "<tr><th class='text'>Status</th><th class='text'>Check</th>"
    head += "<th class='text'>Finding</th><th class='text'>Models concerned</th></tr>"
    return f"<table class='checks'><thead>{head}</thead><tbody>{rows}</tbody></table>"


def to_html(report: Report) -> str:
    """One self-contained HTML page (figures inlined as base64 PNG)."""
    esc = html.escape
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    if report.context:
        meta = " · ".join(f"<b>{esc(k)}</b> {esc(v)}" for k, v in report.context.items())
        out.append(f"<p class='meta'>{meta}</p>")
    out.append(f"<p class='lead'>{esc(report.headline)}</p>")
    out.append(
        "<ul class='protocols'>"
        + "".join(f"<li><b>{esc(t)}</b>: {esc(x)}</li>" for t, x in PROTOCOLS_TEXT)
        + "</ul>"
    )
    for heading, caption, kind, payload in sections(report):
        out.append(f"<h2>{esc(heading)}</h2>")
        if caption:
            out.append(f"<p class='caption'>{esc(caption)}</p>")
        if kind == "table":
            out.append(html_table(report.tables[payload]))
        elif kind == "tables":
            out.append(
                "<div class='sweeps'>"
                + "".join(html_table(report.tables[n]) for n in payload)
                + "</div>"
            )
        elif kind == "figure":
            data = base64.b64encode(fig_png(report.figures[payload])).decode()
            out.append(
                f"<img class='figure' alt='{esc(payload.replace('_', ' '))}' "
                f"src='data:image/png;base64,{data}'>"
            )
        elif kind == "notes":
            out.append(
                "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in payload) + "</ul>"
            )
        elif kind == "checks":
            out.append(_html_checks(payload))
    out.append("</body></html>")
    return "\n".join(out)


def save_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write each table as CSV (no index column), figures as PNG, ``report.md`` and a
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
