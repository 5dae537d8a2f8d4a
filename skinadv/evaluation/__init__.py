"""Evaluation: metrics, the transfer / white-box protocols, and sanity checks."""

from skinadv.evaluation.checks import Check, eps_sweep, sanity_checks, sweep
from skinadv.evaluation.evaluate import (
    PROTOCOLS,
    AttackSpec,
    craft_transfer_sets,
    describe_attack,
    evaluate,
    predict,
    run_attack,
    score,
)
from skinadv.evaluation.metrics import REPORT_ORDER, metrics

__all__ = [
    "PROTOCOLS",
    "REPORT_ORDER",
    "AttackSpec",
    "Check",
    "craft_transfer_sets",
    "describe_attack",
    "eps_sweep",
    "evaluate",
    "metrics",
    "predict",
    "run_attack",
    "sanity_checks",
    "score",
    "sweep",
]
