"""MLflow adapter: with skinadv.tracking_ui and skinadv.stack, the only modules importing mlflow.

Layout: one experiment per grid name; a parent run per grid invocation; one child run per
cell (and one for vanilla). A child run counts as done only when it is FINISHED *and* has
the tag ``skinadv.complete=true`` (set after its metrics and model are logged), so a crash
at any point never leaves a half-logged run that a rerun would reuse or count twice.

One owner per run: ``owned_run`` starts a run and ends it in the same process (FINISHED and
complete, FAILED on an error, KILLED on Ctrl-C / SIGTERM); nothing re-opens a run. A
model's run is also its owner's lease on the model (``skinadv.tracking_lease``: a
heartbeat tag, one live owner per config hash across grids and hosts). An attempt that
dies without ending its run (a Ray worker SIGKILLed, a node lost) leaves it RUNNING until
its lease expires: the next claimant marks it KILLED, and so does the end of its grid
(``kill_unfinished``). Models: a state dict + JSON config, and a pt2 MLflow model; no pickle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# MLflow prints "View run ... at: URL" on stdout at every run end: a grid is 14 of them.
# The UI addresses are shown once by the CLI instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

TAG_KIND = "skinadv.kind"  # parent | vanilla | cell
TAG_HASH = "skinadv.config_hash"
TAG_CELL = "skinadv.cell"
TAG_COMPLETE = "skinadv.complete"
TAG_CELLS = "skinadv.cells"  # on old parents; now tracking_ui.CELLS_FILE
TAG_PARENT = "mlflow.parentRunId"
TAG_STAGE = "skinadv.stage"
TAG_ERROR = "skinadv.error"
TAG_FLOW_RUN = "skinadv.prefect_flow_run_id"
TAG_WORKER = "skinadv.worker"  # host:pid of the owning process
WEIGHTS_DIR = "weights"
EVALUATION_FILE = "evaluation.json"
TRANSFER_DIR = "transfer_sets"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def worker() -> str:
    """``host:pid`` of this process: the ``skinadv.worker`` tag of the runs it owns."""
    return f"{socket.gethostname()}:{os.getpid()}"


def client():
    import mlflow

    return mlflow.MlflowClient()


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_id(name: str) -> str:
    """Get or create the experiment (safe when several processes race to create it).

    New experiments are tagged as model-training ones, so MLflow 3's UI opens them on
    their training runs rather than on its GenAI trace overview.
    """
    c = client()
    for attempt in range(5):
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created meanwhile by another process: read it back
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not create or find MLflow experiment {name!r}")


def _str_params(params: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000]
        for k, v in params.items()
    }


def start_run(
    experiment: str,
    *,
    name: str,
    kind: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run (child of ``parent_run_id`` when given); return its id."""
    from mlflow.entities import Param

    c = client()
    # which process owns the run: an operator (or a fault test) can find it
    all_tags = {TAG_KIND: kind, "mlflow.runName": name, TAG_WORKER: worker(), **(tags or {})}
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
    run = c.create_run(experiment_id(experiment), run_name=name, tags=all_tags)
    rid = run.info.run_id
    if params:
        items = [Param(k, v) for k, v in _str_params(params).items()]
        for i in range(0, len(items), 90):
            c.log_batch(rid, params=items[i : i + 90])
    return rid


def log_metrics(run_id: str, metrics: Mapping[str, float], *, step: int | None = None) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
    c = client()
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_figure(run_id: str, figure, artifact_file: str) -> None:
    """Log a matplotlib figure as an image, then close it (pyplot keeps figures alive)."""
    import matplotlib.pyplot as plt

    try:
        client().log_figure(run_id, figure, artifact_file)
    finally:
        plt.close(figure)


def log_artifact_files(
    run_id: str, paths: list[str | Path], artifact_path: str | None = None
) -> None:
    c = client()
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)


def finish_run(run_id: str, *, complete: bool = True, status: str = "FINISHED") -> None:
    """End a run; a complete one gets the tags that say so (``skinadv.stage: done``)."""
    c = client()
    if complete:
        c.set_tag(run_id, TAG_STAGE, "done")
        c.set_tag(run_id, TAG_COMPLETE, "true")
    c.set_terminated(run_id, status)


def fail_run(run_id: str, reason: str = "", *, status: str = "FAILED") -> None:
    """End a run as FAILED (or KILLED), with the reason as the ``skinadv.error`` tag."""
    c = client()
    if reason:
        c.set_tag(run_id, TAG_ERROR, reason[:4000])
    c.set_terminated(run_id, status)


