"""The configuration sections: one pydantic model per concern (data, model, attacks,
training, on-the-fly defences, the robustness sweep), with their validators."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skinadv.attacks._common import NORMS, check_eps
from skinadv.results import eps_label

METHODS: tuple[str, ...] = ("fgsm", "pgd", "mix")
#: on-the-fly adversarial training (every batch attacked while training)
DefenceMethod = Literal["pgd-at", "trades", "n-fgsm", "fast-at"]
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
    # allow_inf_nan=False: an infinite lr or a NaN budget is a typo, and the config hash
    # (strict JSON) could not be computed for it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Config):
    """Where the images come from and how they are split."""

    spec: str = "../shared/data/ham10000"
    size: int = Field(28, ge=4)
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    #: share of the training side held out for validation (model selection: the best
    #: split per method, champions); 0: none, and nothing is selected
    val_size: float = Field(0.1, ge=0.0, lt=1.0)
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
    """APGD-CE / APGD-DLR / APGD-T (Croce & Hein 2020), parameter-free but for the budget.

    ``eps`` 0.3 mirrors pgd's; robustness sweeps pass their own eps per budget.
    ``n_target_classes`` goes to APGD-T only: the target classes it tries (6: every other
    class of the 7; ``restarts`` runs each).
    """

    eps: float = 0.3
    steps: int = Field(100, ge=1)
    restarts: int = Field(1, ge=1)
    rho: float = Field(0.75, gt=0.0, le=1.0)
    n_target_classes: int = Field(6, ge=1)

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        return check_eps(v)


#: attack name -> its AttackConfig section (the three APGD attacks share one)
_ATTACK_SECTIONS = {
    "fgsm": "fgsm",
    "pgd": "pgd",
    "mifgsm": "mifgsm",
    "apgd_ce": "apgd",
    "apgd_dlr": "apgd",
    "apgd_t": "apgd",
}
#: section fields only some of the section's attacks take: field -> those attacks
_ONLY_FOR: dict[str, tuple[str, ...]] = {"n_target_classes": ("apgd_t",)}


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
        section = getattr(self, _ATTACK_SECTIONS[attack]).model_dump()
        return {k: v for k, v in section.items() if attack in _ONLY_FOR.get(k, (attack,))}

    def with_kwargs(self, attack: str, **kwargs: Any) -> AttackConfig:
        """A copy with ``attack``'s settings updated (in its section: ``apgd`` for the three
        APGD attacks), validated as the preset's are.

        Raises:
            ValueError: an unknown attack, a setting it does not take, or a bad value.
        """
        own = self.kwargs(attack)
        unknown = sorted(set(kwargs) - set(own))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} does not apply to {attack}")
        section = _ATTACK_SECTIONS[attack]
        data = self.model_dump()
        data[section] = {**data[section], **kwargs}
        return self.model_validate(data)

    def specs(self, attacks: Iterable[str] = ("fgsm", "pgd")) -> dict[str, dict[str, Any]]:
        """Attack specs for ``evaluate``: ``{name: {"attack": name, **kwargs}}``."""
        return {a: {"attack": a, **self.kwargs(a)} for a in attacks}


#: learning-rate schedules (``TrainConfig.schedule``)
Schedule = Literal["constant", "onecycle", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
#: training-time augmentations (``TrainConfig.augment``)
Augment = Literal["none", "flips"]
AUGMENTS: tuple[str, ...] = get_args(Augment)


class TrainConfig(_Config):
    """The training loop (Adam on cross-entropy).

    ``schedule``: ``constant`` keeps ``lr`` (the paper's recipe); ``onecycle`` (Smith &
    Topin 2019, torch's ``OneCycleLR``) warms up from lr / 25 to ``lr`` over the first
    ``warmup`` share of the steps and anneals (cosine) to lr / 25 / 1e4; ``cosine`` warms up
    linearly from 0 to ``lr`` and anneals (cosine) to 0. Stepped once per batch.
    ``augment``: ``flips`` flips each training image horizontally and vertically with
    probability 1/2 each (dermoscopy has no orientation); attacks, pools and scoring never
    see augmentation. ``precision``: ``bf16`` runs the training forward and backward passes
    under bfloat16 autocast (native on AMX / AVX512-BF16 CPUs and recent GPUs); the weights
    stay float32.
    """

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    optimizer: Literal["adam"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    device: str = "auto"
    schedule: Schedule = "constant"
    warmup: float = Field(0.25, ge=0.0, lt=1.0)
    augment: Augment = "none"
    precision: Literal["fp32", "bf16"] = "fp32"


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
    #: the images the test curve attacks: a fixed, class-stratified subset of this many test
    #: images, the same for every model (``skinadv verify``'s subset); None: all of them
    n_images: int | None = Field(None, ge=1)
    #: the budget of the validation split's white-box PGD score, which picks champions
    select_eps: float = 2 / 255
    #: targeted attacks between classes, ``"mel->nv"`` (a missed cancer), and their budgets
    targeted: list[str] = Field(default_factory=list)
    targeted_eps: list[float] = Field(default_factory=list)

    @field_validator("eps", "targeted_eps", "select_eps", mode="before")
    @classmethod
    def _eps_255(cls, v: Any) -> Any:
        return [parse_eps(e) for e in v] if isinstance(v, list) else parse_eps(v)

    @field_validator("eps", "targeted_eps")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        return [check_eps(e) for e in v]

    @field_validator("select_eps")
    @classmethod
    def _select_eps(cls, v: float) -> float:
        return check_eps(v, "select_eps")

    @field_validator("targeted")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        from skinadv.evaluation.targeted import parse_pair

        for pair in v:
            parse_pair(pair)
        return v

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
    ``n-fgsm`` (de Jorge et al. 2022): FGSM from uniform noise in +-``noise`` * eps, a step
    of ``alpha`` (default eps), no projection back to the eps-ball; FGSM's cost, no guard.
    ``fast-at`` (Wong et al. 2020): FGSM from a uniform random start, with a guard that
    restores the best epoch when PGD accuracy on a fixed training batch drops by more than
    ``guard_drop`` (catastrophic overfitting).
    """

    method: DefenceMethod
    eps: float  # L-inf training budget in [0, 1] pixel units
    steps: int = Field(5, ge=1)  # PGD steps (pgd-at, trades); fast-at takes one
    beta: float = Field(6.0, ge=0.0)  # trades' robustness weight
    # None: 2.5 * eps / steps (pgd-at, trades), 1.25 * eps (fast-at), eps (n-fgsm)
    alpha: float | None = None
    guard_drop: float = Field(0.2, gt=0.0, le=1.0)  # fast-at: accuracy drop (fraction)
    noise: float = Field(2.0, ge=0.0)  # n-fgsm: uniform noise in +-noise * eps (paper: 2)

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
        if self.method == "n-fgsm":
            return self.eps
        return 1.25 * self.eps if self.method == "fast-at" else 2.5 * self.eps / self.steps
