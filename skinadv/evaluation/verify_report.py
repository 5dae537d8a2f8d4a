"""``skinadv verify``'s results: per model, AutoAttack beside our ensemble; metric names,
the Markdown write-up and its JSON. Pure: results in, dicts and text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skinadv.evaluation.autoattack import REFERENCE, SQUARE_QUERIES, Comparison, flags
from skinadv.results import eps_label, eps_text


@dataclass(frozen=True)
class VerifiedModel:
    """One model of the grid, verified.

    Args:
        cell: ``vanilla``, ``pgd@0.8``, ``pgd-at@2_255``.
        seed: its training seed.
        run_id: its MLflow run.
        why: why it was chosen (``vanilla``, ``champion (pgd-at)``, ``most robust defence``).
        comparisons: one per eps, ascending.
        seconds: wall time of AutoAttack over every eps (our ensemble not included).
    """

    cell: str
    seed: int
    run_id: str | None
    why: str
    comparisons: tuple[Comparison, ...] = field(default_factory=tuple)
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return self.comparisons[0].autoattack.n if self.comparisons else 0

    def metrics(self) -> dict[str, float]:
        """The figures logged on the model's MLflow run (fractions in [0, 1]; counts;
        seconds): ``autoattack_2_255_accuracy``, ``ensemble_2_255_balanced_accuracy``,
        ``autoattack_2_255_square_extra``, ``autoattack_n_images``, ``autoattack_seconds``."""
        out: dict[str, float] = {}
        for c in self.comparisons:
            label = eps_label(c.eps)
            for prefix, point in (("autoattack", c.autoattack), ("ensemble", c.ensemble)):
                out[f"{prefix}_{label}_accuracy"] = point.accuracy
                out[f"{prefix}_{label}_balanced_accuracy"] = point.balanced_accuracy
                if point.mel_recall is not None:
                    out[f"{prefix}_{label}_mel_recall"] = point.mel_recall
            out[f"autoattack_{label}_square_extra"] = float(c.autoattack.square_extra)
            out[f"autoattack_{label}_seconds"] = c.autoattack.seconds
        out["autoattack_n_images"] = float(self.n)
        out["autoattack_seconds"] = self.seconds
        return out

    def flags(self) -> list[str]:
        return [f for c in self.comparisons for f in flags(c)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "seed": self.seed,
            "run_id": self.run_id,
            "why": self.why,
            "n_images": self.n,
            "seconds": self.seconds,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "metrics": self.metrics(),
        }


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def model_table(m: VerifiedModel) -> list[str]:
    """A Markdown table: per eps, our ensemble and AutoAttack (accuracy, balanced accuracy,
    melanoma recall, in percent), their gap, Square's extra images and AutoAttack's time."""
    lines = [
        "| eps | scored by | accuracy | balanced acc. | mel recall | Square-only fooled | time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in m.comparisons:
        e, a = c.ensemble, c.autoattack
        ours = f"our ensemble ({' + '.join(e.attacks)})"
        lines.append(
            f"| {eps_text(c.eps)} | {ours} | {_pct(e.accuracy)} | {_pct(e.balanced_accuracy)} | "
            f"{_pct(e.mel_recall)} | | {c.ensemble_seconds:.0f} s |"
        )
        lines.append(
            f"| {eps_text(c.eps)} | AutoAttack standard (reference) | {_pct(a.accuracy)} | "
            f"{_pct(a.balanced_accuracy)} | {_pct(a.mel_recall)} | {a.square_extra} | "
            f"{a.seconds:.0f} s |"
        )
        lines.append(
            f"| {eps_text(c.eps)} | ensemble − AutoAttack (points) | {c.gap_points():+.1f} | "
            f"{c.gap_points('balanced_accuracy'):+.1f} | | | |"
        )
    return lines


def markdown(
    models: Sequence[VerifiedModel],
    *,
    context: Mapping[str, Any],
    n_images: int,
    n_test: int,
    done: bool = True,
) -> str:
    """The write-up: what was run on which images, a table per model and eps, the flags.

    Args:
        models: the models verified so far.
        context: lines for the header (experiment, parent run, data, ...).
        n_images: images attacked per model; n_test: the test set's size.
        done: False while models are still to come (the file says so).
    """
    subset = (
        f"the whole test set ({n_test} images)"
        if n_images >= n_test
        else f"a fixed, seeded, class-stratified subset of {n_images} of the {n_test} test "
        "images, the same for every model (as RobustBench does for ImageNet)"
    )
    out = [
        "# AutoAttack verification",
        "",
        (
            "Each model below is scored by AutoAttack's standard version, the reference "
            f"implementation ({REFERENCE}, fra31/auto-attack: APGD-CE, then APGD-T and FAB-T "
            f"aimed at the 6 other classes, then Square with {SQUARE_QUERIES} queries; L-inf, "
            "per-image worst case), and beside it by our own worst-case ensemble, both on "
            f"{subset}. Figures are percent of those images; balanced accuracy and melanoma "
            "recall are the ones a clinician reads."
        ),
        "",
        (
            "Flags, as AutoAttack's own checks: images only Square (black-box) fools after every "
            "white-box attack failed (a sign of gradient masking), and AutoAttack more than 1 "
            "point below our ensemble (the ensemble overstates robustness)."
        ),
        "",
    ]
    out += [f"- {k}: {v}" for k, v in context.items()]
    if not done:
        out += ["", f"**In progress: {len(models)} model(s) so far.**"]
    all_flags = [(m, f) for m in models for f in m.flags()]
    out += ["", "## Flags", ""]
    out += [f"- {m.cell} seed {m.seed}: {f}" for m, f in all_flags] or ["- none"]
    for m in models:
        out += [
            "",
            f"## {m.cell}, seed {m.seed}",
            "",
            (
                f"Why: {m.why}. MLflow run `{m.run_id}`; {m.n} images; AutoAttack took "
                f"{m.seconds:.0f} s in all."
            ),
            "",
            *model_table(m),
        ]
    return "\n".join(out) + "\n"


__all__ = ["VerifiedModel", "markdown", "model_table"]
