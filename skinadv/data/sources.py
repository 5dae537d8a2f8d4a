"""Data sources: detect what a SPEC points at and load it into the canonical form.

Accepted SPEC forms (see ``ACCEPTED_FORMS``):

* a HAM10000 folder (``HAM10000_metadata.csv`` + ``ISIC_*.jpg`` anywhere below it), the
  metadata CSV itself, or several folders joined with commas;
* Kaggle's ``hmnist_<S>_<S>_RGB.csv`` (3*S*S pixel columns + ``label``, hmnist order);
* MedMNIST's ``dermamnist.npz`` (``train_/val_/test_images`` and ``_labels``);
* the canonical ``.npz`` (``images`` uint8 NHWC, ``labels`` int64, optional ids);
* ``synthetic`` / ``synthetic:N`` / ``synthetic:N:SEED``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skinadv.data.dataset import (
    CLASSES,
    HMNIST_TO_CANONICAL,
    DataError,
    Dataset,
    empty_images,
    to_int_labels,
    to_uint8,
    validate_arrays,
)
from skinadv.data.io import atomic_write_npz, default_cache_dir
from skinadv.data.s3 import fetch

log = logging.getLogger(__name__)

METADATA_NAME = "HAM10000_metadata.csv"
ACCEPTED_FORMS = (
    "a HAM10000 folder holding HAM10000_metadata.csv and ISIC_*.jpg images below it "
    "(or the metadata CSV itself; several folders joined with ',')",
    "Kaggle's hmnist_28_28_RGB.csv (3*S*S pixel columns + 'label')",
    "MedMNIST's dermamnist.npz (train_/val_/test_images and _labels)",
    "a canonical .npz with 'images' (N,H,W,3 uint8) and 'labels'",
    "'synthetic', 'synthetic:N' or 'synthetic:N:SEED'",
)
#: Largest image side ``load_dataset`` makes (HAM10000's own images are 600x450).
MAX_SIZE = 1024
# Bump when the resize pipeline changes: the cache key includes it.
_RESIZE_VERSION = "lanczos-v1"
# A progress callback: (done, total) -> None. The CLI passes a rich progress bar.
Progress = Callable[[int, int], None]


def describe_accepted() -> str:
    return "accepted forms:\n" + "\n".join(f"  - {f}" for f in ACCEPTED_FORMS)


def absolute_spec(spec: str) -> str:
    """The SPEC with local paths made absolute (each part of a ``,`` list), so that it means
    the same data to a worker whose working folder is another (a Ray worker)."""
    s = str(spec).strip()
    if s == "synthetic" or s.startswith(("synthetic:", "s3://")):
        return s
    return ",".join(str(Path(p).expanduser().resolve()) for p in s.split(",") if p)


def detect(spec: str) -> str:
    """Name the source kind a SPEC points at, or raise DataError listing the accepted forms."""
    s = str(spec).strip()
    try:
        return _detect(s)
    except OSError as exc:  # a name too long, a folder we may not list: not a usable SPEC
        raise DataError(f"{s}: cannot read ({exc.strerror or exc})") from exc


def _detect(s: str) -> str:
    if s == "synthetic" or s.startswith("synthetic:"):
        return "synthetic"
    if s.startswith("s3://"):
        return "s3"
    parts = [p for p in s.split(",") if p]
    if len(parts) > 1:
        if all(Path(p).is_dir() for p in parts):
            return "ham10000"
        missing = [p for p in parts if not Path(p).is_dir()]
        raise DataError(f"{s}: not a folder: {missing[0]}\n{describe_accepted()}")
    p = Path(s)
    if not p.exists():
        raise DataError(f"{s}: no such file or folder\n{describe_accepted()}")
    if p.is_dir():
        if _find_metadata([p]) is not None:
            return "ham10000"
        raise DataError(f"{s}: folder has no {METADATA_NAME}\n{describe_accepted()}")
    if p.name == METADATA_NAME:
        return "ham10000"
    if p.suffix.lower() == ".csv":
        return "hmnist_csv"
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = set(z.files)
        except Exception as exc:  # zipfile / OSError / ValueError: all mean unreadable
            raise DataError(f"{s}: not a readable .npz file ({exc})") from exc
        if {"train_images", "train_labels"} <= keys:
            return "dermamnist"
        if {"images", "labels"} <= keys:
            return "npz"
        raise DataError(
            f"{s}: .npz has keys {sorted(keys)}, neither DermaMNIST's nor the canonical ones\n"
            f"{describe_accepted()}"
        )
    raise DataError(f"{s}: unrecognised data file\n{describe_accepted()}")


def load_dataset(
    spec: str | os.PathLike,
    *,
    size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load any accepted SPEC as a canonical Dataset of ``size`` x ``size`` images.

    Args:
        spec: a path or spec string (see the module docstring).
        size: output side length in pixels, 4 to ``MAX_SIZE``; sources at another size are
            resized (LANCZOS).
        cache_dir: where resized HAM10000 arrays are cached (default ``$SKINADV_CACHE_DIR``
            or ``~/.cache/skinadv``).
        progress: optional ``(done, total)`` callback for long loads.

    Returns:
        The Dataset; raises DataError (a ValueError) naming the file and fault on bad input.
    """
    if not 4 <= size <= MAX_SIZE:
        raise DataError(f"image size must be 4 to {MAX_SIZE} pixels, got {size}")
    spec = str(spec)
    kind = detect(spec)
    if kind == "synthetic":
        from skinadv.data.synthetic import parse_synthetic_spec, synthetic

        n, seed = parse_synthetic_spec(spec)
        return synthetic(n=n, size=size, seed=seed)
    if kind == "s3":
        return load_dataset(
            fetch(spec, cache_dir=cache_dir), size=size, cache_dir=cache_dir, progress=progress
        )
    loader = {
        "ham10000": load_ham10000,
        "hmnist_csv": load_hmnist_csv,
        "dermamnist": load_dermamnist,
        "npz": load_npz,
    }[kind]
    if kind == "ham10000":
        return loader(spec, size=size, cache_dir=cache_dir, progress=progress)
    return _resized(loader(spec), size)


