"""A deterministic synthetic set with HAM10000's class proportions, for demos and fast tests.

It is never mistaken for real data: its kind is ``synthetic`` and every report says so.
"""

from __future__ import annotations

import numpy as np

from skinadv.data.dataset import CLASSES, HAM10000_COUNTS, DataError, Dataset, empty_images

# A lesion colour per class (RGB), so a small CNN can learn the classes.
_LESION_RGB = np.array(
    [
        [150, 90, 80],
        [200, 120, 140],
        [120, 80, 50],
        [170, 110, 90],
        [60, 35, 40],
        [110, 70, 60],
        [170, 40, 90],
    ],
    dtype=np.float32,
)


def parse_synthetic_spec(spec: str) -> tuple[int, int]:
    """``synthetic`` / ``synthetic:N`` / ``synthetic:N:SEED`` -> (n, seed)."""
    parts = spec.split(":")
    try:
        n = int(parts[1]) if len(parts) > 1 and parts[1] else 1000
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError as exc:
        raise DataError(
            f"{spec}: expected 'synthetic', 'synthetic:N' or 'synthetic:N:SEED'"
        ) from exc
    if len(parts) > 3 or n < len(CLASSES):
        raise DataError(f"{spec}: synthetic needs N >= {len(CLASSES)} (one image per class)")
    if seed < 0:
        raise DataError(f"{spec}: the seed must be >= 0, got {seed}")
    return n, seed


def synthetic(*, n: int = 1000, size: int = 28, seed: int = 0) -> Dataset:
    """Generate ``n`` images (size x size x 3, uint8) with HAM10000 class proportions.

    Each image is skin-toned background plus an elliptical lesion whose colour and size
    depend on the class, with seeded noise. Same (n, size, seed), same bytes.
    """
    images = empty_images(n, size, where=f"synthetic:{n}:{seed}")  # first: refuse absurd n
    rng = np.random.default_rng(seed)
    props = np.array([HAM10000_COUNTS[c] for c in CLASSES], dtype=np.float64)
    counts = np.maximum(1, np.floor(props / props.sum() * n)).astype(int)
    counts[int(np.argmax(counts))] += n - counts.sum()
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    for i, c in enumerate(labels):
        skin = np.array([215, 160, 150], np.float32) + rng.normal(0, 8, 3)
        cx, cy = rng.uniform(0.35, 0.65, 2)
        rx, ry = rng.uniform(0.15, 0.3, 2) * (1.0 + 0.08 * c)
        mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1.0
        img = np.broadcast_to(skin, (size, size, 3)).copy()
        img[mask] = _LESION_RGB[c] + rng.normal(0, 10, 3)
        img += rng.normal(0, 6, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    lesion_id = np.array([f"SYN_{i // 2:07d}" for i in range(n)])  # pairs share a lesion
    image_id = np.array([f"SYN_IMG_{i:07d}" for i in range(n)])
    return Dataset(
        images=images,
        labels=labels.astype(np.int64),
        kind="synthetic",
        source=f"synthetic:{n}:{seed}",
        image_id=image_id,
        lesion_id=lesion_id,
    )
