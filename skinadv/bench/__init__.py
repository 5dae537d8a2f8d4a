"""``skinadv bench``'s core: attack and training throughput, side by side with torchattacks
and IBM ART, and the grid's cost in gradient evaluations. No Prefect, Ray or MLflow."""

from skinadv.bench.attacks import LIBRARIES, AttackSpec, attack_specs, attack_throughput
from skinadv.bench.core import BenchSettings, full, quick, run_bench, tiny
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
    "pool_evals",
    "quick",
    "run_bench",
    "tiny",
    "to_markdown",
]
