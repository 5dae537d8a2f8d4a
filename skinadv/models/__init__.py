"""Model registry (timm's idea at one-file scale) and weights-only checkpoints.

``create_model(name, num_classes=7, **kw)`` builds a registered model;
``save_model`` / ``load_model`` write and read a state dict (``.pt``) plus a JSON config
beside it (``<path>.json``), loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skinadv.data.dataset import CLASSES
from skinadv.models.cnn import PaperCNN, paper_cnn
from skinadv.models.resnet import ResNet18, resnet18

log = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]

#: name -> factory(*, num_classes, **kw). Add a model by adding an entry.
MODELS: dict[str, ModelFactory] = {"paper_cnn": paper_cnn, "resnet18": resnet18}

#: Version of the checkpoint JSON layout.
CHECKPOINT_FORMAT = 1


def create_model(name: str, *, num_classes: int = 7, **kw: Any) -> nn.Module:
    """Build a freshly initialised registered model.

    Args:
        name: a key of ``MODELS``.
        num_classes: number of output logits.
        **kw: the factory's own keyword arguments (e.g. ``width``, ``dropout``).

    Returns:
        The model, with ``model.skinadv_config = {"name", "num_classes", "kwargs"}`` so
        ``save_model`` can describe it.
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    try:
        model = MODELS[name](num_classes=num_classes, **kw)
    except TypeError as exc:  # unexpected keyword: name it
        raise ValueError(f"model {name!r}: bad arguments {sorted(kw)}: {exc}") from exc
    model.skinadv_config = {"name": name, "num_classes": num_classes, "kwargs": dict(kw)}
    return model


def _json_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _tmp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
    return Path(tmp)


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` and its config to ``<path>.json``, atomically.

    Args:
        model: a model from ``create_model`` (or any module, if ``config`` names the factory).
        path: the ``.pt`` file to write; parent folders are created.
        config: JSON-serialisable metadata. ``name``, ``num_classes`` and ``kwargs`` default
            to the model's own ``skinadv_config``; ``image_size`` defaults to 28 and
            ``class_names`` to the canonical ``CLASSES``. Other keys (training settings,
            data fingerprint, metrics) are stored as given.

    Returns:
        The ``.pt`` path. Both files are written to temp files first and renamed into place,
        so a crash leaves either the old pair or the new pair, never a half-written file.
    """
    path = Path(path)
    meta: dict[str, Any] = dict(getattr(model, "skinadv_config", {}))
    meta.update(dict(config or {}))
    if "name" not in meta:
        raise ValueError("save_model: config needs the model 'name' (a key of MODELS)")
    meta.setdefault("num_classes", 7)
    meta.setdefault("kwargs", {})
    meta.setdefault("image_size", 28)
    meta.setdefault("class_names", list(CLASSES))
    meta["format"] = CHECKPOINT_FORMAT
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_model: config is not JSON-serialisable: {exc}") from exc
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_pt, tmp_json = _tmp_beside(path), _tmp_beside(_json_path(path))
    try:
        tmp_pt.write_bytes(buf.getvalue())
        tmp_json.write_text(meta_text + "\n")
        os.replace(tmp_pt, path)
        os.replace(tmp_json, _json_path(path))
    finally:
        tmp_pt.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    log.info("saved model %s (%s) to %s", meta["name"], meta["kwargs"], path)
    return path


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config saved beside the checkpoint ``path``."""
    path = Path(path)
    jpath = _json_path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model checkpoint")
    if not jpath.is_file():
        raise ValueError(f"{path}: its config {jpath.name} is missing (save with save_model)")
    try:
        meta = json.loads(jpath.read_text())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, absurdly deep nesting
        raise ValueError(f"{jpath}: not valid JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or "name" not in meta:
        raise ValueError(f"{jpath}: not a skinadv model config (no 'name')")
    if not isinstance(meta.get("kwargs", {}), dict):
        raise ValueError(f"{jpath}: 'kwargs' must be a mapping, got {meta['kwargs']!r}")
    return meta


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by ``save_model`` (weights only, never arbitrary pickles).

    Args:
        path: the ``.pt`` file; ``<path>.json`` must sit beside it.
        device: where to put the model (default CPU).

    Returns:
        (model in eval mode on ``device``, its config dict).
    """
    path = Path(path)
    meta = read_model_config(path)
    model = create_model(
        meta["name"], num_classes=meta.get("num_classes", 7), **meta.get("kwargs", {})
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / zip errors all mean: not a usable checkpoint
        raise ValueError(f"{path}: not a loadable weights-only checkpoint ({exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{path}: weights do not fit model {meta['name']!r}: {exc}") from exc
    model.to(torch.device(device) if device is not None else "cpu")
    model.eval()
    return model, meta


__all__ = [
    "MODELS",
    "ModelFactory",
    "PaperCNN",
    "ResNet18",
    "create_model",
    "load_model",
    "paper_cnn",
    "read_model_config",
    "resnet18",
    "save_model",
]
