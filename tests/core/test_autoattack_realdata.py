"""On a trained real-data defence, the AutoAttack figure ``skinadv verify`` reports (and logs
as ``autoattack_<eps>_accuracy``) equals the reference package's own
``run_standard_evaluation`` within 0.5 points. Standard version throughout: Square keeps
its 5000 queries, the targeted attacks the 6 other classes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from skinadv.config import DefenceConfig, TrainConfig
from skinadv.data import Dataset, oversample, split, stratified_subset
from skinadv.evaluation.autoattack import make_adversary, stratified_indices, verify
from skinadv.evaluation.metrics import metrics
from skinadv.evaluation.verify_report import VerifiedModel
from skinadv.training import fit

EPS = 2 / 255
N_IMAGES = 60  # AutoAttack's cost is mostly per iteration, so few images save little


@pytest.mark.realdata
def test_reported_autoattack_figure_is_the_reference_one(real_ds: Dataset):
    train, test = split(stratified_subset(real_ds, 1500, seed=0), test_size=0.2, seed=0)
    # a small PGD-AT model: 600 real images, balanced by oversampling, 2 epochs, width 8
    model = fit(
        "paper_cnn",
        oversample(stratified_subset(train, 600, seed=0), seed=0),
        TrainConfig(epochs=2, batch_size=64, lr=4e-3, schedule="onecycle", seed=0, device="cpu"),
        model_kwargs={"width": 8},
        defence=DefenceConfig(method="pgd-at", eps=EPS, steps=3),
    ).model
    x_all, y_all = test.to_float()
    idx = stratified_indices(y_all, N_IMAGES, seed=0)
    x, y = torch.from_numpy(x_all[idx]), torch.from_numpy(y_all[idx])

    t0 = time.perf_counter()
    (c,) = verify(model, x, y, [EPS], lambda name, eps: {"eps": eps, "steps": 10,
                  "alpha": 2.5 * eps / 10}, ["pgd"])  # fmt: skip
    ours_s = time.perf_counter() - t0
    reported = VerifiedModel("pgd-at@2_255", 0, None, "test", (c,), c.autoattack.seconds).metrics()

    t0 = time.perf_counter()
    _, y_ref = make_adversary(model, EPS).run_standard_evaluation(x, y, batch_size=500)
    ref_s = time.perf_counter() - t0
    ref = metrics(y.numpy(), y_ref.numpy())

    print(f"AutoAttack on {N_IMAGES} images: ours {ours_s:.0f} s, reference {ref_s:.0f} s")
    clean = c.autoattack.after["clean"]
    assert 0.05 < ref["accuracy"] < clean  # a model that is neither constant nor broken
    assert abs(100 * (reported["autoattack_2_255_accuracy"] - ref["accuracy"])) <= 0.5
    assert (
        abs(100 * (reported["autoattack_2_255_balanced_accuracy"] - ref["balanced_accuracy"]))
        <= 0.5
    )
    assert np.array_equal(c.autoattack.pred, y_ref.numpy())  # deterministic on the CPU
