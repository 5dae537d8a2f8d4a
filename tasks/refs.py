"""What the grid's tasks hand each other: small frozen dataclasses, and the arrays no
other store holds.

Nothing here is a path: a task's files stay in its node's folder (``tasks.store``). The
data splits and adversarial pools travel inside these refs (through Ray's object store
under the Ray runner); model weights and transfer sets are named by their MLflow run and
fetched from its artifacts (``tasks.store.weights``, ``tasks.store.transfer_sets``).
"""

from __future__ import annotations

from dataclasses import dataclass

from skinadv.data import Dataset
from skinadv.results import ModelResult
from skinadv.training import AdvPool


@dataclass(frozen=True)
class GridRun:
    """One grid invocation: where it logs.

    Args:
        experiment: the MLflow experiment.
        parent_run_id: the grid's MLflow parent run (children are nested under it).
        force: retrain even when a complete run with the same config hash exists.
    """

    experiment: str
    parent_run_id: str
    force: bool = False


@dataclass(frozen=True, eq=False)
class DataRef:
    """The prepared split, its arrays included, and what identifies it."""

    train: Dataset
    test: Dataset
    fingerprint: str
    kind: str
    source: str
    val: Dataset | None = None  # the validation split (held out from the training side)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)

    @property
    def n_val(self) -> int:
        return 0 if self.val is None else len(self.val)

    def load(self, side: str) -> Dataset:
        """One side of the split (``train``, ``val``, ``test``), at the size it was prepared."""
        return getattr(self, side)

    def summary(self) -> dict[str, int | str]:
        return {
            "fingerprint": self.fingerprint,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
        }


@dataclass(frozen=True)
class TrainedModel:
    """A trained (or reused) model: its scores and its MLflow run, which holds its weights
    (and, for the vanilla model, its transfer sets).

    Args:
        result: its scores under both protocols (``result.run_id`` is its MLflow run).
        config_hash: keys reuse (``skinadv.experiment.vanilla_hash`` / ``cell_hash``).
        reused: found complete in MLflow rather than trained by this grid.
    """

    result: ModelResult
    config_hash: str
    reused: bool = False

    @property
    def run_id(self) -> str:
        assert self.result.run_id is not None
        return self.result.run_id

    @property
    def label(self) -> str:
        """``pgd@0.8 s0``: how it is named in the Prefect UI and the progress table."""
        return f"{self.result.cell} s{self.result.seed}"


@dataclass(frozen=True, eq=False)
class Pool:
    """One method's adversarial pool (None: every cell of the method was reused)."""

    method: str
    seed: int
    pool: AdvPool | None
