"""Score a model on clean data and under attacks, under the transfer or white-box protocol."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from skinadv.attacks import craft, eval_mode
from skinadv.attacks.craft import as_tensor, resolve_attack
from skinadv.evaluation.metrics import metrics
from skinadv.memory import device_batch_size
from skinadv.results import PROTOCOLS, Evaluation

log = logging.getLogger(__name__)

#: An attack for ``evaluate``: a spec ``{"attack": "pgd", "eps": 0.3, ...}`` or a callable
#: ``fn(model, x, y) -> x_adv`` (e.g. ``functools.partial(pgd, eps=0.3, alpha=0.2, steps=10)``).
AttackSpec = Mapping[str, Any] | Callable[..., Tensor]


def predict(
    model: nn.Module,
    x: Tensor | np.ndarray,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    fit_memory: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels (N,) and softmax probabilities (N, K), in eval mode, no gradients.

    ``fit_memory``: on CUDA, the batch size from the device's free memory
    (``device_batch_size``); on a CPU ``batch_size`` is kept.
    """
    xt = as_tensor(x, torch.float32)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if fit_memory:
        batch_size = device_batch_size(model, dev, batch_size, size=xt.shape[-1], backward=False)
    preds, probs = [], []
    with eval_mode(model), torch.no_grad():
        for start in range(0, xt.shape[0], batch_size):
            p = model(xt[start : start + batch_size].to(dev)).softmax(-1).cpu()
            probs.append(p)
            preds.append(p.argmax(1))
    if not probs:
        raise ValueError("predict on an empty set")
    return torch.cat(preds).numpy(), torch.cat(probs).numpy()


def score(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """``metrics`` of the model's predictions on x."""
    pred, probs = predict(model, x, batch_size=batch_size, device=device)
    return metrics(np.asarray(as_tensor(y, torch.long)), pred, probs)


def describe_attack(spec: AttackSpec) -> dict[str, Any]:
    """The settings of an attack spec or callable, for records and sanity checks."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, functools.partial):
        return {"attack": getattr(spec.func, "__name__", "attack"), **spec.keywords}
    return {"attack": getattr(spec, "__name__", "attack")}


def run_attack(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    spec: AttackSpec,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    progress: Any = None,
) -> Tensor:
    """Craft adversarial examples for ``spec`` (a spec dict or callable) against ``model``."""
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "attack" not in kwargs:
            raise ValueError(f"attack spec {kwargs} needs an 'attack' name")
        name = kwargs.pop("attack")
        resolve_attack(name)
        return craft(
            model,
            x,
            y,
            name,
            batch_size=batch_size,
            device=device,
            seed=seed,
            progress=progress,
            **kwargs,
        )
    if not callable(spec):
        raise ValueError(f"an attack must be a spec dict or a callable, got {spec!r}")
    return craft(
        model, x, y, spec, batch_size=batch_size, device=device, seed=seed, progress=progress
    )


def craft_transfer_sets(
    source_model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    attacks: Mapping[str, AttackSpec],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """The transfer protocol's adversarial test sets, crafted once against ``source_model``.

    Returns:
        {attack name: x_adv (N, 3, H, W) float32 numpy in [0, 1]}.
    """
    return {
        name: run_attack(
            source_model,
            x,
            y,
            spec,
            batch_size=batch_size,
            device=device,
            seed=seed,
            progress=progress,
        )
        .cpu()
        .numpy()
        for name, spec in attacks.items()
    }


def evaluate(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    attacks: Mapping[str, AttackSpec] | None = None,
    protocol: str = "transfer",
    transfer_sets: Mapping[str, Tensor | np.ndarray] | None = None,
    source_model: nn.Module | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    progress: Any = None,
) -> Evaluation:
    """Metrics on clean data and under each attack.

    Args:
        model: the model being scored.
        x: (N, 3, H, W) float in [0, 1] test images; y: (N,) int64 labels.
        attacks: {name: spec or callable}. Needed for ``whitebox``; for ``transfer`` it
            describes ``transfer_sets`` (or crafts them against ``source_model``).
        protocol: ``transfer`` - score on adversarial test sets crafted once against the
            vanilla model (the paper's numbers); ``whitebox`` - re-run each attack against
            ``model`` itself (the honest robustness figure).
        transfer_sets: {name: x_adv (N, 3, H, W)} for ``transfer``.
        source_model: the vanilla model, to craft missing transfer sets from ``attacks``.
        batch_size, device, seed, progress: passed to ``craft``.

    Returns:
        an ``Evaluation``: ``metrics`` is ``{"clean": metrics(), name: metrics()}``,
        ``attacks`` is ``{name: settings}``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    xt, yt = as_tensor(x, torch.float32), as_tensor(y, torch.long)
    attacks = dict(attacks or {})
    scores: dict[str, dict[str, Any]] = {"clean": score(model, xt, yt, device=device)}
    settings = {k: describe_attack(v) for k, v in attacks.items()}
    if protocol == "transfer":
        if transfer_sets is None:
            if source_model is None or not attacks:
                raise ValueError(
                    "the transfer protocol needs transfer_sets (crafted against "
                    "the vanilla model) or attacks + source_model"
                )
            transfer_sets = craft_transfer_sets(
                source_model,
                xt,
                yt,
                attacks,
                batch_size=batch_size,
                device=device,
                seed=seed,
                progress=progress,
            )
        for name, x_adv in transfer_sets.items():
            xa = as_tensor(x_adv, torch.float32)
            if xa.shape != xt.shape:
                raise ValueError(
                    f"transfer set {name!r} has shape {tuple(xa.shape)}, the test "
                    f"set {tuple(xt.shape)}"
                )
            scores[name] = score(model, xa, yt, device=device)
            settings.setdefault(name, {"attack": name})
    else:
        if not attacks:
            raise ValueError("the whitebox protocol needs attacks to run")
        for name, spec in attacks.items():
            x_adv = run_attack(
                model,
                xt,
                yt,
                spec,
                batch_size=batch_size,
                device=device,
                seed=seed,
                progress=progress,
            )
            scores[name] = score(model, x_adv, yt, device=device)
    log.info("%s: %s", protocol, {k: round(v["accuracy"], 4) for k, v in scores.items()})
    return Evaluation(protocol, int(xt.shape[0]), scores, settings)