@contextmanager
def owned_run(experiment: str, **kwargs) -> Iterator[str]:
    """Start a run, yield its id, and end it here: FINISHED + complete when the body returns,
    FAILED when it raises, KILLED on KeyboardInterrupt / SystemExit (Ctrl-C, SIGTERM)."""
    rid = start_run(experiment, **kwargs)
    try:
        yield rid
    except (KeyboardInterrupt, SystemExit) as exc:
        fail_run(rid, f"interrupted ({type(exc).__name__})", status="KILLED")
        raise
    except BaseException as exc:
        fail_run(rid, f"{type(exc).__name__}: {exc}")
        raise
    finish_run(rid)


def set_stage(run_id: str, stage: str) -> None:
    """What the run's owner is doing now (``training``, ``scoring``, ``logging``)."""
    client().set_tag(run_id, TAG_STAGE, stage)


def kill_unfinished(experiment: str, parent_run_id: str, *, reason: str) -> list[str]:
    """Mark KILLED every child run of ``parent_run_id`` that is still RUNNING."""
    return _kill(experiment, f"tags.`{TAG_PARENT}` = '{parent_run_id}'", reason)


def kill_interrupted(experiment: str, *, reason: str, wait_s: float = 10.0) -> list[str]:
    """After an interrupt: mark KILLED the RUNNING child runs of every grid this process
    started (parent runs tagged with its ``worker()``), once the processes that own them
    on this host have exited (waiting ``wait_s`` at most: a run's owner could still end it
    FINISHED). Returns their ids."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = client().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'parent' and tags.`{TAG_WORKER}` = '{worker()}'",
    )
    host = socket.gethostname()
    killed = []
    for parent in parents:
        where = f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'"
        running = client().search_runs(
            [exp.experiment_id], filter_string=f"{where} and attributes.status = 'RUNNING'"
        )
        deadline = time.monotonic() + wait_s
        for run in running:
            owner_host, pid = _owner(run)
            while owner_host == host and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        killed += _kill(experiment, where, reason)
    return killed


def kill_orphans(experiment: str, *, reason: str) -> list[str]:
    """Mark KILLED every RUNNING run whose owner was a process of this host that is gone
    (a grid whose tracking server died before it could end its runs); returns their ids.
    Runs owned elsewhere are left alone: nothing here can tell whether their owner lives."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    running = client().search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )

    def orphaned(run) -> bool:
        owner_host, pid = _owner(run)
        return owner_host == host and not _alive(pid)

    return _mark_killed([r for r in running if orphaned(r)], reason)


def _owner(run) -> tuple[str, str]:
    """(host, pid) of the process that owns ``run`` (its ``skinadv.worker`` tag)."""
    owner_host, _, pid = run.data.tags.get(TAG_WORKER, "").rpartition(":")
    return owner_host, pid


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _kill(experiment: str, where: str, reason: str) -> list[str]:
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client().search_runs(
        [exp.experiment_id], filter_string=f"{where} and attributes.status = 'RUNNING'"
    )
    return _mark_killed(runs, reason)


def _mark_killed(runs, reason: str) -> list[str]:
    """End each run KILLED with ``reason``; returns their ids."""
    for run in runs:
        fail_run(run.info.run_id, reason, status="KILLED")
        log.info("marked run %s (%s) KILLED: %s", run.info.run_id, run.info.run_name, reason)
    return [r.info.run_id for r in runs]


def find_complete(experiment: str, config_hash: str):
    """The newest complete run with this config hash, or None."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client().search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_COMPLETE}` = 'true' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_url(run_id: str, experiment_id: str | None = None) -> str:
    """The run's page in the MLflow UI (or its ``runs:/`` URI when the store is not a
    server); ``experiment_id`` saves a lookup when the caller knows it."""
    uri = tracking_uri().rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    exp_id = experiment_id or client().get_run(run_id).info.experiment_id
    return f"{uri}/#/experiments/{exp_id}/runs/{run_id}"


def runs_view_url(experiment_id: str) -> str | None:
    """The experiment's runs table in the MLflow UI in its "Model training" view (MLflow 3
    opens an experiment in its GenAI view, which shows no runs); None without a server."""
    uri = tracking_uri().rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    c = client()
    for k, v in tags.items():
        c.set_tag(run_id, k, v)


def download_weights(run_id: str, dst: str | Path) -> Path:
    """Download the run's state dict + config JSON; return the ``.pt`` path."""
    out = Path(client().download_artifacts(run_id, WEIGHTS_DIR, str(dst)))
    pts = sorted(out.glob("*.pt"))
    if not pts:
        raise FileNotFoundError(f"run {run_id} has no state dict under {WEIGHTS_DIR}/")
    return pts[0]


def latest_parent(experiment: str):
    """The newest FINISHED parent run of an experiment (for ``skinadv report``)."""
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri()}")
    runs = client().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'parent' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no finished grid run")
    return runs[0]


def log_result(run_id: str, payload: Mapping[str, Any]) -> None:
    """The run's ``evaluation.json``: ``ModelResult.to_dict()`` (+ the vanilla sweeps)."""
    client().log_text(run_id, json.dumps(payload), EVALUATION_FILE)


