"""What the grid's tasks hand each other: small frozen dataclasses (ids, paths, results).

Big arrays (data splits, transfer sets, pools, weights) stay in files under the grid's
work folder; a ref names the file and, where one exists, the MLflow run that holds a copy,
so a task that finds the file missing downloads it instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skinadv.data import Dataset, load_dataset
from skinadv.results import ModelResult


@dataclass(frozen=True)
class GridRun:
    """One grid invocation: where it logs and keeps its files.

    Args:
        experiment: the MLflow experiment.
        parent_run_id: the grid's MLflow parent run (children are nested under it).
        workdir: folder for data splits, transfer sets, pools and weights.
        out_dir: folder for the report.
        force: retrain even when a complete run with the same config hash exists.
    """

    experiment: str
    parent_run_id: str
    workdir: str
    out_dir: str
    force: bool = False

    def path(self, *parts: str) -> Path:
        p = Path(self.workdir).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def weights(self, cell: str, config_hash: str) -> Path:
        """Where a model's state dict lives in the work folder (trained here or fetched)."""
        return self.path("models", f"{cell}-{config_hash}.pt")


@dataclass(frozen=True)
class DataRef:
    """The prepared split: canonical npz files + what identifies it."""

    train: str
    test: str
    fingerprint: str
    kind: str
    source: str
    n_train: int
    n_test: int
    val: str | None = None  # the validation split (held out from the training side)
    n_val: int = 0
    size: int = 28  # the image side the files were written at (``data.size``)

    def load(self, side: str) -> Dataset:
        """One side of the split (``train``, ``val``, ``test``) as written: at its own size,
        never resized to the loader's default."""
        return load_dataset(getattr(self, side), size=self.size)

    def summary(self) -> dict[str, int | str]:
        return {
            "fingerprint": self.fingerprint,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
        }


@dataclass(frozen=True)
class TrainedModel:
    """A trained (or reused) model: its scores, its MLflow run and where its weights are.

    Args:
        result: its scores under both protocols (``result.run_id`` is its MLflow run).
        config_hash: keys reuse (``skinadv.experiment.vanilla_hash`` / ``cell_hash``).
        weights: the state dict file in the work folder (downloaded from the run if absent).
        transfer: for the vanilla model, its transfer test sets (npz) in the work folder.
        reused: found complete in MLflow rather than trained by this grid.
    """

    result: ModelResult
    config_hash: str
    weights: str
    transfer: str | None = None
    reused: bool = False

    @property
    def run_id(self) -> str:
        assert self.result.run_id is not None
        return self.result.run_id

    @property
    def label(self) -> str:
        """``pgd@0.8 s0``: how it is named in the Prefect UI and the progress table."""
        return f"{self.result.cell} s{self.result.seed}"


@dataclass(frozen=True)
class Pool:
    """One method's adversarial pool file (None path: every cell of it was reused)."""

    method: str
    seed: int
    path: str | None
