"""``skinadv grid`` (the main job) and ``skinadv report`` (tables from MLflow alone).

Neither imports Prefect before the services are up: Prefect reads ``PREFECT_API_URL`` at
import, so ``flows.grid`` is imported inside the command, after ``Stack.start()``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from skinadv.commands import (
    DataOpt,
    ExperimentOpt,
    ForceOpt,
    FractionsOpt,
    MethodsOpt,
    PresetOpt,
    SeedsOpt,
    SetOpt,
    console,
    fail,
    has_mlflow,
)

app = typer.Typer(pretty_exceptions_enable=False)


def default_data() -> tuple[str, str]:
    """(spec, why): $SKINADV_DATA, else $SKINADV_HAM10000, else synthetic."""
    if os.environ.get("SKINADV_DATA"):
        return os.environ["SKINADV_DATA"], "from SKINADV_DATA"
    ham = os.environ.get("SKINADV_HAM10000")
    if ham and Path(ham).exists():
        return ham, "from SKINADV_HAM10000"
    return "synthetic:3000", "no HAM10000 location given (--data, SKINADV_DATA, SKINADV_HAM10000)"


def _split_list(text: str | None, kind=str) -> list | None:
    if not text:
        return None
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise fail(f"cannot read {text!r} as a comma-separated list ({exc})") from None


def _flush_prefect_logs(timeout_s: float = 10) -> None:
    """Send Prefect's buffered logs while its server is still up (else they are lost)."""
    try:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout_s)
    except Exception:  # logging must never turn a finished grid into a failure
        pass


MIN_FREE_MB = 1024  # $SKINADV_MIN_FREE_MB; the quick preset on all of HAM10000 wrote 810 MB
FULL_MB = 16  # less free than this after a failure: the disk filled up


def _free_mb(path: Path) -> float:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return float("inf")  # unknown: not the reason


def _check_run_dir(run_dir: Path) -> None:
    """Before anything starts: the run folder can be written and has room, else one line
    and exit 1 (a folder this made is removed again: nothing is left half-written)."""
    made = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir) as probe:
            probe.write(b"skinadv")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise fail(
            f"cannot write to the run folder {run_dir} ({exc.strerror or exc}): pick another "
            "--run-dir",
            1,
        ) from None
    need = float(os.environ.get("SKINADV_MIN_FREE_MB") or MIN_FREE_MB)
    free = _free_mb(run_dir)
    if free < need:
        if made:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise fail(
            f"only {free:.0f} MB free for the run folder {run_dir}, a grid needs {need:.0f} MB "
            "(SKINADV_MIN_FREE_MB): free some space or pick another --run-dir",
            1,
        )


def _end_orphans(experiment: str) -> None:
    """Mark KILLED the runs an earlier grid on this machine left RUNNING (its tracking
    server was down when it stopped, so it could not end them)."""
    from skinadv import tracking

    try:
        tracking.kill_orphans(experiment, reason="its owner ended without ending it")
    except Exception as exc:  # the grid itself will say what is wrong with MLflow
        logging.getLogger(__name__).warning("could not look for orphaned runs: %s", exc)


def _end_interrupted(stack, experiment: str) -> None:
    """After Ctrl-C or SIGTERM: stop the work first (this driver's Ray job, and a Ray head
    started here with its workers), then mark KILLED the runs it left RUNNING, so that
    none stays RUNNING; the services stop after this, when the stack's block ends."""
    import ray

    from skinadv import tracking

    _flush_prefect_logs(timeout_s=2)
    ray.shutdown()  # Ray ends this job's tasks (a found head's workers too)
    stack.stop_service("ray")
    try:
        tracking.kill_interrupted(experiment, reason="the grid was interrupted")
    except Exception as exc:  # MLflow down too: their leases expire, the next claim marks them
        logging.getLogger(__name__).warning("could not mark interrupted runs KILLED: %s", exc)


class _RedactingFormatter(logging.Formatter):
    """Log lines with every URL in them (and in their tracebacks) without credentials."""

    def format(self, record: logging.LogRecord) -> str:
        from skinadv.stack.redact import redact_text

        return redact_text(super().format(record))


