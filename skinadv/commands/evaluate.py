"""``skinadv evaluate``: the grid's robustness evaluation of one model, from any source.

The experiment CLI (``skinadv.commands.experiment``) registers it beside ``train`` and
``attack``; its options beyond the two protocols and its report and MLflow run are
``skinadv.commands.evaluation``'s. The evaluation itself is ``evaluation_run.run_evaluation``,
which the evaluation flow's task (``tasks.evaluate``) calls too; this command prints it.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from skinadv.commands import (
    DataOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    console,
    print_json,
    stdout_console,
    user_errors,
)
from skinadv.commands import evaluation as ev
from skinadv.commands.evaluation_run import EvalRequest, run_evaluation
from skinadv.commands.experiment_shared import (
    ClassesOpt,
    ModelOpt,
    NormalizeOpt,
    SourceModelOpt,
    WeightsOpt,
    metrics_table,
    pct,
)


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
    on_point = None
    if not json_out:

        def on_point(c: Any) -> None:
            console.print(
                f"AutoAttack {c.autoattack.n} images at {c.eps:.4g}: "
                f"{100 * c.autoattack.accuracy:.1f} % (ensemble "
                f"{100 * c.ensemble.accuracy:.1f} %) in {c.autoattack.seconds:.0f} s",
                highlight=False,
            )

    req = EvalRequest(
        model=model, data=data, protocol=protocol, source_model=source_model, eps=eps,
        attacks=attacks, targeted=targeted, targeted_eps=targeted_eps,
        autoattack_eps=autoattack_eps, out=out, experiment=experiment, preset=preset,
        overrides=tuple(set_ or ()), weights=weights, classes=classes, normalize=normalize,
    )  # fmt: skip
    with user_errors():
        done = run_evaluation(req, on_point=on_point)
    if json_out:
        print_json(done.payload)
        return
    shown = done.shown
    rows = [("clean", shown.transfer.metrics["clean"])]
    rows += [(f"{p} / {a}", e.metrics[a]) for p, e in done.evals.items() for a in e.attack_names]
    rows += ev.robust_rows(shown)
    stdout_console.print(metrics_table(done.title, rows))
    recall = shown.transfer.metrics["clean"]["recall"]
    stdout_console.print(
        "clean recall per class: " + ", ".join(f"{k} {pct(v)} %" for k, v in recall.items())
    )
    for line in ev.targeted_lines(shown):
        stdout_console.print(line)
    for c in done.checks:
        style = "green" if c.ok else "yellow"
        stdout_console.print(f"[{style}]{c.status}[/] {c.name}: {c.detail}", soft_wrap=True)
    for f in done.flags:
        stdout_console.print(f"[yellow]flag:[/] {f}", soft_wrap=True)
    if done.files:
        stdout_console.print(f"report -> {done.files['report.html']}")
    if done.run_id:
        from skinadv import tracking

        stdout_console.print(f"MLflow run {done.run_id}: {tracking.run_url(done.run_id)}")
    if done.synthetic:
        console.print("[yellow]synthetic data: these numbers say nothing about HAM10000[/]")
