"""The report's figures: accuracy vs adversarial fraction, and attacked images."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from skinadv.report.tables import ATTACKS, PAPER_BEST, grid_table
from skinadv.results import metric_key

COLORS = {"clean": "black", "fgsm": "tab:blue", "pgd": "tab:red"}


def _line(
    cells: pd.DataFrame, vanilla: pd.Series | None, key: str
) -> tuple[list[float], list[float]]:
    """x = fraction in %, y = ``key``; the vanilla model at fraction 0 when there is one."""
    xs, ys = list(cells["fraction"] * 100), list(cells[key])
    return ([0.0, *xs], [vanilla.get(key, np.nan), *ys]) if vanilla is not None else (xs, ys)


def fraction_figure(frame: pd.DataFrame) -> plt.Figure:
    """Accuracy vs adversarial fraction per method (the paper's Figures 5-7): clean, and
    each attack under transfer (solid) and white-box (dashed); the vanilla model at 0 %,
    the paper's best cell as stars.

    Args:
        frame: ``results_frame(...)`` (percent, mean over seeds).
    """
    grid = grid_table(frame)
    methods = list(dict.fromkeys(grid["method"]))
    vanilla = frame[frame["method"].isna()]
    v = vanilla.iloc[0] if not vanilla.empty else None
    n = max(1, len(methods))
    fig, axes = plt.subplots(1, n, figsize=(3.9 * n, 3.3), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        cells = grid[grid["method"] == method].sort_values("fraction")
        xs = list(cells["fraction"] * 100)
        ax.plot(*_line(cells, v, "clean_accuracy"), "o-", color=COLORS["clean"], label="clean")
        for attack in ATTACKS:
            for protocol, style, name in (
                ("transfer", "o-", "transfer"),
                ("whitebox", "s--", "white-box"),
            ):
                ax.plot(
                    *_line(cells, v, metric_key(protocol, attack, "accuracy")),
                    style,
                    color=COLORS[attack],
                    alpha=1.0 if protocol == "transfer" else 0.75,
                    markersize=4,
                    label=f"{attack.upper()} {name}",
                )
        paper = PAPER_BEST.get(method)
        if paper:
            ax.plot(
                [paper["fraction"] * 100] * 3,
                [paper["clean"], paper["fgsm"], paper["pgd"]],
                "*",
                color="goldenrod",
                markersize=11,
                label="paper's best cell",
            )
        ax.set_title(
            f"{method.upper() if method != 'mix' else 'Mixed'} adversarial training", fontsize=10
        )
        ax.set_xlabel("adversarial fraction (%); 0 = vanilla", fontsize=9)
        ax.set_xticks([0, 20, 40, 60, 80, 100] if max(xs, default=0) > 80 else [0, 20, 40, 60, 80])
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)", fontsize=9)
    axes[0][0].set_ylim(-2, 102)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
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
    """Original / perturbation (amplified) / adversarial, like the paper's Figures 1-2: one
    row per example."""
    fig, axes = plt.subplots(len(examples), 3, figsize=(6.0, 2.6 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        delta = ex.x_adv - ex.x
        scale = np.abs(delta).max() or 1.0
        row[0].imshow(np.clip(ex.x, 0, 1))
        row[0].set_title(
            f"original ({ex.true_class})\n→ {ex.clean_pred} {ex.clean_prob:.1%}", fontsize=8
        )
        row[1].imshow(np.clip(0.5 + 0.5 * delta / scale, 0, 1))
        row[1].set_title(
            f"{ex.attack.upper()} perturbation\n(×{0.5 / scale:.1f} for display)", fontsize=8
        )
        row[2].imshow(np.clip(ex.x_adv, 0, 1))
        row[2].set_title(f"adversarial\n→ {ex.adv_pred} {ex.adv_prob:.1%}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def fig_png(fig: plt.Figure, *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every figure alive otherwise (a grid makes dozens)
    return buf.getvalue()
