"""One model's robustness evaluation, as ``skinadv evaluate`` runs it and as the evaluation
flow's task (``tasks.evaluate``) runs it: one code path for both.

``run_evaluation`` loads the model (any source, ``model_sources``), scores it as the grid
scores a cell (``skinadv.experiment``), adds AutoAttack where asked, writes the grid's
report for it when given a folder and, with ``MLFLOW_TRACKING_URI`` set, logs one run with
the grid cells' metric names (``evaluation.log_run``). The caller prints or publishes the
returned ``Evaluation``; bad input raises ``ValueError`` (one line).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinadv import experiment as exp
from skinadv.commands import console, model_sources
from skinadv.commands import evaluation as ev
from skinadv.commands.experiment_shared import (
    cell_of,
    check_data,
    experiment_config,
    short,
)
from skinadv.evaluation import sanity_checks
from skinadv.evaluation.checks import Check
from skinadv.results import PROTOCOLS, ModelResult, eps_text
from skinadv.results import Evaluation as ProtocolEvaluation
from skinadv.training import prepare_data, select_device


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and how: ``skinadv evaluate``'s options.

    Args:
        model: ``--model`` SPEC (checkpoint, TorchScript, .pt2, package.module:factory, or
            an MLflow ``models:/`` / ``runs:/`` URI).
        data: data SPEC (None: the preset's).
        protocol: ``transfer``, ``whitebox`` or ``both`` (the report and run need both).
        source_model: the model the transfer sets are crafted against (any source
            ``model_sources.load`` reads; canonical class order, [0, 1] input).
        eps, attacks, targeted, targeted_eps, autoattack_eps: the CLI's comma lists
            (``2/255,8/255``; ``pgd,apgd-ce``; ``mel->nv``), None: the preset's.
        out: folder for the grid's report of this model (None: no report).
        experiment: MLflow experiment of the run (logged when MLflow is configured).
        preset, overrides: the preset and its ``--set`` overrides.
        weights, classes, normalize: ``--weights``, ``--classes``, ``--normalize MEAN STD``.
    """

    model: str
    data: str | None = None
    protocol: str = "both"
    source_model: str | Path | None = None
    eps: str | None = None
    attacks: str | None = None
    targeted: str | None = None
    targeted_eps: str | None = None
    autoattack_eps: str | None = None
    out: Path | None = None
    experiment: str = "skinadv-grid"
    preset: str = "quick"
    overrides: tuple[str, ...] = ()
    weights: str | None = None
    classes: str | None = None
    normalize: tuple[str, str] | None = None


@dataclass(frozen=True)
class Evaluation:
    """One model evaluated: ``payload`` is ``skinadv evaluate --json``'s output.

    ``result`` is None for one protocol (no report, no run); ``shown`` is what the console
    table reads either way. ``files`` are the report's files (``{name: path}``)."""

    payload: dict[str, Any]
    result: ModelResult | None
    shown: ModelResult
    evals: dict[str, ProtocolEvaluation]
    title: str
    synthetic: bool
    checks: list[Check] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None


def check_request(req: EvalRequest) -> list[float]:
    """The request's own faults, before any model loads; the AutoAttack budgets."""
    if req.protocol != "both" and req.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {req.protocol!r}; choose transfer, whitebox or both")
    if req.out is not None and req.protocol != "both":
        raise ValueError("--out writes the grid's report, which needs --protocol both")
    return ev.eps_list(req.autoattack_eps, "--autoattack-eps") if req.autoattack_eps else []


