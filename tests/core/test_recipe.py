"""The training recipe: learning-rate schedules, training-time flips, bf16 training, N-FGSM."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from skinadv.config import DefenceConfig, ModelConfig, TrainConfig, load_preset
from skinadv.models import create_model
from skinadv.training import adversarial_pool, fit
from skinadv.training.defences import n_fgsm_example, n_fgsm_loss
from skinadv.training.recipe import final_lr, flip_batch, lr_scheduler, steps_per_epoch

FAST = TrainConfig(epochs=2, batch_size=64, lr=2e-3, seed=5, device="cpu")


@pytest.fixture(scope="module")
def small_train(tiny_split):
    x, y = tiny_split[0].to_float()
    return x[:203], y[:203]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedule_peaks_at_lr_and_reaches_its_final_lr(schedule):
    cfg = TrainConfig(lr=4e-3, schedule=schedule, warmup=0.25, epochs=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=cfg.lr)
    total = 3 * steps_per_epoch(2000, 64)
    sched = lr_scheduler(opt, cfg, total)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(cfg.lr, rel=0.01)  # the peak falls between two steps
    assert 0 < peak < total  # a warm-up, then an anneal
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(lrs[: peak + 1]))  # warm-up rises
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(lrs[peak:]))  # anneal falls
    assert lrs[-1] == pytest.approx(final_lr(cfg), abs=1e-9)
    assert final_lr(cfg) < cfg.lr / 1000


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("warmup", [0.0, 0.25, 0.9])
def test_a_run_of_a_few_steps_warms_up_and_anneals_without_error(schedule, warmup):
    """One epoch of a few batches (OneCycleLR divided by zero when a phase had no step)."""
    for total in range(1, 12):
        cfg = TrainConfig(lr=4e-3, schedule=schedule, warmup=warmup)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=cfg.lr)
        sched = lr_scheduler(opt, cfg, total)
        lrs = []
        for _ in range(total):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        assert max(lrs) <= cfg.lr * (1 + 1e-9) and lrs[-1] < cfg.lr, (total, lrs)


def test_fit_ends_at_the_final_lr_and_constant_keeps_it(small_train):
    hist = {}
    for schedule in ("constant", "onecycle"):
        cfg = FAST.model_copy(update={"schedule": schedule})
        res = fit(ModelConfig(width=4), small_train, cfg)
        hist[schedule] = [s.lr for s in res.history]
        assert res.history[-1].lr == pytest.approx(final_lr(cfg), abs=1e-9)
    assert hist["constant"] == [FAST.lr, FAST.lr]
    assert hist["onecycle"][0] > hist["onecycle"][1]


def test_steps_per_epoch_skips_a_batch_of_one():
    assert steps_per_epoch(128, 64) == 2
    assert steps_per_epoch(129, 64) == 2  # the last batch of one is skipped by fit
    assert steps_per_epoch(130, 64) == 3


def test_flip_batch_gives_each_image_one_of_its_four_orientations():
    x = torch.rand(400, 3, 5, 5)
    out = flip_batch(x, torch.Generator().manual_seed(0))
    assert not torch.equal(out, x) and torch.equal(x, x.clone())
    kinds = []
    for a, b in zip(x, out):
        options = [a, a.flip(2), a.flip(1), a.flip(1).flip(2)]
        matches = [i for i, o in enumerate(options) if torch.equal(o, b)]
        assert matches, "an output image is no flip of its input"
        kinds.append(matches[0])
    counts = np.bincount(kinds, minlength=4)
    assert (counts > 60).all(), counts  # each orientation about 1/4 of the time
    again = flip_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


class _Spy(torch.nn.Module):
    """Records every batch the wrapped model sees, with its mode."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, torch.Tensor]] = []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.inner(x)


def _rows_of(batch: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """For each image of ``batch``, whether it is exactly some row of ``x``."""
    flat = x.reshape(x.shape[0], -1)
    return np.array([bool((flat == b.reshape(-1)).all(1).any()) for b in batch])


def test_flips_happen_in_training_only(small_train):
    x, y = small_train
    x, y = torch.as_tensor(x[:96]), torch.as_tensor(y[:96])
    seen = {}
    for augment in ("none", "flips"):
        torch.manual_seed(0)
        spy = _Spy(create_model("paper_cnn", width=4))
        res = fit(spy, (x, y), FAST.model_copy(update={"augment": augment, "epochs": 1}))
        train_batches = [b for training, b in spy.seen if training]
        seen[augment] = np.concatenate([_rows_of(b, x) for b in train_batches])
        # scoring: the trained model sees the images as given (no flips outside fit)
        spy.seen.clear()
        res.model(x)
        assert _rows_of(spy.seen[0][1], x).all()
    assert seen["none"].all()
    assert seen["flips"].mean() < 0.5  # about 3/4 of the images were flipped
    # pools and attacks see unflipped images: each adversarial row lies within eps of its
    # original, which a flipped image would not
    attack = load_preset("quick").attack
    pool = adversarial_pool(
        res.model.inner, x, y, method="fgsm", fraction=0.5, attack_cfg=attack, seed=0
    )
    orig = x[torch.as_tensor(pool.index)]
    assert float((torch.as_tensor(pool.x_adv) - orig).abs().amax()) <= attack.fgsm.eps + 1e-6


def test_bf16_training_learns_like_fp32(small_train):
    # weights stay float32; the loss falls under bf16 autocast as it does in float32
    res = {
        p: fit(ModelConfig(width=4), small_train, FAST.model_copy(update={"precision": p}))
        for p in ("fp32", "bf16")
    }
    for r in res.values():
        assert all(
            t.dtype == torch.float32 for t in r.model.state_dict().values() if t.is_floating_point()
        )
        assert r.history[-1].loss < r.history[0].loss * 1.05
    assert abs(res["bf16"].history[-1].loss - res["fp32"].history[-1].loss) < 0.3


def test_n_fgsm_step_noise_bound_and_no_projection(rand_batch, small_model):
    x, y = rand_batch
    eps = 8 / 255
    d = DefenceConfig(method="n-fgsm", eps=eps)
    assert d.step_size() == pytest.approx(eps) and d.noise == 2.0
    x_adv = n_fgsm_example(small_model.eval(), x, y, d, torch.Generator().manual_seed(0))
    delta = (x_adv - x).abs()
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    assert float(delta.max()) <= 3 * eps + 1e-6  # noise 2 eps + a step of eps
    assert float(delta.max()) > 1.5 * eps  # not projected back to the eps-ball
    # noise alone is bounded by 2 eps: with a zero step, what is left is the noise
    no_step = n_fgsm_example(
        small_model, x, y, d.model_copy(update={"alpha": 0.0}), torch.Generator().manual_seed(0)
    )
    assert float((no_step - x).abs().max()) <= 2 * eps + 1e-6
    assert float((no_step - x).abs().max()) > eps  # noise wider than the budget
    # no noise: plain FGSM from x (clamped to the image range)
    fgsm_like = n_fgsm_example(
        small_model, x, y, d.model_copy(update={"noise": 0.0}), torch.Generator().manual_seed(0)
    )
    assert torch.allclose((fgsm_like - x).abs().amax(), torch.tensor(eps), atol=1e-6)


def test_n_fgsm_costs_two_gradient_evaluations_per_image(rand_batch, small_model):
    x, y = rand_batch
    out = n_fgsm_loss(
        small_model.train(),
        x,
        y,
        DefenceConfig(method="n-fgsm", eps=2 / 255),
        torch.Generator().manual_seed(0),
    )
    assert out.grad_evals == 2 * x.shape[0] and out.loss.requires_grad