# --------------------------------------------------------------------------- HAM10000


def _find_metadata(roots: list[Path]) -> Path | None:
    for root in roots:
        direct = root / METADATA_NAME
        if direct.is_file():
            return direct
    for root in roots:
        for found in sorted(root.rglob(METADATA_NAME)):
            return found
    return None


def _index_images(roots: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots:
        for path in root.rglob("ISIC_*.jpg"):
            found.setdefault(path.stem, path)
    return found


def load_ham10000(
    spec: str,
    *,
    size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """The original HAM10000 layout: metadata CSV + ISIC_*.jpg, resized with LANCZOS.

    Resized arrays are cached on disk, keyed by a hash of the metadata and every image's
    bytes (and the size and resize method), so a second load skips decoding.
    """
    paths = [Path(p) for p in str(spec).split(",") if p]
    if len(paths) == 1 and paths[0].is_file():
        meta_path, roots = paths[0], [paths[0].parent]
    else:
        roots = paths
        meta_path = _find_metadata(roots)
        if meta_path is None:
            raise DataError(f"{spec}: no {METADATA_NAME} found\n{describe_accepted()}")
        if meta_path.parent not in roots:
            roots = [*roots, meta_path.parent]
    meta = _read_metadata(meta_path)
    images_by_id = _index_images(roots)
    paths_in_order: list[Path] = []
    for row, image_id in enumerate(meta["image_id"], start=2):  # row 1 is the header
        path = images_by_id.get(image_id)
        if path is None:
            raise DataError(
                f"{meta_path}: row {row}: image {image_id}.jpg not found under "
                f"{', '.join(map(str, roots))}"
            )
        paths_in_order.append(path)

    h = hashlib.sha256()
    h.update(f"{_RESIZE_VERSION}:{size}:".encode())
    h.update(meta_path.read_bytes())
    blobs: list[bytes] = []
    for path in paths_in_order:
        data = path.read_bytes()
        blobs.append(data)
        h.update(path.name.encode())
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    key = h.hexdigest()[:24]
    cache_path = Path(cache_dir or default_cache_dir()) / f"ham10000-{size}px-{key}.npz"
    labels = np.array([CLASSES.index(dx) for dx in meta["dx"]], dtype=np.int64)
    common = dict(
        kind="ham10000",
        source=str(spec),
        labels=labels,
        image_id=meta["image_id"].to_numpy(dtype=str),
        lesion_id=meta["lesion_id"].to_numpy(dtype=str),
    )
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                images = z["images"]
            if images.shape == (len(meta), size, size, 3):
                log.info("HAM10000: loaded %d resized images from cache %s", len(meta), cache_path)
                return Dataset(images=images, **common)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_path, exc)

    images = empty_images(len(meta), size, where=str(meta_path))
    t0 = time.perf_counter()
    for i, (path, data) in enumerate(zip(paths_in_order, blobs)):
        images[i] = _decode_resize(path, data, size)
        if progress is not None and (i % 200 == 0 or i == len(blobs) - 1):
            progress(i + 1, len(blobs))
    log.info(
        "HAM10000: decoded and resized %d images in %.1fs", len(meta), time.perf_counter() - t0
    )
    try:
        atomic_write_npz(cache_path, images=images)
    except OSError as exc:  # read-only home etc.: still return the data
        log.warning("could not write cache %s (%s)", cache_path, exc)
    return Dataset(images=images, **common)


def _read_metadata(path: Path) -> pd.DataFrame:
    try:
        meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read metadata CSV ({exc})") from exc
    missing = {"image_id", "dx", "lesion_id"} - set(meta.columns)
    if missing:
        raise DataError(f"{path}: metadata lacks column(s) {sorted(missing)}")
    if len(meta) == 0:
        raise DataError(f"{path}: the data set is empty (no metadata rows)")
    for col in ("image_id", "dx", "lesion_id"):
        empty = np.flatnonzero(meta[col].str.strip() == "")
        if empty.size:
            raise DataError(f"{path}: row {int(empty[0]) + 2}: empty {col}")
    bad = np.flatnonzero(~meta["dx"].isin(CLASSES))
    if bad.size:
        r = int(bad[0])
        raise DataError(
            f"{path}: row {r + 2}: dx {meta['dx'].iloc[r]!r} is outside the class set "
            f"({', '.join(CLASSES)})"
        )
    dup = meta["image_id"].duplicated()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}: row {r + 2}: duplicate image_id {meta['image_id'].iloc[r]}")
    return meta