def run_evaluation(
    req: EvalRequest,
    *,
    on_point: Callable[[Any], None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Evaluation:
    """Evaluate ``req.model`` as ``skinadv evaluate`` does (see the module).

    Args:
        req: the model and the options.
        on_point: called with each AutoAttack comparison as it finishes (progress).
        tags: extra tags for the MLflow run (e.g. the Prefect flow run's id).

    Returns:
        The evaluation: JSON payload, result, checks, report files, MLflow run id.

    Raises:
        ValueError: bad input (model, data, options), one line.
    """
    protocols = PROTOCOLS if req.protocol == "both" else (req.protocol,)
    aa_eps = check_request(req)
    model = req.model
    net, meta = model_sources.load(
        model, weights=req.weights, classes=req.classes, normalize=req.normalize
    )
    cfg = experiment_config(req.preset, list(req.overrides), req.data, meta.get("data"))
    cfg = ev.robust_config(
        cfg, eps=req.eps, attacks=req.attacks, targeted=req.targeted, targeted_eps=req.targeted_eps
    )
    if aa_eps:
        from skinadv.evaluation.autoattack import reference_autoattack

        try:
            reference_autoattack()
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    device = select_device(cfg.train.device)
    net.to(device)
    model_sources.check(net, meta, cfg.data.size, f"--model {model}")
    prep = prepare_data(cfg.data)
    check_data(meta, cfg, prep, f"--model {model}")
    method, fraction = exp.model_cell(meta)
    cell = cell_of(meta, method, fraction)
    seed = int(meta.get("seed", cfg.train.seed))  # the model's: it seeds the attacks
    source, source_path, source_seed = net, model, seed
    source_model = req.source_model
    if source_model is not None and "transfer" in protocols:
        what = f"--source-model {source_model}"
        source, src_meta = model_sources.load(str(source_model))  # any source, as --model
        source.to(device)
        model_sources.check(source, src_meta, cfg.data.size, what)
        check_data(src_meta, cfg, prep, what)
        source_path = source_model
        source_seed = int(src_meta.get("seed", seed))  # as the grid crafts them
        if meta.get("vanilla_hash") not in (None, src_meta.get("config_hash")):
            console.print(f"[yellow]note:[/] {source_model} is not {model}'s vanilla model")
    sets = None
    if "transfer" in protocols:
        sets = exp.transfer_sets(cfg, source, prep.test, seed=source_seed)
    both, result = protocols == PROTOCOLS, None
    curve, targeted_points = (), ()
    if both and (source is net or method is not None):
        # the grid's path (robust curve and targeted attacks included); a vanilla model's
        # own transfer sets are its white-box attacks
        result = exp.evaluate_both(
            cfg, net, prep.test, sets, method=method, fraction=fraction, seed=seed, cell=cell
        )
    else:  # one protocol, or a vanilla model scored on another model's transfer sets
        evals = {
            p: exp.score_protocol(cfg, net, prep.test, p, sets=sets, seed=seed) for p in protocols
        }
        n = cfg.robust.n_images
        curve = tuple(exp.robustness_curve(cfg, net, prep.test, seed=seed, n_images=n))
        targeted_points = tuple(exp.targeted_attacks(cfg, net, prep.test, seed=seed))
        if both:
            result = ModelResult(
                cell, seed, method=method, fraction=fraction, curve=curve,
                targeted=targeted_points, **evals,
            )  # fmt: skip
    flags: list[str] = []
    extra: dict[str, float] = {}
    if aa_eps:
        extra, flags = ev.autoattack_metrics(
            cfg, net, prep.test, aa_eps, cell=cell, seed=seed, device=device, on_point=on_point
        )
        if result is not None:
            result = dataclasses.replace(result, extra=extra)
    evals = result.evaluations() if result else evals
    checks = sanity_checks([result]) if result else []  # the checks compare protocols
    context = {
        "model": f"{model} ({meta['source']})",
        "config hash": meta.get("config_hash") or "-",
        "preset": cfg.name,
        "data": f"{cfg.data.spec} (fingerprint {prep.fingerprint}, {len(prep.test)} test images)",
        "transfer source": str(source_path),
        "robust curve": (
            f"{', '.join(map(eps_text, cfg.robust.eps))}; worst case over "
            f"{' + '.join(cfg.robust.attacks)} on {cfg.robust.n_images or 'all'} test images"
            if cfg.robust.eps
            else "none"
        ),
    }
    files: dict[str, Path] = {}
    # the model as the report and the MLflow run name it: a skinadv model by its cell and
    # seed, another by its source (it sits where the grid's vanilla CNN does)
    kind = f"{cell}, seed {seed}" if meta["source"] == "skinadv" else meta["source"]
    subject = f"{Path(str(model)).name} ({kind})"
    if req.out is not None and result is not None:
        title = f"skinadv evaluate: {subject}, preset {cfg.name}"
        files = ev.write_report(
            result, req.out, title=title, context=context, checks=checks, subject=subject
        )
    run_id = None
    if ev.mlflow_configured() and result is not None:
        params = {
            "model": str(model),
            "model_source": meta["source"],
            "model_config_hash": meta.get("config_hash") or "none",
            "cell": cell,
            "seed": seed,
            "preset": cfg.name,
            "data_fingerprint": prep.fingerprint,
            "n_test": len(prep.test),
            "robust": cfg.robust.model_dump(),
            "attacks": exp.attack_specs(cfg),
            "autoattack_eps": aa_eps,
            "code_version": exp.__version__,
        }
        run_tags = {"skinadv.model_config_hash": meta.get("config_hash") or "none", **(tags or {})}
        pages = [files[k] for k in ("report.md", "report.html") if k in files]
        run_id = ev.log_run(
            req.experiment, result, params=params, tags=run_tags, files=pages,
            name=f"evaluate {subject}",
        )  # fmt: skip
    # ModelResult.to_dict(); for one protocol, the same shape with that protocol alone
    payload = result.to_dict() if result else {"cell": cell, "seed": seed}
    if result is None:
        payload |= {"method": method, "fraction": fraction, "run_id": None}
        payload["evaluation"] = {p: e.to_dict() for p, e in evals.items()}
        payload["curve"] = [p.to_dict() for p in curve]
        payload["targeted"] = [t.to_dict() for t in targeted_points]
        payload["extra"] = extra
    payload |= {
        "model": str(model),
        "model_source": meta["source"],
        "config_hash": meta.get("config_hash"),
        "source_model": str(source_path),
        "n_test": len(prep.test),
        "synthetic": prep.test.synthetic,
        "attacks": exp.attack_specs(cfg),
        "robust": cfg.robust.model_dump(),
        "results": {
            p: {
                k: short(m) | {"confusion_matrix": m["confusion_matrix"]}
                for k, m in e.metrics.items()
            }
            for p, e in evals.items()
        },
        "checks": [c.as_dict() for c in checks],
        "autoattack_flags": flags,
        "report": {k: str(v) for k, v in files.items() if k in ("report.md", "report.html")},
        "mlflow_run_id": run_id,
    }
    first = next(iter(evals.values()))
    shown = result or ModelResult(
        cell, seed, first, first, curve=curve, targeted=targeted_points, extra=extra
    )
    title = (
        f"{Path(str(model)).name}: {cell} (seed {seed}, config {meta.get('config_hash')}) on "
        f"{len(prep.test)} test images (transfer source: {Path(str(source_path)).name})"
    )
    return Evaluation(
        payload,
        result,
        shown,
        dict(evals),
        title,
        prep.test.synthetic,
        checks=list(checks),
        flags=flags,
        files=files,
        run_id=run_id,
    )


def registered_versions(name: str, which: str = "newest") -> list[str]:
    """A registered MLflow model's versions as ``models:/NAME/VERSION`` URIs: the newest
    (highest version number) alone, or all of them, oldest first.

    Raises:
        ValueError: no ``MLFLOW_TRACKING_URI``, or no version of ``name`` there (one line).
    """
    if which not in ("newest", "all"):
        raise ValueError(f"versions {which!r}: choose newest or all")
    if not ev.mlflow_configured():
        raise ValueError(
            f"registered model {name!r}: set MLFLOW_TRACKING_URI to the MLflow that holds it"
        )
    from skinadv import tracking

    quoted = name.replace("'", "\\'")
    found = tracking.client().search_model_versions(f"name = '{quoted}'")
    versions = sorted(int(v.version) for v in found)
    if not versions:
        raise ValueError(
            f"registered model {name!r} has no versions in MLflow at {tracking.tracking_uri()}"
        )
    return [f"models:/{name}/{v}" for v in (versions[-1:] if which == "newest" else versions)]


__all__ = ["EvalRequest", "Evaluation", "check_request", "registered_versions", "run_evaluation"]
