"""``skinadv verify``: score the models a grid's verdict and champions name with AutoAttack's
standard version (the reference implementation) beside our own ensemble, on the same images.

Run after a grid, on its MLflow runs: each model is rebuilt from its run's state dict +
config JSON (``weights_only``), the test split from the grid's data settings (checked
against the runs' fingerprint and counts), and both evaluations run on one fixed, seeded,
stratified subset of the test set. Figures go on each model's MLflow run and into
``verify.md`` / ``verify.json`` in the run folder (and on the grid's parent run).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from skinadv.commands import ExperimentOpt, SetOpt, console, fail, has_mlflow, user_errors
from skinadv.commands.verify_models import pick_models

app = typer.Typer(pretty_exceptions_enable=False)

DEFAULT_EPS = "2/255,8/255"  # the robust select eps and the usual CIFAR-style budget


def parse_eps_list(text: str) -> list[float]:
    """``"2/255,8/255"`` -> ``[2/255, 8/255]``; each must be in (0, 1].

    Raises:
        ValueError: naming the value that is not a positive budget.
    """
    from skinadv.config.sections import parse_eps

    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            eps = float(parse_eps(part))
        except (TypeError, ValueError):
            raise ValueError(f"--eps: cannot read {part!r} as a budget (e.g. 8/255 or 0.03)")
        if not 0 < eps <= 1:
            raise ValueError(f"--eps: {part} is not in (0, 1] (pixel units; e.g. 8/255)")
        out.append(eps)
    if not out:
        raise ValueError("--eps: give at least one budget, e.g. 2/255,8/255")
    return sorted(set(out))


def parse_seeds(text: str) -> str | list[int]:
    """``all`` | ``named`` | a comma list of seeds."""
    t = text.strip().lower()
    if t in ("all", "named"):
        return t
    try:
        return [int(s) for s in t.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: {text!r} is not 'all', 'named' or a comma list of seeds")


def _grid_config(parent: Any, preset: str | None, data: str | None, overrides: list[str]):
    """The grid's config, from its parent run's parameters (+ what the user adds)."""
    from skinadv.config import grid_config

    p = parent.data.params

    def listed(key: str) -> list | None:
        try:
            return json.loads(p[key]) if key in p else None
        except ValueError:
            return None

    return grid_config(
        preset or p.get("preset", "quick"),
        data=data or p.get("data"),
        methods=listed("methods"),
        fractions=listed("fractions"),
        overrides=overrides,
    )


def check_split(prep: Any, params: dict[str, str]) -> None:
    """The rebuilt split must be the grid's: same data fingerprint and the same number of
    train / validation / test images as the run logged. Raises ValueError otherwise."""
    have = {
        "data_fingerprint": prep.fingerprint,
        "n_train": len(prep.train),
        "n_val": 0 if prep.val is None else len(prep.val),
        "n_test": len(prep.test),
    }
    diff = [
        f"{k} {params[k]} vs {v}" for k, v in have.items() if k in params and params[k] != str(v)
    ]
    if diff:
        raise ValueError(
            "the rebuilt data split is not the grid's (grid vs now: " + ", ".join(diff) + "): "
            "pass the grid's --data, --preset and --set overrides"
        )


def _spec_for(cfg: Any, name: str, eps: float) -> dict[str, Any]:
    """Our ensemble's settings: the grid's (``robust_spec``); an attack without a config
    section (a parameter-free one added later) runs with its defaults at ``eps``."""
    from skinadv import experiment as exp

    try:
        return exp.robust_spec(cfg, name, eps)
    except ValueError:
        return {"eps": eps}


def ensemble_attacks(cfg: Any) -> list[str]:
    """The grid's robust attacks, plus APGD-T when the registry has it (checked at run time)."""
    from skinadv.attacks.registry import ATTACKS

    attacks = list(cfg.robust.attacks)
    if "apgd_t" in ATTACKS and "apgd_t" not in attacks:
        attacks.append("apgd_t")
    return attacks


