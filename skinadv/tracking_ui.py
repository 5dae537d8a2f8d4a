"""What a user of the MLflow UI meets, the other half of the MLflow adapter beside
``skinadv.tracking``: the experiment's description, the parent run's description and key
figures, each model run's datasets (``log_input``) and its model as an MLflow model.

The model is logged in MLflow's ``pt2`` format (``torch.export``: a graph and its weights,
no pickle) with a signature and an input example, so the runs table's Models column fills
and ``mlflow.pytorch.load_model`` / ``mlflow.pyfunc.load_model`` load it. The run's
``weights/`` state dict stays what skinadv itself reads (reuse, transfer sets, champions).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skinadv import tracking

if TYPE_CHECKING:
    from torch import nn

    from skinadv.data import Dataset
    from skinadv.key_figures import KeyFigures

log = logging.getLogger(__name__)

NOTE = "mlflow.note.content"  # the description MLflow's UI shows and edits
MODEL_NAME = "model"
TAG_BEST = "skinadv.best_cell"
CELLS_FILE = "cells.json"  # on the parent: JSON {cell name: child run id}
#: a description that opens so is ours (and replaced when it changes); any other is a user's
EXPERIMENT_HEADING = "**skinadv grid experiment**"
MAX_NOTE = 7500  # MLflow caps a tag value at 8000 characters


def experiment_note(name: str) -> str:
    """The experiment's description: what it holds and how to read it (Markdown)."""
    return f"""{EXPERIMENT_HEADING} `{name}`: adversarial training of a small CNN that \
classifies dermatoscopic images (HAM10000, 7 classes), scored clean and under attack.

**How to read it**

- **One parent run per grid** (tag `skinadv.kind = parent`, named `grid-<date>-<time>`): \
its description is the report's opening; its metrics are the key figures (fractions in \
[0, 1], means over seeds; `best_*` is the most robust defence at the selection budget, \
chosen on the validation split, named by the tag `skinadv.best_cell`); its artifacts hold \
the report (`report/report.html`) and `cells.json`, every model the grid reported on.
- **One child run per model**, nested under the parent that trained it and named \
`<cell>-s<seed>`: `vanilla`, each static cell `method@fraction` and each defence trained \
on the fly (`pgd-at@2_255`). Metrics are test-set figures in [0, 1] (`clean_*`, \
`transfer_*`, `whitebox_*`, `robust_<eps>_*` with eps in 255ths); `val_*` are on the \
validation split. The Dataset column names the train / validation / test sets (digest: \
the data fingerprint), the Models column the model: `mlflow.pytorch.load_model` gives a \
module taking (N, 3, H, W) float in [0, 1] and returning 7 logits.
- **Means over seeds:** group the runs table by the tag `skinadv.cell`.
- A model reused from an earlier grid stays under the parent run that trained it: the \
later grid's `cells.json` lists it.
"""


def describe_experiment(name: str) -> None:
    """Give the experiment its description, unless a user wrote one of their own."""
    c = tracking.client()
    eid = tracking.experiment_id(name)
    current = c.get_experiment(eid).tags.get(NOTE, "")
    note = experiment_note(name)
    if current != note and (not current or current.startswith(EXPERIMENT_HEADING)):
        c.set_experiment_tag(eid, NOTE, note)


def parent_note(title: str, lead: str, *, n_models: int) -> str:
    """The parent run's description: the report's title and opening, then where to look."""
    text = (
        f"**{title}**\n\n{lead.strip()}\n\n"
        f"This grid reported on {n_models} models, its child runs (and any reused from an "
        "earlier grid): `cells.json` lists them. Group the runs table by the tag "
        "`skinadv.cell` for means over seeds. The whole report, tables and figures, is the "
        "artifact `report/report.html`; the key figures are this run's metrics."
    )
    if len(text) > MAX_NOTE:
        text = text[: MAX_NOTE - 1] + "…"
    return text


def describe_parent(
    run_id: str,
    *,
    title: str,
    lead: str,
    figures: KeyFigures,
    cells: Mapping[str, str],
) -> None:
    """The parent run as its page shows it: description, key figures as metrics, the best
    defence as a tag, and the cell list (``cells.json``).

    Args:
        run_id: the grid's parent run.
        title, lead: the report's title and opening paragraph.
        figures: ``skinadv.key_figures.key_figures(results)``.
        cells: ``{cell name: child run id}`` of every model reported on.
    """
    tags = {NOTE: parent_note(title, lead, n_models=len(cells))}
    if figures.best_cell:
        tags[TAG_BEST] = figures.best_cell
    tracking.set_tags(run_id, tags)
    tracking.log_metrics(run_id, figures.metrics)
    log_cells(run_id, cells)


