"""Markdown and HTML for a ``Report``: human headers, "mean ± half-width" cells, a note
under a table where it needs one, figures inline (HTML) or linked (Markdown)."""

from __future__ import annotations

import base64
import html
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from skinadv.report.figures import fig_png
from skinadv.report.frame import HIGH, LOW
from skinadv.report.page import CAPTIONS, PROTOCOLS_TEXT, Report, sections
from skinadv.report.tables import GROUPS, column_label, format_value

if TYPE_CHECKING:
    from skinadv.evaluation.checks import Check

_GROUP_KIND = {text: kind for kind, text in GROUPS.items()}  # CSS class per group
_GROUP_KIND.update(
    {GROUPS["robust_accuracy"]: "robust", GROUPS["robust_balanced_accuracy"]: "robust"}
)


#: A bare model name such as ``pgd@0.8`` or ``pgd-at@2_255``, not already in a code span:
#: Markdown renderers that autolink (Prefect's UI) read it as an e-mail address.
_BARE_CELL = re.compile(r"(?<![`\w@.])([A-Za-z][\w-]*@\d[\w.-]*\w)(?![`\w@])")


def cells_as_code(markdown: str) -> str:
    """Wrap every bare ``name@number`` in backticks, leaving code spans as they are."""
    parts = re.split(r"(`[^`]*`)", markdown)
    return "".join(p if p.startswith("`") else _BARE_CELL.sub(r"`\1`", p) for p in parts)


def _numeric(col: str) -> bool:
    return col not in ("method", "protocol", "cell", "precision")


def _shown(df: pd.DataFrame) -> list[str]:
    """The columns a reader sees: bounds are folded into their number's cell."""
    return [c for c in df.columns if not c.endswith((LOW, HIGH))]


def _rows(df: pd.DataFrame) -> Iterator[tuple[dict[str, Any], list[tuple[str, str, str]]]]:
    """Per row: its values, and per shown column ``(column, text, "± 2.3" or "")``."""
    cols = list(df.columns)
    for row in df.itertuples(index=False):
        values = dict(zip(cols, row, strict=True))
        quoted = values.get("protocol") == "paper"  # Table 1's paper row: as it quotes them
        cells = []
        for c in _shown(df):
            text = format_value(c, values[c], quoted=quoted)
            half = (values.get(c + HIGH, math.nan) - values.get(c + LOW, math.nan)) / 2
            cells.append((c, text, "" if text == "–" or pd.isna(half) else f"± {half:.1f}"))
        yield values, cells


