"""What the experiment's steps hand each other: small frozen dataclasses, never tensors.

One result type for an evaluation (``Evaluation``, auto-attack's flat ``{"clean": acc,
attack: acc}`` with full metrics per entry) and one for a trained model scored under both
protocols (``ModelResult``). The report, the sanity checks, MLflow tracking and the CLI all
read these; ``to_dict`` / ``from_dict`` are their JSON form (``evaluation.json``).

Flat metric keys (MLflow metrics, report records) are ``clean_<metric>`` and
``<protocol>_<attack>_<metric>``, e.g. ``whitebox_pgd_balanced_accuracy``; values are
fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PROTOCOLS: tuple[str, ...] = ("transfer", "whitebox")
#: Scalar metrics kept in flat records (``mel_recall`` is read from ``recall["mel"]``).
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "mel_recall")
#: A sweep: ``{"eps": [{"eps": e, "accuracy": a, "balanced_accuracy": b}, ...], "steps": ...}``.
Sweeps = Mapping[str, list[dict[str, Any]]]


def metric_key(protocol: str | None, attack: str, metric: str) -> str:
    """``clean_accuracy`` or ``transfer_pgd_balanced_accuracy``."""
    return f"clean_{metric}" if attack == "clean" else f"{protocol}_{attack}_{metric}"


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()})


@dataclass(frozen=True)
class Evaluation:
    """One model scored under one protocol.

    Args:
        protocol: ``transfer`` (attacks crafted once against the vanilla model) or
            ``whitebox`` (each attack re-run against this model).
        n: number of test images.
        metrics: ``{"clean": metrics(), attack name: metrics()}`` (see
            ``skinadv.evaluation.metrics``: accuracy, balanced accuracy, recall, ...).
        attacks: ``{attack name: settings}`` (``{"attack": "pgd", "eps": 0.3, ...}``).
    """

    protocol: str
    n: int
    metrics: Mapping[str, Mapping[str, Any]]
    attacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}"
            )
        object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "attacks", _frozen(self.attacks))

    @property
    def attack_names(self) -> tuple[str, ...]:
        """The attacks scored (every metrics entry but ``clean``)."""
        return tuple(k for k in self.metrics if k != "clean")

    def value(self, attack: str = "clean", metric: str = "accuracy") -> float | None:
        """A scalar metric for ``attack`` (or ``clean``); None when it was not scored."""
        m = self.metrics.get(attack)
        if m is None:
            return None
        if metric == "mel_recall" and "mel_recall" not in m:
            v = (m.get("recall") or {}).get("mel")
        else:
            v = m.get(metric)
        return None if v is None else float(v)

    def accuracy(self, attack: str = "clean") -> float | None:
        return self.value(attack, "accuracy")

    def eps(self, attack: str) -> float | None:
        """The attack's budget, when its settings say."""
        eps = self.attacks.get(attack, {}).get("eps")
        return None if eps is None else float(eps)

    def as_protocol(self, protocol: str) -> Evaluation:
        """The same scores reported under another protocol (the vanilla model's transfer
        sets *are* its white-box attacks)."""
        return Evaluation(protocol, self.n, self.metrics, self.attacks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "n": self.n,
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "attacks": {k: dict(v) for k, v in self.attacks.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        return cls(d["protocol"], int(d["n"]), d["metrics"], d.get("attacks", {}))


def eps_label(eps: float) -> str:
    """``2/255`` -> ``2_255``, ``0.3`` -> ``0.3``: an eps as it appears in metric names."""
    plain, k = f"{eps:g}", eps * 255
    if len(plain) > 5 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}_255"
    return plain


def eps_text(eps: float) -> str:
    """A budget as people write it: ``2/255``, or the paper's ``0.3``."""
    return eps_label(eps).replace("_", "/")


@dataclass(frozen=True)
class RobustPoint:
    """White-box robust accuracy at one budget: an image counts as robust only if every
    attack of the ensemble (e.g. PGD, APGD-CE, APGD-DLR) leaves it correctly classified
    (the per-example worst case).

    Args:
        eps: L-inf budget in [0, 1] pixel units.
        accuracy, balanced_accuracy: over the images attacked, fractions in [0, 1].
        mel_recall: melanoma recall under the worst case (None when no melanoma is scored).
        attacks: the ensemble's attack names.
        n_images: the images attacked when a fixed subset of the test set was (None: all).
    """

    eps: float
    accuracy: float
    balanced_accuracy: float
    mel_recall: float | None = None
    attacks: tuple[str, ...] = ()
    n_images: int | None = None

    def metrics(self) -> dict[str, float]:
        """``robust_2_255_accuracy``, ``robust_2_255_balanced_accuracy``, ..."""
        out = {
            f"robust_{eps_label(self.eps)}_accuracy": self.accuracy,
            f"robust_{eps_label(self.eps)}_balanced_accuracy": self.balanced_accuracy,
        }
        if self.mel_recall is not None:
            out[f"robust_{eps_label(self.eps)}_mel_recall"] = self.mel_recall
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "attacks": list(self.attacks)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RobustPoint:
        return cls(
            float(d["eps"]),
            float(d["accuracy"]),
            float(d["balanced_accuracy"]),
            None if d.get("mel_recall") is None else float(d["mel_recall"]),
            tuple(d.get("attacks", ())),
            None if d.get("n_images") is None else int(d["n_images"]),
        )


@dataclass(frozen=True)
class TargetedPoint:
    """A targeted white-box attack on the images of one class: how often it turns them
    into another (``mel`` -> ``nv``: a missed cancer; ``nv`` -> ``mel``: a false alarm).

    Args:
        source, target: class names.
        eps: L-inf budget in [0, 1] pixel units.
        n: the ``source`` images the model classifies correctly when clean (attacked).
        success: the fraction of those the attack makes the model call ``target``
            (None when ``n`` is 0).
    """

    source: str
    target: str
    eps: float
    n: int
    success: float | None

    @property
    def key(self) -> str:
        """``targeted_mel_nv_2_255_success``: its metric name."""
        return f"targeted_{self.source}_{self.target}_{eps_label(self.eps)}_success"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetedPoint:
        s = d.get("success")
        success = None if s is None else float(s)
        return cls(d["source"], d["target"], float(d["eps"]), int(d["n"]), success)


#: validation metrics are the test metric names with this prefix (``val_clean_accuracy``)
VAL = "val_"


@dataclass(frozen=True)
class ModelResult:
    """One trained model (the vanilla model or a grid cell) scored under both protocols.

    Args:
        cell: ``vanilla`` or ``<method>@<fraction>`` (``pgd@0.8``).
        seed: the training seed.
        transfer, whitebox: its two evaluations.
        method, fraction: the grid axes (None for the vanilla model).
        run_id: its MLflow run, when it has one.
        curve: white-box robust accuracy as eps grows (``RobustPoint``s, ascending eps),
            when the preset asks for the sweep.
        validation: the model on the validation split (held out from the training side):
            clean and the vanilla model's transfer attacks crafted on those images. What
            model selection reads; None without a validation split.
        val_robust: white-box robust accuracy on the validation split at the selection
            budget (``robust.select_eps``).
        targeted: targeted attacks between classes (``mel`` -> ``nv``, ...), on the test set.
        cost: what training cost (``seconds``, ``grad_evals``, ... of ``TrainCost``), when
            known; flat as ``train_seconds``, ``train_grad_evals``, ...
        extra: flat metrics added after training by another command, by name (e.g.
            ``skinadv verify``'s ``autoattack_2_255_accuracy``, ``ensemble_2_255_accuracy``,
            ``autoattack_n_images``); the report reads them, ``flat_metrics`` leaves them out.
    """

    cell: str
    seed: int
    transfer: Evaluation
    whitebox: Evaluation
    method: str | None = None
    fraction: float | None = None
    run_id: str | None = None
    curve: tuple[RobustPoint, ...] = ()
    validation: Evaluation | None = None
    val_robust: RobustPoint | None = None
    targeted: tuple[TargetedPoint, ...] = ()
    cost: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost", MappingProxyType(dict(self.cost)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def key(self) -> str:
        """Unique within a grid: ``pgd@0.8-s0``."""
        return f"{self.cell}-s{self.seed}"

    @property
    def is_vanilla(self) -> bool:
        return self.method is None

    def evaluations(self) -> dict[str, Evaluation]:
        return {"transfer": self.transfer, "whitebox": self.whitebox}

    def flat_metrics(self) -> dict[str, float]:
        """``clean_accuracy``, ``transfer_pgd_balanced_accuracy``, ... (fractions in [0, 1])."""
        flat: dict[str, float] = {}
        for protocol, ev in self.evaluations().items():
            for attack in ev.metrics:
                for metric in METRICS:
                    v = ev.value(attack, metric)
                    if v is not None:
                        flat[metric_key(protocol, attack, metric)] = v
        for point in self.curve:
            flat.update(point.metrics())
        for t in self.targeted:
            if t.success is not None:
                flat[t.key] = t.success
        flat.update({f"train_{k}": float(v) for k, v in self.cost.items()})
        return {**flat, **self.validation_metrics()}

    def validation_metrics(self) -> dict[str, float]:
        """``val_clean_accuracy``, ``val_transfer_pgd_accuracy``,
        ``val_robust_2_255_balanced_accuracy``, ...: the only figures selection may read."""
        flat: dict[str, float] = {}
        if self.validation is not None:
            for attack in self.validation.metrics:
                for metric in METRICS:
                    v = self.validation.value(attack, metric)
                    if v is not None:
                        flat[VAL + metric_key("transfer", attack, metric)] = v
        if self.val_robust is not None:
            flat.update({VAL + k: v for k, v in self.val_robust.metrics().items()})
        return flat

    def record(self) -> dict[str, Any]:
        """One flat row for tables: identity columns + ``flat_metrics()``."""
        return {
            "cell": self.cell,
            "method": self.method,
            "fraction": self.fraction,
            "seed": self.seed,
            "run_id": self.run_id,
            **self.flat_metrics(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "seed": self.seed,
            "method": self.method,
            "fraction": self.fraction,
            "run_id": self.run_id,
            "evaluation": {p: ev.to_dict() for p, ev in self.evaluations().items()},
            "curve": [p.to_dict() for p in self.curve],
            "validation": None if self.validation is None else self.validation.to_dict(),
            "val_robust": None if self.val_robust is None else self.val_robust.to_dict(),
            "targeted": [t.to_dict() for t in self.targeted],
            "cost": dict(self.cost),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, run_id: str | None = None) -> ModelResult:
        evals = d["evaluation"]
        return cls(
            cell=d["cell"],
            seed=int(d["seed"]),
            transfer=Evaluation.from_dict(evals["transfer"]),
            whitebox=Evaluation.from_dict(evals["whitebox"]),
            method=d.get("method"),
            fraction=None if d.get("fraction") is None else float(d["fraction"]),
            run_id=run_id or d.get("run_id"),
            curve=tuple(RobustPoint.from_dict(p) for p in d.get("curve", ())),
            validation=d.get("validation") and Evaluation.from_dict(d["validation"]),
            val_robust=d.get("val_robust") and RobustPoint.from_dict(d["val_robust"]),
            targeted=tuple(TargetedPoint.from_dict(t) for t in d.get("targeted", ())),
            cost=d.get("cost") or {},
            extra={k: float(v) for k, v in (d.get("extra") or {}).items()},
        )


def cell_name(method: str | None, fraction: float | None) -> str:
    """``vanilla`` or ``pgd@0.8``: how a model is named in runs, tables and the Prefect UI."""
    return "vanilla" if method is None else f"{method}@{fraction:g}"


__all__ = [
    "METRICS",
    "PROTOCOLS",
    "Evaluation",
    "ModelResult",
    "RobustPoint",
    "Sweeps",
    "TargetedPoint",
    "VAL",
    "cell_name",
    "eps_label",
    "eps_text",
    "metric_key",
]
