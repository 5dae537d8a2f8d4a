"""Training: data preparation, the training loop, and static adversarial augmentation.

The paper's defence: craft adversarial copies of a random fraction of the (oversampled)
training set against the vanilla model (FGSM, PGD, or half/half ``mix``), append them to
the training set, and train a freshly initialised model on the union.

    prep = prepare_data(cfg.data)
    x, y = prep.train.to_float()
    vanilla = fit(cfg.model, (x, y), cfg.train).model
    pool = adversarial_pool(vanilla, x, y, method="pgd", fraction=0.8,
                            attack_cfg=cfg.attack, seed=0)
    cell = fit(cfg.model, augment(x, y, pool, 0.4), cfg.train).model
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skinadv.attacks import craft
from skinadv.attacks.craft import as_tensor
from skinadv.config import (
    AttackConfig,
    DataConfig,
    ModelConfig,
    TrainConfig,
    check_fraction,
    check_method,
)
from skinadv.data import Dataset, load_dataset, oversample, split, stratified_subset
from skinadv.data.io import atomic_write_npz
from skinadv.models import create_model

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | Tensor


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PreparedData:
    """The split of one DataConfig.

    Attributes:
        train: the training side, oversampled when the config says so (what ``fit`` sees).
        train_raw: the training side before oversampling.
        test: the test side (never oversampled).
        fingerprint: fingerprint of the loaded source (before subsetting).
    """

    train: Dataset
    train_raw: Dataset
    test: Dataset
    fingerprint: str

    def summary(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train),
            "n_train_raw": len(self.train_raw),
            "n_test": len(self.test),
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
    train_fit = oversample(train, seed=cfg.seed) if cfg.oversample else train
    log.info(
        "data %s: %d train (%d after oversampling), %d test",
        ds.source,
        len(train),
        len(train_fit),
        len(test),
    )
    return PreparedData(train=train_fit, train_raw=train, test=test, fingerprint=fingerprint)


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


# --------------------------------------------------------------------------- training


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as torch understands it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


@dataclass(frozen=True)
class EpochStats:
    """What the per-epoch hook gets (e.g. to log to MLflow with ``step=epoch``)."""

    epoch: int  # 1-based
    loss: float  # mean training cross-entropy over the epoch
    train_acc: float  # training accuracy over the epoch (dropout on)
    seconds: float  # wall time of the epoch

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


EpochHook = Callable[[EpochStats], None]


@dataclass
class TrainResult:
    """A trained model (eval mode) and how it got there."""

    model: nn.Module
    history: list[EpochStats]
    seconds: float
    device: str
    n_train: int
    model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> EpochStats:
        return self.history[-1]


def fit(
    model_or_name: nn.Module | str | ModelConfig,
    train: Dataset | tuple[ArrayLike, ArrayLike],
    cfg: TrainConfig,
    *,
    on_epoch: EpochHook | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with Adam on cross-entropy over logits.

    Args:
        model_or_name: a model to train in place, or a registry name / ModelConfig for a
            freshly initialised model (``torch.manual_seed(cfg.seed)`` first, so the same
            seed gives the same initial weights).
        train: a Dataset (uint8 images are scaled to [0, 1]) or (x, y): x (N, 3, H, W) float
            in [0, 1], y (N,) int64.
        cfg: epochs, batch size, learning rate, weight decay, seed, device.
        on_epoch: called after every epoch with an ``EpochStats``.
        model_kwargs: factory arguments when ``model_or_name`` is a name.

    Returns:
        TrainResult with the model in eval mode. Same seed and data on the CPU, same weights.
    """
    device = select_device(cfg.device)
    x, y = to_arrays(train)
    torch.manual_seed(cfg.seed)
    if isinstance(model_or_name, ModelConfig):
        model = create_model(model_or_name.name, **model_or_name.kwargs())
    elif isinstance(model_or_name, str):
        model = create_model(model_or_name, **(model_kwargs or {}))
    else:
        model = model_or_name
    model.to(device)
    if device.type == "cuda":  # the whole set fits on a GPU: no per-batch host copies
        x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    n = x.shape[0]
    history: list[EpochStats] = []
    t_start = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if idx.numel() < 2:  # BatchNorm cannot train on a batch of one
                continue
            xb, yb = x[idx.to(x.device)].to(device), y[idx.to(y.device)].to(device)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += idx.numel()
        mean_loss = total_loss / max(seen, 1)
        if not np.isfinite(mean_loss):
            raise FloatingPointError(
                f"training diverged: loss {mean_loss} at epoch {epoch} (lower train.lr?)"
            )
        stats = EpochStats(epoch, mean_loss, correct / max(seen, 1), time.perf_counter() - t0)
        history.append(stats)
        log.info(
            "epoch %d/%d: loss %.4f, train acc %.4f, %.1f s",
            epoch,
            cfg.epochs,
            stats.loss,
            stats.train_acc,
            stats.seconds,
        )
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        seconds=time.perf_counter() - t_start,
        device=str(device),
        n_train=n,
        model_config=dict(getattr(model, "skinadv_config", {})),
    )


# --------------------------------------------------------------------------- adversarial pools


def _n_take(fraction: float, n: int) -> int:
    return int(round(fraction * n))


