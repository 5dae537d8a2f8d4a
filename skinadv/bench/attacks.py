"""Attack throughput side by side: skinadv, torchattacks and IBM ART on the same model,
images and settings, each at its best batch size, with the robust accuracy each reaches.

torchattacks and ART (the ``bench`` extra) are imported only here, when a run asks for them.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks import craft, eval_mode

log = logging.getLogger(__name__)

LIBRARIES = ("skinadv", "torchattacks", "art")
#: skinadv's columns: float32, and bfloat16 autocast where the device runs it natively
VARIANTS = {"skinadv": "float32", "skinadv-bf16": "bfloat16 autocast"}
#: a skinadv variant may stand for skinadv in the headline ratio only if its robust accuracy
#: is within this many points of float32 skinadv's (issue 12: equal within 0.5 points)
ROBUST_TOLERANCE_POINTS = 0.5
#: the package each library's column needs (pip name), for the missing-extra message
PACKAGES = {"torchattacks": "torchattacks", "art": "adversarial-robustness-toolbox"}


@dataclass(frozen=True)
class AttackSpec:
    """One attack, set the same way in every library.

    Attributes:
        label: its name in tables (``PGD-50``).
        kind: ``fgsm``, ``pgd`` (L-inf, uniform random start) or ``apgd`` (APGD-CE, L-inf).
        eps: L-inf budget in [0, 1] pixel units.
        alpha: PGD step size (pixel units); None for FGSM and APGD.
        steps: iterations (1 for FGSM).
    """

    label: str
    kind: str
    eps: float
    alpha: float | None = None
    steps: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def attack_specs(eps: float, pgd_steps: Sequence[int], apgd_steps: int | None) -> list[AttackSpec]:
    """FGSM, PGD-k for each k (step 2.5 * eps / k, Madry et al.), then APGD-CE."""
    specs = [AttackSpec("FGSM", "fgsm", eps)]
    specs += [AttackSpec(f"PGD-{k}", "pgd", eps, 2.5 * eps / k, k) for k in pgd_steps]
    if apgd_steps:
        specs.append(AttackSpec(f"APGD-CE-{apgd_steps}", "apgd", eps, None, apgd_steps))
    return specs


#: (model, x, y, spec, batch_size, seed) -> x_adv, x and y on the model's device
Runner = Callable[[nn.Module, Tensor, Tensor, AttackSpec, int, int], Tensor]


def run_skinadv(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AttackSpec,
    batch_size: int,
    seed: int,
    precision: str = "fp32",
) -> Tensor:
    name, kw = {
        "fgsm": ("fgsm", {}),
        "pgd": ("pgd", {"alpha": spec.alpha, "steps": spec.steps, "random_start": True}),
        "apgd": ("apgd_ce", {"steps": spec.steps, "restarts": 1}),
    }[spec.kind]
    return craft(
        model,
        x,
        y,
        name,
        eps=spec.eps,
        batch_size=batch_size,
        seed=seed,
        progress=False,
        precision=precision,
        **kw,
    )


def run_skinadv_bf16(
    model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, batch_size: int, seed: int
) -> Tensor:
    """skinadv under bfloat16 autocast (``craft(precision="bf16")``)."""
    return run_skinadv(model, x, y, spec, batch_size, seed, precision="bf16")


def run_torchattacks(
    model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, batch_size: int, seed: int
) -> Tensor:
    import torchattacks

    if spec.kind == "fgsm":
        atk = torchattacks.FGSM(model, eps=spec.eps)
    elif spec.kind == "pgd":
        atk = torchattacks.PGD(
            model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=True
        )
    else:
        atk = torchattacks.APGD(
            model, norm="Linf", eps=spec.eps, steps=spec.steps, n_restarts=1, seed=seed, loss="ce"
        )
    with torch.random.fork_rng(devices=[]):  # its random starts come from the global RNG
        torch.manual_seed(seed)
        parts = [
            atk(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
    return torch.cat(parts)


def run_art(
    model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, batch_size: int, seed: int
) -> Tensor:
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        FastGradientMethod,
        ProjectedGradientDescentPyTorch,
    )
    from art.estimators.classification import PyTorchClassifier

    logits = model(x[:1])
    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=int(logits.shape[1]),
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )
    if spec.kind == "fgsm":
        atk = FastGradientMethod(clf, norm=np.inf, eps=spec.eps, batch_size=batch_size)
    elif spec.kind == "pgd":
        atk = ProjectedGradientDescentPyTorch(
            clf,
            norm=np.inf,
            eps=spec.eps,
            eps_step=spec.alpha,
            max_iter=spec.steps,
            num_random_init=1,
            batch_size=batch_size,
            verbose=False,
        )
    else:  # eps_step is APGD's initial step: 2 * eps as in the paper and auto-attack
        atk = AutoProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=spec.eps,
            eps_step=2 * spec.eps,
            max_iter=spec.steps,
            nb_random_init=1,
            batch_size=batch_size,
            loss_type="cross_entropy",
            verbose=False,
        )
    state = np.random.get_state()  # its random starts come from numpy's global RNG
    np.random.seed(seed)
    try:
        out = atk.generate(x=x.cpu().numpy(), y=y.cpu().numpy())
    finally:
        np.random.set_state(state)
    return torch.from_numpy(out).to(x.device)


RUNNERS: dict[str, Runner] = {
    "skinadv": run_skinadv,
    "torchattacks": run_torchattacks,
    "art": run_art,
}


def missing_libraries(libraries: Sequence[str]) -> list[str]:
    """The pip names of the libraries asked for that cannot be imported."""
    import importlib

    missing = []
    for lib in libraries:
        if lib == "skinadv":
            continue
        try:
            importlib.import_module(lib)
        except ImportError:
            missing.append(PACKAGES[lib])
    return missing


@contextlib.contextmanager
def _timed(out: list[float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    out.append(time.perf_counter() - t0)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    with torch.inference_mode(), eval_mode(model):
        right = sum(
            int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    return right / len(x)


def best_batch_size(
    run: Runner,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    probe: AttackSpec,
    batch_sizes: Sequence[int],
    seed: int,
) -> tuple[int, dict[int, float]]:
    """The batch size at which ``run`` crafts ``probe`` fastest (one timed run per size; a
    size that runs out of GPU memory is skipped). Returns (size, {size: images/s})."""
    rates: dict[int, float] = {}
    for bs in sorted({min(b, len(x)) for b in batch_sizes}):
        took: list[float] = []
        try:
            with _timed(took):
                run(model, x, y, probe, bs, seed)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        rates[bs] = len(x) / took[0]
    if not rates:
        raise RuntimeError("no batch size fitted in memory")
    return max(rates, key=rates.__getitem__), rates


def attack_throughput(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    specs: Sequence[AttackSpec],
    *,
    libraries: Sequence[str] = LIBRARIES,
    batch_sizes: Sequence[int] = (250, 500),
    repeats: int = 3,
    budget_s: float | None = None,
    seed: int = 0,
    bf16: bool = False,
    report: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Images/s and robust accuracy of every attack in every library.

    Each library first picks its batch size (the fastest of ``batch_sizes`` on a PGD-2
    probe: the batch size sets the cost of every step alike), then every attack runs
    ``repeats`` times, the libraries interleaved (machine noise hits all alike), a library
    stopping early once its runs of that attack have taken ``budget_s`` (it always runs
    once); images/s is ``len(x)`` over the median time (``best_images_per_s``: over the
    shortest). Robust accuracy is ``model``'s
    accuracy on the first run's output.

    Args:
        model: in eval mode, on the device x and y are on.
        x: (N, 3, H, W) float in [0, 1]; y: (N,) int64.
        bf16: also run skinadv under bfloat16 autocast (``craft(precision="bf16")``) as
            ``skinadv-bf16``, its robust accuracy shown beside float32 skinadv's.
        report: called with a line of progress after each step.

    Returns:
        ``{"clean_accuracy", "batch_sizes": {lib: {chosen, probe}}, "attacks": [...],
        "headline"}``, each attack with its settings, per-library results, the ratios of
        float32 skinadv's images/s to each other library's (``speedup``) and robust
        accuracy gaps in points (``robust_gap_points``), and the same for every skinadv
        variant (``variants``: {variant: {"speedup", "robust_gap_points"}}, the gaps
        including the one to float32 skinadv); ``headline`` is ``headline(attacks)``.
    """
    runners = {lib: RUNNERS[lib] for lib in libraries}
    if bf16 and "skinadv" in runners:
        runners = {"skinadv": runners["skinadv"], "skinadv-bf16": run_skinadv_bf16, **runners}
    probe = AttackSpec("PGD-2", "pgd", specs[0].eps, 2.5 * specs[0].eps / 2, 2)
    chosen, probes = {}, {}
    for lib, run in runners.items():
        chosen[lib], probes[lib] = best_batch_size(run, model, x, y, probe, batch_sizes, seed)
        report(f"{lib}: batch size {chosen[lib]} ({probes[lib][chosen[lib]]:.0f} img/s on PGD-2)")
    out_attacks = []
    for spec in specs:
        times: dict[str, list[float]] = {lib: [] for lib in runners}
        robust: dict[str, float] = {}
        for _ in range(repeats):
            for lib, run in runners.items():
                if times[lib] and budget_s is not None and sum(times[lib]) >= budget_s:
                    continue
                with _timed(times[lib]):
                    x_adv = run(model, x, y, spec, chosen[lib], seed)
                if lib not in robust:
                    robust[lib] = _accuracy(model, x_adv, y)
                    linf = float((x_adv.detach() - x).abs().max())
                    if linf > spec.eps + 1e-5:
                        raise AssertionError(f"{lib} {spec.label}: |x_adv - x| = {linf} > eps")
        results = {
            lib: {
                "batch_size": chosen[lib],
                "images_per_s": len(x) / statistics.median(times[lib]),
                # the least disturbed run: on a shared machine, spikes hit single runs
                "best_images_per_s": len(x) / min(times[lib]),
                "seconds": times[lib],
                "robust_accuracy": robust[lib],
            }
            for lib in runners
        }
        others = [lib for lib in runners if lib not in VARIANTS]
        variants = {
            v: {
                "speedup": {
                    lib: results[v]["images_per_s"] / results[lib]["images_per_s"] for lib in others
                },
                "robust_gap_points": {
                    lib: 100 * (results[v]["robust_accuracy"] - results[lib]["robust_accuracy"])
                    for lib in [*others, *(["skinadv"] if v != "skinadv" else [])]
                },
            }
            for v in VARIANTS
            if v in results
        }
        fp32 = variants.get("skinadv", {"speedup": {}, "robust_gap_points": {}})
        out_attacks.append(
            {
                **spec.as_dict(),
                "results": results,
                "speedup": fp32["speedup"],
                "robust_gap_points": fp32["robust_gap_points"],
                "variants": variants,
            }
        )
        report(
            f"{spec.label}: "
            + ", ".join(f"{lib} {r['images_per_s']:.0f} img/s" for lib, r in results.items())
        )
    line = headline(out_attacks)
    if line is not None:
        report(line["text"])
    return {
        "n_images": len(x),
        "clean_accuracy": _accuracy(model, x, y),
        "batch_sizes": {
            lib: {"chosen": chosen[lib], "probe_images_per_s": probes[lib]} for lib in runners
        },
        "attacks": out_attacks,
        "headline": line,
    }