# --------------------------------------------------------------------------- Markdown


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table with human headers, "mean ± half-width" cells and no index column."""
    cols = _shown(df)
    lines = [
        "| " + " | ".join(column_label(c).full for c in cols) + " |",
        "|" + "|".join("---:" if _numeric(c) else "---" for c in cols) + "|",
    ]
    for _, cells in _rows(df):
        lines.append("| " + " | ".join(f"{t} {pm}".strip() for _, t, pm in cells) + " |")
    return "\n".join(lines)


def table_records(df: pd.DataFrame) -> list[dict[str, str]]:
    """The table as rows of ``{human header: "mean ± half-width"}`` (e.g. for a Prefect
    table artifact), the same cells as ``markdown_table``."""
    cols = {c: column_label(c).full for c in _shown(df)}
    return [{cols[c]: f"{t} {pm}".strip() for c, t, pm in cells} for _, cells in _rows(df)]


def _md_table(report: Report, name: str) -> list[str]:
    note = report.table_notes.get(name)
    return [markdown_table(report.tables[name]), ""] + ([f"*{note}.*", ""] if note else [])


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", ""]
    if report.context:
        parts += [" · ".join(f"{k}: {v}" for k, v in report.context.items()), ""]
    if report.glance:
        parts += ["## At a glance", "", " ".join(report.glance), ""]
    if "at_a_glance" in report.tables:
        parts += _md_table(report, "at_a_glance")
    if "eps_scale" in report.figures:
        parts += [f"*{CAPTIONS['eps_scale']}*", "", "![eps_scale](eps_scale.png)", ""]
    bold, rest = report.lead()
    parts += [(f"**{bold}**" if bold else "") + rest, ""]
    parts += [f"- **{term}**: {text}" for term, text in PROTOCOLS_TEXT] + [""]
    for heading, caption, kind, payload in sections(report):
        parts += [f"## {heading}", ""] if heading else []
        if caption:
            parts += [f"*{caption}*", ""]
        if kind == "table":
            parts += _md_table(report, payload)
        elif kind == "tables":
            parts += [line for n in payload for line in _md_table(report, n)]
        elif kind == "figure":
            parts += [f"![{payload}]({payload}.png)", ""]
        elif kind == "notes":
            parts += [f"- {n}" for n in payload] + [""]
        elif kind == "flags":
            items = [f"- {n}" for n in payload]
            if len(payload) > COLLAPSE_OVER:
                items = [f"<details><summary>{len(payload)} warnings</summary>", "", *items]
                items += ["", "</details>"]
            parts += [*items, ""]
        elif kind == "checks":
            parts += [_md_check(c) for c in payload] or ["No sanity checks were run."]
            parts.append("")
    return "\n".join(parts)


#: Lists longer than this (warnings, the models a check concerns) are collapsed to a count
#: with the names behind a details element.
COLLAPSE_OVER = 4


def _collapsed(names: Sequence[str], what: str = "models") -> str:
    """``a, b`` or, for many, ``<details><summary>17 models</summary>a, b, ...</details>``
    (names HTML-escaped; GitHub's Markdown renders the element too)."""
    text = html.escape(", ".join(names))
    if len(names) <= COLLAPSE_OVER:
        return text
    return f"<details><summary>{len(names)} {what}</summary>{text}</details>"


def _md_check(c: Check) -> str:
    cells = f" Concerns: {_collapsed(c.cells)}." if c.cells else ""
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
th.robust{background:#eaf6ec}
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
img.scale{max-width:560px;display:block}
.glance{font-size:17px;margin:0 0 8px}
.scroll{overflow-x:auto}
.pm{color:#59636e;font-size:11px}.nw{white-space:nowrap}
.tnote{color:#59636e;font-size:12.5px;font-style:italic;margin:-4px 0 8px}
"""


def html_table(df: pd.DataFrame, links: Mapping[str, str] | None = None) -> str:
    """A table with human headers, no index column, and one header spanning each group of
    columns (transfer / white-box / the paper's); with ``links``, each cell name links to
    its MLflow run."""
    esc = html.escape
    links = links or {}

    def show(col: str, text: str) -> str:
        if col == "cell" and text in links:
            return f"<a href='{esc(links[text])}' title='its MLflow run'>{esc(text)}</a>"
        return esc(text)

    cols = _shown(df)
    labels = [column_label(c) for c in cols]
    grouped = any(lab.group for lab in labels)
    starts = {i for i in range(1, len(cols)) if labels[i].group != labels[i - 1].group}

    def attrs(i: int, *classes: str) -> str:
        cls = [*classes, "start" if i in starts else "", "" if _numeric(cols[i]) else "text"]
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
    for values, cells in _rows(df):
        # a rule between methods in the grid table
        sep = " class='sep'" if method is not None and values.get("method") != method else ""
        method = values.get("method")
        tds = "".join(
            f"<td{attrs(j)}>{show(col, text)}"
            + (f"<span class='pm'>&#8239;{esc(pm)}</span>" if pm else "")
            + "</td>"
            for j, (col, text, pm) in enumerate(cells)
        )
        body.append(f"<tr{sep}>{tds}</tr>")
    table = f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _html_table(report: Report, name: str) -> str:
    note = report.table_notes.get(name)
    extra = f"<p class='tnote'>{html.escape(note)}.</p>" if note else ""
    return f"<div>{html_table(report.tables[name], report.links)}{extra}</div>"


def _html_checks(checks: Sequence[Check]) -> str:
    if not checks:
        return "<p>No sanity checks were run.</p>"
    esc = html.escape
    rows = "".join(
        f"<tr><td class='{esc(c.status)}'>{esc(c.status.upper())}</td>"
        f"<td class='name'><code>{esc(c.name)}</code></td><td>{esc(c.detail)}</td>"
        f"<td class='cells'>{_collapsed(c.cells) or '–'}</td></tr>"
        for c in checks
    )
    head = "<tr><th class='text'>Status</th><th class='text'>Check</th>"
    head += "<th class='text'>Finding</th><th class='text'>Models concerned</th></tr>"
    return f"<table class='checks'><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _keep_together(text: str) -> str:
    """No line break inside "72.9 ± 5.7 %" (escaped text in, HTML out)."""
    return re.sub(r"(\d+\.\d ± \d+\.\d %)", r"<span class='nw'>\1</span>", text)


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
    if report.glance:
        out.append("<h2>At a glance</h2>")
        out.append(f"<p class='glance'>{_keep_together(esc(' '.join(report.glance)))}</p>")
    if "at_a_glance" in report.tables:
        out.append(_html_table(report, "at_a_glance"))
    if "eps_scale" in report.figures:
        data = base64.b64encode(fig_png(report.figures["eps_scale"])).decode()
        out.append(f"<p class='caption'>{esc(CAPTIONS['eps_scale'])}</p>")
        out.append(f"<img class='scale' alt='eps scale' src='data:image/png;base64,{data}'>")
    bold, rest = (_keep_together(esc(x)) for x in report.lead())
    out.append(f"<p class='lead'>{f'<strong>{bold}</strong>' if bold else ''}{rest}</p>")
    out.append(
        "<ul class='protocols'>"
        + "".join(f"<li><b>{esc(t)}</b>: {esc(x)}</li>" for t, x in PROTOCOLS_TEXT)
        + "</ul>"
    )
    for heading, caption, kind, payload in sections(report):
        if heading:
            out.append(f"<h2>{esc(heading)}</h2>")
        if caption:
            out.append(f"<p class='caption'>{esc(caption)}</p>")
        if kind == "table":
            out.append(_html_table(report, payload))
        elif kind == "tables":
            out.append(
                "<div class='sweeps'>" + "".join(_html_table(report, n) for n in payload) + "</div>"
            )
        elif kind == "figure":
            data = base64.b64encode(fig_png(report.figures[payload])).decode()
            out.append(
                f"<img class='figure' alt='{esc(payload.replace('_', ' '))}' "
                f"src='data:image/png;base64,{data}'>"
            )
        elif kind in ("notes", "flags"):
            items = "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in payload)
            items += "</ul>"
            if kind == "flags" and len(payload) > COLLAPSE_OVER:
                items = f"<details><summary>{len(payload)} warnings</summary>{items}</details>"
            out.append(items)
        elif kind == "checks":
            out.append(_html_checks(payload))
    out.append("</body></html>")
    return "\n".join(out)
