"""Where a grid task keeps files: a folder private to its node, never one shared by all.

What tasks hand each other travels without a shared disk:

* data splits and adversarial pools inside the refs (``tasks.refs``): a task returns them,
  and the task runner moves them (Ray's object store under the Ray runner, owned by the
  driver, which made the remote call; plain memory under an in-process runner);
* model weights and the vanilla model's transfer sets through the MLflow artifact store
  (S3 in a cluster), where the task that made them logged them: another task fetches them
  by run id into its node's folder, once per node (``weights``, ``transfer_sets``).

The node's folder is ``$SKINADV_NODE_DIR`` (set per node, e.g. on a local disk), else
``<temp dir>/skinadv-node-<uid>``. It is a cache: files in it are named by the MLflow run
that holds the original (``runs/<run id>/<artifact dir>/``), never rewritten in place, so a
rerun or another node can always rebuild it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from skinadv import tracking

NODE_DIR_ENV = "SKINADV_NODE_DIR"


def node_dir() -> Path:
    """This node's private folder (created): ``$SKINADV_NODE_DIR`` or a per-user temp folder."""
    path = (
        os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir()) / f"skinadv-node-{os.getuid()}"
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(run_id: str, artifact_dir: str) -> Path:
    """Where a run's artifact folder lives in this node's cache (not created)."""
    return node_dir() / "runs" / run_id / artifact_dir


def fetch(run_id: str, artifact_dir: str) -> Path:
    """The run's artifact folder in this node's cache, downloaded from MLflow when absent.

    Concurrent tasks on one node may race: each downloads into its own temp folder and
    renames it into place; the loser drops its copy and uses the winner's."""
    dst = run_dir(run_id, artifact_dir)
    if dst.is_dir():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_dir}-", dir=dst.parent))
    try:
        got = tracking.download_artifact(run_id, artifact_dir, tmp)
        with contextlib.suppress(OSError):  # another task put it there first
            os.replace(got, dst)
        if not dst.is_dir():
            raise FileNotFoundError(f"MLflow run {run_id} has no {artifact_dir}/ folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def only(folder: Path, pattern: str) -> Path:
    """The one file matching ``pattern`` in ``folder``, with a clear error otherwise."""
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one {pattern}, found {len(found)}")
    return found[0]


def weights(run_id: str) -> Path:
    """The run's state dict (``<cell>-<hash>.pt``, its ``.json`` beside it) on this node."""
    return only(fetch(run_id, tracking.WEIGHTS_DIR), "*.pt")


def transfer_sets(run_id: str) -> dict[str, np.ndarray]:
    """The vanilla run's transfer test sets, read from this node's copy."""
    with np.load(only(fetch(run_id, tracking.TRANSFER_DIR), "*.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
