"""The grid's science steps as plain functions (no Prefect, Ray or MLflow).

tasks/ wrap these one-to-one; a notebook can call them directly:

    cfg = load_preset("quick")
    prep = prepare_data(cfg.data)
    vanilla = train_model(cfg, prep.train, seed=0)
    sets = transfer_sets(cfg, vanilla.model, prep.test)
    pool = adversarial_pool(vanilla.model, *prep.train.to_float(), method="pgd",
                            fraction=max(cfg.fractions), attack_cfg=cfg.attack, seed=0)
    cell = train_model(cfg, augment(*prep.train.to_float(), pool, 0.4), seed=0)
    result = evaluate_both(cfg, cell.model, prep.test, sets, method="pgd", fraction=0.4)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from skinadv import __version__
from skinadv.config import DefenceConfig, ExperimentConfig, config_hash
from skinadv.data import CLASSES, Dataset
from skinadv.evaluation import evaluate
from skinadv.evaluation.checks import eps_sweep, sweep
from skinadv.evaluation.evaluate import craft_transfer_sets, predict
from skinadv.evaluation.robust import robust_curve
from skinadv.evaluation.subset import stratified_indices
from skinadv.evaluation.targeted import targeted_success
from skinadv.memory import keep_freed_memory
from skinadv.report import Example
from skinadv.results import VAL, Evaluation, ModelResult, RobustPoint, TargetedPoint, cell_name
from skinadv.training import MIX_FROM_POOLS, TrainResult, composes_mix, fit

log = logging.getLogger(__name__)

ATTACKS_SCORED = ("fgsm", "pgd")


def vanilla_hash(cfg: ExperimentConfig, fingerprint: str, seed: int) -> str:
    """Keys reuse of a vanilla model: data, model, training, attacks, seed, code version."""
    return config_hash(
        {
            "kind": "vanilla",
            "fingerprint": fingerprint,
            # the data's content is in the fingerprint: a path spelt another way (relative,
            # absolute, s3://) is the same data
            "data": cfg.data.model_dump(mode="json", exclude={"spec"}),
            "model": cfg.model.model_dump(),
            "train": cfg.train.model_dump(),
            "attack": cfg.attack.model_dump(),
            "seed": seed,
            "version": __version__,
        }
    )


def cell_hash(
    vanilla: str,
    cfg: ExperimentConfig,
    method: str,
    fraction: float,
    seed: int,
    max_fraction: float,
    *,
    pool_recipe: str | None = None,
) -> str:
    """Keys reuse of a cell: its vanilla model's hash, method, fraction, the pool's size,
    and how its pool was made when not crafted by ``adversarial_pool`` (``pool_recipe``:
    ``MIX_FROM_POOLS`` for a mix pool composed by ``mix_pool``; None keeps the hash of a
    crafted pool as it always was)."""
    spec = {
        "kind": "cell",
        "vanilla": vanilla,
        "method": method,
        "fraction": fraction,
        "pool_fraction": max_fraction,
        "seed": seed,
    }
    if pool_recipe is not None:  # composed mix pools differ from crafted ones (PGD starts)
        spec["pool_recipe"] = pool_recipe
    return config_hash(spec)


def pool_recipe(methods: Iterable[str], method: str) -> str | None:
    """How a grid of ``methods`` makes ``method``'s pool: ``MIX_FROM_POOLS`` for mix when
    the grid has fgsm and pgd pools to compose it from (``mix_pool``), else None (crafted)."""
    return MIX_FROM_POOLS if method == "mix" and composes_mix(methods) else None


def train_model(
    cfg: ExperimentConfig,
    train: Dataset | tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    on_epoch=None,
    defence: DefenceConfig | None = None,
) -> TrainResult:
    """A freshly initialised ``cfg.model`` trained with ``cfg.train`` under ``seed``; with a
    ``defence``, every batch is attacked as it is used (on-the-fly adversarial training)."""
    train_cfg = cfg.train.model_copy(update={"seed": seed})
    return fit(cfg.model, train, train_cfg, on_epoch=on_epoch, defence=defence)


def defence_hash(vanilla: str, defence: DefenceConfig) -> str:
    """Keys reuse of an on-the-fly defence: the settings its vanilla model is keyed by (data,
    model, training, attacks, seed) and the defence's own."""
    return config_hash({"kind": "defence", "base": vanilla, "defence": defence.model_dump()})