@dataclass(frozen=True, eq=False)
class AdvPool:
    """Adversarial copies of a seeded random ``fraction`` of a training set.

    Attributes:
        method: ``fgsm``, ``pgd`` or ``mix``.
        fraction: the largest fraction it serves.
        seed: the permutation's (and the PGD random starts') seed.
        n_train: size of the training set it was crafted from.
        index: (k,) int64 rows of the training set, in a fixed seeded random order,
            k = round(fraction * n_train). Any prefix is a random subset, so smaller
            fractions are nested prefixes: 0.2 inside 0.4 inside 0.6 inside 0.8.
        x_adv: (k, 3, H, W) float32 in [0, 1], the adversarial copy of each row.
        y: (k,) int64 true labels.
        kinds: (k,) ``fgsm`` / ``pgd`` per row; ``mix`` alternates, so every prefix is
            half FGSM, half PGD.
        attack: the attack settings used (for records).
    """

    method: str
    fraction: float
    seed: int
    n_train: int
    index: np.ndarray
    x_adv: np.ndarray
    y: np.ndarray
    kinds: np.ndarray
    attack: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def count(self, fraction: float, n_train: int | None = None) -> int:
        """How many examples ``fraction`` stands for: round(fraction * n_train)."""
        check_fraction(fraction)
        if n_train is not None and n_train != self.n_train:
            raise ValueError(
                f"pool was crafted from {self.n_train} training examples, "
                f"not {n_train}: craft a pool for this training set"
            )
        k = _n_take(fraction, self.n_train)
        if k > len(self):
            raise ValueError(
                f"pool holds fraction {self.fraction} ({len(self)} examples); "
                f"fraction {fraction} needs {k}: craft for the largest fraction"
            )
        return k

    def indices(self, fraction: float, n_train: int | None = None) -> np.ndarray:
        """Training-set rows the first round(fraction * n) pool examples were crafted from."""
        return self.index[: self.count(fraction, n_train)]

    def take(self, fraction: float, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first round(fraction * n_train) adversarial examples: (x_adv, y)."""
        k = self.count(fraction, n_train)
        return self.x_adv[:k], self.y[:k]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to an uncompressed .npz atomically (adversarial floats do not compress)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "fraction": self.fraction,
            "seed": self.seed,
            "n_train": self.n_train,
            "attack": self.attack,
        }
        return atomic_write_npz(
            path,
            compress=False,
            index=self.index,
            x_adv=self.x_adv,
            y=self.y,
            kinds=self.kinds.astype(str),
            meta=np.array(json.dumps(meta)),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> AdvPool:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(index=z["index"], x_adv=z["x_adv"], y=z["y"], kinds=z["kinds"], **meta)
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not an adversarial pool file ({exc})") from exc


def adversarial_pool(
    source_model: nn.Module,
    train_x: ArrayLike,
    train_y: ArrayLike,
    *,
    method: str,
    fraction: float,
    attack_cfg: AttackConfig,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Any = None,
) -> AdvPool:
    """Craft adversarial copies of a seeded random ``fraction`` of the training set.

    Crafted once against ``source_model`` (the vanilla model) for the largest fraction;
    ``pool.take(f)`` then gives nested subsets for every smaller f.

    Args:
        source_model: the model the examples are crafted against (vanilla).
        train_x: (N, 3, H, W) float in [0, 1], the (oversampled) training images.
        train_y: (N,) int64 labels.
        method: ``fgsm``, ``pgd`` or ``mix`` (alternating FGSM / PGD, so half each).
        fraction: in (0, 1]: the largest fraction the pool must serve.
        attack_cfg: FGSM / PGD settings (``attack_cfg.fgsm``, ``attack_cfg.pgd``).
        seed: picks the rows and seeds the PGD random starts.
        device: where to craft (default: the model's device).
        progress: passed to ``craft``.
    """
    check_method(method)
    check_fraction(fraction)
    x, y = to_arrays((train_x, train_y))
    n = x.shape[0]
    k = _n_take(fraction, n)
    index = np.random.default_rng(seed).permutation(n)[:k].astype(np.int64)
    if method == "mix":
        kinds = np.where(np.arange(k) % 2 == 0, "fgsm", "pgd")
    else:
        kinds = np.full(k, method)
    x_adv = np.empty((k, *x.shape[1:]), dtype=np.float32)
    t0 = time.perf_counter()
    for kind in ("fgsm", "pgd"):
        rows = np.flatnonzero(kinds == kind)
        if rows.size == 0:
            continue
        src = torch.from_numpy(index[rows])
        adv = craft(
            source_model,
            x[src],
            y[src],
            kind,
            batch_size=attack_cfg.batch_size,
            device=device,
            seed=seed,
            progress=progress,
            **attack_cfg.kwargs(kind),
        )
        x_adv[rows] = adv.cpu().numpy()
    log.info(
        "crafted %s pool: %d of %d examples (fraction %.2f) in %.1f s",
        method,
        k,
        n,
        fraction,
        time.perf_counter() - t0,
    )
    used = {kind: attack_cfg.kwargs(kind) for kind in ("fgsm", "pgd") if (kinds == kind).any()}
    return AdvPool(
        method=method,
        fraction=fraction,
        seed=seed,
        n_train=n,
        index=index,
        x_adv=x_adv,
        y=y.numpy()[index],
        kinds=kinds,
        attack=used,
    )


def augment(
    train_x: ArrayLike,
    train_y: ArrayLike,
    pool: AdvPool,
    fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The training set with exactly round(fraction * n) adversarial examples appended.

    Returns:
        (x, y) numpy arrays: x (n + k, 3, H, W) float32, y (n + k,) int64.
    """
    x, y = to_arrays((train_x, train_y))
    xa, ya = pool.take(fraction, x.shape[0])
    return (
        np.concatenate([x.numpy(), xa.astype(np.float32)]),
        np.concatenate([y.numpy(), ya.astype(np.int64)]),
    )


__all__ = [
    "AdvPool",
    "EpochHook",
    "EpochStats",
    "PreparedData",
    "TrainResult",
    "adversarial_pool",
    "augment",
    "fit",
    "prepare_data",
    "select_device",
    "to_arrays",
]
