"""Experiment configuration: one pydantic model per concern, YAML presets, a stable hash.

Presets live in ``skinadv/presets/<name>.yaml`` (read with ``yaml.safe_load``) and take
overrides as a dict or ``"a.b=value"`` strings (values parsed as YAML scalars / lists):

    cfg = load_preset("quick", ["train.epochs=2", "attack.pgd.steps=5"])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skinadv.attacks._common import NORMS, check_eps
from skinadv.results import eps_label

METHODS: tuple[str, ...] = ("fgsm", "pgd", "mix")
#: on-the-fly adversarial training (every batch attacked while training)
DefenceMethod = Literal["pgd-at", "trades", "fast-at"]
DEFENCES: tuple[str, ...] = get_args(DefenceMethod)


def check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1] (share of the training set), got {fraction}")
    return fraction


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(
            f"unknown adversarial training method {method!r}; choose one of {', '.join(METHODS)}"
        )
    return method


def parse_eps(v: Any) -> Any:
    """``"8/255"`` -> 8 / 255 (budgets are usually quoted in 255ths); anything else as is."""
    if isinstance(v, str) and "/" in v:
        num, _, den = v.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read {v!r} as a budget (e.g. 8/255 or 0.03)") from None
    return v


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Config):
    """Where the images come from and how they are split."""

    spec: str = "../shared/data/ham10000"
    size: int = Field(28, ge=4)
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    group_by_lesion: bool = False
    oversample: bool = True
    #: a stratified subset of the full set (before splitting), for quick runs
    subset: int | None = Field(None, ge=14)


class ModelConfig(_Config):
    """Which registered model, with its factory arguments."""

    name: str = "paper_cnn"
    width: int = Field(32, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from skinadv.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; available: {', '.join(sorted(MODELS))}")
        return v

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_model(self.name, **kwargs)``."""
        return {"width": self.width, "dropout": self.dropout}


class FGSMConfig(_Config):
    eps: float = 0.2

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_eps(v)


