"""Configs: presets, overrides, validation messages, the config hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from skinadv.config import (
    AdvTrainConfig,
    AttackConfig,
    ExperimentConfig,
    PGDConfig,
    available_presets,
    config_hash,
    describe_error,
    load_preset,
)


def test_presets_available_and_paper_settings():
    assert {"quick", "rigorous", "paper"} <= set(available_presets())
    paper = load_preset("paper")
    assert paper.attack.fgsm.eps == 0.2
    assert paper.attack.kwargs("pgd") == {
        "eps": 0.3,
        "alpha": 0.2,
        "steps": 50,
        "random_start": True,
        "restarts": 1,
        "norm": "linf",
    }
    assert paper.data.subset is None and paper.data.oversample and paper.data.test_size == 0.2
    assert paper.methods == ["fgsm", "pgd", "mix"]
    assert paper.fractions == [0.2, 0.4, 0.6, 0.8]
    assert len(paper.methods) * len(paper.fractions) == 12


def test_quick_is_smaller_than_paper():
    quick, paper = load_preset("quick"), load_preset("paper")
    assert quick.attack.pgd.steps < paper.attack.pgd.steps
    assert quick.train.epochs < paper.train.epochs
    # same budgets as the paper: only the work is cut
    assert (quick.attack.fgsm.eps, quick.attack.pgd.eps) == (0.2, 0.3)


def test_every_preset_on_all_of_the_data_and_the_recipe_in_quick_and_rigorous():
    for name in ("quick", "rigorous", "paper"):
        cfg = load_preset(name)
        assert cfg.data.subset is None and cfg.data.oversample, name
    for name in ("quick", "rigorous"):
        cfg = load_preset(name)
        assert cfg.data.group_by_lesion and cfg.data.val_size > 0, name
        assert (cfg.train.schedule, cfg.train.augment) == ("onecycle", "flips"), name
        assert len(cfg.seeds) >= 3, name
    # paper keeps the paper's recipe, so that it still reproduces the paper
    paper = load_preset("paper")
    assert (paper.train.schedule, paper.train.augment, paper.train.precision) == (
        "constant",
        "none",
        "fp32",
    )
    assert not paper.data.group_by_lesion and paper.train.lr == 0.001


def test_rigorous_is_the_honest_protocol():
    """What the honest-numbers protocol promises: lesion-grouped split, a validation split,
    3 seeds, the paper's static grid and budgets, on-the-fly defences at 2/255 and 8/255,
    the eps sweep worst case over PGD + the three APGDs, the targeted clinical attacks."""
    r, paper = load_preset("rigorous"), load_preset("paper")
    assert r.data.group_by_lesion and r.data.val_size > 0 and len(r.seeds) == 3
    assert (r.methods, r.fractions) == (paper.methods, paper.fractions)
    assert (r.attack.fgsm.eps, r.attack.pgd.eps) == (0.2, 0.3)
    assert {(d.method, round(d.eps * 255)) for d in r.defences} == {
        (m, e) for m in ("pgd-at", "trades", "n-fgsm") for e in (2, 8)
    }
    assert [round(e * 255, 3) for e in r.robust.eps] == [2, 4, 8, 51, 76.5]
    assert r.robust.attacks == ["pgd", "apgd_ce", "apgd_t"]
    assert r.attack.apgd.n_target_classes == 6  # every other class of the 7
    assert r.robust.select_eps == pytest.approx(2 / 255)
    assert set(r.robust.targeted) == {"mel->nv", "nv->mel"}
    full = load_preset("rigorous", ["data.subset=null", "model.width=32", "train.epochs=20"])
    assert full.data.subset is None and full.defences == r.defences  # scales by overrides


def test_overrides_as_strings_and_dict():
    cfg = load_preset(
        "quick",
        [
            "train.epochs=7",
            "attack.pgd.steps=3",
            "seeds=[1, 2]",
            "data.spec=synthetic:100:0",
            "data.group_by_lesion=true",
        ],
    )
    assert cfg.train.epochs == 7 and cfg.attack.pgd.steps == 3 and cfg.seeds == [1, 2]
    assert cfg.data.spec == "synthetic:100:0" and cfg.data.group_by_lesion is True
    cfg2 = load_preset("quick", {"train": {"epochs": 7}, "attack.pgd.steps": 3})
    assert (cfg2.train.epochs, cfg2.attack.pgd.steps) == (7, 3)


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*paper, quick"):
        load_preset("nope")


@pytest.mark.parametrize(
    "override, message",
    [
        ("attack.fgsm.eps=-0.1", "eps must be >= 0"),
        ("attack.pgd.eps=-1", "eps must be >= 0"),
        ("attack.pgd.steps=0", "steps must be >= 1"),
        ("attack.pgd.norm=l3", "unknown norm 'l3'"),
        ("fractions=[0.2, 1.5]", r"fraction must be in \(0, 1\]"),
        ("fractions=[0]", r"fraction must be in \(0, 1\]"),
        ("methods=[fgsm, cw]", "unknown adversarial training method 'cw'"),
        ("train.epoch=3", "Extra inputs are not permitted"),
        ("model.name=resnet", "unknown model 'resnet'"),
    ],
)
def test_bad_values_give_clear_errors(override, message):
    with pytest.raises(ValidationError, match=message) as info:
        load_preset("quick", [override])
    assert isinstance(info.value, ValueError)
    line = describe_error(info.value)
    assert "\n" not in line and override.split("=")[0].split(".")[-1] in line


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="must look like key.sub=value"):
        load_preset("quick", ["train.epochs"])
    with pytest.raises(ValueError, match="is a value, not a section"):
        load_preset("quick", ["train.epochs.x=1"])


@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.01])
def test_adv_train_config_fraction(fraction):
    with pytest.raises(ValidationError, match=r"fraction must be in \(0, 1\]"):
        AdvTrainConfig(method="pgd", fraction=fraction)


def test_adv_train_config_method():
    assert AdvTrainConfig(method="mix", fraction=1.0).fraction == 1.0
    with pytest.raises(ValidationError, match="choose one of fgsm, pgd, mix"):
        AdvTrainConfig(method="PGD-AT", fraction=0.2)


def test_config_hash_is_stable_and_sensitive():
    a, b = load_preset("quick"), load_preset("quick")
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 16
    assert config_hash(a) == config_hash(a.model_dump(mode="json"))
    c = load_preset("quick", ["attack.pgd.steps=11"])
    assert config_hash(c) != config_hash(a)
    # key order does not matter
    assert config_hash({"x": 1, "y": [1, 2]}) == config_hash({"y": [1, 2], "x": 1})


def test_attack_config_kwargs():
    cfg = AttackConfig(pgd=PGDConfig(steps=5))
    assert cfg.kwargs("fgsm") == {"eps": 0.2}
    assert cfg.specs(("pgd",))["pgd"]["attack"] == "pgd"
    with pytest.raises(ValueError, match="unknown attack"):
        cfg.kwargs("deepfool")
    with pytest.raises(ValidationError):
        ExperimentConfig(bogus=1)
