"""Bring-your-own classifier: load a model from any of the forms skinadv accepts.

``load_classifier(spec, weights=None)`` takes

- a skinadv checkpoint (``skinadv train``'s ``.pt`` with ``<path>.json`` beside it);
- a TorchScript file (``torch.jit.save``);
- a ``torch.export`` program (``.pt2``, ``torch.export.save``);
- ``package.module:factory`` (called with no arguments) plus ``weights``, a state dict read
  with ``torch.load(weights_only=True)``;
- a folder holding exactly one of those files (an MLflow artifact folder, once downloaded).

The model must map ``(N, 3, H, W)`` float in [0, 1] to logits over the classes;
``skinadv.models.adapters`` maps another class order or normalised input onto ours and
``skinadv.models.checks`` checks the result. A pickled ``nn.Module`` (``torch.save(model)``)
is refused: unpickling runs arbitrary code, and the error says how to export it instead.
MLflow URIs are resolved by the CLI (``skinadv.commands.model_sources``); the core imports
no mlflow.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skinadv.models import load_model

log = logging.getLogger(__name__)

#: ``package.module:factory`` (dotted names on both sides of one colon)
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: file names a folder is searched for
MODEL_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit")
#: what to do instead of pickling a whole module
EXPORT_HINT = (
    "save it with torch.jit.save(torch.jit.script(model), PATH) (or torch.jit.trace), or "
    "torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: "
    "torch.export.Dim('batch')},)), 'model.pt2'), or pass --model package.module:factory "
    "--weights STATE_DICT.pt (torch.save(model.state_dict(), ...))"
)


class ExportedProgram(nn.Module):
    """An exported program's module (``torch.export.load(path).module()``) as a plain module.

    The graph was fixed at export (BatchNorm and dropout as they were then), and its own
    ``train()`` / ``eval()`` raise; here they only set the flags, so callers can switch modes
    around it as around any model.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedProgram:
        for m in self.modules():
            m.training = mode  # the graph's own train() raises: its mode is fixed at export
        return self

    def __deepcopy__(self, memo: dict) -> ExportedProgram:
        # nn.Module's own copy, minus torch's pytree FutureWarning at every attack's copy
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def source_kind(spec: str | os.PathLike) -> str:
    """What ``spec`` names: ``skinadv``, ``torchscript``, ``export``, ``torch_save`` (a state
    dict or a pickled object), ``factory`` or ``folder``, judged by the file's contents (zip
    entries), not its name.

    Raises:
        ValueError: no such file, or a file that is none of these.
    """
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists() and FACTORY_RE.match(text):
        return "factory"
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise ValueError(
            f"{text}: no such model checkpoint, file or folder (nor a package.module:factory)"
        )
    if path.with_name(path.name + ".json").is_file():
        return "skinadv"
    if not zipfile.is_zipfile(path):
        return "torch_save"  # torch.save's legacy format, or not a model at all (load says which)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith(("/models/model.json", "/archive_format")) for n in names):
        return "export"
    if any("/code/" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch_save"  # a state dict, or a pickled object


def _one_file(folder: Path) -> Path:
    """The one model file in ``folder`` (a skinadv ``.pt`` with its ``.pt.json`` counts once)."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES)
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(folder)) for p in found[:5]) or "none"
        raise ValueError(
            f"{folder}: a model folder must hold exactly one model file "
            f"({', '.join(MODEL_SUFFIXES)}); found {len(found)}: {listed}"
        )
    return found[0]


def _state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict read with ``torch.load(weights_only=True)``; a pickled module is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / zip errors: the message says which
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if m:
            raise ValueError(
                f"{path} is a pickled {m.group(1)} (torch.save(model)), which skinadv does not "
                f"unpickle (it would run arbitrary code): {EXPORT_HINT}"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a model file skinadv can read ({first})") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def _factory(spec: str) -> nn.Module:
    """``package.module:factory()``: the module imported, the factory called with no arguments."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{spec}: cannot import {module_name} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{spec}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec}: {attr} is not callable")  # noqa: TRY004 (user input: exit 2)
    try:
        model = obj()
    except Exception as exc:  # the user's code: say what it raised, in one line
        raise ValueError(f"{spec}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        got = type(model).__name__
        raise ValueError(f"{spec}() returned {got}, not a torch.nn.Module")  # noqa: TRY004
    return model


def _load_weights(model: nn.Module, path: Path, spec: str) -> None:
    state = _state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"--weights {path} do not fit {spec}(): {exc}") from exc
    if missing or unexpected:
        raise ValueError(
            f"--weights {path} do not fit {spec}(): {len(missing)} missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), "
            f"{len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})"
        )


