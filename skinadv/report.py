"""Comparison tables and figures from grid results: pure (records in, pandas + matplotlib out).

A *record* is one flat dict per trained model (vanilla or a grid cell)::

    {"cell": "pgd@0.8", "method": "pgd", "fraction": 0.8, "seed": 0, "run_id": "...",
     "clean_accuracy": 0.66, "transfer_fgsm_accuracy": ..., "whitebox_pgd_balanced_accuracy": ...}

Metric keys are ``clean_<metric>`` and ``<protocol>_<attack>_<metric>`` with protocol in
``transfer | whitebox``, attack in ``fgsm | pgd`` and metric in ``accuracy |
balanced_accuracy | macro_f1 | mel_recall``; values are fractions in [0, 1].
``save_report`` writes CSV + Markdown + one self-contained HTML file.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger(__name__)

PROTOCOLS = ("transfer", "whitebox")
ATTACK_NAMES = ("fgsm", "pgd")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mel_recall")
METHODS = ("fgsm", "pgd", "mix")

#: The paper's numbers (percent): Table 1 and the best split per method (Table 2).
PAPER_VANILLA = {"clean": 70.19, "fgsm": 57.21, "pgd": 37.69}
PAPER_BEST = {
    "fgsm": {"fraction": 0.2, "clean": 69.64, "fgsm": 69.49, "pgd": 69.54},
    "pgd": {"fraction": 0.8, "clean": 75.33, "fgsm": 75.23, "pgd": 75.13},
    "mix": {"fraction": 0.6, "clean": 67.34, "fgsm": 66.70, "pgd": 66.00},
}
# White-box this many points below transfer is called out in the report.
GAP_WARN_POINTS = 10.0


def metric_key(protocol: str | None, attack: str, metric: str) -> str:
    """``clean_accuracy`` or ``transfer_pgd_balanced_accuracy``."""
    return f"clean_{metric}" if attack == "clean" else f"{protocol}_{attack}_{metric}"


def flatten_metrics(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """``{"transfer": {"clean": {...}, "fgsm": {...}}, "whitebox": {...}}`` -> flat metric dict.

    Only scalar metrics in ``METRICS`` are kept (``mel_recall`` is read from
    ``recall["mel"]`` when melanoma is in the scored set).
    """
    flat: dict[str, float] = {}
    for protocol, by_attack in results.items():
        for attack, metrics in by_attack.items():
            values = dict(metrics)
            mel = (values.get("recall") or {}).get("mel")
            if "mel_recall" not in values and mel is not None:
                values["mel_recall"] = mel
            for metric in METRICS:
                if metric in values:
                    flat[metric_key(protocol, attack, metric)] = float(values[metric])
    return flat


def records_frame(records: Iterable[Mapping]) -> pd.DataFrame:
    """All records as one frame, metrics in percent, mean over seeds per (method, fraction)."""
    df = pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("no results to report")
    df["method"] = df["method"].fillna("none")
    df["fraction"] = df["fraction"].fillna(0.0).astype(float)
    value_cols = [c for c in df.columns if c.startswith(("clean_", "transfer_", "whitebox_"))]
    df[value_cols] = df[value_cols].astype(float) * 100.0
    grouped = df.groupby(["method", "fraction"], sort=False)[value_cols].mean().reset_index()
    grouped["seeds"] = df.groupby(["method", "fraction"], sort=False).size().to_numpy()
    return grouped


def _row(frame_row: pd.Series, protocol: str) -> dict[str, float]:
    out = {}
    for attack in ("clean", *ATTACK_NAMES):
        for metric, short in (("accuracy", "acc"), ("balanced_accuracy", "bal_acc")):
            key = metric_key(protocol, attack, metric)
            out[f"{attack}_{short}"] = frame_row.get(key, np.nan)
    return out


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    """Vanilla model: clean / FGSM / PGD accuracy and balanced accuracy, both protocols + paper."""
    vanilla = frame[frame["method"] == "none"]
    if vanilla.empty:
        raise ValueError("no vanilla result in the records")
    v = vanilla.iloc[0]
    rows = [{"protocol": p, **_row(v, p)} for p in PROTOCOLS]
    rows.append(
        {
            "protocol": "paper",
            "clean_acc": PAPER_VANILLA["clean"],
            "fgsm_acc": PAPER_VANILLA["fgsm"],
            "pgd_acc": PAPER_VANILLA["pgd"],
        }
    )
    return pd.DataFrame(rows).set_index("protocol")


def grid_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell (method x fraction): accuracy and balanced accuracy under both protocols."""
    cells = frame[frame["method"] != "none"].copy()
    rows = []
    for _, r in cells.iterrows():
        row = {"method": r["method"], "fraction": r["fraction"], "seeds": int(r["seeds"])}
        for p in PROTOCOLS:
            row.update({f"{p}_{k}": v for k, v in _row(r, p).items() if not k.startswith("clean")})
        row["clean_acc"] = r.get("clean_accuracy", np.nan)
        row["clean_bal_acc"] = r.get("clean_balanced_accuracy", np.nan)
        row["mel_recall_clean"] = r.get("clean_mel_recall", np.nan)
        rows.append(row)
    order = ["method", "fraction", "seeds", "clean_acc", "clean_bal_acc", "mel_recall_clean"]
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out = out[order + [c for c in out.columns if c not in order]]
    out["method"] = pd.Categorical(
        out["method"],
        [m for m in METHODS if m in set(out["method"])] + sorted(set(out["method"]) - set(METHODS)),
    )
    return out.sort_values(["method", "fraction"]).reset_index(drop=True)


