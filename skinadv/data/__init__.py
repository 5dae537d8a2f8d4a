"""Data layer: sources, the canonical Dataset, splits and oversampling."""

from skinadv.data.dataset import (
    CLASSES,
    HMNIST_CLASSES,
    HMNIST_TO_CANONICAL,
    NUM_CLASSES,
    DataError,
    Dataset,
)
from skinadv.data.sources import ACCEPTED_FORMS, detect, load_dataset
from skinadv.data.split import oversample, split, stratified_subset
from skinadv.data.synthetic import synthetic

__all__ = [
    "ACCEPTED_FORMS",
    "CLASSES",
    "HMNIST_CLASSES",
    "HMNIST_TO_CANONICAL",
    "NUM_CLASSES",
    "DataError",
    "Dataset",
    "detect",
    "load_dataset",
    "oversample",
    "split",
    "stratified_subset",
    "synthetic",
]