#: metrics logged on a model's run after it finished (``skinadv verify``'s AutoAttack and
#: the ensemble on the same images): they reach the report as ``ModelResult.extra``
EXTRA_PREFIXES = ("autoattack_", "ensemble_")


def load_result(run_id: str):
    """A finished run's ``ModelResult`` (with the metrics ``skinadv verify`` logged on it
    later as ``extra``) and its sanity sweeps (None unless vanilla)."""
    from skinadv.results import ModelResult

    with tempfile.TemporaryDirectory(prefix="skinadv-eval-") as tmp:
        path = client().download_artifacts(run_id, EVALUATION_FILE, tmp)
        payload = json.loads(Path(path).read_text())
    result = ModelResult.from_dict(payload, run_id=run_id)
    later = {
        k: v
        for k, v in client().get_run(run_id).data.metrics.items()
        if k.startswith(EXTRA_PREFIXES)
    }
    if later:
        result = dataclasses.replace(result, extra={**result.extra, **later})
    return result, payload.get("sweeps")


def load_results(run_ids: list[str]) -> tuple[list, dict | None]:
    """Report inputs from MLflow alone: one ModelResult per run, and the sanity sweeps."""
    results, sweeps = [], None
    for rid in run_ids:
        result, s = load_result(rid)
        results.append(result)
        sweeps = sweeps or s
    return results, sweeps


def download_artifact(run_id: str, path: str, dst: str | Path) -> Path:
    """One artifact of a run, downloaded into ``dst``."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(client().download_artifacts(run_id, path, str(dst)))


# --- Model Registry -------------------------------------------------------------------------
# A registered version points at a run's ``weights/`` artifact folder (state dict + JSON
# config), not at an MLflow "MLmodel": download it with ``models:/<name>@<alias>``.
CHAMPION_ALIAS = "robust-champion"


def _missing(exc: Exception) -> bool:
    """Whether an MLflow error means "no such registered model / version"."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _ensure_registered_model(name: str) -> None:
    """Create the registered model unless it exists (safe when another process races)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        c.get_registered_model(name)
        return
    except MlflowException as exc:
        if not _missing(exc):
            raise
    try:
        c.create_registered_model(
            name,
            description=(
                f"skinadv classifiers: each version is one run's {WEIGHTS_DIR}/ folder (a "
                "state dict .pt + its .pt.json config, loaded with torch.load(weights_only="
                f"True)); the '{CHAMPION_ALIAS}' alias marks the current most robust one."
            ),
        )
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_of_run(name: str, run_id: str):
    """The (oldest) version of ``name`` registered from ``run_id``, or None."""
    # filter on the run id only (hex, safe to quote); the model name is matched here
    found = [
        v
        for v in client().search_model_versions(f"run_id = '{run_id}'")
        if v.name == name and v.run_id == run_id
    ]
    return min(found, key=lambda v: int(v.version)) if found else None


def register_champion(
    name: str,
    run_id: str,
    *,
    alias: str = CHAMPION_ALIAS,
    description: str,
    tags: Mapping[str, str],
) -> str:
    """Register the run's ``weights/`` folder as a version of ``name`` and point ``alias``
    at it; return the version. ``description`` is the model card, ``tags`` its figures.

    Idempotent: a version already registered from ``run_id`` is reused (its description
    and tags replaced, stale non-``mlflow.`` tags removed) rather than duplicated.
    """
    c = client()
    _ensure_registered_model(name)
    str_tags = {str(k): str(v) for k, v in tags.items()}
    mv = _version_of_run(name, run_id)
    if mv is None:
        source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{WEIGHTS_DIR}"
        mv = c.create_model_version(
            name, source=source, run_id=run_id, description=description, tags=str_tags
        )
        log.info("registered %s version %s from run %s", name, mv.version, run_id)
    else:
        c.update_model_version(name, mv.version, description=description)
        for key in set(mv.tags) - set(str_tags):
            if not key.startswith("mlflow."):
                c.delete_model_version_tag(name, mv.version, key)
        for key, value in str_tags.items():
            c.set_model_version_tag(name, mv.version, key, value)
        log.info("reused %s version %s of run %s", name, mv.version, run_id)
    c.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def champion(name: str, alias: str = CHAMPION_ALIAS) -> tuple[str, str, dict[str, str]] | None:
    """The aliased version of ``name`` as ``(version, run_id, tags)``, or None when the
    registered model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        model = c.get_registered_model(name)
    except MlflowException as exc:
        if _missing(exc):
            return None
        raise
    version = (model.aliases or {}).get(alias)
    if version is None:
        return None
    mv = c.get_model_version(name, str(version))
    return str(mv.version), mv.run_id, dict(mv.tags)
