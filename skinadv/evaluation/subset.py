"""The fixed test subset the costly attacks run on (RobustBench scores ImageNet on 5000 of its
50000 images the same way): the grid's robust curve (``robust.n_images``) and ``skinadv
verify``'s AutoAttack pick the same images, so their figures stand side by side."""

from __future__ import annotations

import numpy as np


def stratified_indices(y: np.ndarray, n: int, *, seed: int = 0) -> np.ndarray:
    """A fixed, seeded, class-stratified choice of ``n`` of the images (sorted indices; all
    of them when there are no more than ``n``): the same for every model scored."""
    y = np.asarray(y)
    if n < 1:
        raise ValueError(f"the number of images must be positive, got {n}")
    if n >= y.size:
        return np.arange(y.size)
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and n >= np.count_nonzero(counts) else None
    keep, _ = train_test_split(
        np.arange(y.size), train_size=n, random_state=seed, stratify=stratify
    )
    return np.sort(keep)


__all__ = ["stratified_indices"]