class PGDConfig(_Config):
    eps: float = 0.3
    alpha: float = 0.2
    steps: int = 50
    random_start: bool = True
    restarts: int = 1
    norm: str = "linf"

    @field_validator("eps", "alpha")
    @classmethod
    def _budget(cls, v: float, info: Any) -> float:
        return check_eps(v, info.field_name)

    @field_validator("steps", "restarts")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {v}")
        return v

    @field_validator("norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        if v not in NORMS:
            raise ValueError(f"unknown norm {v!r}; choose one of {', '.join(NORMS)}")
        return v


class MIFGSMConfig(_Config):
    eps: float = 0.3
    alpha: float | None = None  # None: eps / steps (Dong et al.)
    steps: int = Field(10, ge=1)
    decay: float = Field(1.0, ge=0.0)

    @field_validator("eps", "alpha")
    @classmethod
    def _budget(cls, v: float | None, info: Any) -> float | None:
        return v if v is None else check_eps(v, info.field_name)


class APGDConfig(_Config):
    """APGD-CE / APGD-DLR (Croce & Hein 2020), parameter-free but for the budget.

    ``eps`` 0.3 mirrors pgd's; robustness sweeps pass their own eps per budget.
    """

    eps: float = 0.3
    steps: int = Field(100, ge=1)
    restarts: int = Field(1, ge=1)
    rho: float = Field(0.75, gt=0.0, le=1.0)

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_eps(v)


#: attack name -> its AttackConfig section (both APGD losses share one)
_ATTACK_SECTIONS = {
    "fgsm": "fgsm",
    "pgd": "pgd",
    "mifgsm": "mifgsm",
    "apgd_ce": "apgd",
    "apgd_dlr": "apgd",
}


class AttackConfig(_Config):
    """Attack settings (paper: FGSM eps 0.2; PGD L-inf eps 0.3, alpha 0.2, 50 steps)."""

    fgsm: FGSMConfig = FGSMConfig()
    pgd: PGDConfig = PGDConfig()
    mifgsm: MIFGSMConfig = MIFGSMConfig()
    apgd: APGDConfig = APGDConfig()
    batch_size: int = Field(256, ge=1)

    def kwargs(self, attack: str) -> dict[str, Any]:
        """Keyword arguments for ``ATTACKS[attack]`` (e.g. ``{"eps": 0.2}`` for fgsm)."""
        if attack not in _ATTACK_SECTIONS:
            raise ValueError(
                f"unknown attack {attack!r}; choose one of {', '.join(_ATTACK_SECTIONS)}"
            )
        return getattr(self, _ATTACK_SECTIONS[attack]).model_dump()

    def specs(self, attacks: Iterable[str] = ("fgsm", "pgd")) -> dict[str, dict[str, Any]]:
        """Attack specs for ``evaluate``: ``{name: {"attack": name, **kwargs}}``."""
        return {a: {"attack": a, **self.kwargs(a)} for a in attacks}


class TrainConfig(_Config):
    """The training loop (Adam on cross-entropy)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    device: str = "auto"


class AdvTrainConfig(_Config):
    """Static adversarial augmentation: a ``fraction`` of the training set, by ``method``."""

    method: str = "fgsm"
    fraction: float = 0.2

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return check_method(v)

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        return check_fraction(v)


class RobustConfig(_Config):
    """The white-box robustness sweep every model gets (empty ``eps``: none).

    Each eps is attacked with every attack of ``attacks``; an image counts as robust only if
    none fools it (the per-example worst case). PGD runs ``pgd_steps`` steps of
    2.5 * eps / pgd_steps from a random start; the APGD attacks are parameter-free.
    """

    eps: list[float] = Field(default_factory=list)
    attacks: list[str] = Field(default_factory=lambda: ["pgd"])
    pgd_steps: int = Field(20, ge=1)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_255(cls, v: Any) -> Any:
        return [parse_eps(e) for e in v] if isinstance(v, list) else v

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        return [check_eps(e) for e in v]

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        from skinadv.attacks.registry import ATTACKS

        unknown = [a for a in v if a not in ATTACKS]
        if unknown or not v:
            raise ValueError(
                f"robust.attacks: unknown {unknown or 'empty list'}; available: "
                f"{', '.join(sorted(ATTACKS))}"
            )
        return v


class DefenceConfig(_Config):
    """On-the-fly adversarial training: every training batch is attacked as it is used.

    ``pgd-at`` (Madry et al. 2018): train on PGD-``steps`` examples, random start.
    ``trades`` (Zhang et al. 2019): CE(f(x), y) + ``beta`` * KL(f(x) || f(x_adv)).
    ``fast-at`` (Wong et al. 2020): FGSM from a uniform random start, with a guard that
    restores the best epoch when PGD accuracy on a fixed training batch drops by more than
    ``guard_drop`` (catastrophic overfitting).
    """

    method: DefenceMethod
    eps: float  # L-inf training budget in [0, 1] pixel units
    steps: int = Field(5, ge=1)  # PGD steps (pgd-at, trades); fast-at takes one
    beta: float = Field(6.0, ge=0.0)  # trades' robustness weight
    alpha: float | None = None  # None: 2.5 * eps / steps (pgd-at, trades), 1.25 * eps (fast-at)
    guard_drop: float = Field(0.2, gt=0.0, le=1.0)  # fast-at: accuracy drop (fraction)

    @field_validator("eps", "alpha", mode="before")
    @classmethod
    def _budget_255(cls, v: Any) -> Any:
        return parse_eps(v)

    @field_validator("eps", "alpha")
    @classmethod
    def _budget(cls, v: float | None, info: Any) -> float | None:
        return v if v is None else check_eps(v, info.field_name)

    @property
    def name(self) -> str:
        """``pgd-at@2_255``: the method and training budget, as in metric names."""
        return f"{self.method}@{eps_label(self.eps)}"

    def step_size(self) -> float:
        """``alpha``, or the method's default when it is None."""
        if self.alpha is not None:
            return self.alpha
        return 1.25 * self.eps if self.method == "fast-at" else 2.5 * self.eps / self.steps


class ExperimentConfig(_Config):
    """Everything one grid run needs: data, model, attacks, training and the grid axes."""

    name: str = "experiment"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    attack: AttackConfig = AttackConfig()
    train: TrainConfig = TrainConfig()
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    fractions: list[float] = Field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    seeds: list[int] = Field(default_factory=lambda: [0])
    robust: RobustConfig = RobustConfig()
    #: on-the-fly defences trained beside the static grid (none in the shipped presets)
    defences: list[DefenceConfig] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            check_method(m)
        if not v:
            raise ValueError("methods must name at least one of fgsm, pgd, mix")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for f in v:
            check_fraction(f)
        if not v:
            raise ValueError("fractions must hold at least one value in (0, 1]")
        return v

    @model_validator(mode="after")
    def _seeds(self) -> ExperimentConfig:
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        return self


def config_hash(obj: BaseModel | Mapping[str, Any]) -> str:
    """Stable 16-hex sha256 of ``obj``'s canonical JSON (sorted keys, no whitespace)."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- presets


def available_presets() -> list[str]:
    """Names of the presets shipped in ``skinadv/presets``."""
    root = resources.files("skinadv") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text_name = str(name_or_path)
    if text_name in available_presets():
        res = resources.files("skinadv") / "presets" / f"{text_name}.yaml"
        text, where = res.read_text(), f"preset {text_name!r}"
    elif Path(text_name).suffix in (".yaml", ".yml") and Path(text_name).is_file():
        text, where = Path(text_name).read_text(), text_name
    else:
        raise ValueError(
            f"unknown preset {text_name!r}; available presets: "
            f"{', '.join(available_presets())} (or a path to a .yaml file)"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    return data, where


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``["a.b=1", ...]`` or ``{"a.b": 1}`` / nested dicts -> a flat ``{"a.b": value}`` dict."""
    if overrides is None:
        return {}
    flat: dict[str, Any] = {}
    if isinstance(overrides, Mapping):

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = value

        for k, v in overrides.items():
            walk(str(k), v)
        return flat
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        try:
            flat[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return flat


def apply_overrides(
    data: dict[str, Any],
    overrides: Mapping[str, Any] | Iterable[str] | None,
) -> dict[str, Any]:
    """A copy of ``data`` with dotted-key overrides applied (unknown keys fail validation)."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for key, value in parse_overrides(overrides).items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ValueError(f"override {key!r}: {part!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_preset(
    name_or_path: str | Path = "quick", overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> ExperimentConfig:
    """Load a preset (``quick``, ``paper``, or a YAML path) and apply overrides.

    Raises:
        ValueError: unknown preset (naming the available ones), bad override syntax, or a
            pydantic ``ValidationError`` (a ValueError) for unknown keys and bad values.
    """
    data, _ = _read_yaml(name_or_path)
    data.setdefault("name", Path(str(name_or_path)).stem)
    return ExperimentConfig.model_validate(apply_overrides(data, overrides))


def grid_config(
    preset: str | Path = "quick",
    *,
    data: str | None = None,
    methods: Iterable[str] | None = None,
    fractions: Iterable[float] | None = None,
    seeds: Iterable[int] | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> ExperimentConfig:
    """A preset with the grid's parameters (data spec, axes) and overrides applied."""
    extra: dict[str, Any] = parse_overrides(overrides)
    if data:
        extra["data.spec"] = str(data)
    if methods:
        extra["methods"] = list(methods)
    if fractions:
        extra["fractions"] = [float(f) for f in fractions]
    if seeds:
        extra["seeds"] = [int(s) for s in seeds]
    return load_preset(preset, extra)


def describe_error(exc: BaseException) -> str:
    """One line for a user: pydantic errors as ``loc: message; ...``, others their text."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "config"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        return "; ".join(parts)
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


__all__ = [
    "DEFENCES",
    "METHODS",
    "NORMS",
    "APGDConfig",
    "AdvTrainConfig",
    "AttackConfig",
    "DataConfig",
    "DefenceConfig",
    "DefenceMethod",
    "ExperimentConfig",
    "FGSMConfig",
    "MIFGSMConfig",
    "ModelConfig",
    "PGDConfig",
    "RobustConfig",
    "TrainConfig",
    "apply_overrides",
    "available_presets",
    "check_eps",
    "check_fraction",
    "check_method",
    "config_hash",
    "describe_error",
    "grid_config",
    "load_preset",
    "parse_overrides",
]
