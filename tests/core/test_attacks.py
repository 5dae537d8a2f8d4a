"""Attacks: parametrized over ATTACKS (shape, range, bound, determinism), plus the
properties that matter for the paper's numbers, checked on a model trained on real data."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from skinadv.attacks import ATTACKS, _l2_project, _linf_project, craft, fgsm, pgd
from skinadv.evaluation import score

#: small settings per attack; a new attack gets an eps-only default and is checked too
KWARGS: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.1},
    "pgd": {"eps": 0.1, "alpha": 0.03, "steps": 3},
    "mifgsm": {"eps": 0.1, "steps": 3},
    "apgd_ce": {"eps": 0.1, "steps": 5},
    "apgd_dlr": {"eps": 0.1, "steps": 5},
    "apgd_t": {"eps": 0.1, "steps": 5},
}


def kwargs_for(name: str, **over: Any) -> dict[str, Any]:
    return {**KWARGS.get(name, {"eps": 0.1}), **over}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_shape_range_bound(name, small_model, rand_batch):
    x, y = rand_batch
    x_adv = ATTACKS[name](small_model, x, y, **kwargs_for(name))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert (x_adv - x).abs().max() > 0.05  # it did move


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_deterministic_under_seed(name, small_model, rand_batch):
    x, y = rand_batch
    a = craft(small_model, x, y, name, batch_size=5, seed=3, **kwargs_for(name))
    b = craft(small_model, x, y, name, batch_size=5, seed=3, **kwargs_for(name))
    assert torch.equal(a, b)


def test_random_start_depends_on_seed(small_model, rand_batch):
    x, y = rand_batch
    a = craft(small_model, x, y, "pgd", seed=1, **kwargs_for("pgd"))
    b = craft(small_model, x, y, "pgd", seed=2, **kwargs_for("pgd"))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_eps_zero_is_identity(name, small_model, rand_batch):
    x, y = rand_batch
    assert torch.equal(ATTACKS[name](small_model, x, y, **kwargs_for(name, eps=0.0)), x)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_craft_leaves_mode_and_grads_alone(name, small_model, rand_batch):
    x, y = rand_batch
    model = small_model.train()
    model.fc.eval()  # a mixed-mode model: each submodule's mode must come back
    for p in model.parameters():
        p.grad = None
    bn = model.features[1]
    stats = bn.running_mean.clone()
    craft(model, x, y, name, **kwargs_for(name))
    assert model.training and not model.fc.training and model.features[0].training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, stats)  # eval() during the attack: BN stats frozen


def test_pgd_one_step_equals_fgsm(small_model, rand_batch):
    x, y = rand_batch
    a = fgsm(small_model, x, y, eps=0.05)
    b = pgd(small_model, x, y, eps=0.05, alpha=0.05, steps=1, random_start=False)
    assert torch.equal(a, b)


def test_l2_pgd_stays_in_ball(small_model, rand_batch):
    x, y = rand_batch
    x_adv = pgd(
        small_model,
        x,
        y,
        eps=0.5,
        alpha=0.2,
        steps=4,
        norm="l2",
        generator=torch.Generator().manual_seed(0),
    )
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-5).all() and norms.max() > 0.1
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_projections():
    x = torch.full((2, 3, 4, 4), 0.5)
    far = x + torch.randn(2, 3, 4, 4)
    assert (_linf_project(far, x, 0.1) - x).abs().max() <= 0.1 + 1e-7
    d = (_l2_project(far, x, 0.3) - x).flatten(1).norm(dim=1)
    assert (d <= 0.3 + 1e-6).all()
    near = x + 0.01
    assert torch.allclose(_l2_project(near, x, 10.0), near)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x, y: fgsm(m, x, y, eps=-0.1), "eps must be >= 0"),
        (lambda m, x, y: pgd(m, x, y, eps=-1, alpha=0.1, steps=2), "eps must be >= 0"),
        (
            lambda m, x, y: pgd(m, x, y, eps=0.1, alpha=0.1, steps=0),
            "steps must be an integer >= 1",
        ),
        (lambda m, x, y: pgd(m, x, y, eps=0.1, alpha=0.1, steps=2, restarts=0), "restarts must"),
        (lambda m, x, y: pgd(m, x, y, eps=0.1, alpha=0.1, steps=2, norm="l1"), "unknown norm 'l1'"),
        (lambda m, x, y: ATTACKS["mifgsm"](m, x, y, eps=0.1, steps=0), "steps must"),
        (lambda m, x, y: craft(m, x, y, "cw", eps=0.1), "unknown attack 'cw'; choose one of fgsm"),
        (lambda m, x, y: craft(m, x, y, "fgsm", eps=-0.5), "eps must be >= 0"),
    ],
)
def test_bad_arguments(call, message, small_model, rand_batch):
    with pytest.raises(ValueError, match=message):
        call(small_model, *rand_batch)


def test_targeted_moves_towards_target(small_model, rand_batch):
    x, y = rand_batch
    target = torch.full_like(y, 3)
    with torch.no_grad():
        before = small_model(x).log_softmax(-1)[:, 3].mean()
        x_adv = pgd(
            small_model, x, y, eps=0.3, alpha=0.05, steps=10, random_start=False, target=target
        )
        after = small_model(x_adv).log_softmax(-1)[:, 3].mean()
    assert after > before


def test_craft_progress_callback_and_numpy(small_model, rand_batch):
    x, y = rand_batch
    seen = []
    out = craft(
        small_model,
        x.numpy(),
        y.numpy(),
        "fgsm",
        batch_size=5,
        eps=0.1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(5, 12), (10, 12), (12, 12)]
    assert isinstance(out, torch.Tensor) and out.shape == x.shape


# ----------------------------------------------------------------- on a model trained on real data


def test_trained_model_beats_chance(tiny_trained, tiny_test):
    x, y = tiny_test
    assert score(tiny_trained.model, x, y)["accuracy"] > 0.6


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_robust_accuracy_not_above_clean(name, tiny_trained, tiny_test):
    x, y = tiny_test
    model = tiny_trained.model
    clean = score(model, x, y)["accuracy"]
    x_adv = craft(model, x, y, name, seed=0, **kwargs_for(name, eps=4 / 255))
    assert score(model, x_adv, y)["accuracy"] < clean


def test_pgd_stronger_than_fgsm_at_same_eps(tiny_trained, tiny_test):
    x, y = tiny_test
    model = tiny_trained.model
    eps = 2 / 255
    acc_fgsm = score(model, craft(model, x, y, "fgsm", eps=eps), y)["accuracy"]
    acc_pgd = score(model, craft(model, x, y, "pgd", eps=eps, alpha=eps / 4, steps=10, seed=0), y)[
        "accuracy"
    ]
    assert acc_pgd < acc_fgsm
    assert acc_fgsm < score(model, x, y)["accuracy"]


def test_restarts_never_worse(tiny_trained, tiny_test):
    x, y = tiny_test
    model = tiny_trained.model
    # one batch: the first of the three restarts then starts where the single run does
    kw = {"eps": 2 / 255, "alpha": 1 / 255, "steps": 3, "batch_size": len(x)}
    one = score(model, craft(model, x, y, "pgd", seed=0, restarts=1, **kw), y)["accuracy"]
    three = score(model, craft(model, x, y, "pgd", seed=0, restarts=3, **kw), y)["accuracy"]
    assert three <= one


def test_attack_copy_is_the_same_function(tiny_trained, tiny_test):
    """craft's attack_copy folds BatchNorm away, freezes its own weights and goes
    channels-last, but computes the trained model's logits; the model itself is untouched."""
    from skinadv.attacks._common import attack_copy

    model = tiny_trained.model.eval()
    x = tiny_test[0][:64]
    fast = attack_copy(model)
    assert fast is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        want = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    model.train()
    try:
        assert attack_copy(model) is model  # BatchNorm cannot be folded in train mode
    finally:
        model.eval()