def headline(attacks: Sequence[dict[str, Any]], versus: str = "art") -> dict[str, Any] | None:
    """The goal's ratio: skinadv against ``versus`` on the PGD with the most steps, for the
    fastest skinadv variant whose robust accuracy is within ``ROBUST_TOLERANCE_POINTS`` of
    float32 skinadv's (float32 itself always qualifies). None if either column is missing.

    Returns:
        ``{"attack", "versus", "variant", "precision", "speedup", "robust_gap_points",
        "gap_to_fp32_points", "text"}``; ``text`` names all of it in one line.
    """
    pgds = [a for a in attacks if a["kind"] == "pgd"]
    if not pgds:
        return None
    a = max(pgds, key=lambda a: a["steps"])
    if "skinadv" not in a["variants"] or versus not in a["results"]:
        return None
    fp32_robust = a["results"]["skinadv"]["robust_accuracy"]
    ok = [
        v
        for v in a["variants"]
        if abs(100 * (a["results"][v]["robust_accuracy"] - fp32_robust)) <= ROBUST_TOLERANCE_POINTS
    ]
    best = max(ok, key=lambda v: a["results"][v]["images_per_s"])
    speedup = a["variants"][best]["speedup"][versus]
    gap = a["variants"][best]["robust_gap_points"][versus]
    to_fp32 = 100 * (a["results"][best]["robust_accuracy"] - fp32_robust)
    text = (
        f"{a['label']}: {best} ({VARIANTS[best]}) / {versus} = {speedup:.2f}x, robust accuracy "
        f"{100 * a['results'][best]['robust_accuracy']:.1f} % vs "
        f"{100 * a['results'][versus]['robust_accuracy']:.1f} % (gap {gap:+.1f} pt"
        + (f"; {to_fp32:+.1f} pt from float32 skinadv" if best != "skinadv" else "")
        + ")"
    )
    if best != "skinadv":
        text += f"; float32 skinadv {a['variants']['skinadv']['speedup'][versus]:.2f}x"
    return {
        "attack": a["label"],
        "versus": versus,
        "variant": best,
        "precision": VARIANTS[best],
        "speedup": speedup,
        "robust_gap_points": gap,
        "gap_to_fp32_points": to_fp32,
        "text": text,
    }