def _logs_to_file(path: Path) -> None:
    """Prefect's, Ray's, MLflow's and skinadv's log records go to ``path``, not the screen
    (Prefect's console handler sits on the root logger, Ray's on the ``ray`` logger)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("", "ray"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.addHandler(handler)
    logging.getLogger("skinadv").setLevel(logging.INFO)
    logging.captureWarnings(True)


def _print_outcome(outcome, seconds: float, links: list[str] = ()) -> None:
    from skinadv.report import results_table

    console.print(results_table(outcome.results))
    for check in outcome.checks:
        colour = "green" if check.ok else "yellow"
        cells = f" [dim]({', '.join(check.cells)})[/]" if check.cells else ""
        console.print(
            f"[{colour}]{check.status.upper()}[/] {check.name}: {check.detail}{cells}",
            highlight=False,
            soft_wrap=True,
        )
    if len({r.seed for r in outcome.results}) < 2:
        console.print("[yellow]note:[/] one seed is not a result: rerun with --seeds 0,1,2")
    console.print(
        f"grid done in {seconds:.0f} s: {len(outcome.trained)} trained, "
        f"{len(outcome.reused)} reused; report: {outcome.out_dir}/report.html",
        soft_wrap=True,
    )
    for line in links:
        console.print(line, soft_wrap=True, highlight=False)


def _links(outcome, run_dir: Path, started: bool) -> list[str]:
    """Deep links into the MLflow and Prefect UIs, read while the services are still up;
    services the grid started come back on the same ports with ``skinadv up --run-dir``."""
    from skinadv import tracking

    out = []
    try:
        run = tracking.client().get_run(outcome.parent_run_id)
        view = tracking.runs_view_url(run.info.experiment_id)
        if view:
            out += [
                f"MLflow runs: {view}",
                f"MLflow parent run: {tracking.run_url(run.info.run_id)}",
            ]
    except Exception:  # noqa: BLE001 - links are a convenience
        pass
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if api.endswith("/api") and outcome.flow_run_id:
        out.append(f"Prefect flow run: {api[: -len('/api')]}/runs/flow-run/{outcome.flow_run_id}")
    if started:
        out.append(f"browse again: skinadv up --run-dir {run_dir}")
    return out


@app.command("grid")
def grid(
    data: DataOpt = None,
    preset: PresetOpt = "quick",
    methods: MethodsOpt = None,
    fractions: FractionsOpt = None,
    seeds: SeedsOpt = None,
    set_: SetOpt = None,
    experiment: ExperimentOpt = "skinadv-grid",
    force: ForceOpt = False,
    run_dir: Annotated[
        Path,
        typer.Option(help="Folder for services, work files and report.", envvar="SKINADV_RUN_DIR"),
    ] = Path("runs/grid"),
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default RUN_DIR/report/EXPERIMENT).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect, Ray and MLflow logs too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the methods x fractions grid: Prefect flow, Ray workers, MLflow runs, report."""
    from skinadv.config import describe_error, grid_config
    from skinadv.data import DataError, detect

    why = "given"
    if data is None:
        data, why = default_data()
    params = {
        "preset": str(preset),
        "data": data,
        "methods": _split_list(methods),
        "fractions": _split_list(fractions, float),
        "seeds": _split_list(seeds, int),
        "overrides": set_ or [],
        "experiment": experiment,
        "force": force,
        "workdir": str(run_dir.resolve() / "work"),
        "out_dir": str(out.resolve()) if out else None,
    }
    try:
        cfg = grid_config(
            **{
                k: params[k]
                for k in ("preset", "data", "methods", "fractions", "seeds", "overrides")
            }
        )
        kind = detect(cfg.data.spec)
    except (DataError, ValueError) as exc:
        raise fail(describe_error(exc)) from None
    label = "SYNTHETIC data (not real lesions)" if kind == "synthetic" else f"{kind} data"
    console.print(
        f"[bold]grid[/]: preset {cfg.name}, {label}: {cfg.data.spec} ({why}); "
        f"{len(cfg.methods)} methods x {len(cfg.fractions)} fractions x "
        f"{len(cfg.seeds)} seed(s)",
        soft_wrap=True,
    )

    from skinadv.stack import Stack, StackError
    from skinadv.stack.process import interrupt_exit_code, no_interrupts, reachable
    from skinadv.stack.redact import redact

    run_dir = run_dir.resolve()
    _check_run_dir(run_dir)
    log_file = run_dir / "logs" / "grid.log"
    t0 = time.perf_counter()
    tracking_uri = None
    try:
        with Stack(run_dir, console=console) as stack:
            stack.print_addresses(console)
            tracking_uri = stack.mlflow_tracking_uri
            from flows.grid import GridParams, grid_flow, make_task_runner
            from skinadv.commands.progress import GridProgress
            from tasks.grid import model_label

            if not verbose:
                _logs_to_file(log_file)
                console.print(f"logs: {log_file} (--verbose shows them here)", soft_wrap=True)
            _end_orphans(experiment)
            runner = make_task_runner(
                stack.ray_address, stack.ray_runtime_env()["env_vars"], quiet=not verbose
            )
            if stack.owns_sigterm:  # SIGTERM unwinds the grid as Ctrl-C does
                from skinadv.commands.ray_runner import SigtermUnwindsRunner

                runner = SigtermUnwindsRunner(runner.address, runner.init_kwargs)
            name = f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
            labels = [
                label
                for s in cfg.seeds
                for label in [
                    *(
                        model_label(m, f, s)
                        for m, f in [(None, None), *itertools.product(cfg.methods, cfg.fractions)]
                    ),
                    *(f"{d.name} s{s}" for d in cfg.defences),
                ]
            ]
            from skinadv.commands.ray_errors import listener_to_log

            quiet = contextlib.nullcontext() if verbose else listener_to_log()
            try:
                with GridProgress(labels, name, console), quiet:  # Ray's errors: the log
                    outcome = grid_flow.with_options(task_runner=runner, flow_run_name=name)(
                        GridParams(**params)
                    )
                started = any(svc.started for svc in stack.services.values())
                links = _links(outcome, run_dir, started)
            except KeyboardInterrupt:
                with no_interrupts():  # a second Ctrl-C must not cut the clean-up short
                    _end_interrupted(stack, experiment)
                raise
            finally:
                _flush_prefect_logs()
    except StackError as exc:
        raise fail(str(exc), 1) from None
    except KeyboardInterrupt as exc:
        code = interrupt_exit_code(exc)
        what = "terminated (SIGTERM)" if code != 130 else "interrupted"
        console.print(
            f"{what}: services stopped, unfinished runs marked KILLED; rerun the same "
            "command to resume (finished models are reused)",
            soft_wrap=True,
        )
        raise typer.Exit(code) from None
    except Exception as exc:  # the flow failed; the tracebacks are in the log file
        where = f" (details: {log_file})" if not verbose else ""
        # the run folder, and the folder this machine's Ray node keeps weights in
        node_dir = Path(os.environ.get("SKINADV_NODE_DIR") or run_dir / "node")
        for name, folder in (("run folder", run_dir), ("Ray node folder", node_dir)):
            if _free_mb(folder) < FULL_MB:
                raise fail(
                    f"the disk of the {name} {folder} is full ({_free_mb(folder):.0f} MB "
                    f"free): free some space, then rerun the same command to resume "
                    f"(finished models are reused){where}",
                    1,
                ) from None
        if tracking_uri and not reachable(f"{tracking_uri}/health", timeout_s=10):
            raise fail(
                f"the MLflow tracking server at {redact(tracking_uri)} stopped answering "
                "(its client's retries ran out: MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR); rerun the same command to resume "
                f"(finished models are reused){where}",
                1,
            ) from None
        raise fail(f"grid failed: {describe_error(exc)}{where}", 1) from None
    seconds = time.perf_counter() - t0
    if as_json:
        print(
            json.dumps(
                {
                    "parent_run_id": outcome.parent_run_id,
                    "out_dir": outcome.out_dir,
                    "trained": outcome.trained,
                    "reused": outcome.reused,
                    "failed": [],
                    "records": [r.record() for r in outcome.results],
                    "report_files": outcome.files,
                    "seconds": round(seconds, 1),
                    "startup_seconds": stack.startup_seconds,
                }
            )
        )
        return
    _print_outcome(outcome, seconds, links)