def test_attack_copy_leaves_models_in_other_threads_alone(tiny_trained, tiny_test):
    """Making attack copies while another thread trains or scores a model (the thread-pool
    task runner runs a pool's crafting beside a cell's training): no error in either. An
    fx-traced fold patched ``nn.Module.__call__`` process-wide and broke the other thread's
    forward passes with ``NameError: module is not installed as a submodule``."""
    import threading

    from skinadv.attacks._common import attack_copy
    from skinadv.models import paper_cnn

    model = tiny_trained.model.eval()
    other = paper_cnn(width=4)
    x = tiny_test[0][:8]
    errors: list[BaseException] = []
    stop = threading.Event()

    def forward_loop() -> None:
        try:
            while not stop.is_set():
                other(x)
        except BaseException as exc:  # noqa: BLE001 - what the other thread saw
            errors.append(exc)

    t = threading.Thread(target=forward_loop)
    t.start()
    try:
        for _ in range(200):
            attack_copy(model)
    finally:
        stop.set()
        t.join()
    assert errors == []


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bf16_craft_stays_in_ball(name, small_model, rand_batch):
    """Under bfloat16 autocast the images themselves stay float32: in [0, 1], within eps,
    moved; the model's mode comes back as with float32."""
    x, y = rand_batch
    x_adv = craft(small_model, x, y, name, seed=0, precision="bf16", **kwargs_for(name))
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert (x_adv - x).abs().max() > 0.05
    assert not small_model.training


def test_bf16_pgd_as_strong_as_fp32(tiny_trained, tiny_test):
    """Same images, seed and random starts: bf16's PGD fools about the same images as
    float32's (an attack whose bf16 gradient were noise would leave accuracy near clean)."""
    model = tiny_trained.model.eval()
    x, y = tiny_test[0][:200], tiny_test[1][:200]
    kw = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "batch_size": 200, "seed": 0}
    clean = score(model, x, y)["accuracy"]
    fp32 = score(model, craft(model, x, y, "pgd", **kw), y)["accuracy"]
    bf16 = score(model, craft(model, x, y, "pgd", precision="bf16", **kw), y)["accuracy"]
    assert bf16 < clean - 0.15, (clean, fp32, bf16)
    assert abs(bf16 - fp32) <= 0.03, (fp32, bf16)  # 6 of 200 images


def test_precision_checked(small_model, rand_batch):
    from skinadv.attacks.craft import bf16_supported

    x, y = rand_batch
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        craft(small_model, x, y, "fgsm", eps=0.1, precision="fp16")
    assert isinstance(bf16_supported("cpu"), bool)
    assert bf16_supported("meta") is False