def _export_input_shape(program: Any) -> list[int | None] | None:
    """The exported program's input shape, ``None`` for each dynamic dimension."""
    user = set(program.graph_signature.user_inputs)
    shapes = [
        node.meta["val"].shape
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user and "val" in node.meta
    ]
    if len(shapes) != 1:
        return None
    return [d if isinstance(d, int) else None for d in shapes[0]]


def _load_export(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        program = torch.export.load(path)
    except Exception as exc:  # corrupt archive, or one from an incompatible torch
        raise ValueError(f"{path}: cannot load the exported program ({exc})") from exc
    shape = _export_input_shape(program)
    with warnings.catch_warnings():  # torch's own pytree deprecation notice
        warnings.simplefilter("ignore", FutureWarning)
        model = ExportedProgram(program.module())
    meta: dict[str, Any] = {"input_shape": shape}
    if shape and len(shape) == 4 and shape[2] is not None and shape[2] == shape[3]:
        meta["image_size"] = shape[2]
    return model, meta


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # corrupt archive, or one from an incompatible torch
        raise ValueError(f"{path}: cannot load the TorchScript file ({exc})") from exc


def load_classifier(
    spec: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a classifier from a skinadv checkpoint, TorchScript file, exported program,
    ``package.module:factory`` + ``weights``, or a folder holding one model file.

    Args:
        spec: the model (see the module docstring).
        weights: a state dict for a ``package.module:factory`` spec (and only for one), or a
            folder holding one.
        device: where to put the model (default CPU).

    Returns:
        (model in eval mode on ``device``, meta). For a skinadv checkpoint, meta is its saved
        config plus ``source: "skinadv"``; otherwise ``source`` (``torchscript``, ``export``,
        ``factory``), ``path``, ``weights``, ``image_size`` and ``input_shape`` when the
        file says (an exported program does; ``None`` marks a dynamic dimension) and
        ``class_names`` (None: the caller says, e.g. with ``adapters.ClassOrder``). A foreign
        model's parameters are frozen (``requires_grad=False``): attacks take input
        gradients only.

    Raises:
        ValueError: one line naming the file and the fault (a pickled module says how to
            export it instead).
    """
    text = os.fspath(spec)
    kind = source_kind(text)
    path = Path(text)
    if kind == "folder":
        path = _one_file(path)
        kind = source_kind(path)
    if weights is not None and kind != "factory":
        raise ValueError(f"--weights goes with a package.module:factory model, not {text}")
    if kind == "skinadv":
        model, config = load_model(path, device)
        return model, {**config, "source": "skinadv"}
    meta: dict[str, Any] = {
        "source": kind,
        "path": text,
        "weights": None,
        "image_size": None,
        "input_shape": None,
        "class_names": None,
    }
    if kind == "factory":
        if weights is None:
            raise ValueError(f"{text}: a factory needs --weights (a state dict file)")
        model = _factory(text)
        wpath = Path(weights)
        _load_weights(model, _one_file(wpath) if wpath.is_dir() else wpath, text)
        meta["weights"] = os.fspath(weights)
    elif kind == "torchscript":
        model = _load_torchscript(path)
    elif kind == "export":
        model, found = _load_export(path)
        meta.update(found)
    else:  # torch.save: a bare state dict or a pickled object; both refused, differently
        _state_dict(path)
        raise ValueError(
            f"{path} is a bare state dict: pass --model package.module:factory (the code that "
            f"builds the model) and --weights {path}"
        )
    for p in model.parameters():  # not nn.Module.requires_grad_: ScriptModules lack it
        p.requires_grad_(False)
    model.to(torch.device(device) if device is not None else "cpu")
    model.eval()
    log.info("loaded %s model from %s", kind, text)
    return model, meta


__all__ = ["EXPORT_HINT", "ExportedProgram", "load_classifier", "source_kind"]
