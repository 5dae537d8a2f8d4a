"""The grid's crafting cost in gradient evaluations: nested pools against one pool per cell.

Counted from the config alone (nothing runs). One gradient evaluation is one forward and
backward pass over one image: FGSM costs 1 per image, PGD-k costs k, and a ``mix`` pool
alternates FGSM and PGD rows (``skinadv.training.pools``), so its first m rows cost
ceil(m / 2) + k * floor(m / 2). A grid with fgsm, pgd and mix composes the mix pool from the
other two (``mix_pool``), so its nested mix pool costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skinadv.training.pools import _n_take, composes_mix  # _n_take: the pools' rounding


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
        ``nested_evals``: what the grid crafts (one pool per method for the largest fraction;
        none for mix when it is composed from the fgsm and pgd pools, ``mix_from_pools``);
        ``separate_evals``: every cell crafting its own pool; ``ratio`` = nested / separate;
        ``nested_evals_mix_crafted`` and ``ratio_mix_crafted``: the same were the mix pool
        crafted again; the per-method counts under ``per_method`` (mix's ``nested`` as the
        grid counts it, 0 when composed, and ``crafted``, its cost if crafted).
    """
    if not methods or not fractions:
        raise ValueError("the grid needs at least one method and one fraction")
    top = max(fractions)
    from_pools = composes_mix(methods)
    per_method = {}
    for m in methods:
        crafted = pool_evals(m, _n_take(top, n_train), pgd_steps) * seeds
        separate = sum(pool_evals(m, _n_take(f, n_train), pgd_steps) for f in fractions) * seeds
        nested = 0 if (m == "mix" and from_pools) else crafted  # mix_pool: rows taken, free
        per_method[m] = {"nested": nested, "crafted": crafted, "separate": separate}
    nested = sum(v["nested"] for v in per_method.values())
    crafted = sum(v["crafted"] for v in per_method.values())
    separate = sum(v["separate"] for v in per_method.values())
    return {
        "methods": list(methods),
        "fractions": list(fractions),
        "n_train": n_train,
        "pgd_steps": pgd_steps,
        "seeds": seeds,
        "cells": len(methods) * len(fractions) * seeds,
        "mix_from_pools": from_pools,
        "nested_evals": nested,
        "separate_evals": separate,
        "ratio": nested / separate if separate else None,
        "nested_evals_mix_crafted": crafted,
        "ratio_mix_crafted": crafted / separate if separate else None,
        "per_method": per_method,
    }
