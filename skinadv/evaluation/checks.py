"""Sanity checks on attack results (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", https://arxiv.org/abs/1902.06705), printed as warnings, never hidden.

As auto-attack's ``checks.py``: one small function per check, one input shape (a
sequence of ``ModelResult``, plus the optional ``Sweeps`` of one model). Each returns one
``Check`` that names the models it concerns, so a report shows each check once::

    checks = sanity_checks(results, sweeps)  # results: Sequence[ModelResult]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.evaluation.evaluate import run_attack, score
from skinadv.results import PROTOCOLS, Evaluation, ModelResult, Sweeps

PROTOCOL_LABELS = {"transfer": "transfer", "whitebox": "white-box"}


@dataclass(frozen=True)
class Check:
    """One check's verdict.

    Args:
        name: the check (``no label leaking``).
        status: ``pass`` or ``warn``.
        detail: one short sentence: what held, or how many comparisons failed and the worst.
        cells: the ``ModelResult.key``s the warning concerns (empty when it passes or when
            it is about a sweep).
    """

    name: str
    status: str  # "pass" | "warn"
    detail: str
    cells: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cells": list(self.cells)}

    def __str__(self) -> str:
        where = f" [{', '.join(self.cells)}]" if self.cells else ""
        return f"[{self.status}] {self.name}: {self.detail}{where}"


def sweep(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    attack: str,
    param: str,
    values: Sequence[float],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    **fixed: Any,
) -> list[dict[str, Any]]:
    """Accuracy under ``attack`` as ``param`` takes each of ``values`` (others ``fixed``).

    Returns:
        ``[{param: value, "accuracy": a, "balanced_accuracy": b}, ...]`` in ``values`` order.
    """
    rows = []
    for v in values:
        spec = {"attack": attack, **fixed, param: v}
        x_adv = run_attack(
            model, x, y, spec, batch_size=batch_size, device=device, seed=seed, progress=False
        )
        m = score(model, x_adv, y, device=device)
        rows.append(
            {param: v, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}
        )
    return rows


def eps_sweep(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps_values: Sequence[float] = (0.0, 2 / 255, 8 / 255, 0.1, 0.2, 0.3, 0.5, 1.0),
    *,
    attack: str = "pgd",
    steps: int = 20,
    alpha_factor: float = 2.5,
    **kw: Any,
) -> list[dict[str, Any]]:
    """Accuracy as eps grows; for PGD, alpha = alpha_factor * eps / steps (Madry et al.).

    Use enough steps: with large eps and few large steps, PGD pushes pixels to 0 / 1 where
    the softmax saturates (one class at ~99 %), the gradient vanishes and accuracy stalls
    at that class's share (seen here with 5 steps at eps 1: 28 %, with 20 steps: 0 %).
    """
    rows = []
    for eps in eps_values:
        fixed = dict(kw)
        if attack in ("pgd", "mifgsm"):
            fixed.setdefault("steps", steps)
            fixed.setdefault("alpha", alpha_factor * eps / steps)
        rows += sweep(model, x, y, attack, "eps", [eps], **fixed)
    return rows


@dataclass(frozen=True)
class _Finding:
    """One failed comparison: whose, by how much (to pick the worst), and in words."""

    key: str
    excess: float
    text: str


def _pct(a: float) -> str:
    return f"{100 * a:.1f} %"


def _verdict(
    name: str, compared: int, findings: Sequence[_Finding], what: str, missing: str
) -> Check:
    """``warn`` with a count, what went wrong and the worst case; else ``pass``."""
    if findings:
        worst = max(findings, key=lambda f: f.excess)
        cells = tuple(dict.fromkeys(f.key for f in findings if f.key))
        detail = f"{len(findings)} of {compared} comparisons: {what}; worst: {worst.text}"
        return Check(name, "warn", detail, cells)
    if compared == 0:
        return Check(name, "pass", f"not applicable: {missing}")
    if compared == 1:
        return Check(name, "pass", "the 1 comparison holds")
    return Check(name, "pass", f"all {compared} comparisons hold")


def _evaluations(results: Sequence[ModelResult]) -> Iterator[tuple[ModelResult, Evaluation]]:
    for r in results:
        for protocol in PROTOCOLS:
            yield r, r.evaluations()[protocol]


def check_whitebox_le_transfer(results: Sequence[ModelResult], *, tol: float = 0.01) -> Check:
    """Re-running an attack against the model itself must do at least as well as reusing
    examples crafted against another model; if not, its gradients mislead (masking?)."""
    findings, compared = [], 0
    for r in results:
        for attack in r.whitebox.attack_names:
            a_wb, a_tr = r.whitebox.accuracy(attack), r.transfer.accuracy(attack)
            if a_wb is None or a_tr is None:
                continue
            compared += 1
            if a_wb > a_tr + tol:
                text = f"{r.key} {attack.upper()} white-box {_pct(a_wb)} vs transfer {_pct(a_tr)}"
                findings.append(_Finding(r.key, a_wb - a_tr, text))
    return _verdict(
        "whitebox <= transfer",
        compared,
        findings,
        "white-box accuracy above transfer accuracy (white-box attack weaker: gradient masking?)",
        "no attack scored under both protocols",
    )


def check_pgd_le_fgsm(results: Sequence[ModelResult], *, tol: float = 0.01) -> Check:
    """PGD with at least FGSM's budget must do at least as well as FGSM (one PGD step from
    the clean image is FGSM)."""
    findings, compared = [], 0
    for r, ev in _evaluations(results):
        a_pgd, a_fgsm = ev.accuracy("pgd"), ev.accuracy("fgsm")
        if a_pgd is None or a_fgsm is None:
            continue
        e_pgd, e_fgsm = ev.eps("pgd"), ev.eps("fgsm")
        if e_pgd is not None and e_fgsm is not None and e_pgd < e_fgsm:
            continue  # smaller PGD budget: no ordering to expect
        compared += 1
        if a_pgd > a_fgsm + tol:
            budgets = "" if e_pgd is None or e_fgsm is None else f" (eps {e_pgd:g} vs {e_fgsm:g})"
            text = (
                f"{r.key} {PROTOCOL_LABELS[ev.protocol]} PGD {_pct(a_pgd)} vs FGSM "
                f"{_pct(a_fgsm)}{budgets}"
            )
            findings.append(_Finding(r.key, a_pgd - a_fgsm, text))
    return _verdict(
        "pgd <= fgsm",
        compared,
        findings,
        "PGD accuracy above FGSM accuracy at a PGD eps >= the FGSM eps (PGD too weak?)",
        "needs FGSM and PGD results",
    )


def check_label_leaking(results: Sequence[ModelResult], *, tol: float = 0.01) -> Check:
    """Accuracy under attack above clean accuracy means the perturbation carries the label
    (Kurakin et al. 2017, https://arxiv.org/abs/1611.01236), not that the model is robust."""
    findings, compared = [], 0
    for r, ev in _evaluations(results):
        clean = ev.accuracy("clean")
        if clean is None:
            continue
        for attack in ev.attack_names:
            a = ev.accuracy(attack)
            compared += 1
            if a > clean + tol:
                text = (
                    f"{r.key} {PROTOCOL_LABELS[ev.protocol]} {attack.upper()} {_pct(a)} "
                    f"vs clean {_pct(clean)}"
                )
                findings.append(_Finding(r.key, a - clean, text))
    return _verdict(
        "no label leaking",
        compared,
        findings,
        "accuracy under attack above clean accuracy (label leaking, Kurakin et al. 2017)",
        "needs attack results",
    )


def _rises(rows: Sequence[Mapping[str, Any]], param: str, tol: float) -> list[_Finding]:
    rows = sorted(rows, key=lambda r: r[param])
    return [
        _Finding(
            "",
            b["accuracy"] - a["accuracy"],
            f"{_pct(a['accuracy'])} at {param} {a[param]:g} -> {_pct(b['accuracy'])} "
            f"at {param} {b[param]:g}",
        )
        for a, b in itertools.pairwise(rows)
        if b["accuracy"] > a["accuracy"] + tol
    ]


def check_more_never_helps(
    rows: Sequence[Mapping[str, Any]], param: str, *, tol: float = 0.01
) -> Check:
    """More PGD ``steps`` or ``restarts`` must never raise accuracy (a sweep's rows)."""
    return _verdict(
        f"more {param} never help",
        max(0, len(rows) - 1),
        _rises(rows, param, tol),
        f"accuracy rose with more {param} (attack not converged, or randomness?)",
        f"no {param} sweep",
    )


def check_eps_to_zero(
    rows: Sequence[Mapping[str, Any]], *, tol: float = 0.01, eps_floor: float = 0.1
) -> Check:
    """Accuracy falls as eps grows and reaches (about) 0 at the largest eps: an unbounded
    attack that cannot fool the model is a broken attack (or gradient masking)."""
    rows = sorted(rows, key=lambda r: r["eps"])
    findings = _rises(rows, "eps", tol)
    if rows and rows[-1]["accuracy"] > eps_floor:
        last = rows[-1]
        findings.append(
            _Finding(
                "",
                last["accuracy"] - eps_floor,
                f"{_pct(last['accuracy'])} left at the largest eps {last['eps']:g} "
                f"(floor {_pct(eps_floor)})",
            )
        )
    return _verdict(
        "accuracy -> 0 as eps grows",
        len(rows),
        findings,
        "accuracy rose with eps or stays above the floor at the largest eps "
        "(gradient masking or a weak attack?)",
        "no eps sweep",
    )


def sanity_checks(
    results: Sequence[ModelResult],
    sweeps: Sweeps | None = None,
    *,
    tol: float = 0.01,
    eps_floor: float = 0.1,
) -> list[Check]:
    """Run the checks of DESIGN.md section 3; one ``Check`` per kind.

    Args:
        results: every model scored (the vanilla model and the grid's cells, any seeds).
        sweeps: ``{"eps": eps_sweep(...), "steps": sweep(..., "steps", ...), "restarts":
            sweep(..., "restarts", ...)}`` of one model, each part optional.
        tol: accuracy slack (fraction) before a comparison is flagged (sampling noise).
        eps_floor: at the largest swept eps, accuracy (fraction) above this is flagged.

    Returns:
        Checks named ``whitebox <= transfer``, ``pgd <= fgsm``, ``no label leaking``, and,
        for each sweep given, ``more steps never help``, ``more restarts never help``,
        ``accuracy -> 0 as eps grows``.
    """
    checks = [
        check_whitebox_le_transfer(results, tol=tol),
        check_pgd_le_fgsm(results, tol=tol),
        check_label_leaking(results, tol=tol),
    ]
    sweeps = sweeps or {}
    for param in ("steps", "restarts"):
        if sweeps.get(param):
            checks.append(check_more_never_helps(sweeps[param], param, tol=tol))
    if sweeps.get("eps"):
        checks.append(check_eps_to_zero(sweeps["eps"], tol=tol, eps_floor=eps_floor))
    return checks
