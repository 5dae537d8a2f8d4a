"""The whole experiment's configuration and its stable hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from skinadv.config.sections import (
    METHODS,
    AttackConfig,
    DataConfig,
    DefenceConfig,
    ModelConfig,
    RobustConfig,
    TrainConfig,
    _Config,
    check_fraction,
    check_method,
)


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