def _write(out: Path, models: Sequence[Any], payload: dict[str, Any], *, done: bool) -> list[Path]:
    """verify.md and verify.json, each written whole (temp file + rename)."""
    from skinadv.data.io import atomic_write_bytes
    from skinadv.evaluation.verify_report import markdown

    md = markdown(
        models,
        context=payload["context"],
        n_images=payload["n_images"],
        n_test=payload["n_test"],
        done=done,
    )
    doc = {**payload, "done": done, "models": [m.to_dict() for m in models]}
    return [
        atomic_write_bytes(out / "verify.md", md.encode()),
        atomic_write_bytes(out / "verify.json", json.dumps(doc, indent=1, default=str).encode()),
    ]


def _line(c: Any) -> str:
    from skinadv.results import eps_text

    e, a = c.ensemble, c.autoattack
    flag = f", [yellow]Square-only {a.square_extra}[/]" if a.square_extra else ""
    return (
        f"    eps {eps_text(c.eps)}: ensemble {100 * e.accuracy:.1f} % (bal. "
        f"{100 * e.balanced_accuracy:.1f}) in {c.ensemble_seconds:.0f} s; AutoAttack "
        f"{100 * a.accuracy:.1f} % (bal. {100 * a.balanced_accuracy:.1f}) in {a.seconds:.0f} s"
        f"{flag}"
    )


@app.command("verify")
def verify(
    run_dir: Annotated[
        Path,
        typer.Option(
            help="The grid's run folder (its MLflow is started when MLFLOW_TRACKING_URI is "
            "not set); verify.md and verify.json are written there.",
            envvar="SKINADV_RUN_DIR",
        ),
    ] = Path("runs/grid"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="An MLflow tracking URI instead of the run folder's.")
    ] = None,
    experiment: ExperimentOpt = "skinadv-grid",
    parent_run: Annotated[
        str | None, typer.Option(help="The grid's parent run id (default: the newest).")
    ] = None,
    eps: Annotated[str, typer.Option(help="Comma list of L-inf budgets.")] = DEFAULT_EPS,
    n_images: Annotated[
        int, typer.Option(min=1, help="Test images per model (a fixed stratified subset).")
    ] = 500,
    models: Annotated[
        str,
        typer.Option(
            help="Comma list: vanilla, champions (each method's registered champion), verdict "
            "(the most robust defence and the paper rule's best static cell), all, or cell "
            "names (pgd-at@2_255, pgd@0.8)."
        ),
    ] = "vanilla,champions,verdict",
    seeds: Annotated[
        str, typer.Option(help="all (every seed of each named cell), named, or e.g. 0,1.")
    ] = "all",
    preset: Annotated[
        str | None, typer.Option(help="The grid's preset (default: its parent run's).")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="The grid's data (default: its run's).")
    ] = None,
    set_: SetOpt = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="Torch threads. AutoAttack on this small CNN is bound by per-step overhead: "
            "one thread is the fastest here, and several oversubscribe a busy machine.",
        ),
    ] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="AutoAttack's batch size.")] = 500,
    out: Annotated[Path | None, typer.Option(help="Folder for verify.md / .json.")] = None,
) -> None:
    """Score the grid's named models with AutoAttack (standard) beside our own ensemble."""
    with user_errors():
        eps_values = parse_eps_list(eps)
        seed_choice = parse_seeds(seeds)
    try:
        from skinadv.evaluation.autoattack import reference_autoattack

        reference_autoattack()
    except ImportError as exc:
        raise fail(str(exc), 1) from None
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    elif not has_mlflow(run_dir):
        raise fail(
            f"no MLflow to read: {run_dir} is not a grid's run folder ({run_dir / 'mlflow.db'} "
            "does not exist); pass --run-dir of a finished grid or --tracking-uri"
        )
    from skinadv.stack import Stack, StackError

    t0 = time.perf_counter()
    try:
        with Stack(run_dir, prefect=False, ray=False, console=console):
            done = _verify(
                run_dir, out or run_dir, experiment, parent_run, eps_values, n_images, models,
                seed_choice, preset, data, set_ or [], threads, batch_size,
            )  # fmt: skip
    except StackError as exc:
        raise fail(str(exc), 1) from None
    console.print(
        f"verified {done} model(s) in {time.perf_counter() - t0:.0f} s: "
        f"{(out or run_dir) / 'verify.md'}",
        soft_wrap=True,
    )


