"""``skinadv evaluate``: the grid's robustness evaluation of one model, from any source.

The experiment CLI (``skinadv.commands.experiment``) registers it beside ``train`` and
``attack``; its options beyond the two protocols and its report and MLflow run are
``skinadv.commands.evaluation``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from skinadv import experiment as exp
from skinadv.commands import (
    DataOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    console,
    model_sources,
    print_json,
    stdout_console,
    user_errors,
)
from skinadv.commands import evaluation as ev
from skinadv.commands.experiment_shared import (
    ClassesOpt,
    ModelOpt,
    NormalizeOpt,
    SourceModelOpt,
    WeightsOpt,
    cell_of,
    check_data,
    experiment_config,
    metrics_table,
    pct,
    short,
    warn_synthetic,
)
from skinadv.evaluation import sanity_checks
from skinadv.models import load_model
from skinadv.results import PROTOCOLS, ModelResult, eps_text
from skinadv.training import prepare_data, select_device


def evaluate(
    model: ModelOpt,
    data: DataOpt,
    protocol: Annotated[
        str,
        typer.Option(
            help="transfer (sets crafted against --source-model), whitebox "
            "(attacks re-run against --model), or both."
        ),
    ] = "both",
    source_model: SourceModelOpt = None,
    eps: ev.CurveEpsOpt = None,
    attacks: ev.CurveAttacksOpt = None,
    targeted: ev.TargetedOpt = None,
    targeted_eps: ev.TargetedEpsOpt = None,
    autoattack_eps: ev.AutoAttackEpsOpt = None,
    out: ev.ReportOutOpt = None,
    experiment: ev.EvalExperimentOpt = "skinadv-grid",
    preset: PresetOpt = "quick",
    set_: SetOpt = None,
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    normalize: NormalizeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The grid's robustness evaluation of one model: clean metrics with per-class recall,
    FGSM and PGD under the transfer / white-box protocols, the worst-case robust curve,
    targeted attacks, and AutoAttack at --autoattack-eps; with --out the grid's report, and
    with MLFLOW_TRACKING_URI set a run with the grid cells' metric names.

    With --json: ``ModelResult.to_dict()`` (only the protocols asked for), plus the model,
    its transfer source, flat ``results`` and the sanity ``checks``.
    """
    with user_errors():
        protocols = PROTOCOLS if protocol == "both" else (protocol,)
        if protocol != "both" and protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose transfer, whitebox or both")
        if out is not None and protocol != "both":
            raise ValueError("--out writes the grid's report, which needs --protocol both")
        aa_eps = ev.eps_list(autoattack_eps, "--autoattack-eps") if autoattack_eps else []
        net, meta = model_sources.load(model, weights=weights, classes=classes, normalize=normalize)
        cfg = experiment_config(preset, set_, data, meta.get("data"))
        cfg = ev.robust_config(
            cfg, eps=eps, attacks=attacks, targeted=targeted, targeted_eps=targeted_eps
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
        if source_model is not None and "transfer" in protocols:
            source, src_meta = load_model(source_model, device)
            exp.check_model_data(src_meta, cfg, prep.fingerprint, f"--source-model {source_model}")
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
                p: exp.score_protocol(cfg, net, prep.test, p, sets=sets, seed=seed)
                for p in protocols
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
        if aa_eps:

            def on_point(c: Any) -> None:
                if not json_out:
                    console.print(
                        f"AutoAttack {c.autoattack.n} images at {c.eps:.4g}: "
                        f"{100 * c.autoattack.accuracy:.1f} % (ensemble "
                        f"{100 * c.ensemble.accuracy:.1f} %) in {c.autoattack.seconds:.0f} s",
                        highlight=False,
                    )

            extra, flags = ev.autoattack_metrics(
                cfg, net, prep.test, aa_eps, cell=cell, seed=seed, device=device,
                on_point=on_point,
            )  # fmt: skip
            if result is not None:
                result = dataclasses.replace(result, extra=extra)
        else:
            extra = {}
        evals = result.evaluations() if result else evals
        checks = sanity_checks([result]) if result else []  # the checks compare protocols
        context = {
            "model": f"{model} ({meta['source']})",
            "config hash": meta.get("config_hash") or "-",
            "preset": cfg.name,
            "data": f"{cfg.data.spec} (fingerprint {prep.fingerprint}, {len(prep.test)} test "
            f"images)",
            "transfer source": str(source_path),
            "robust curve": (
                f"{', '.join(map(eps_text, cfg.robust.eps))}; worst case over "
                f"{' + '.join(cfg.robust.attacks)} on "
                f"{cfg.robust.n_images or 'all'} test images"
                if cfg.robust.eps
                else "none"
            ),
        }
        files: dict[str, Path] = {}
        if out is not None and result is not None:
            title = f"skinadv evaluate: {cell} ({Path(str(model)).name}, preset {cfg.name})"
            files = ev.write_report(result, out, title=title, context=context, checks=checks)
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
            tags = {"skinadv.model_config_hash": meta.get("config_hash") or "none"}
            pages = [files[k] for k in ("report.md", "report.html") if k in files]
            run_id = ev.log_run(experiment, result, params=params, tags=tags, files=pages)
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
    if json_out:
        print_json(payload)
        return
    first = next(iter(evals.values()))
    rows = [("clean", first.metrics["clean"])]
    rows += [(f"{p} / {a}", e.metrics[a]) for p, e in evals.items() for a in e.attack_names]
    shown = result or ModelResult(
        cell, seed, first, first, curve=curve, targeted=targeted_points, extra=extra
    )
    rows += ev.robust_rows(shown)
    title = (
        f"{Path(str(model)).name}: {cell} (seed {seed}, config {meta.get('config_hash')}) on "
        f"{len(prep.test)} test images (transfer source: {Path(str(source_path)).name})"
    )
    stdout_console.print(metrics_table(title, rows))
    recall = first.metrics["clean"]["recall"]
    stdout_console.print(
        "clean recall per class: " + ", ".join(f"{k} {pct(v)} %" for k, v in recall.items())
    )
    for line in ev.targeted_lines(shown):
        stdout_console.print(line)
    for c in checks:
        style = "green" if c.ok else "yellow"
        stdout_console.print(f"[{style}]{c.status}[/] {c.name}: {c.detail}", soft_wrap=True)
    for f in flags:
        stdout_console.print(f"[yellow]flag:[/] {f}", soft_wrap=True)
    if files:
        stdout_console.print(f"report -> {files['report.html']}")
    if run_id:
        from skinadv import tracking

        stdout_console.print(f"MLflow run {run_id}: {tracking.run_url(run_id)}")
    warn_synthetic(prep)
