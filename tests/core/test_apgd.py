"""APGD-CE / APGD-DLR / APGD-T: the loss and schedule pieces, then the numbers on a model
trained on real data, cross-checked against torchattacks' independent APGD, against fra31's
own APGD-T (``APGDAttack_targeted``) and against our PGD.

torchattacks is installed with ``pip install --no-deps torchattacks==3.5.1`` (``make setup``
does it; its pins would make pip backtrack for minutes). Its ``__init__`` imports scipy but
not torchvision, so the plain import works beside our torch. fra31/auto-attack is PyPI's
``pyautoattack==0.2.0`` (``pip install --no-deps``), imported as ``pyautoattack``. Run with
``-s`` to see the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from skinadv.attacks import ATTACKS, apgd_ce, apgd_dlr, apgd_t, craft, dlr_loss, dlr_targeted_loss
from skinadv.attacks.apgd import _checkpoints
from skinadv.attacks.apgd_t import _top_other_classes
from skinadv.config import AttackConfig, TrainConfig
from skinadv.data import Dataset, split, stratified_subset
from skinadv.evaluation import predict, score
from skinadv.training import fit

EPS = (2 / 255, 8 / 255)
# half the paper's 100 (same step-size schedule, checkpoints at the same fractions), for
# ours and the references alike: the cross-checks compare implementations, not budgets
STEPS = 50
PGD_STEPS = 20


def test_dlr_loss_definition():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0], [1.0, 5.0, 2.0, -1.0]])
    y = torch.tensor([0, 0])
    # right: -(4 - 3) / (4 - 1); wrong: -(1 - 5) / (5 - 1)
    assert torch.allclose(dlr_loss(z, y), torch.tensor([-1 / 3, 1.0]))
    # positive exactly when misclassified; unchanged by shifting and rescaling the logits
    assert torch.allclose(dlr_loss(3 * z + 7, y), dlr_loss(z, y))
    with pytest.raises(ValueError, match="needs >= 3 classes"):
        dlr_loss(torch.zeros(2, 2), y)


def test_dlr_targeted_loss_definition():
    z = torch.tensor([[4.0, 1.0, 3.0, 0.0, 2.0], [1.0, 5.0, 2.0, -1.0, 0.0]])
    y, t = torch.tensor([0, 0]), torch.tensor([2, 1])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): -(4 - 3) / (4 - 1.5); -(1 - 5) / (5 - 0.5)
    assert torch.allclose(dlr_targeted_loss(z, y, t), torch.tensor([-1 / 2.5, 4 / 4.5]))
    # positive exactly when the target beats the true class; shift- and scale-invariant
    assert torch.allclose(dlr_targeted_loss(3 * z + 7, y, t), dlr_targeted_loss(z, y, t))
    assert dlr_targeted_loss(z, y, torch.tensor([0, 0])).eq(0).all()
    with pytest.raises(ValueError, match="needs >= 4 classes"):
        dlr_targeted_loss(torch.zeros(2, 3), y, t)


class _PixelLogits(torch.nn.Module):
    """Logits = the first 7 values of the image: targets that can be read off the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :7] * 10


def test_targets_are_the_other_classes_by_clean_logit():
    x = torch.zeros(2, 3, 28, 28)
    x[:, 0, 0, :7] = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.4])
    y = torch.tensor([1, 4])  # right, and wrong (the model says 1)
    model = _PixelLogits()
    got = _top_other_classes(model, x, y, 6)
    assert got.tolist() == [[4, 2, 6, 3, 5, 0], [1, 2, 6, 3, 5, 0]]
    assert _top_other_classes(model, x, y, 2).tolist() == [[4, 2], [1, 2]]
    assert _top_other_classes(model, x, y, 9).shape == (2, 6)  # at most K - 1 targets


