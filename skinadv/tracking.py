"""MLflow adapter: the one place (with stack.py) that imports mlflow.

Layout: one experiment per grid name; a parent run per grid invocation; one child run per
cell (and one for vanilla). A child run counts as done only when it is FINISHED *and* has
the tag ``skinadv.complete=true`` (set after its metrics and model are logged), so a crash
at any point never leaves a half-logged run that a rerun would reuse or count twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAG_KIND = "skinadv.kind"  # parent | vanilla | cell
TAG_HASH = "skinadv.config_hash"
TAG_CELL = "skinadv.cell"
TAG_COMPLETE = "skinadv.complete"
TAG_CELLS = "skinadv.cells"  # on the parent: JSON {cell name: child run id}
TAG_PARENT = "mlflow.parentRunId"
MODEL_NAME = "model"
WEIGHTS_DIR = "weights"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
    all_tags = {TAG_KIND: kind, "mlflow.runName": name, **(tags or {})}
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
    client().log_figure(run_id, figure, artifact_file)


def log_artifact_files(
    run_id: str, paths: list[str | Path], artifact_path: str | None = None
) -> None:
    c = client()
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_torch_model(run_id: str, model, *, weights: str | Path, config_json: str | Path) -> str:
    """Log ``model`` as an MLflow pytorch model plus its plain state dict + config JSON.

    Explicit ``pip_requirements`` (else MLflow infers them in a subprocess, >1 min here) and
    pickle serialization (``pt2`` needs an input example and takes ~8 s). The state dict
    beside it is what ``load_weights`` reads with ``torch.load(weights_only=True)``.
    """
    import mlflow
    import torch

    from skinadv import __version__

    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pytorch.log_model(
            model.cpu(),
            name=MODEL_NAME,
            serialization_format="pickle",
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"skinadv=={__version__}",
            ],
        )
        mlflow.log_artifact(str(weights), WEIGHTS_DIR)
        mlflow.log_artifact(str(config_json), WEIGHTS_DIR)
        # leaving the block ends the run as FINISHED; complete is set by the caller after
        # the metrics are in
    client().update_run(run_id, status="RUNNING")
    return info.model_uri


def finish_run(run_id: str, *, complete: bool = True, status: str = "FINISHED") -> None:
    c = client()
    if complete:
        c.set_tag(run_id, TAG_COMPLETE, "true")
    c.set_terminated(run_id, status)


def fail_run(run_id: str, reason: str = "") -> None:
    c = client()
    if reason:
        c.set_tag(run_id, "skinadv.error", reason[:4000])
    c.set_terminated(run_id, "FAILED")


@contextmanager
def child_run(experiment: str, **kwargs):
    """A run that ends FAILED (never complete) if the body raises; body must finish it."""
    rid = start_run(experiment, **kwargs)
    try:
        yield rid
    except BaseException as exc:
        fail_run(rid, f"{type(exc).__name__}: {exc}")
        raise


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


def get_run(run_id: str):
    return client().get_run(run_id)


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


def record_from_run(run) -> dict[str, Any]:
    """A report record (see skinadv.report) from a cell or vanilla run."""
    p = run.data.params
    method = p.get("method")
    return {
        "cell": run.data.tags.get(TAG_CELL, run.info.run_name),
        "method": None if method in (None, "none") else method,
        "fraction": None if p.get("fraction") in (None, "0", "0.0") else float(p["fraction"]),
        "seed": int(p.get("seed", 0)),
        "run_id": run.info.run_id,
        **{
            k: v
            for k, v in run.data.metrics.items()
            if k.startswith(("clean_", "transfer_", "whitebox_"))
        },
    }


def cell_run_ids(parent) -> list[str]:
    """The child runs (trained or reused) a parent run's gather step reported on."""
    cells = json.loads(parent.data.tags.get(TAG_CELLS, "{}"))
    if not cells:
        raise ValueError(f"parent run {parent.info.run_id} lists no cells")
    return list(cells.values())


def evaluation_payload(run_id: str) -> dict[str, Any]:
    """The ``evaluation.json`` a finished run carries (both protocols, and sweeps)."""
    with tempfile.TemporaryDirectory(prefix="skinadv-eval-") as tmp:
        path = client().download_artifacts(run_id, "evaluation.json", tmp)
        return json.loads(Path(path).read_text())


def load_results(run_ids: list[str]) -> tuple[list[dict], dict[str, Any], dict | None]:
    """Report inputs from MLflow alone: records, evaluations by model, sanity sweeps."""
    records, evals, sweeps = [], {}, None
    for rid in run_ids:
        rec = record_from_run(get_run(rid))
        payload = evaluation_payload(rid)
        records.append(rec)
        evals[f"{rec['cell']}-s{rec['seed']}"] = payload["evaluation"]
        sweeps = sweeps or payload.get("sweeps")
    return records, evals, sweeps


def env_for_workers() -> dict[str, str]:
    keys = (
        "MLFLOW_TRACKING_URI",
        "PREFECT_API_URL",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
        "SKINADV_HAM10000",
        "SKINADV_CACHE_DIR",
    )
    return {k: os.environ[k] for k in keys if os.environ.get(k)}
