"""Data for training: load, subset, split and oversample as a DataConfig says; (x, y) checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from skinadv.attacks.craft import as_tensor
from skinadv.config import DataConfig
from skinadv.data import Dataset, load_dataset, oversample, split, stratified_subset

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class PreparedData:
    """The split of one DataConfig.

    Attributes:
        train: the training side, oversampled when the config says so (what ``fit`` sees).
        train_raw: the training side before oversampling (validation images removed).
        test: the test side (never oversampled); scored once per model, never used to
            choose anything.
        fingerprint: fingerprint of the loaded source (before subsetting).
        val: the validation split held out from the training side (never oversampled,
            never trained on); what model selection reads. None when ``val_size`` is 0.
    """

    train: Dataset
    train_raw: Dataset
    test: Dataset
    fingerprint: str
    val: Dataset | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train),
            "n_train_raw": len(self.train_raw),
            "n_test": len(self.test),
            "n_val": 0 if self.val is None else len(self.val),
            "fingerprint": self.fingerprint,
            "synthetic": self.test.synthetic,
        }


def prepare_data(cfg: DataConfig, ds: Dataset | None = None) -> PreparedData:
    """Load (unless ``ds`` is given), subset, split and oversample as ``cfg`` says.

    Args:
        cfg: the data settings; ``cfg.spec`` is loaded when ``ds`` is None.
        ds: an already loaded full set (skips loading).
    """
    if ds is None:
        ds = load_dataset(cfg.spec, size=cfg.size)
    if ds.synthetic:
        log.warning("using SYNTHETIC data (%s): results say nothing about HAM10000", ds.source)
    fingerprint = ds.fingerprint()
    if cfg.subset is not None:
        ds = stratified_subset(ds, cfg.subset, seed=cfg.seed)
    train, test = split(
        ds, test_size=cfg.test_size, seed=cfg.seed, group_by_lesion=cfg.group_by_lesion
    )
    val = None
    if cfg.val_size > 0:  # from the training side only: the test side stays unread
        train, val = split(
            train, test_size=cfg.val_size, seed=cfg.seed, group_by_lesion=cfg.group_by_lesion
        )
    train_fit = oversample(train, seed=cfg.seed) if cfg.oversample else train
    log.info(
        "data %s: %d train (%d after oversampling), %d validation, %d test",
        ds.source,
        len(train),
        len(train_fit),
        0 if val is None else len(val),
        len(test),
    )
    return PreparedData(
        train=train_fit, train_raw=train, test=test, fingerprint=fingerprint, val=val
    )


def to_arrays(data: Dataset | tuple[ArrayLike, ArrayLike]) -> tuple[Tensor, Tensor]:
    """A Dataset or (x, y) pair as CPU tensors: x (N, 3, H, W) float32 in [0, 1], y (N,) int64."""
    if isinstance(data, Dataset):
        x, y = data.to_float()
    else:
        try:
            x, y = data
        except (TypeError, ValueError) as exc:
            raise ValueError("training data must be a Dataset or an (x, y) pair") from exc
    xt, yt = as_tensor(x, torch.float32).cpu(), as_tensor(y, torch.long).cpu()
    if xt.ndim != 4 or xt.shape[1] != 3 or yt.shape != (xt.shape[0],):
        raise ValueError(
            f"x must be (N, 3, H, W) (channels first) and y (N,); got "
            f"{tuple(xt.shape)} and {tuple(yt.shape)}"
        )
    if xt.shape[0] == 0:
        raise ValueError("training data is empty")
    if not (torch.isfinite(xt).all() and xt.min() >= 0 and xt.max() <= 1):
        raise ValueError("x must be finite pixel values in [0, 1] (scale uint8 images by 1/255)")
    return xt, yt
