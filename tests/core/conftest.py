"""Shared fixtures for the core tests: real data (the canonical 28x28 npz) and a tiny model.

Real data comes from ``tests/conftest.py``'s ``real_npz`` (``SKINADV_HAM10000``, default
``../shared/data/ham10000``). CI always has it, so a missing file fails instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skinadv.config import TrainConfig
from skinadv.data import Dataset, load_dataset, split, stratified_subset
from skinadv.training import TrainResult, fit

NPZ_NAME = "ham10000_28x28_rgb.npz"


@pytest.fixture(scope="session")
def ham_npz(real_npz: Path) -> Path:
    """The canonical 28x28 npz of all 10015 real HAM10000 images (``real_npz`` checked)."""
    if not real_npz.is_file():
        pytest.fail(
            f"real HAM10000 data not found: {real_npz} is missing. Set "
            f"SKINADV_HAM10000 to the folder holding {NPZ_NAME} (CI always has it)."
        )
    return real_npz


@pytest.fixture(scope="session")
def real_ds(ham_npz: Path) -> Dataset:
    ds = load_dataset(ham_npz)
    assert len(ds) == 10015 and not ds.synthetic
    return ds


@pytest.fixture(scope="session")
def tiny_split(real_ds: Dataset) -> tuple[Dataset, Dataset]:
    """A 2500-image stratified real subset split 80/20 (2000 train / 500 test)."""
    return split(stratified_subset(real_ds, 2500, seed=0), test_size=0.2, seed=0)


TINY_TRAIN = TrainConfig(epochs=3, batch_size=64, lr=2e-3, seed=0, device="cpu")


@pytest.fixture(scope="session")
def tiny_trained(tiny_split: tuple[Dataset, Dataset]) -> TrainResult:
    """A narrow paper CNN trained for 3 epochs on 2000 real images (a few seconds)."""
    train, _ = tiny_split
    return fit("paper_cnn", train, TINY_TRAIN, model_kwargs={"width": 16})


@pytest.fixture(scope="session")
def tiny_test(tiny_split: tuple[Dataset, Dataset]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = tiny_split[1].to_float()
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture
def rand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 3, 28, 28, generator=g), torch.randint(0, 7, (12,), generator=g)


@pytest.fixture
def small_model() -> torch.nn.Module:
    """An untrained narrow CNN (eval mode) for shape / bound tests."""
    from skinadv.models import create_model

    torch.manual_seed(0)
    return create_model("paper_cnn", width=4).eval()
