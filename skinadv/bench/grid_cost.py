"""The grid's crafting cost in gradient evaluations: nested pools against one pool per cell.

Counted from the config alone (nothing runs). One gradient evaluation is one forward and
backward pass over one image: FGSM costs 1 per image, PGD-k costs k, and a ``mix`` pool
alternates FGSM and PGD rows (``skinadv.training.pools``), so its first m rows cost
ceil(m / 2) + k * floor(m / 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skinadv.training.pools import _n_take  # the pools' own rounding of a fraction


def pool_evals(method: str, n_rows: int, pgd_steps: int) -> int:
    """Gradient evaluations to craft ``n_rows`` adversarial rows with ``method``."""
    if method == "fgsm":
        return n_rows
    if method == "pgd":
        return n_rows * pgd_steps
    if method == "mix":  # rows 0, 2, 4, ... FGSM; 1, 3, 5, ... PGD
        return (n_rows + 1) // 2 + pgd_steps * (n_rows // 2)
    raise ValueError(f"unknown method {method!r}; choose one of fgsm, pgd, mix")


def grid_cost(
    methods: Sequence[str],
    fractions: Sequence[float],
    *,
    n_train: int,
    pgd_steps: int,
    seeds: int = 1,
) -> dict[str, Any]:
    """Crafting cost of the methods x fractions grid, nested pools against separate ones.

    Args:
        methods: ``fgsm`` / ``pgd`` / ``mix``.
        fractions: in (0, 1]; nested pools craft each method once, for the largest.
        n_train: training images the pools are drawn from (after oversampling).
        pgd_steps: PGD iterations (one gradient evaluation per image each).
        seeds: grids run (each crafts its own pools).

    Returns:
        ``nested_evals``, ``separate_evals`` (every cell crafting its own pool),
        ``ratio`` = nested / separate, the per-method counts under ``per_method``, and
        ``ratio_mix_from_pools``: the ratio were the mix pool's rows taken from the FGSM
        and PGD pools (same seeded rows) instead of crafted again (None without all three).
    """
    if not methods or not fractions:
        raise ValueError("the grid needs at least one method and one fraction")
    top = max(fractions)
    per_method = {}
    for m in methods:
        nested = pool_evals(m, _n_take(top, n_train), pgd_steps)
        separate = sum(pool_evals(m, _n_take(f, n_train), pgd_steps) for f in fractions)
        per_method[m] = {"nested": nested * seeds, "separate": separate * seeds}
    nested = sum(v["nested"] for v in per_method.values())
    separate = sum(v["separate"] for v in per_method.values())
    # not done by the grid today: mix's FGSM rows and PGD rows taken from those two pools
    shared = (
        nested - per_method["mix"]["nested"] if {"mix", "fgsm", "pgd"} <= set(methods) else None
    )
    return {
        "methods": list(methods),
        "fractions": list(fractions),
        "n_train": n_train,
        "pgd_steps": pgd_steps,
        "seeds": seeds,
        "cells": len(methods) * len(fractions) * seeds,
        "nested_evals": nested,
        "separate_evals": separate,
        "ratio": nested / separate if separate else None,
        "ratio_mix_from_pools": None if shared is None else shared / separate,
        "per_method": per_method,
    }
