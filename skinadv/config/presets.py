"""YAML presets (``skinadv/presets/<name>.yaml``, read with ``yaml.safe_load``) and
overrides given as ``"a.b=value"`` strings or dicts."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from skinadv.config.experiment import ExperimentConfig


def available_presets() -> list[str]:
    """Names of the presets shipped in ``skinadv/presets``."""
    root = resources.files("skinadv") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text_name = str(name_or_path)
    if text_name in available_presets():
        res = resources.files("skinadv") / "presets" / f"{text_name}.yaml"
        text, where = res.read_text(), f"preset {text_name!r}"
    elif Path(text_name).suffix in (".yaml", ".yml") and Path(text_name).is_file():
        text, where = Path(text_name).read_text(), text_name
    else:
        raise ValueError(
            f"unknown preset {text_name!r}; available presets: "
            f"{', '.join(available_presets())} (or a path to a .yaml file)"
        )
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")
    return data, where


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``["a.b=1", ...]`` or ``{"a.b": 1}`` / nested dicts -> a flat ``{"a.b": value}`` dict."""
    if overrides is None:
        return {}
    flat: dict[str, Any] = {}
    if isinstance(overrides, Mapping):

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat[prefix] = value

        for k, v in overrides.items():
            walk(str(k), v)
        return flat
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        try:
            flat[key] = yaml.safe_load(raw) if raw.strip() else None
        # ValueError: a date like 2020-13-01, an int of over 4300 digits; RecursionError:
        # absurdly deep nesting ([[[[...)
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise ValueError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return flat


def apply_overrides(
    data: dict[str, Any],
    overrides: Mapping[str, Any] | Iterable[str] | None,
) -> dict[str, Any]:
    """A copy of ``data`` with dotted-key overrides applied (unknown keys fail validation)."""
    out = copy.deepcopy(data)  # YAML data may hold dates, which JSON cannot copy
    for key, value in parse_overrides(overrides).items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ValueError(f"override {key!r}: {part!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_preset(
    name_or_path: str | Path = "quick", overrides: Mapping[str, Any] | Iterable[str] | None = None
) -> ExperimentConfig:
    """Load a preset (``quick``, ``paper``, or a YAML path) and apply overrides.

    Raises:
        ValueError: unknown preset (naming the available ones), bad override syntax, or a
            pydantic ``ValidationError`` (a ValueError) for unknown keys and bad values.
    """
    data, _ = _read_yaml(name_or_path)
    data.setdefault("name", Path(str(name_or_path)).stem)
    return ExperimentConfig.model_validate(apply_overrides(data, overrides))


def grid_config(
    preset: str | Path = "quick",
    *,
    data: str | None = None,
    methods: Iterable[str] | None = None,
    fractions: Iterable[float] | None = None,
    seeds: Iterable[int] | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> ExperimentConfig:
    """A preset with the grid's parameters (data spec, axes) and overrides applied."""
    extra: dict[str, Any] = parse_overrides(overrides)
    if data:
        extra["data.spec"] = str(data)
    if methods:
        extra["methods"] = list(methods)
    if fractions:
        extra["fractions"] = [float(f) for f in fractions]
    if seeds:
        extra["seeds"] = [int(s) for s in seeds]
    return load_preset(preset, extra)


def describe_error(exc: BaseException) -> str:
    """One line for a user: pydantic errors as ``loc: message; ...``, others their text."""
    from pydantic import ValidationError

    text = str(exc)
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or "config"
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        text = "; ".join(parts)
    # one line even when a message quotes a user's value holding a line break
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