def attack_specs(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    return cfg.attack.specs(ATTACKS_SCORED)


def transfer_sets(
    cfg: ExperimentConfig,
    vanilla: nn.Module,
    test: Dataset,
    *,
    seed: int = 0,
    progress: Any = None,
    val: Dataset | None = None,
) -> dict[str, np.ndarray]:
    """FGSM / PGD test sets crafted once against the vanilla model (transfer protocol);
    with a validation split, its own sets too, under ``val_fgsm`` / ``val_pgd``."""
    sets = {}
    for prefix, ds in (("", test), (VAL, val)):
        if ds is None:
            continue
        x, y = ds.to_float()
        crafted = craft_transfer_sets(
            vanilla,
            x,
            y,
            attack_specs(cfg),
            batch_size=cfg.attack.batch_size,
            seed=seed,
            progress=progress,
        )
        sets.update({prefix + k: v for k, v in crafted.items()})
    return sets


def split_sets(
    sets: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``transfer_sets``' output as (test sets, validation sets), each keyed by attack."""
    test = {k: v for k, v in sets.items() if not k.startswith(VAL)}
    val = {k.removeprefix(VAL): v for k, v in sets.items() if k.startswith(VAL)}
    return test, val


def score_protocol(
    cfg: ExperimentConfig,
    model: nn.Module,
    test: Dataset,
    protocol: str,
    *,
    sets: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> Evaluation:
    """``model`` under one protocol: the attacks and settings of ``evaluate_both``.

    Args:
        protocol: ``transfer`` (scores ``sets``, from ``transfer_sets``) or ``whitebox``
            (re-runs each attack against ``model``).
        sets: the transfer sets; needed for ``transfer`` only.
        seed: seeds the white-box attacks' random starts.
    """
    x, y = test.to_float()
    return evaluate(
        model,
        x,
        y,
        attacks=attack_specs(cfg),
        protocol=protocol,
        transfer_sets=sets if protocol == "transfer" else None,
        batch_size=cfg.attack.batch_size,
        seed=seed,
    )


def evaluate_both(
    cfg: ExperimentConfig,
    model: nn.Module,
    test: Dataset,
    sets: Mapping[str, np.ndarray],
    *,
    method: str | None = None,
    fraction: float | None = None,
    seed: int = 0,
    run_id: str | None = None,
    cell: str | None = None,
    val: Dataset | None = None,
) -> ModelResult:
    """Score ``model`` under both protocols (and the robust curve and targeted attacks the
    preset asks for) on the test set, and on the validation split ``val`` for selection.

    ``method=None`` marks the vanilla model: its transfer sets *are* its white-box attacks
    (same attack, same seed, same model), so they are scored once and reported twice.
    ``sets`` is ``transfer_sets``' output (with the validation sets when ``val`` is given).
    """
    sets, val_sets = split_sets(sets)
    transfer = score_protocol(cfg, model, test, "transfer", sets=sets, seed=seed)
    if method is None:
        whitebox = transfer.as_protocol("whitebox")
    else:
        whitebox = score_protocol(cfg, model, test, "whitebox", seed=seed)
    curve = (
        robustness_curve(cfg, model, test, seed=seed, n_images=cfg.robust.n_images)
        if cfg.robust.eps
        else []
    )
    validation, val_robust = None, None
    if val is not None:
        if not val_sets:
            raise ValueError("a validation split was given without its transfer sets")
        validation = score_protocol(cfg, model, val, "transfer", sets=val_sets, seed=seed)
        (val_robust,) = robustness_curve(
            cfg, model, val, seed=seed, eps=[cfg.robust.select_eps], attacks=["pgd"]
        )
    return ModelResult(
        cell=cell or cell_name(method, fraction),
        seed=seed,
        transfer=transfer,
        whitebox=whitebox,
        method=method,
        fraction=fraction,
        run_id=run_id,
        curve=tuple(curve),
        validation=validation,
        val_robust=val_robust,
        targeted=tuple(targeted_attacks(cfg, model, test, seed=seed)),
    )


def robust_spec(cfg: ExperimentConfig, attack: str, eps: float) -> dict[str, Any]:
    """An attack of the robustness sweep at ``eps``: PGD with ``cfg.robust.pgd_steps`` steps
    of 2.5 * eps / steps (Madry et al.), any other attack with its configured settings."""
    if attack == "pgd":
        steps = cfg.robust.pgd_steps
        return {"eps": eps, "alpha": 2.5 * eps / steps, "steps": steps, "random_start": True}
    return {**cfg.attack.kwargs(attack), "eps": eps}


def robustness_curve(
    cfg: ExperimentConfig,
    model: nn.Module,
    test: Dataset,
    *,
    seed: int = 0,
    eps: list[float] | None = None,
    attacks: list[str] | None = None,
    n_images: int | None = None,
) -> list[RobustPoint]:
    """White-box robust accuracy at each ``cfg.robust.eps`` (or ``eps``), worst case over
    ``cfg.robust.attacks`` (or ``attacks``), on ``test`` or, given ``n_images``, on its
    fixed class-stratified subset of that many images (``stratified_indices``, seed 0:
    the same images for every model, and the ones ``skinadv verify`` attacks)."""
    x, y = test.to_float()
    n = None
    if n_images is not None and n_images < len(y):
        idx = stratified_indices(np.asarray(y), n_images, seed=0)
        x, y, n = x[idx], y[idx], len(idx)
    points = robust_curve(
        model,
        x,
        y,
        cfg.robust.eps if eps is None else eps,
        functools.partial(robust_spec, cfg),
        cfg.robust.attacks if attacks is None else attacks,
        batch_size=cfg.attack.batch_size,
        seed=seed,
    )
    return [dataclasses.replace(p, n_images=n) for p in points]


def targeted_attacks(
    cfg: ExperimentConfig, model: nn.Module, test: Dataset, *, seed: int = 0
) -> list[TargetedPoint]:
    """Success rates of the preset's targeted attacks (``robust.targeted`` at each
    ``robust.targeted_eps``; PGD as in the robust curve); empty when it asks for none."""
    if not (cfg.robust.targeted and cfg.robust.targeted_eps):
        return []
    x, y = test.to_float()
    return targeted_success(
        model,
        x,
        y,
        cfg.robust.targeted,
        cfg.robust.targeted_eps,
        functools.partial(robust_spec, cfg),
        batch_size=cfg.attack.batch_size,
        seed=seed,
    )


def sanity_sweeps(
    cfg: ExperimentConfig, model: nn.Module, test: Dataset, *, max_images: int = 256, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """The sweeps behind the Carlini checks, on (at most) ``max_images`` test images.

    About 45 PGD steps per image in all (~3 training epochs of 11k images on the quick
    preset's data); the eps sweep uses at least 20 steps, since few steps at large eps
    saturate pixels where the gradient vanishes and accuracy stalls above 0.
    """
    x, y = test.to_float()
    x, y = x[:max_images], y[:max_images]
    pgd = cfg.attack.pgd
    base = {"eps": pgd.eps, "alpha": pgd.alpha, "norm": pgd.norm, "random_start": True}
    steps = sorted({1, max(1, pgd.steps // 2), pgd.steps})
    return {
        "eps": eps_sweep(
            model,
            x,
            y,
            (0.0, 2 / 255, 8 / 255, 0.1, 0.3, 0.5),
            steps=max(pgd.steps, 20),
            seed=seed,
        ),
        "steps": sweep(model, x, y, "pgd", "steps", steps, seed=seed, restarts=1, **base),
        "restarts": sweep(
            model, x, y, "pgd", "restarts", [1, 2], seed=seed, steps=min(pgd.steps, 10), **base
        ),
    }


def pick_examples(model: nn.Module, test: Dataset, sets: Mapping[str, np.ndarray]) -> list[Example]:
    """One image per attack that the model gets right clean and wrong under attack (the
    paper's Figures 1-2); falls back to the first image when none is fooled."""
    x, y = test.to_float()
    pred, prob = predict(model, x)
    out = []
    for attack, x_adv in split_sets(sets)[0].items():
        apred, aprob = predict(model, x_adv)
        fooled = np.flatnonzero((pred == y) & (apred != y))
        i = int(fooled[np.argmax(aprob[fooled, apred[fooled]])]) if fooled.size else 0
        out.append(
            Example(
                attack=attack,
                x=x[i].transpose(1, 2, 0),
                x_adv=np.asarray(x_adv[i]).transpose(1, 2, 0),
                true_class=CLASSES[y[i]],
                clean_pred=CLASSES[pred[i]],
                clean_prob=float(prob[i, pred[i]]),
                adv_pred=CLASSES[apred[i]],
                adv_prob=float(aprob[i, apred[i]]),
            )
        )
    return out


def confusion_figure(result: ModelResult, *, ncols: int = 3):
    """Confusion matrices (clean, then each attack under both protocols), ``ncols`` panels a
    row: each cell holds its count, shaded by its share of the true class (the row), so the
    diagonal reads as per-class recall whatever the class sizes.

    Returns:
        A matplotlib Figure (about 1100 x 750 px at 100 dpi for five panels).
    """
    import matplotlib.pyplot as plt

    panels = [("clean", result.transfer.metrics["clean"])]
    panels += [
        (f"{a.upper()} {p}", ev.metrics[a])
        for p, ev in result.evaluations().items()
        for a in ev.attack_names
    ]
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.5 * nrows + 0.4), squeeze=False, layout="constrained"
    )
    fig.get_layout_engine().set(w_pad=0.08, h_pad=0.1)  # room for the outer axis labels
    image, spare = None, None
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            spare = spare or ax
            continue
        name, m = panels[k]
        cm = np.asarray(m["confusion_matrix"])
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
        bal = m.get("balanced_accuracy")
        figures = f"acc {m['accuracy']:.1%}" + ("" if bal is None else f", bal. {bal:.1%}")
        ax.set_title(f"{name}\n{figures}", fontsize=9)
        ax.set_xlabel("predicted class", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("true class", fontsize=8)
    legend = "shade: share of the true class (row),\nso the diagonal is each class's recall"
    if spare is not None:  # the key sits in the empty panel, not beside the grid
        cax = spare.inset_axes((0.1, 0.55, 0.8, 0.07))
        fig.colorbar(image, cax=cax, orientation="horizontal")
        spare.text(0.5, 0.4, f"count of test images per cell;\n{legend}", ha="center",
                   va="top", fontsize=8, transform=spare.transAxes)  # fmt: skip
    elif image is not None:
        fig.colorbar(image, ax=axes, shrink=0.5, label=legend)
    fig.suptitle(f"{result.cell} (seed {result.seed}): confusion matrices", fontsize=10)
    return fig


# --------------------------------------------------------------------------- saved models (CLI)

#: data settings that define the split; a saved model records them so its test side is reused
SPLIT_KEYS = ("size", "test_size", "val_size", "seed", "group_by_lesion", "oversample", "subset")


def check_model_data(
    meta: Mapping[str, Any], cfg: ExperimentConfig, fingerprint: str, what: str
) -> None:
    """A saved model's split settings and data fingerprint must be ``cfg``'s: another split
    would put its training images on the test side. Raises ValueError naming ``what``."""
    data = meta.get("data") or {}
    diff = [k for k in SPLIT_KEYS if k in data and data[k] != getattr(cfg.data, k)]
    if diff:
        raise ValueError(
            f"{what} was trained with other data settings "
            f"({', '.join(f'{k}={data[k]}' for k in diff)}): use the same "
            f"--preset/--set so its test side stays unseen"
        )
    fp = meta.get("data_fingerprint")
    if fp and fp != fingerprint:
        raise ValueError(
            f"{what} was trained on other data (fingerprint {fp}, this data is {fingerprint})"
        )


def check_vanilla(meta: Mapping[str, Any], vanilla: str, what: str) -> None:
    """A cell's hash keys on its vanilla model's (``cell_hash``), so the model its pool is
    crafted against must be the vanilla model of the same settings: ``meta``'s
    ``config_hash`` must be ``vanilla``. Raises ValueError naming ``what``."""
    if meta.get("config_hash") != vanilla:
        raise ValueError(
            f"{what} has config hash {meta.get('config_hash')}, but the vanilla model of these "
            f"settings (preset, overrides, seed, data, skinadv version) has {vanilla}: "
            f"train the cell with the settings of its vanilla model"
        )


def model_cell(meta: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """(method, fraction) from a saved model's config; (None, None) for a vanilla model."""
    adv = meta.get("adv") or meta  # the CLI also writes "adv"; the grid, top-level keys
    method, fraction = adv.get("method"), adv.get("fraction")
    return method, None if fraction is None else float(fraction)


def set_threads(n: int) -> None:
    """Prepare this process for compute: ``n`` torch threads, and freed tensor memory kept
    for reuse instead of page-faulted back in (``skinadv.memory.keep_freed_memory``)."""
    torch.set_num_threads(max(1, int(n)))
    keep_freed_memory()