def _verify(
    run_dir: Path,
    out: Path,
    experiment: str,
    parent_run: str | None,
    eps_values: list[float],
    n_images: int,
    which: str,
    seed_choice: str | list[int],
    preset: str | None,
    data: str | None,
    overrides: list[str],
    threads: int,
    batch_size: int,
) -> int:
    """The command's work, with MLflow up; returns how many models were verified."""
    import torch

    from skinadv import experiment as exp
    from skinadv.commands import verify_tracking as vt
    from skinadv.evaluation.autoattack import stratified_indices
    from skinadv.evaluation.autoattack import verify as run_verify
    from skinadv.evaluation.verify_report import VerifiedModel
    from skinadv.models import load_model
    from skinadv.results import eps_text
    from skinadv.training.prep import prepare_data

    with user_errors():
        parent, results = vt.grid_results(experiment, parent_run)
        methods = sorted({str(r.method) for r in results if not r.is_vanilla})
        chosen = pick_models(
            results, vt.registered_champions(experiment, methods), which, seed_choice
        )
        cfg = _grid_config(parent, preset, data, overrides)
        prep = prepare_data(cfg.data)
        params = vt.run_params(chosen[0][0].run_id)
        check_split(prep, params)
    exp.set_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x_all, y_all = prep.test.to_float()
    idx = stratified_indices(y_all, n_images, seed=0)
    x, y = torch.from_numpy(x_all[idx]), torch.from_numpy(y_all[idx])
    attacks = ensemble_attacks(cfg)
    vanilla = next((r for r, _ in chosen if r.is_vanilla), None)
    if vanilla is not None:
        vp = vt.run_params(vanilla.run_id)
        h = exp.vanilla_hash(cfg, prep.fingerprint, vanilla.seed)
        if vp.get("config_hash") not in (None, h):
            console.print(
                "[yellow]note:[/] the rebuilt settings hash differently from the grid's vanilla "
                "model (a preset edited since, or --set overrides not given); the split's "
                "fingerprint and sizes match the grid's",
                soft_wrap=True,
            )
    context = {
        "experiment": experiment,
        "parent run": parent.info.run_id,
        "data": f"{cfg.data.spec} (fingerprint {prep.fingerprint}, {prep.test.kind})",
        "images": f"{len(idx)} of {len(prep.test)} test images (stratified, seed 0)",
        "eps": ", ".join(eps_text(e) for e in eps_values),
        "our ensemble": " + ".join(attacks) + " (per-image worst case)",
        "device": f"{device}, {torch.get_num_threads()} torch thread(s)",
    }
    payload = {
        "context": context,
        "n_images": len(idx),
        "n_test": len(prep.test),
        "eps": eps_values,
        "test_indices": idx.tolist(),
    }
    console.print(
        f"[bold]verify[/]: {len(chosen)} model(s) x {len(eps_values)} eps on {len(idx)} of "
        f"{len(prep.test)} test images; AutoAttack standard vs {' + '.join(attacks)}; "
        f"{context['device']}",
        soft_wrap=True,
    )
    spec_for = functools.partial(_spec_for, cfg)
    verified: list[VerifiedModel] = []
    files: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="skinadv-verify-") as tmp:
        for k, (r, why) in enumerate(chosen, 1):
            console.print(f"[{k}/{len(chosen)}] {r.cell} seed {r.seed} ({why})", soft_wrap=True)
            with user_errors():
                model, meta = load_model(vt.download_weights(r.run_id, Path(tmp) / r.run_id))
            model.to(device)
            comps = run_verify(
                model, x, y, eps_values, spec_for, attacks,
                num_classes=int(meta.get("num_classes", 7)), batch_size=batch_size,
                device=device, on_point=lambda c: console.print(_line(c), highlight=False),
            )  # fmt: skip
            m = VerifiedModel(
                r.cell, r.seed, r.run_id, why, tuple(comps),
                sum(c.autoattack.seconds for c in comps),
            )  # fmt: skip
            vt.log_verification(r.run_id, m.metrics())
            verified.append(m)
            for f in m.flags():
                console.print(f"    [yellow]flag:[/] {f}", soft_wrap=True)
            files = _write(out, verified, payload, done=k == len(chosen))
    vt.log_files(parent.info.run_id, files)
    return len(verified)