def _decode_resize(path: Path, data: bytes, size: int) -> np.ndarray:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode: truncated files raise here
            rgb = im.convert("RGB")
    except Exception as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


# --------------------------------------------------------------------------- hmnist CSV


def load_hmnist_csv(path: str | os.PathLike) -> Dataset:
    """Kaggle's ``hmnist_S_S_RGB.csv``: 3*S*S pixel columns then ``label`` (hmnist order)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not header or header[-1].strip('"') != "label":
        raise DataError(f"{path}: the last column must be 'label' (hmnist CSV), got {header[-1]!r}")
    n_pix = len(header) - 1
    side = int(round((n_pix / 3) ** 0.5))
    if n_pix == 0 or 3 * side * side != n_pix:
        raise DataError(
            f"{path}: header has {len(header)} columns; an hmnist RGB CSV has 3*S*S pixel "
            f"columns + 'label' (2353 for 28x28)"
        )
    try:
        rows = _hmnist_rows(path, header)
    except UnicodeDecodeError as exc:  # the header was text, a later line is not
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: the data set is empty (no data rows)")
    table = np.stack(rows)
    raw_labels = table[:, -1]
    bad = np.flatnonzero((raw_labels != np.round(raw_labels)) | (raw_labels < 0) | (raw_labels > 6))
    if bad.size:
        raise DataError(
            f"{path}: row {int(bad[0]) + 2}: label {raw_labels[bad[0]]:g} is outside the class "
            f"set 0..6 (hmnist order)"
        )
    pixels = table[:, :-1]
    if pixels.min() < 0 or pixels.max() > 255:
        r = int(np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1))[0])
        raise DataError(f"{path}: row {r + 2}: pixel value outside [0, 255]")
    images = pixels.astype(np.uint8).reshape(-1, side, side, 3)
    labels = HMNIST_TO_CANONICAL[raw_labels.astype(np.int64)]
    return Dataset(images=images, labels=labels, kind="hmnist_csv", source=str(path))


def _hmnist_rows(path: Path, header: list[str]) -> list[np.ndarray]:
    rows: list[np.ndarray] = []
    with open(path, encoding="utf-8") as fh:
        next(fh)
        for lineno, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != len(header):
                raise DataError(
                    f"{path}: row {lineno}: {len(fields)} columns, expected {len(header)}"
                )
            try:
                values = np.array(fields, dtype=np.float64)
            except ValueError as exc:
                raise DataError(f"{path}: row {lineno}: non-numeric value ({exc})") from exc
            if not np.isfinite(values).all():
                col = int(np.flatnonzero(~np.isfinite(values))[0])
                raise DataError(f"{path}: row {lineno}: NaN in column {header[col]!r}")
            rows.append(values)
    return rows


# --------------------------------------------------------------------------- npz sources


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def load_dermamnist(path: str | os.PathLike) -> Dataset:
    """MedMNIST's dermamnist npz; train, val and test concatenated, the split kept."""
    path = Path(path)
    z = _npz_arrays(path)
    images, labels, given, start = [], [], {}, 0
    for part in ("train", "val", "test"):
        if f"{part}_images" not in z:
            continue
        if f"{part}_labels" not in z:
            raise DataError(f"{path}: has {part}_images but no {part}_labels")
        x = to_uint8(z[f"{part}_images"], where=f"{path}[{part}_images]")
        y = to_int_labels(z[f"{part}_labels"], where=f"{path}[{part}_labels]")
        if x.ndim == 3:  # grey-scale MedMNIST variants: repeat to RGB
            x = np.repeat(x[..., None], 3, axis=-1)
        validate_arrays(x, y, where=f"{path}[{part}]")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataError(
                f"{path}[{part}_images]: images of {x.shape[1:]}, but train's are "
                f"{images[0].shape[1:]}"
            )
        images.append(x)
        labels.append(y.astype(np.int64))
        given[part] = np.arange(start, start + len(y))
        start += len(y)
    return Dataset(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        kind="dermamnist",
        source=str(path),
        given_split=given,
    )


def load_npz(path: str | os.PathLike) -> Dataset:
    """The canonical npz (keys of ``ham10000_28x28_rgb.npz``)."""
    path = Path(path)
    z = _npz_arrays(path)
    images = to_uint8(z["images"], where=f"{path}[images]")
    labels = to_int_labels(z["labels"], where=f"{path}[labels]")
    validate_arrays(images, labels, where=str(path))
    return Dataset(
        images=images,
        labels=labels.astype(np.int64),
        kind="npz",
        source=str(path),
        image_id=_ids(z, "image_id", path),
        lesion_id=_ids(z, "lesion_id", path),
    )


def _ids(z: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray | None:
    if key not in z:
        return None
    try:
        return z[key].astype(str)
    except UnicodeDecodeError as exc:  # bytes ids that are not ASCII
        raise DataError(f"{path}[{key}]: ids are not text ({exc})") from exc


def _resized(ds: Dataset, size: int) -> Dataset:
    if ds.size == size:
        return ds
    out = empty_images(len(ds), size, where=ds.source)
    for i, img in enumerate(ds.images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
    from dataclasses import replace

    return replace(ds, images=out)