def test_config_passes_n_target_classes_to_apgd_t_only(small_model, rand_batch):
    from skinadv.config import load_preset
    from skinadv.experiment import robust_spec

    cfg = AttackConfig(apgd={"n_target_classes": 3, "steps": 2})
    assert cfg.kwargs("apgd_t")["n_target_classes"] == 3
    rigorous = load_preset("rigorous")
    for name in ("apgd_ce", "apgd_dlr", "apgd_t"):
        kwargs = cfg.kwargs(name)
        assert ("n_target_classes" in kwargs) == (name == "apgd_t")
        spec = robust_spec(rigorous, name, 1 / 255)
        assert ("n_target_classes" in spec) == (name == "apgd_t") and spec["eps"] == 1 / 255
        # every key is one the attack takes (no unexpected keyword)
        x_adv = ATTACKS[name](small_model, *rand_batch, **{**kwargs, "eps": 0.05})
        assert (x_adv - rand_batch[0]).abs().max() <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="n_target_classes"):
        AttackConfig(apgd={"n_target_classes": 0})


def test_checkpoints_follow_the_paper():
    # p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in whole steps
    assert _checkpoints(100) == {21: 22, 40: 19, 56: 16, 69: 13, 79: 10, 86: 7, 92: 6, 98: 6}
    assert _checkpoints(1) == {0: 1}
    assert list(_checkpoints(5)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 0.1, "steps": 0}, "steps must be an integer >= 1"),
        ({"eps": 0.1, "restarts": 0}, "restarts must"),
        ({"eps": 0.1, "rho": 0.0}, r"rho must be in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, message, small_model, rand_batch):
    with pytest.raises(ValueError, match=message):
        apgd_ce(small_model, *rand_batch, **kwargs)


def test_dlr_rejects_two_classes(rand_batch):
    x, y = rand_batch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 2))
    with pytest.raises(ValueError, match="needs >= 3 classes"):
        apgd_dlr(model, x, y % 2, eps=0.1, steps=2)


def test_apgd_t_bad_arguments(small_model, rand_batch):
    x, y = rand_batch
    with pytest.raises(ValueError, match="n_target_classes must be an integer >= 1"):
        apgd_t(small_model, x, y, eps=0.1, n_target_classes=0)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        apgd_t(small_model, x, y, eps=0.1, rho=1.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 3))
    with pytest.raises(ValueError, match="needs >= 4 classes"):
        apgd_t(model, x, y % 3, eps=0.1, steps=2)


# ----------------------------------------------------------------- on a model trained on real data


@pytest.fixture(scope="module")
def trained(real_ds: Dataset) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """paper_cnn width 8, 8 epochs on 3000 real images (~5 s): above the 67 % majority
    class, so attacks have something to break; plus 500 real test images."""
    train, test = split(stratified_subset(real_ds, 3500, seed=1), test_size=1 / 7, seed=1)
    cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-3, seed=0, device="cpu")
    model = fit("paper_cnn", train, cfg, model_kwargs={"width": 8}).model
    x, y = test.to_float()
    return model, torch.from_numpy(x), torch.from_numpy(y)


@pytest.fixture(scope="module")
def torchattacks():
    try:
        import torchattacks
    except ImportError as exc:
        pytest.fail(
            f"torchattacks is missing ({exc}): `pip install --no-deps torchattacks==3.5.1` "
            "(make setup installs it)"
        )
    return torchattacks


@pytest.fixture(scope="module")
def autoattack_apgd_t() -> type:
    try:
        from pyautoattack.autopgd_base import APGDAttack_targeted
    except ImportError as exc:
        pytest.fail(f"pyautoattack is missing ({exc}): `pip install --no-deps pyautoattack==0.2.0`")
    return APGDAttack_targeted


