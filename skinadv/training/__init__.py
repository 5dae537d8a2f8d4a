"""Training: data preparation, the training loop, static and on-the-fly adversarial training.

The paper's defence (static): craft adversarial copies of a random fraction of the
(oversampled) training set against the vanilla model (FGSM, PGD, or half/half ``mix``),
append them to the training set, and train a freshly initialised model on the union.

    prep = prepare_data(cfg.data)
    x, y = prep.train.to_float()
    vanilla = fit(cfg.model, (x, y), cfg.train).model
    pool = adversarial_pool(vanilla, x, y, method="pgd", fraction=0.8,
                            attack_cfg=cfg.attack, seed=0)
    cell = fit(cfg.model, augment(x, y, pool, 0.4), cfg.train).model

On the fly (every batch attacked as it is used: PGD-AT, TRADES, fast AT):

    robust = fit(cfg.model, (x, y), cfg.train,
                 defence=DefenceConfig(method="pgd-at", eps=2 / 255)).model
"""

from skinadv.training.defences import BatchLoss, Guard
from skinadv.training.loop import (
    EpochHook,
    EpochStats,
    TrainCost,
    TrainResult,
    fit,
    select_device,
)
from skinadv.training.pools import (
    MIX_FROM_POOLS,
    AdvPool,
    adversarial_pool,
    augment,
    composes_mix,
    mix_pool,
)
from skinadv.training.prep import PreparedData, prepare_data, to_arrays

__all__ = [
    "MIX_FROM_POOLS",
    "AdvPool",
    "BatchLoss",
    "EpochHook",
    "EpochStats",
    "Guard",
    "PreparedData",
    "TrainCost",
    "TrainResult",
    "adversarial_pool",
    "augment",
    "composes_mix",
    "fit",
    "mix_pool",
    "prepare_data",
    "select_device",
    "to_arrays",
]