def table2(frame: pd.DataFrame) -> pd.DataFrame:
    """Best split per method (highest mean transfer accuracy over clean/FGSM/PGD, as the paper
    picks), with the white-box figures and the paper's best cell beside it."""
    grid = grid_table(frame)
    rows = []
    for method in grid["method"].cat.categories if not grid.empty else []:
        cells = grid[grid["method"] == method]
        score = cells[["clean_acc", "transfer_fgsm_acc", "transfer_pgd_acc"]].mean(axis=1)
        best = cells.loc[score.idxmax()]
        paper = PAPER_BEST.get(method, {})
        rows.append(
            {
                "method": method,
                "best_fraction": best["fraction"],
                "clean_acc": best["clean_acc"],
                "clean_bal_acc": best["clean_bal_acc"],
                "transfer_fgsm_acc": best["transfer_fgsm_acc"],
                "transfer_pgd_acc": best["transfer_pgd_acc"],
                "whitebox_fgsm_acc": best["whitebox_fgsm_acc"],
                "whitebox_pgd_acc": best["whitebox_pgd_acc"],
                "transfer_pgd_bal_acc": best["transfer_pgd_bal_acc"],
                "paper_fraction": paper.get("fraction", np.nan),
                "paper_clean": paper.get("clean", np.nan),
                "paper_fgsm": paper.get("fgsm", np.nan),
                "paper_pgd": paper.get("pgd", np.nan),
            }
        )
    return pd.DataFrame(rows)


def protocol_notes(frame: pd.DataFrame) -> list[str]:
    """Plain-language warnings where white-box is far below transfer or attacks 'help'."""
    notes = []
    for _, r in frame.iterrows():
        name = "vanilla" if r["method"] == "none" else f"{r['method']} @ {r['fraction']:.0%}"
        clean = r.get("clean_accuracy", np.nan)
        for attack in ATTACK_NAMES:
            t = r.get(metric_key("transfer", attack, "accuracy"), np.nan)
            w = r.get(metric_key("whitebox", attack, "accuracy"), np.nan)
            if t - w > GAP_WARN_POINTS and r["method"] != "none":
                notes.append(
                    f"{name}: {attack.upper()} accuracy is {t:.1f}% on the transfer test set but "
                    f"{w:.1f}% when the attack is re-run against this model (white-box): the "
                    "transfer figure overstates its robustness."
                )
            if t > clean + 1.0:
                notes.append(
                    f"{name}: {attack.upper()} transfer accuracy {t:.1f}% is above clean "
                    f"accuracy {clean:.1f}%: a sign of label leaking (Kurakin et al. 2017), not "
                    "of robustness."
                )
    return notes


# --------------------------------------------------------------------------- figures


