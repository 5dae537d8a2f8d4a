"""Experiment configuration: one pydantic model per concern, YAML presets, a stable hash.

Presets live in ``skinadv/presets/<name>.yaml`` (read with ``yaml.safe_load``) and take
overrides as a dict or ``"a.b=value"`` strings (values parsed as YAML scalars / lists):

    cfg = load_preset("quick", ["train.epochs=2", "attack.pgd.steps=5"])
"""

from skinadv.config.experiment import ExperimentConfig, config_hash
from skinadv.config.presets import (
    apply_overrides,
    available_presets,
    describe_error,
    grid_config,
    load_preset,
    parse_overrides,
)
from skinadv.config.sections import (
    DEFENCES,
    METHODS,
    NORMS,
    AdvTrainConfig,
    APGDConfig,
    AttackConfig,
    DataConfig,
    DefenceConfig,
    DefenceMethod,
    FGSMConfig,
    MIFGSMConfig,
    ModelConfig,
    PGDConfig,
    RobustConfig,
    TrainConfig,
    check_eps,
    check_fraction,
    check_method,
    parse_eps,
)

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
    "parse_eps",
    "parse_overrides",
]
