"""Train/test splits (stratified, optionally grouped by lesion) and oversampling."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from skinadv.data.dataset import NUM_CLASSES, DataError, Dataset


def split(
    ds: Dataset, *, test_size: float = 0.2, seed: int = 0, group_by_lesion: bool = False
) -> tuple[Dataset, Dataset]:
    """Seeded stratified split into (train, test).

    Args:
        ds: the full set. On all 10015 HAM10000 images, ``test_size=0.2`` gives 8012 / 2003.
        test_size: fraction in (0, 1) of images in the test side.
        seed: the split's random seed.
        group_by_lesion: keep every lesion on one side only (needs ``lesion_id``); uses
            StratifiedGroupKFold with round(1 / test_size) folds, so the test share is near,
            not exactly, ``test_size``.
    """
    if not 0.0 < test_size < 1.0:
        raise DataError(f"test_size must be in (0, 1), got {test_size}")
    idx = np.arange(len(ds))
    if group_by_lesion:
        if ds.lesion_id is None:
            raise DataError(f"{ds.source}: group_by_lesion needs lesion ids; this source has none")
        n_splits = max(2, round(1.0 / test_size))
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train_idx, test_idx = next(sgkf.split(idx, ds.labels, groups=ds.lesion_id))
    else:
        counts = np.bincount(ds.labels, minlength=NUM_CLASSES)
        stratify = ds.labels if counts[counts > 0].min() >= 2 else None
        train_idx, test_idx = train_test_split(
            idx, test_size=test_size, random_state=seed, stratify=stratify
        )
    return ds.subset(np.sort(train_idx)), ds.subset(np.sort(test_idx))


def oversample(ds: Dataset, *, seed: int = 0) -> Dataset:
    """Random oversampling (with replacement) of every class up to the largest class's count."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(ds.labels, minlength=NUM_CLASSES)
    target = int(counts.max())
    parts = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(ds.labels == c)
        if members.size == 0:
            continue
        extra = rng.choice(members, size=target - members.size, replace=True)
        parts.append(np.concatenate([members, extra]))
    idx = np.concatenate(parts)
    rng.shuffle(idx)
    return ds.subset(idx)


def stratified_subset(ds: Dataset, n: int, *, seed: int = 0) -> Dataset:
    """A seeded class-stratified subset of ``n`` images (every class kept where possible)."""
    if n >= len(ds):
        return ds
    if n < 1:
        raise DataError(f"subset size must be positive, got {n}")
    counts = np.bincount(ds.labels, minlength=NUM_CLASSES)
    stratify = ds.labels if counts[counts > 0].min() >= 2 and n >= NUM_CLASSES else None
    keep, _ = train_test_split(
        np.arange(len(ds)), train_size=n, random_state=seed, stratify=stratify
    )
    return ds.subset(np.sort(keep))
