"""Small file helpers: the cache folder and atomic writes (nothing is left half-written)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    """The cache root: ``$SKINADV_CACHE_DIR``, else ``~/.cache/skinadv``.

    Returns:
        The folder under which resized images and ``s3://`` downloads are cached.
    """
    return Path(os.environ.get("SKINADV_CACHE_DIR") or Path.home() / ".cache" / "skinadv")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_npz(
    path: str | os.PathLike, *, compress: bool = True, **arrays: np.ndarray
) -> Path:
    """Write ``arrays`` to ``path`` via a temp file + rename (``np.savez_compressed``, or
    ``np.savez`` with ``compress=False`` for float data that does not compress)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