def fraction_figure(frame: pd.DataFrame) -> plt.Figure:
    """Accuracy vs adversarial fraction per method (the paper's Figures 5-7), both protocols."""
    grid = grid_table(frame)
    methods = list(grid["method"].cat.categories) if not grid.empty else []
    vanilla = frame[frame["method"] == "none"]
    fig, axes = plt.subplots(
        1,
        max(1, len(methods)),
        figsize=(4.2 * max(1, len(methods)), 3.6),
        sharey=True,
        squeeze=False,
    )
    styles = {"clean": ("black", "-"), "fgsm": ("tab:blue", None), "pgd": ("tab:red", None)}
    for ax, method in zip(axes[0], methods):
        cells = grid[grid["method"] == method].sort_values("fraction")
        xs = list(cells["fraction"] * 100)
        v = vanilla.iloc[0] if not vanilla.empty else None

        def with_vanilla(values, key):
            if v is None:
                return xs, list(values)
            return [0.0, *xs], [v.get(key, np.nan), *values]

        ax.plot(
            *with_vanilla(cells["clean_acc"], "clean_accuracy"), "o-", color="black", label="clean"
        )
        for attack in ATTACK_NAMES:
            color = styles[attack][0]
            ax.plot(
                *with_vanilla(
                    cells[f"transfer_{attack}_acc"], metric_key("transfer", attack, "accuracy")
                ),
                "o-",
                color=color,
                label=f"{attack.upper()} transfer",
            )
            ax.plot(
                *with_vanilla(
                    cells[f"whitebox_{attack}_acc"], metric_key("whitebox", attack, "accuracy")
                ),
                "s--",
                color=color,
                alpha=0.7,
                label=f"{attack.upper()} white-box",
            )
        paper = PAPER_BEST.get(method)
        if paper:
            ax.plot(
                [paper["fraction"] * 100] * 3,
                [paper["clean"], paper["fgsm"], paper["pgd"]],
                "*",
                color="goldenrod",
                markersize=11,
                label="paper best cell",
            )
        ax.set_title(f"{method.upper()} adversarial training")
        ax.set_xlabel("adversarial fraction of training set (%)  (0 = vanilla)")
        ax.set_xticks([0, 20, 40, 60, 80])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].set_ylim(0, 100)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


@dataclass
class Example:
    """One attacked image: x and x_adv (H, W, 3) float in [0, 1], predictions and confidences."""

    attack: str
    x: np.ndarray
    x_adv: np.ndarray
    true_class: str
    clean_pred: str
    clean_prob: float
    adv_pred: str
    adv_prob: float


