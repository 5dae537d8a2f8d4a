"""Sanity checks on attack results (Carlini et al. 2019, "On Evaluating Adversarial
Robustness", https://arxiv.org/abs/1902.06705), printed as warnings, never hidden.

``sanity_checks`` takes

    {"models": {name: {"transfer": evaluate(...), "whitebox": evaluate(...)}},
     "sweeps": {"eps": eps_sweep(...), "steps": sweep(..., "steps", ...),
                "restarts": sweep(..., "restarts", ...)}}

(either part optional; ``{"transfer": ..., "whitebox": ...}`` alone is one model) and
returns one ``Check`` per kind of check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.evaluation.evaluate import PROTOCOLS, run_attack, score


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "pass" | "warn"
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


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


def _models(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if "models" in results:
        return dict(results["models"])
    if any(p in results for p in PROTOCOLS):
        return {"model": results}
    return {k: v for k, v in results.items() if k != "sweeps"}


def _acc(ev: Mapping[str, Any], attack: str) -> float | None:
    m = ev.get("metrics", {}).get(attack)
    return None if m is None else float(m["accuracy"])


def _eps(ev: Mapping[str, Any], attack: str) -> float | None:
    eps = ev.get("attacks", {}).get(attack, {}).get("eps")
    return None if eps is None else float(eps)


def _verdict(name: str, checked: int, problems: list[str], what: str) -> Check:
    if problems:
        return Check(name, "warn", "; ".join(problems))
    if checked == 0:
        return Check(name, "pass", f"not applicable: {what}")
    return Check(name, "pass", f"{checked} comparison(s) hold")


def _monotone(rows: Sequence[Mapping[str, Any]], param: str, tol: float) -> list[str]:
    rows = sorted(rows, key=lambda r: r[param])
    pairs = zip(rows[:-1], rows[1:], strict=True)
    return [
        f"accuracy rose from {a['accuracy']:.4f} ({param}={a[param]}) to "
        f"{b['accuracy']:.4f} ({param}={b[param]})"
        for a, b in pairs
        if b["accuracy"] > a["accuracy"] + tol
    ]


def sanity_checks(
    results: Mapping[str, Any], *, tol: float = 0.01, eps_floor: float = 0.1
) -> list[Check]:
    """Run the checks of DESIGN.md section 3 and return one Check per kind.

    Args:
        results: see the module docstring.
        tol: accuracy slack before a comparison is flagged (sampling noise).
        eps_floor: at the largest swept eps, accuracy above this is flagged.

    Returns:
        Checks named ``whitebox <= transfer``, ``pgd <= fgsm``, ``no label leaking``, and,
        with sweeps, ``more steps never help``, ``more restarts never help``,
        ``accuracy -> 0 as eps grows``.
    """
    models = _models(results)
    checks: list[Check] = []

    problems, n = [], 0
    for name, evs in models.items():
        tr, wb = evs.get("transfer"), evs.get("whitebox")
        if not (tr and wb):
            continue
        for attack in wb.get("metrics", {}):
            if attack == "clean" or _acc(tr, attack) is None:
                continue
            n += 1
            a_wb, a_tr = _acc(wb, attack), _acc(tr, attack)
            if a_wb > a_tr + tol:
                problems.append(
                    f"{name}/{attack}: white-box {a_wb:.4f} > transfer {a_tr:.4f} "
                    f"(white-box attack weaker than transfer: gradient masking?)"
                )
    checks.append(_verdict("whitebox <= transfer", n, problems, "needs both protocols for a model"))

    problems, n = [], 0
    for name, evs in models.items():
        for protocol, ev in evs.items():
            if protocol not in PROTOCOLS or _acc(ev, "pgd") is None or _acc(ev, "fgsm") is None:
                continue
            e_pgd, e_fgsm = _eps(ev, "pgd"), _eps(ev, "fgsm")
            if e_pgd is not None and e_fgsm is not None and e_pgd < e_fgsm:
                continue  # smaller PGD budget: no ordering to expect
            n += 1
            if _acc(ev, "pgd") > _acc(ev, "fgsm") + tol:
                problems.append(
                    f"{name}/{protocol}: PGD {_acc(ev, 'pgd'):.4f} > FGSM "
                    f"{_acc(ev, 'fgsm'):.4f} at eps {e_pgd} >= {e_fgsm}"
                )
    checks.append(_verdict("pgd <= fgsm", n, problems, "needs FGSM and PGD results"))

    problems, n = [], 0
    for name, evs in models.items():
        for protocol, ev in evs.items():
            if protocol not in PROTOCOLS or _acc(ev, "clean") is None:
                continue
            for attack in ev.get("metrics", {}):
                if attack == "clean":
                    continue
                n += 1
                if _acc(ev, attack) > _acc(ev, "clean") + tol:
                    problems.append(
                        f"{name}/{protocol}/{attack}: accuracy under attack "
                        f"{_acc(ev, attack):.4f} > clean {_acc(ev, 'clean'):.4f} "
                        f"(label leaking, Kurakin et al. 2017)"
                    )
    checks.append(_verdict("no label leaking", n, problems, "needs attack results"))

    sweeps = results.get("sweeps", {}) if isinstance(results, Mapping) else {}
    for param, label in (
        ("steps", "more steps never help"),
        ("restarts", "more restarts never help"),
    ):
        if sweeps.get(param):
            problems = _monotone(sweeps[param], param, tol)
            checks.append(_verdict(label, len(sweeps[param]) - 1, problems, ""))
    if sweeps.get("eps"):
        rows = sorted(sweeps["eps"], key=lambda r: r["eps"])
        problems = _monotone(rows, "eps", tol)
        if rows[-1]["accuracy"] > eps_floor:
            problems.append(
                f"accuracy {rows[-1]['accuracy']:.4f} at the largest eps "
                f"{rows[-1]['eps']} is above {eps_floor}: the attack does not "
                f"reach 0 (gradient masking or a weak attack?)"
            )
        checks.append(_verdict("accuracy -> 0 as eps grows", len(rows), problems, ""))
    return checks
