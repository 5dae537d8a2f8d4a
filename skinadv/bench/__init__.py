"""``skinadv bench``'s core: attack and training throughput, side by side with torchattacks
and IBM ART, the grid's cost in gradient evaluations, and training FLOPs against this CPU's
peaks (``flops``). No Prefect, Ray or MLflow."""

from skinadv.bench.attacks import LIBRARIES, AttackSpec, attack_specs, attack_throughput
from skinadv.bench.core import BenchSettings, full, quick, run_bench, tiny
from skinadv.bench.flops import (
    measured_peak,
    nominal_peaks,
    train_cost_fields,
    training_cost,
    training_flops_per_image,
)
from skinadv.bench.grid_cost import grid_cost, pool_evals
from skinadv.bench.markdown import to_markdown

__all__ = [
    "LIBRARIES",
    "AttackSpec",
    "BenchSettings",
    "attack_specs",
    "attack_throughput",
    "full",
    "grid_cost",
    "measured_peak",
    "nominal_peaks",
    "pool_evals",
    "quick",
    "run_bench",
    "tiny",
    "to_markdown",
    "train_cost_fields",
    "training_cost",
    "training_flops_per_image",
]