def log_cells(run_id: str, cells: Mapping[str, str]) -> None:
    """The parent run's cell list, ``{cell name: child run id}``, as its ``cells.json``
    artifact (a tag would be a wall of JSON in the run's page)."""
    tracking.client().log_text(run_id, json.dumps(dict(cells), indent=1), CELLS_FILE)


def logged_cells(parent) -> dict[str, str]:
    """``{cell name: run id}`` a parent run's gather step logged: its ``cells.json``, or the
    ``skinadv.cells`` tag of a grid run before there was one; empty when neither."""
    rid = parent.info.run_id
    if any(f.path == CELLS_FILE for f in tracking.client().list_artifacts(rid)):
        with tempfile.TemporaryDirectory(prefix="skinadv-cells-") as tmp:
            return json.loads(
                Path(tracking.client().download_artifacts(rid, CELLS_FILE, tmp)).read_text()
            )
    return json.loads(parent.data.tags.get(tracking.TAG_CELLS, "{}"))


def cell_run_ids(parent) -> list[str]:
    """The child runs (trained or reused) a parent run's gather step reported on
    (``logged_cells``), else the children it finished so far (a grid still running, or
    interrupted)."""
    cells = logged_cells(parent)
    if not cells:
        rid = parent.info.run_id
        query = (
            f"tags.`{tracking.TAG_PARENT}` = '{rid}' and tags.`{tracking.TAG_COMPLETE}` = 'true'"
        )
        done = tracking.client().search_runs([parent.info.experiment_id], query, max_results=10_000)
        cells = {r.info.run_id: r.info.run_id for r in done if r.info.status == "FINISHED"}
    if not cells:
        raise ValueError(f"parent run {parent.info.run_id} lists no cells and has none finished")
    return list(cells.values())


def _source(spec: str):
    """Where the data came from, small: a local folder or file as itself, anything else
    (``synthetic:240:3``, a list of paths) as a description holding the data SPEC."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if "," not in spec and ":" not in spec.split("/")[0] and Path(spec).exists():
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(str(Path(spec).resolve()))
    return CodeDatasetSource({"skinadv.data": spec})


def log_datasets(
    run_id: str, splits: Mapping[str, Dataset | None], *, fingerprint: str, spec: str
) -> None:
    """The run's inputs: one MLflow dataset per split (schema, shapes and source, not the
    images), each with the data fingerprint as its digest and its split as its context.

    Args:
        run_id: the model's run.
        splits: ``{"train": ..., "validation": ..., "test": ...}``; None entries are skipped.
        fingerprint: the prepared data's fingerprint (``DataRef.fingerprint``).
        spec: the data SPEC (``DataRef.source``).
    """
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = _source(spec)
    inputs = []
    for context, ds in splits.items():
        if ds is None:
            continue
        dataset = mlflow.data.from_numpy(
            ds.images,
            targets=ds.labels,
            source=source,
            name=f"{ds.kind}-{context}",
            digest=fingerprint,
        )
        tag = InputTag(MLFLOW_DATASET_CONTEXT, context)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), [tag]))
    if inputs:
        tracking.client().log_inputs(run_id, datasets=inputs)


def log_model(
    run_id: str,
    model: nn.Module,
    example: np.ndarray,
    *,
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log ``model`` on the run as an MLflow model (``pt2``, no pickle); return its URI.

    Args:
        run_id: the model's run.
        model: the classifier (any device, any mode: a CPU copy in eval mode is exported).
        example: (N, 3, H, W) float in [0, 1], N >= 2 so the batch dimension stays dynamic
            (``torch.export`` fixes a size-1 dimension); the first two rows are logged.
        metadata: extra fields of the ``MLmodel`` file.
        tags: the logged model's tags.

    Returns:
        ``models:/<model id>``; ``runs:/<run id>/model`` names it too.
    """
    import mlflow
    import torch

    x = np.ascontiguousarray(example[:2], dtype=np.float32)
    if len(x) == 1:
        x = np.concatenate([x, x])
    cpu = copy.deepcopy(model).cpu().eval()
    start = time.perf_counter()
    # created here in the run's experiment: without an active run MLflow would file the
    # model under the default experiment, where the run's Models tab does not look
    c = tracking.client()
    logged = mlflow.initialize_logged_model(
        name=MODEL_NAME,
        source_run_id=run_id,
        tags=dict(tags or {}),
        experiment_id=c.get_run(run_id).info.experiment_id,
    )
    info = mlflow.pytorch.log_model(
        cpu,
        name=MODEL_NAME,
        run_id=run_id,
        model_id=logged.model_id,
        serialization_format="pt2",
        input_example=x,
        # pinned here: MLflow would otherwise infer them by loading the model in a subprocess
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        metadata=dict(metadata or {}),
    )
    log.debug("logged %s in %.1f s", info.model_uri, time.perf_counter() - start)
    return info.model_uri
