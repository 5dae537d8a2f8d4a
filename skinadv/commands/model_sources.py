"""``--model`` for ``evaluate`` and ``attack``: any classifier, not only ours.

The CLI side of ``skinadv.models.sources``: MLflow URIs (``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH``) are downloaded here, since the core imports
no mlflow, and the local copy goes to the core loader. A registered skinadv champion's
version points at its run's ``weights/`` folder (``skinadv.tracking.register_champion``),
which downloads as a folder with the state dict and its JSON config: a skinadv checkpoint.
Then ``--classes`` / ``--normalize`` wrap the model (``skinadv.models.adapters``), and
``check`` probes it with the data's image size (``skinadv.models.checks``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from skinadv.models.adapters import adapt, parse_classes, parse_normalize
from skinadv.models.checks import PROBE_N, check_classifier
from skinadv.models.sources import load_classifier

#: URI schemes resolved through MLflow (MLFLOW_TRACKING_URI says which server)
MLFLOW_SCHEMES = ("models:/", "runs:/")
# one progress bar per small download would drown the command's own output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def parse_mlflow_uri(uri: str) -> dict[str, str]:
    """The parts of an MLflow model URI: ``{"scheme": "models", "name", "alias" | "version"}``
    or ``{"scheme": "runs", "run_id", "path"}``.

    Raises:
        ValueError: not one of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/RUN_ID/PATH``.
    """
    forms = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
    if uri.startswith("models:/"):
        rest = uri.removeprefix("models:/")
        if "@" in rest and "/" not in rest:
            name, _, alias = rest.partition("@")
            if name and alias:
                return {"scheme": "models", "name": name, "alias": alias}
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return {"scheme": "models", "name": name, "version": version}
    elif uri.startswith("runs:/"):
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if run_id and path.strip("/"):
            return {"scheme": "runs", "run_id": run_id, "path": path.strip("/")}
    raise ValueError(f"{uri}: not an MLflow model URI we read ({forms})")


def download(uri: str, dst: str | Path) -> Path:
    """The artifact (file or folder) ``uri`` names, downloaded into ``dst``.

    Raises:
        ValueError: a malformed URI, no ``MLFLOW_TRACKING_URI``, or no such model, version,
            alias, run or path (one line, naming the tracking server).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    parse_mlflow_uri(uri)
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # mlflow would make ./mlflow.db and miss
        raise ValueError(
            f"{uri}: set MLFLOW_TRACKING_URI to the MLflow that holds it (a grid's own "
            "is served by 'skinadv up --run-dir RUN_DIR')"
        )
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise ValueError(
            f"{uri}: {exc.message} (MLflow at {mlflow.get_tracking_uri()}; "
            "MLFLOW_TRACKING_URI names another)"
        ) from None


def load(
    spec: str,
    *,
    weights: str | None = None,
    classes: str | None = None,
    normalize: tuple[str, str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """``--model`` (and ``--weights``), MLflow URIs downloaded, wrapped by ``--classes`` and
    ``--normalize``: (model in eval mode on the CPU, meta; see ``load_classifier``).

    meta gains ``uri`` (for an MLflow URI), ``class_names`` from ``--classes`` and
    ``normalize`` (``{"mean", "std"}``) when given.
    """
    order = parse_classes(classes) if classes is not None else None
    norm = parse_normalize(*normalize) if normalize is not None else None
    with tempfile.TemporaryDirectory(prefix="skinadv-model-") as tmp:
        local = str(download(spec, Path(tmp, "model"))) if is_mlflow_uri(spec) else spec
        w = weights
        if w is not None and is_mlflow_uri(w):
            w = str(download(w, Path(tmp, "weights")))
        net, meta = load_classifier(local, weights=w)  # read whole: tmp may go now
    if is_mlflow_uri(spec):
        meta = {**meta, "uri": spec}
        if meta["source"] != "skinadv":
            meta["path"] = spec
    if order is not None:
        meta = {**meta, "class_names": list(order)}
    if norm is not None:
        meta = {**meta, "normalize": {"mean": list(norm[0]), "std": list(norm[1])}}
    if meta["source"] != "skinadv" and meta.get("image_size"):
        # the size the model was exported for: the data is loaded at it (HAM10000 resized
        # from its JPEGs), as a skinadv checkpoint's own data.size is (experiment_config)
        meta = {**meta, "data": {"size": int(meta["image_size"])}}
    return adapt(net, classes=order, normalize=norm), meta


def check(net: nn.Module, meta: dict[str, Any], image_size: int, what: str) -> None:
    """Probe the model with a batch of the data's image size (``check_classifier``).

    A foreign model that says its input size (an exported program) must match the data's
    (``load`` makes it the default data.size, so only an explicit --set data.size differs);
    a skinadv checkpoint's data settings are checked by ``experiment.check_model_data``.

    Raises:
        ValueError: one line: the sizes that differ, or ``check_classifier``'s fault.
    """
    if meta.get("source") != "skinadv":
        shape = meta.get("input_shape") or []
        if len(shape) == 4 and shape[0] is not None:  # the attacks batch by hundreds
            raise ValueError(
                f"{what} was exported for batches of exactly {shape[0]} images: export it "
                "with a dynamic batch dimension (dynamic_shapes=({0: torch.export.Dim('batch')},))"
            )
        size = meta.get("image_size")
        if size is not None and size != image_size:
            raise ValueError(
                f"{what} takes {size}x{size} images, but the data is {image_size}x{image_size} "
                "(data.size)"
            )
    try:
        check_classifier(net, (PROBE_N, 3, image_size, image_size), what=what)
    except ValueError as exc:
        if "cannot take a" not in str(exc) or meta.get("image_size"):
            raise
        raise ValueError(  # a model of another input size that does not say which
            f"{exc} (a model of other image sizes: --set data.size=N loads the data at NxN)"
        ) from None


__all__ = ["MLFLOW_SCHEMES", "check", "download", "is_mlflow_uri", "load", "parse_mlflow_uri"]
