"""The report's figures: accuracy vs adversarial fraction, robust accuracy vs eps, and
attacked images."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from skinadv.report.frame import HIGH, LOW
from skinadv.report.glance import in_255ths
from skinadv.report.tables import ATTACKS, PAPER_BEST, eps_text, grid_table
from skinadv.results import metric_key

COLORS = {"clean": "black", "fgsm": "tab:blue", "pgd": "tab:red", "mix": "tab:purple"}
#: Colours for methods beyond the paper's (defences trained on the fly), in order of appearance.
OTHER_COLORS = ("tab:green", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _line(
    cells: pd.DataFrame, vanilla: pd.Series | None, key: str
) -> tuple[list[float], list[float], np.ndarray]:
    """x = fraction in %, y = ``key``, yerr = (2, N) distances to the interval's bounds (0
    where there is none); the vanilla model at fraction 0 when there is one."""
    rows = ([] if vanilla is None else [vanilla]) + [r for _, r in cells.iterrows()]
    xs = ([] if vanilla is None else [0.0]) + [100 * float(f) for f in cells["fraction"]]
    ys = np.array([float(r.get(key, np.nan)) for r in rows])
    low = np.array([float(r.get(key + LOW, np.nan)) for r in rows])
    high = np.array([float(r.get(key + HIGH, np.nan)) for r in rows])
    err = np.nan_to_num(np.vstack([ys - low, high - ys]), nan=0.0).clip(min=0.0)
    return xs, list(ys), err


def fraction_figure(frame: pd.DataFrame) -> plt.Figure:
    """Accuracy vs adversarial fraction per method (the paper's Figures 5-7): clean, and
    each attack under transfer (solid) and white-box (dashed), with 95 % interval bars;
    the vanilla model at 0 %, the paper's best cell as stars.

    Args:
        frame: ``results_frame(...)`` (percent, mean over seeds, interval bounds).
    """
    grid = grid_table(frame)
    methods = list(dict.fromkeys(grid["method"]))
    vanilla = frame[frame["method"].isna()]
    v = vanilla.iloc[0] if not vanilla.empty else None
    n = max(1, len(methods))
    fig, axes = plt.subplots(1, n, figsize=(3.9 * n, 3.3), sharey=True, squeeze=False)
    bars = {"capsize": 2, "elinewidth": 0.8, "markersize": 4}
    for ax, method in zip(axes[0], methods, strict=False):
        cells = grid[grid["method"] == method].sort_values("fraction")
        xs, ys, err = _line(cells, v, "clean_accuracy")
        ax.errorbar(xs, ys, yerr=err, fmt="o-", color=COLORS["clean"], label="clean", **bars)
        for attack in ATTACKS:
            for protocol, style, name in (
                ("transfer", "o-", "transfer"),
                ("whitebox", "s--", "white-box"),
            ):
                xs, ys, err = _line(cells, v, metric_key(protocol, attack, "accuracy"))
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    fmt=style,
                    color=COLORS[attack],
                    alpha=1.0 if protocol == "transfer" else 0.75,
                    label=f"{attack.upper()} {name}",
                    **bars,
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


def _color(method: object, others: dict[str, str]) -> str:
    if not isinstance(method, str):
        return COLORS["clean"]
    if method in COLORS:
        return COLORS[method]
    return others.setdefault(method, OTHER_COLORS[len(others) % len(OTHER_COLORS)])


def curve_figure(curves: pd.DataFrame, cells: list[str]) -> plt.Figure:
    """Robust accuracy and balanced accuracy vs eps (white-box, worst case over the attack
    ensemble): one line per cell of ``cells`` (``curve_cells``: vanilla, each method's
    cell chosen on the validation split), a band for the 95 % t-interval over seeds where
    there are several.

    Args:
        curves: ``curve_frame(results)`` (percent), not empty.
        cells: the cells drawn.
    """
    eps = sorted(set(curves["eps"]))
    positive = [e for e in eps if e > 0]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), sharey=True)
    others: dict[str, str] = {}
    for ax, metric, name in zip(
        axes, ("accuracy", "balanced_accuracy"), ("accuracy", "balanced accuracy"), strict=True
    ):
        for cell in cells:
            c = curves[curves["cell"] == cell].sort_values("eps")
            color = _color(c["method"].iloc[0], others)
            ax.plot(c["eps"], c[metric], "o-", color=color, markersize=4, label=cell)
            band = c[c[metric + LOW].notna()]
            if not band.empty:
                ax.fill_between(
                    band["eps"], band[metric + LOW], band[metric + HIGH], color=color, alpha=0.15
                )
        if positive and len(positive) < len(eps):  # eps 0 (clean) on a linear stretch
            ax.set_xscale("symlog", linthresh=min(positive), linscale=0.5)
        elif positive:
            ax.set_xscale("log")
        ax.set_xticks(eps, [eps_text(e) for e in eps], rotation=45 if len(eps) > 6 else 0)
        ax.minorticks_off()
        ax.set_title(f"robust {name} vs eps (white-box)", fontsize=10)
        ax.set_xlabel("L-inf budget eps (pixel units)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("robust accuracy (%)", fontsize=9)
    axes[0].set_ylim(-2, 102)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=min(6, len(labels)), frameon=False, fontsize=8
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
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
    for row, ex in zip(axes, examples, strict=True):
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


def eps_scale_figure(images: Sequence[tuple[float, np.ndarray, str]]) -> plt.Figure:
    """One image, clean and attacked at each budget, titled with the budget in 255ths and
    the model's answer: what "eps" means to the eye."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.9 * len(images), 2.3), squeeze=False)
    for ax, (eps, img, answer) in zip(axes[0], images, strict=True):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        what = "clean" if eps == 0 else f"eps {in_255ths(eps)}"
        ax.set_title(f"{what}\nmodel says {answer}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def fig_png(fig: plt.Figure, *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)  # pyplot keeps every figure alive otherwise (a grid makes dozens)
    return buf.getvalue()