@app.command("report")
def report(
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "skinadv-grid",
    run_dir: Annotated[
        Path,
        typer.Option(
            help="The grid's run folder (its MLflow is started "
            "when MLFLOW_TRACKING_URI is not set).",
            envvar="SKINADV_RUN_DIR",
        ),
    ] = Path("runs/grid"),
    out: Annotated[Path | None, typer.Option(help="Where to write the report.")] = None,
    parent_run: Annotated[
        str | None,
        typer.Option(
            help="A grid's parent run id (default: the newest finished one); a grid still "
            "running or interrupted is reported on the models it finished so far."
        ),
    ] = None,
) -> None:
    """Rebuild the tables and figures of the latest grid run from MLflow alone."""
    from skinadv.stack import Stack, StackError

    if not has_mlflow(run_dir):
        raise fail(
            f"no MLflow to read: set MLFLOW_TRACKING_URI or point --run-dir at a grid "
            f"run folder ({run_dir / 'mlflow.db'} does not exist)"
        )
    try:
        with Stack(run_dir, prefect=False, ray=False, console=console):
            from skinadv import tracking, tracking_ui
            from skinadv.evaluation.checks import sanity_checks
            from skinadv.report import build_report, save_report
            from skinadv.report.page import report_title

            try:
                if parent_run is None:
                    parent = tracking.latest_parent(experiment)
                else:
                    from mlflow.exceptions import MlflowException

                    try:
                        parent = tracking.client().get_run(parent_run)
                    except MlflowException:
                        raise ValueError(f"no MLflow run {parent_run!r}") from None
                results, sweeps = tracking.load_results(tracking_ui.cell_run_ids(parent))
            except ValueError as exc:
                raise fail(str(exc)) from None
            rep = build_report(
                results,
                title=report_title(experiment, parent.data.params.get("preset")),
                context={
                    "experiment": experiment,
                    "parent run": parent.info.run_id,
                    "data": parent.data.params.get("data", "?"),
                },
                checks=sanity_checks(results, sweeps),
                sweeps=sweeps,
            )
            dest = (out or run_dir / "report" / f"{experiment}-from-mlflow").resolve()
            save_report(rep, dest)
    except StackError as exc:
        raise fail(str(exc), 1) from None
    from skinadv.report import results_table

    console.print(results_table(results))
    for note in rep.notes:
        console.print(f"[yellow]note:[/] {note}")
    for flag in rep.table_flags.get("autoattack", []):  # AutoAttack's own checks
        console.print(f"WARN {flag}", markup=False, style="yellow")
    console.print(f"report rebuilt from MLflow: {dest}/report.html")
