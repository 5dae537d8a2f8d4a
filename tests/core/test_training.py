"""Training loop determinism, data preparation, adversarial pools and augmentation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from skinadv.config import (
    AttackConfig,
    DataConfig,
    FGSMConfig,
    ModelConfig,
    PGDConfig,
    TrainConfig,
    load_preset,
)
from skinadv.training import (
    MIX_FROM_POOLS,
    AdvPool,
    EpochStats,
    adversarial_pool,
    augment,
    fit,
    mix_pool,
    prepare_data,
    select_device,
)

FAST = TrainConfig(epochs=1, batch_size=64, lr=2e-3, seed=5, device="cpu")
ATTACK = AttackConfig(fgsm=FGSMConfig(eps=0.2), pgd=PGDConfig(eps=0.3, alpha=0.2, steps=2))


@pytest.fixture(scope="module")
def small_train(tiny_split):
    """203 real training images (an odd count, so rounding matters)."""
    x, y = tiny_split[0].to_float()
    return x[:203], y[:203]


def test_fit_same_seed_same_weights(small_train):
    a = fit(ModelConfig(width=4), small_train, FAST)
    b = fit(ModelConfig(width=4), small_train, FAST)
    c = fit(ModelConfig(width=4), small_train, FAST.model_copy(update={"seed": 6}))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.model.training


def test_fit_hook_and_result(small_train):
    seen: list[EpochStats] = []
    res = fit(
        "paper_cnn",
        small_train,
        FAST.model_copy(update={"epochs": 2}),
        on_epoch=seen.append,
        model_kwargs={"width": 4},
    )
    assert [s.epoch for s in seen] == [1, 2] and res.history == seen
    assert all(np.isfinite(s.loss) and 0 <= s.train_acc <= 1 and s.seconds > 0 for s in seen)
    assert res.n_train == 203 and res.device == "cpu"
    assert res.model_config["kwargs"] == {"width": 4}
    # clean training: one gradient evaluation per image per epoch, no defence, no guard
    assert res.cost.grad_evals == 2 * 203 and res.cost.forwards == res.cost.guard_evals == 0
    assert res.defence is None and res.kept_epoch == 2 and not res.guard_triggered
    assert set(seen[0].as_dict()) == {"epoch", "loss", "train_acc", "seconds", "lr"}


def test_fit_cost_skips_batches_of_one(small_train):
    x, y = small_train
    res = fit(ModelConfig(width=4), (x[:129], y[:129]), FAST)  # 64 + 64 + 1: the 1 is skipped
    assert res.cost.grad_evals == 128 and res.cost.seconds > 0


def test_fit_learns_on_real_data(tiny_trained):
    hist = tiny_trained.history
    assert hist[-1].loss < hist[0].loss and hist[-1].train_acc > 0.6


def test_fit_rejects_bad_data():
    with pytest.raises(ValueError, match=r"x must be \(N, 3, H, W\)"):
        fit("paper_cnn", (np.zeros((4, 28, 28, 3), np.float32), np.zeros(4)), FAST)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fit("paper_cnn", (np.full((4, 3, 28, 28), 255, np.float32), np.zeros(4)), FAST)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu9")


def test_prepare_data_split_and_oversample(real_ds):
    prep = prepare_data(DataConfig(spec="unused", subset=1000, seed=0, oversample=True), real_ds)
    assert len(prep.train_raw) == 720 and len(prep.val) == 80 and len(prep.test) == 200
    counts = np.bincount(prep.train.labels, minlength=7)
    assert (counts == counts.max()).all()  # balanced by oversampling
    assert prep.fingerprint == real_ds.fingerprint()
    assert not set(prep.test.image_id) & set(prep.train.image_id)
    assert not set(prep.val.image_id) & (set(prep.train.image_id) | set(prep.test.image_id))


@pytest.fixture(scope="module")
def pools(tiny_trained, small_train):
    x, y = small_train
    out = {
        m: adversarial_pool(
            tiny_trained.model,
            x,
            y,
            method=m,
            fraction=0.8,
            attack_cfg=ATTACK,
            seed=3,
            progress=False,
        )
        for m in ("fgsm", "pgd", "mix")
    }
    out["mix_pool"] = mix_pool(out["fgsm"], out["pgd"])  # the grid's mix: composed
    return out


@pytest.mark.parametrize("method", ["fgsm", "pgd", "mix", "mix_pool"])
@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6, 0.8])
def test_augment_adds_round_fraction_n(pools, small_train, method, fraction):
    x, y = small_train
    xa, ya = augment(x, y, pools[method], fraction)
    k = round(fraction * 203)
    assert xa.shape == (203 + k, 3, 28, 28) and ya.shape == (203 + k,)
    assert np.array_equal(xa[:203], x) and np.array_equal(ya[:203], y)
    assert np.array_equal(ya[203:], y[pools[method].indices(fraction)])


@pytest.mark.parametrize("method", ["fgsm", "pgd", "mix", "mix_pool"])
def test_pools_are_nested_and_within_budget(pools, small_train, method):
    x, _ = small_train
    pool = pools[method]
    prev = set()
    for f in (0.2, 0.4, 0.6, 0.8):
        idx = pool.indices(f)
        assert prev <= set(idx.tolist())  # 0.2 inside 0.4 inside 0.6 inside 0.8
        prev = set(idx.tolist())
        xa, _ = pool.take(f, 203)
        assert np.array_equal(xa, pool.x_adv[: len(idx)])
    assert len(set(pool.index.tolist())) == len(pool)  # rows drawn without replacement
    delta = np.abs(pool.x_adv - x[pool.index]).reshape(len(pool), -1).max(1)
    budget = np.where(pool.kinds == "fgsm", 0.2, 0.3)
    assert (delta <= budget + 1e-6).all() and (delta > 0.1).all()
    assert pool.x_adv.min() >= 0 and pool.x_adv.max() <= 1


@pytest.mark.parametrize("method", ["mix", "mix_pool"])
def test_mix_is_half_and_half_in_every_prefix(pools, method):
    pool = pools[method]
    for f in (0.2, 0.4, 0.6, 0.8):
        kinds = pool.kinds[: len(pool.indices(f))]
        assert abs(int((kinds == "fgsm").sum()) - int((kinds == "pgd").sum())) <= 1
    assert set(pools["fgsm"].kinds) == {"fgsm"} and set(pools["pgd"].kinds) == {"pgd"}


def test_pool_same_seed_same_examples(tiny_trained, small_train, pools):
    x, y = small_train
    again = adversarial_pool(
        tiny_trained.model,
        x,
        y,
        method="pgd",
        fraction=0.8,
        attack_cfg=ATTACK,
        seed=3,
        progress=False,
    )
    assert np.array_equal(again.index, pools["pgd"].index)
    assert np.array_equal(again.x_adv, pools["pgd"].x_adv)


def test_mix_pool_takes_the_fgsm_and_pgd_pools_rows(pools):
    fgsm, pgd, crafted, mix = pools["fgsm"], pools["pgd"], pools["mix"], pools["mix_pool"]
    assert (mix.method, mix.fraction, mix.seed, mix.n_train, len(mix)) == ("mix", 0.8, 3, 203, 162)
    # the same seeded rows and kinds as a crafted mix pool
    assert np.array_equal(mix.index, crafted.index) and np.array_equal(mix.index, fgsm.index)
    assert np.array_equal(mix.y, crafted.y) and list(mix.kinds) == list(crafted.kinds)
    even, odd = mix.kinds == "fgsm", mix.kinds == "pgd"
    assert even[::2].all() and odd[1::2].all()
    assert np.array_equal(mix.x_adv[even], fgsm.x_adv[even])
    assert np.array_equal(mix.x_adv[odd], pgd.x_adv[odd])
    # FGSM is deterministic: the crafted mix pool's FGSM rows (to float rounding, which may
    # flip the sign of a near-zero gradient on a rare pixel); PGD's random starts differ
    same = np.isclose(mix.x_adv[even], crafted.x_adv[even], atol=1e-6)
    assert same.mean() > 0.999
    assert not np.allclose(mix.x_adv[odd], crafted.x_adv[odd], atol=1e-3)
    assert mix.attack == {**crafted.attack, "source": MIX_FROM_POOLS}


def test_mix_pool_for_a_smaller_fraction_is_a_prefix(pools):
    small = mix_pool(pools["fgsm"], pools["pgd"], fraction=0.4)
    k = round(0.4 * 203)
    assert small.fraction == 0.4 and len(small) == k
    assert np.array_equal(small.index, pools["mix_pool"].index[:k])
    assert np.array_equal(small.x_adv, pools["mix_pool"].x_adv[:k])
    one = mix_pool(pools["fgsm"], pools["pgd"], fraction=0.004)  # a single (FGSM) row
    assert list(one.kinds) == ["fgsm"] and set(one.attack) == {"fgsm", "source"}


def test_mix_pool_refuses_pools_that_do_not_match(pools):
    fgsm, pgd = pools["fgsm"], pools["pgd"]
    with pytest.raises(ValueError, match="fgsm argument must be a fgsm pool, not pgd"):
        mix_pool(pgd, fgsm)
    with pytest.raises(ValueError, match="pgd argument must be a pgd pool, not mix"):
        mix_pool(fgsm, pools["mix"])
    with pytest.raises(ValueError, match="seed 3 and the pgd pool seed 4"):
        mix_pool(fgsm, dataclasses.replace(pgd, seed=4))
    with pytest.raises(ValueError, match="from 203 training examples and the pgd pool from 300"):
        mix_pool(fgsm, dataclasses.replace(pgd, n_train=300))
    with pytest.raises(
        ValueError,
        match=r"fgsm pool holds fraction 0.8 \(162 examples\); a mix pool of fraction 0.9 needs",
    ):
        mix_pool(fgsm, pgd, fraction=0.9)
    k = round(0.4 * 203)
    half = dataclasses.replace(
        fgsm, fraction=0.4, index=fgsm.index[:k], x_adv=fgsm.x_adv[:k], y=fgsm.y[:k]
    )
    with pytest.raises(ValueError, match=r"fgsm pool holds fraction 0.4 \(81 examples\)"):
        mix_pool(half, pgd, fraction=0.8)
    assert len(mix_pool(half, pgd)) == k  # by default, the smaller pool's fraction
    shuffled = dataclasses.replace(pgd, index=pgd.index[::-1].copy())
    with pytest.raises(ValueError, match="index mismatch"):
        mix_pool(fgsm, shuffled)
    with pytest.raises(ValueError, match="labels differ"):
        mix_pool(fgsm, dataclasses.replace(pgd, y=(pgd.y + 1) % 7))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        mix_pool(fgsm, pgd, fraction=0.0)


def test_a_composed_mix_pool_keys_its_cells_apart():
    """Cells trained on a composed mix pool (other PGD starts) are not reused as crafted
    ones, nor the other way round; crafted pools keep the hash they always had."""
    from skinadv import experiment as exp

    cfg = load_preset("quick")
    args = ("v" * 16, cfg, "mix", 0.4, 0, 0.8)
    recipe = exp.pool_recipe(["fgsm", "pgd", "mix"], "mix")
    assert recipe == MIX_FROM_POOLS
    assert exp.cell_hash(*args, pool_recipe=recipe) != exp.cell_hash(*args)
    assert exp.pool_recipe(["pgd", "mix"], "mix") is None
    assert exp.pool_recipe(["fgsm", "pgd", "mix"], "pgd") is None
    assert exp.cell_hash(*args) == exp.cell_hash(*args, pool_recipe=None)


def test_pool_save_load(pools, tmp_path):
    path = pools["mix"].save(tmp_path / "pool.npz")
    back = AdvPool.load(path)
    assert back.method == "mix" and back.n_train == 203 and back.attack == pools["mix"].attack
    assert np.array_equal(back.x_adv, pools["mix"].x_adv)
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.2])
def test_bad_fraction(tiny_trained, small_train, fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        adversarial_pool(
            tiny_trained.model, *small_train, method="fgsm", fraction=fraction, attack_cfg=ATTACK
        )


def test_bad_method_and_take(tiny_trained, small_train, pools):
    with pytest.raises(ValueError, match="unknown adversarial training method 'bim'"):
        adversarial_pool(
            tiny_trained.model, *small_train, method="bim", fraction=0.2, attack_cfg=ATTACK
        )
    with pytest.raises(ValueError, match="craft for the largest fraction"):
        pools["fgsm"].take(0.9)
    with pytest.raises(ValueError, match="crafted from 203"):
        pools["fgsm"].take(0.2, 500)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        augment(*small_train, pools["fgsm"], 0.0)
