"""The report's page: the ``Report`` object, its fixed words, and the order of its
sections, which the Markdown and HTML renderers (``markup``) both walk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd

if TYPE_CHECKING:
    from skinadv.evaluation.checks import Check


@dataclass
class Report:
    """Everything the gather step produces; ``save_report`` writes it out.

    Tables keep machine column names (flat metric keys, values in %, each number beside
    its ``_ci_low`` / ``_ci_high`` bounds); the renderers label them and show
    "mean ± half-width". ``table_notes`` is a line under a table (e.g. one seed's
    bootstrap); ``table_flags`` are warnings listed under a table (e.g. AutoAttack below
    our ensemble); ``verdict`` is the headline's opening sentences, set in bold.
    """

    title: str
    headline: str
    tables: dict[str, pd.DataFrame]
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    table_notes: dict[str, str] = field(default_factory=dict)
    verdict: str = ""
    table_flags: dict[str, list[str]] = field(default_factory=dict)
    glance: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    subject: str | None = None

    def lead(self) -> tuple[str, str]:
        """The headline as (verdict, the rest)."""
        if self.verdict and self.headline.startswith(self.verdict):
            return self.verdict, self.headline[len(self.verdict) :]
        return "", self.headline


def report_title(experiment: str, preset: str | None = None) -> str:
    """``skinadv: the rigorous grid (experiment skinadv-grid)``."""
    what = f"the {preset} grid" if preset else "a grid"
    return f"skinadv: {what} (experiment {experiment})"


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
    (
        "Label leaking",
        (
            "a model trained on adversarial copies crafted against another model learns the "
            "attack's fingerprint and scores above its clean accuracy on such copies (Kurakin "
            "et al. 2017): a flaw of the transfer protocol, not robustness. The report names "
            "where it happens; this is what it means."
        ),
    ),
    (
        "61.0 ± 2.3, n",
        (
            "the mean over n seeds (training runs) ± the half-width of its 95 % interval: "
            "Student's t over seeds, or, for a model trained once, a bootstrap over test images."
        ),
    ),
    (
        "+1.2 ± 0.8, paired",
        (
            "a difference between two models (or two protocols) taken seed by seed, then "
            "averaged over the seeds both have, ± the half-width of its 95 % t-interval; one "
            "whose interval covers 0 is unresolved."
        ),
    ),
)
CAPTIONS = {
    "table1_vanilla": "The CNN trained without adversarial examples. Its transfer sets were "
    "crafted against this very model, so the two protocols coincide here; the paper reports "
    "accuracy only.",
    "table1_subject": "The model evaluated: clean and attacked with FGSM and PGD at the "
    "paper's budgets. White-box re-runs each attack against it; transfer scores it on the "
    "attacks crafted against the transfer source named above (itself by default, so the two "
    "protocols coincide); the paper's row is its undefended CNN, for scale.",
    "paired_differences": "What each model changes, seed by seed: its figure minus the vanilla "
    "model's of the same seed (same split), clinical figures first, and its own white-box "
    "minus transfer figure; the mean over the seeds both have, with the 95 % t-interval of "
    "that mean. A difference whose interval covers 0 is unresolved.",
    "autoattack": "AutoAttack (Croce & Hein 2020), run by skinadv verify on the models the "
    "verdict and the champions name, beside our white-box ensemble on the same images. "
    "AutoAttack more than 1 point below the ensemble means our figure overstates "
    "robustness; images that only Square (a gradient-free attack) fools are a sign of "
    "gradient masking. Both are listed under the table when they occur.",
    "eps_scale": "What a budget does to an image: one test image, clean and attacked "
    "(white-box PGD against the vanilla model) at each eps, in 255ths of the pixel range, "
    "with the model's answer. 2/255 is invisible; the paper's 0.3 is 77/255.",
    "table2_best_split": "Per method, the fraction with the highest mean of clean, transfer "
    "FGSM and transfer PGD accuracy (the paper's rule) on the validation split held out from "
    "the training side, then its test figures, white-box beside transfer, and the paper's "
    "best cell (which the paper chose on its test set). Empty without a validation split.",
    "accuracy_vs_fraction": "Solid: transfer (the paper's protocol); dashed: white-box; bars: "
    "95 % intervals. Fraction 0 is the vanilla model; stars are the paper's best cell "
    "(clean, FGSM, PGD).",
    "robust_vs_eps": "White-box robust accuracy as the budget grows: an image counts only if "
    "every attack of the ensemble fails on it. One line per method: the vanilla model, and "
    "each method's cell with the highest robust balanced accuracy on the validation split; "
    "bands: 95 % t-intervals over seeds (none for one seed). Eps 0 is the clean accuracy.",
    "defences_on_the_fly": "Defences that craft their adversarial examples during training "
    "(no fixed fraction), beside the vanilla model, with what their training cost: wall time "
    "on the machine that ran it, and gradient evaluations (one forward and backward pass of "
    "one image); their robust accuracy is in the table under the robust-accuracy figure.",
    "clinical": "Melanoma recall (sensitivity) clean and under attack, and how often a "
    "targeted white-box PGD attack turns a correctly classified melanoma into a nevus (a "
    "missed cancer) or a nevus into a melanoma (a false alarm): the share of the source "
    "class's correctly classified test images that the attack flips to the target.",
    "training_cost": "What a model costs to train, per kind of model and per torch thread "
    "(the grid's Ray workers each use one): images trained on per second (every epoch "
    "counts), gradient evaluations per image trained on (an on-the-fly defence's attack "
    "steps included), the matmul and convolution GFLOP/s that is, and its share of one "
    "thread's fp32 and bf16 matmul peak; time spent outside matmuls (BatchNorm, pooling, "
    "Adam, per-batch overhead) is much of why a small CNN's share is low.",
    "champions": "Per method, the single trained model (cell and seed) with the highest "
    "white-box robust balanced accuracy on the validation split, registered in the MLflow "
    "Model Registry under this alias; its model card holds its test figures.",
    "grid_all_cells": "Every cell. Mel. recall: melanoma sensitivity on clean images.",
    "sweeps": "PGD accuracy as one setting grows, on a subset of the test set (the grid "
    "sweeps the vanilla model).",
    "checks": 'Carlini et al. 2019, "On Evaluating Adversarial Robustness": each check '
    "once, with the models (cell-seed) it concerns.",
    "adversarial_examples": "Images the vanilla model classifies correctly and gets wrong "
    "under attack; the perturbation is amplified for display.",
}

#: A section: ``(heading, caption, kind, payload)``; kind is ``table``, ``tables``,
#: ``figure``, ``notes``, ``flags`` (warnings, collapsed to a count when many) or ``checks``.
Section = tuple[str, str, str, Any]


def sections(report: Report) -> list[Section]:
    """The page's sections in order; those without content are left out."""
    t, f = report.tables, report.figures
    first = ("Table 1 — the vanilla model", CAPTIONS["table1_vanilla"])
    if report.subject:  # one model (skinadv evaluate): no grid, no best split, no cells
        first = (f"Table 1 — {report.subject}", CAPTIONS["table1_subject"])
    out: list[Section] = [(*first, "table", "table1_vanilla")]
    if "paired_differences" in t:
        out.append(
            (
                "Paired differences — each model against the vanilla model",
                CAPTIONS["paired_differences"],
                "table",
                "paired_differences",
            )
        )
    if not (report.subject and t["table2_best_split"].empty):
        out.append(
            (
                "Table 2 — best split per method",
                CAPTIONS["table2_best_split"],
                "table",
                "table2_best_split",
            )
        )
    if "accuracy_vs_fraction" in f:
        out.append(
            (
                "Accuracy vs adversarial fraction",
                CAPTIONS["accuracy_vs_fraction"],
                "figure",
                "accuracy_vs_fraction",
            )
        )
    if "robust_vs_eps" in f:
        out.append(("Robust accuracy vs eps", CAPTIONS["robust_vs_eps"], "figure", "robust_vs_eps"))
    if "robust_vs_eps" in t:
        out.append(("", "", "table", "robust_vs_eps"))  # the figure's numbers, under it
    if "defences_on_the_fly" in t:
        out.append(
            (
                "Defences trained on the fly",
                CAPTIONS["defences_on_the_fly"],
                "table",
                "defences_on_the_fly",
            )
        )
    if "training_cost" in t:
        out.append(("Training cost", CAPTIONS["training_cost"], "table", "training_cost"))
    if "autoattack" in t:
        out.append(("AutoAttack vs our ensemble", CAPTIONS["autoattack"], "table", "autoattack"))
        if report.table_flags.get("autoattack"):
            out.append(("", "", "flags", report.table_flags["autoattack"]))
    if "champions" in t:
        out.append(("Champions in the model registry", CAPTIONS["champions"], "table", "champions"))
    if "clinical" in t:
        out.append(("The clinical view", CAPTIONS["clinical"], "table", "clinical"))
    if report.notes:
        out.append(("Where the two protocols disagree", "", "notes", report.notes))
    out.append(("Sanity checks", CAPTIONS["checks"], "checks", report.checks))
    if not (report.subject and t["grid_all_cells"].empty):
        out.append(("All cells", CAPTIONS["grid_all_cells"], "table", "grid_all_cells"))
    sweeps = [n for n in t if n.startswith("sweep_")]
    if sweeps:
        out.append(("Attack strength sweeps", CAPTIONS["sweeps"], "tables", sweeps))
    if "adversarial_examples" in f:
        out.append(
            (
                "Adversarial examples",
                CAPTIONS["adversarial_examples"],
                "figure",
                "adversarial_examples",
            )
        )
    return out