@pytest.fixture(scope="module")
def robust_acc(trained, torchattacks, autoattack_apgd_t) -> Callable[[str, float], float]:
    """``robust_acc(attack, eps)`` in % on the 500 test images, computed once per module."""
    model, x, y = trained
    cache: dict[tuple[str, float], float] = {}

    def adversarial(name: str, eps: float) -> torch.Tensor:
        if name == "clean":
            return x
        if name.startswith("torchattacks_"):
            atk = torchattacks.APGD(
                model, norm="Linf", eps=eps, steps=STEPS, n_restarts=1, seed=0, loss=name[13:]
            )
            with torch.random.fork_rng(devices=[]):  # it seeds the global generator
                return atk(x, y)
        if name == "autoattack_apgd_t":
            atk = autoattack_apgd_t(
                model, n_iter=STEPS, eps=eps, n_restarts=1, seed=0, n_target_classes=6, device="cpu"
            )
            with torch.random.fork_rng(devices=[]):  # it seeds the global generator
                return atk.perturb(x, y)
        if name == "pgd":
            kw = {"alpha": 2.5 * eps / PGD_STEPS, "steps": PGD_STEPS, "random_start": True}
        else:
            kw = {"steps": STEPS, "restarts": 1}
        return craft(model, x, y, name, eps=eps, seed=0, batch_size=len(x), **kw)

    def get(name: str, eps: float) -> float:
        if (name, eps) not in cache:
            x_adv = adversarial(name, eps)
            assert (x_adv - x).abs().max() <= eps + 1e-6
            cache[name, eps] = 100 * score(model, x_adv, y)["accuracy"]
        return cache[name, eps]

    return get


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_agrees_with_torchattacks(loss, robust_acc):
    for eps in EPS:
        ours, theirs = robust_acc(f"apgd_{loss}", eps), robust_acc(f"torchattacks_{loss}", eps)
        print(
            f"\neps {eps * 255:.0f}/255: clean {robust_acc('clean', eps):.1f} %, "
            f"APGD-{loss.upper()} ours {ours:.1f} %, torchattacks {theirs:.1f} % ({STEPS} steps)"
        )
        assert abs(ours - theirs) <= 1.0


def test_apgd_ce_at_least_as_strong_as_pgd(robust_acc):
    for eps in EPS:
        apgd, pgd = robust_acc("apgd_ce", eps), robust_acc("pgd", eps)
        print(
            f"\neps {eps * 255:.0f}/255: APGD-CE {apgd:.1f} % ({STEPS} steps), "
            f"PGD {pgd:.1f} % ({PGD_STEPS} steps of 2.5 * eps / {PGD_STEPS}, random start)"
        )
        assert apgd <= pgd + 0.5
        assert apgd < robust_acc("clean", eps)


@pytest.mark.parametrize("attack", [apgd_ce, apgd_dlr])
def test_restarts_never_worse(attack, trained):
    model, x, y = trained
    kw = {"eps": 2 / 255, "steps": 10, "batch_size": len(x), "seed": 0}
    # one batch, one generator: the first restart is the single run, the next only add
    one = score(model, craft(model, x, y, attack, restarts=1, **kw), y)["accuracy"]
    three = score(model, craft(model, x, y, attack, restarts=3, **kw), y)["accuracy"]
    assert three <= one


def test_apgd_t_agrees_with_autoattack(robust_acc):
    """fra31's APGDAttack_targeted, 6 targets, ``STEPS`` steps, on the same model and images;
    2/255 only: at 8/255 both fool every image, and the reference alone takes ~1 min per
    budget."""
    eps = 2 / 255
    ours, theirs = robust_acc("apgd_t", eps), robust_acc("autoattack_apgd_t", eps)
    print(
        f"\neps 2/255: clean {robust_acc('clean', eps):.1f} %, APGD-T ours {ours:.1f} %, "
        f"auto-attack {theirs:.1f} % ({STEPS} steps, 6 targets)"
    )
    assert abs(ours - theirs) <= 1.0
    assert ours < robust_acc("clean", eps)


def test_apgd_t_at_least_as_strong_as_apgd_dlr(robust_acc):
    for eps in EPS:
        t, dlr = robust_acc("apgd_t", eps), robust_acc("apgd_dlr", eps)
        print(f"\neps {eps * 255:.0f}/255: APGD-T {t:.1f} %, APGD-DLR {dlr:.1f} % ({STEPS} steps)")
        assert t <= dlr + 0.5


def test_more_targets_never_fool_fewer(trained):
    """One generator and batch: the first target's run is the same whatever
    n_target_classes, and later targets only attack what it left, so more targets fool a
    superset of the images."""
    model, x, y = trained
    kw = {"eps": 2 / 255, "steps": 10, "batch_size": len(x), "seed": 0}
    fooled = {
        k: predict(model, craft(model, x, y, apgd_t, n_target_classes=k, **kw))[0] != y.numpy()
        for k in (1, 6)
    }
    fooled1, fooled6 = fooled[1], fooled[6]
    assert not (fooled1 & ~fooled6).any()
    assert fooled6.sum() >= fooled1.sum() > 0