def examples_figure(examples: Sequence[Example]) -> plt.Figure:
    """Original / perturbation (amplified) / adversarial, like the paper's Figures 1-2."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.7 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        delta = ex.x_adv - ex.x
        scale = np.abs(delta).max() or 1.0
        row[0].imshow(np.clip(ex.x, 0, 1))
        row[0].set_title(
            f"original ({ex.true_class})\n→ {ex.clean_pred} {ex.clean_prob:.1%}", fontsize=9
        )
        row[1].imshow(np.clip(0.5 + 0.5 * delta / scale, 0, 1))
        row[1].set_title(
            f"{ex.attack.upper()} perturbation\n(×{0.5 / scale:.1f} for display)", fontsize=9
        )
        row[2].imshow(np.clip(ex.x_adv, 0, 1))
        row[2].set_title(f"adversarial\n→ {ex.adv_pred} {ex.adv_prob:.1%}", fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- assembling


@dataclass
class Report:
    """Everything the gather step produces; ``save_report`` writes it out."""

    title: str
    tables: dict[str, pd.DataFrame]
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (name, status, detail)
    context: dict[str, str] = field(default_factory=dict)


def build_report(
    records: Iterable[Mapping],
    *,
    title: str = "skinadv grid",
    context: Mapping | None = None,
    checks: Sequence[tuple[str, str, str]] = (),
    examples: Sequence[Example] = (),
) -> Report:
    frame = records_frame(records)
    tables = {
        "table1_vanilla": table1(frame),
        "table2_best_split": table2(frame),
        "grid_all_cells": grid_table(frame),
    }
    figures = {"accuracy_vs_fraction": fraction_figure(frame)}
    if examples:
        figures["adversarial_examples"] = examples_figure(examples)
    return Report(
        title=title,
        tables=tables,
        figures=figures,
        notes=protocol_notes(frame),
        checks=list(checks),
        context={k: str(v) for k, v in (context or {}).items()},
    )


def _md_table(df: pd.DataFrame) -> str:
    df = df.reset_index() if df.index.name else df
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(
                f"{v:.2f}"
                if isinstance(v, float) and not np.isnan(v)
                else ("" if isinstance(v, float) else str(v))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLE_TITLES = {
    "table1_vanilla": "Table 1 — vanilla model (accuracy / balanced accuracy, %)",
    "table2_best_split": "Table 2 — best split per method, beside the paper's",
    "grid_all_cells": "All cells (%), both protocols",
}
PROTOCOL_TEXT = (
    "**transfer**: adversarial test sets crafted once against the vanilla model (what the "
    "paper's numbers imply). **whitebox**: the attack re-run against each model scored — the "
    "honest robustness figure."
)


def to_markdown(report: Report) -> str:
    parts = [f"# {report.title}", ""]
    parts += [f"- {k}: {v}" for k, v in report.context.items()]
    parts += ["", PROTOCOL_TEXT, ""]
    for name, df in report.tables.items():
        parts += [f"## {TABLE_TITLES.get(name, name)}", "", _md_table(df), ""]
    if report.notes:
        parts += ["## What the protocols disagree on", ""] + [f"- {n}" for n in report.notes] + [""]
    if report.checks:
        parts += ["## Sanity checks (Carlini et al. 2019)", ""]
        parts += [f"- **{s.upper()}** {n}: {d}" for n, s, d in report.checks] + [""]
    for name in report.figures:
        parts += [f"![{name}]({name}.png)", ""]
    return "\n".join(parts)


def _fig_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def to_html(report: Report) -> str:
    """One self-contained HTML page (figures inlined as base64 PNG)."""
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(report.title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}",
        "th{background:#f3f3f3}.warn{color:#a40}.pass{color:#070}",
        ".note{background:#fff4e5;border-left:4px solid #f90;padding:6px 10px;margin:6px 0}",
        "</style></head><body>",
        f"<h1>{esc(report.title)}</h1><ul>",
        *[f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in report.context.items()],
        "</ul><p>",
        PROTOCOL_TEXT.replace("**", "<b>", 1)
        .replace("**", "</b>", 1)
        .replace("**", "<b>", 1)
        .replace("**", "</b>", 1),
        "</p>",
    ]
    for name, df in report.tables.items():
        out.append(f"<h2>{esc(TABLE_TITLES.get(name, name))}</h2>")
        out.append(df.to_html(float_format=lambda v: f"{v:.2f}", na_rep="", border=0))
    if report.notes:
        out.append("<h2>What the protocols disagree on</h2>")
        out += [f"<div class='note'>{esc(n)}</div>" for n in report.notes]
    if report.checks:
        out.append("<h2>Sanity checks (Carlini et al. 2019)</h2><ul>")
        out += [
            f"<li class='{esc(s)}'><b>{esc(s.upper())}</b> {esc(n)}: {esc(d)}</li>"
            for n, s, d in report.checks
        ]
        out.append("</ul>")
    for name, fig in report.figures.items():
        data = base64.b64encode(_fig_png(fig)).decode()
        out.append(
            f"<h2>{esc(name.replace('_', ' '))}</h2>"
            f"<img alt='{esc(name)}' style='max-width:100%' src='data:image/png;base64,{data}'>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def save_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write each table as CSV, figures as PNG, ``report.md`` and ``report.html``."""
    from skinadv.data.io import atomic_write_bytes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, df in report.tables.items():
        written[f"{name}.csv"] = atomic_write_bytes(out_dir / f"{name}.csv", df.to_csv().encode())
    for name, fig in report.figures.items():
        written[f"{name}.png"] = atomic_write_bytes(out_dir / f"{name}.png", _fig_png(fig))
    written["report.md"] = atomic_write_bytes(out_dir / "report.md", to_markdown(report).encode())
    written["report.html"] = atomic_write_bytes(out_dir / "report.html", to_html(report).encode())
    return written


def records_table(records: Sequence[Mapping]):
    """A rich table of the records for the terminal (accuracy %, transfer / white-box)."""
    from rich.table import Table

    table = Table(title="grid results (%): accuracy clean / transfer (tr) / white-box (wb)")
    for col in (
        "cell",
        "clean",
        "FGSM tr",
        "FGSM wb",
        "PGD tr",
        "PGD wb",
        "bal acc",
        "PGD wb bal",
        "mel recall",
    ):
        # the cell name is never cut: a reader must know which row is which
        table.add_column(col, justify="right", no_wrap=col == "cell")

    def pct(r: Mapping, key: str) -> str:
        return f"{100 * r[key]:.1f}" if r.get(key) is not None else "-"

    order = {m: i for i, m in enumerate((None, *METHODS))}
    for r in sorted(
        records,
        key=lambda r: (order.get(r.get("method"), 9), r.get("fraction") or 0, r.get("seed", 0)),
    ):
        table.add_row(
            r["cell"] + (f" s{r['seed']}" if r.get("seed") else ""),
            pct(r, "clean_accuracy"),
            pct(r, "transfer_fgsm_accuracy"),
            pct(r, "whitebox_fgsm_accuracy"),
            pct(r, "transfer_pgd_accuracy"),
            pct(r, "whitebox_pgd_accuracy"),
            pct(r, "clean_balanced_accuracy"),
            pct(r, "whitebox_pgd_balanced_accuracy"),
            pct(r, "clean_mel_recall"),
        )
    return table
