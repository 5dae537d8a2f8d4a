"""The canonical in-memory dataset and helpers shared by every data source."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace

import numpy as np

#: Canonical class order (alphabetical, = DermaMNIST / MedMNIST order).
CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASS_NAMES_LONG: dict[str, str] = {
    "akiec": "actinic keratoses / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}
#: Kaggle hmnist_*.csv label order: akiec 0, bcc 1, bkl 2, df 3, nv 4, vasc 5, mel 6.
HMNIST_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")
#: hmnist label -> canonical label.
HMNIST_TO_CANONICAL = np.array([CLASSES.index(c) for c in HMNIST_CLASSES], dtype=np.int64)
#: HAM10000 class counts (for synthetic proportions and sanity checks).
HAM10000_COUNTS: dict[str, int] = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}
NUM_CLASSES = len(CLASSES)


class DataError(ValueError):
    """Bad or unreadable input data; the message names the file (and row) and the fault."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set in canonical form.

    Args:
        images: (N, H, W, 3) uint8 in [0, 255].
        labels: (N,) int64 in [0, 7), canonical order ``CLASSES``.
        kind: the detected source kind (``ham10000``, ``hmnist_csv``, ``dermamnist``,
            ``npz``, ``synthetic``).
        source: where it came from (path or spec), for messages.
        image_id, lesion_id: (N,) str, when the source has them.
        given_split: the source's own split (``{"train": idx, ...}``), e.g. DermaMNIST's.
    """

    images: np.ndarray
    labels: np.ndarray
    kind: str
    source: str
    image_id: np.ndarray | None = None
    lesion_id: np.ndarray | None = None
    given_split: dict[str, np.ndarray] | None = field(default=None)

    def __post_init__(self) -> None:
        validate_arrays(self.images, self.labels, where=self.source)
        for name in ("image_id", "lesion_id"):
            ids = getattr(self, name)
            if ids is not None and ids.shape != self.labels.shape:
                raise DataError(
                    f"{self.source}: {name} must be ({len(self.labels)},) like the labels, "
                    f"got {ids.shape}"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    @property
    def num_lesions(self) -> int | None:
        return None if self.lesion_id is None else int(np.unique(self.lesion_id).size)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=NUM_CLASSES)
        return {c: int(n) for c, n in zip(CLASSES, counts)}

    def fingerprint(self) -> str:
        """Hash of the canonical arrays (images, labels): same data, same fingerprint."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels.astype(np.int64)).tobytes())
        return h.hexdigest()[:16]

    def subset(self, idx: np.ndarray) -> Dataset:
        """The rows ``idx`` (any integer index array), keeping ids; drops the given split."""
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            image_id=None if self.image_id is None else self.image_id[idx],
            lesion_id=None if self.lesion_id is None else self.lesion_id[idx],
            given_split=None,
        )

    def to_float(self) -> tuple[np.ndarray, np.ndarray]:
        """Model-side arrays: x (N, 3, H, W) float32 in [0, 1], y (N,) int64."""
        x = self.images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return np.ascontiguousarray(x), self.labels.astype(np.int64)

    def save_npz(self, path) -> None:
        """Write the canonical npz (same keys as the shared ``ham10000_28x28_rgb.npz``)."""
        from skinadv.data.io import atomic_write_npz

        arrays = {
            "images": self.images,
            "labels": self.labels,
            "class_names": np.array(CLASSES),
        }
        if self.image_id is not None:
            arrays["image_id"] = self.image_id.astype(str)
        if self.lesion_id is not None:
            arrays["lesion_id"] = self.lesion_id.astype(str)
        atomic_write_npz(path, **arrays)


def validate_arrays(images: np.ndarray, labels: np.ndarray, *, where: str) -> None:
    """Raise DataError unless images/labels are a non-empty canonical pair."""
    if (
        images.ndim != 4
        or images.shape[-1] != 3
        or images.shape[1] != images.shape[2]
        or images.shape[1] < 1
    ):
        raise DataError(f"{where}: images must be (N, H, W, 3) square RGB, got {images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got {images.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{where}: labels must be (N,) matching {images.shape[0]} images, got {labels.shape}"
        )
    if labels.shape[0] == 0:
        raise DataError(f"{where}: the data set is empty (0 images)")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(
            f"{where}: label {int(labels[bad[0]])} at row {int(bad[0])} is outside the class set "
            f"0..{NUM_CLASSES - 1} ({', '.join(CLASSES)}); {bad.size} such rows"
        )


def to_uint8(arr: np.ndarray, *, where: str) -> np.ndarray:
    """Pixels as uint8: ints in [0, 255] as they are, floats in [0, 1] scaled; NaN is an error."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "biuf":  # strings, complex, dates, raw bytes: not pixels
        raise DataError(f"{where}: pixel values must be numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        nan = np.argwhere(~np.isfinite(arr))
        if nan.size:
            raise DataError(f"{where}: NaN or infinite pixel value at index {tuple(nan[0])}")
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        arr = np.rint(arr * scale)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: pixel values must be in [0, 255], found [{lo:g}, {hi:g}]")
    return arr.astype(np.uint8)


def to_int_labels(labels: np.ndarray, *, where: str) -> np.ndarray:
    """Labels as a flat array; float labels must be whole numbers (NaN, inf, 2.5 are errors).

    Range and dtype are ``validate_arrays``' to check."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            r = int(bad[0])
            raise DataError(f"{where}: label {labels[r]:g} at row {r} is not a class number")
        labels = labels.astype(np.int64)
    return labels


def empty_images(n: int, size: int, *, where: str) -> np.ndarray:
    """An uninitialised (n, size, size, 3) uint8 array, or DataError when it cannot fit in
    this machine's memory (checked before allocating: an overcommitted array would only
    fail, or be killed, while it is filled)."""
    need = int(n) * int(size) * int(size) * 3
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX: only the allocation can tell
        total = None
    message = f"{where}: {n} images of {size}x{size} pixels need {need / 2**30:.1f} GiB"
    if total and need > total:
        raise DataError(f"{message}, more than this machine's {total / 2**30:.1f} GiB")
    try:
        return np.empty((n, size, size, 3), dtype=np.uint8)
    except MemoryError as exc:
        raise DataError(f"{message}: out of memory") from exc
