"""Wrappers that let a foreign classifier be attacked in pixel units, in our class order.

Both are differentiable ``nn.Module`` wrappers, so an attack's gradient flows through them
and ``eps`` stays in [0, 1] pixels (never divided by a std, STYLE.md):

- ``Normalize(model, mean, std)``: the model expects ``(x - mean) / std``; the wrapper
  takes ``x`` in [0, 1].
- ``ClassOrder(model, classes)``: the model's logits come in the order ``classes`` (e.g.
  the Kaggle hmnist order); the wrapper's come in the canonical ``skinadv.data.CLASSES``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from skinadv.data.dataset import CLASSES, HMNIST_CLASSES

#: class orders known by name (DermaMNIST / MedMNIST's is alphabetical: the canonical one)
NAMED_ORDERS: dict[str, tuple[str, ...]] = {
    "canonical": CLASSES,
    "dermamnist": CLASSES,
    "hmnist": HMNIST_CLASSES,
}


def parse_classes(text: str) -> tuple[str, ...]:
    """A model's class order from ``--classes``: a comma list of the 7 class names, or a
    name in ``NAMED_ORDERS`` (``hmnist``, ``dermamnist``).

    Raises:
        ValueError: not a permutation of ``CLASSES`` (names the unknown, missing, repeated).
    """
    key = text.strip().lower()
    if key in NAMED_ORDERS:
        return NAMED_ORDERS[key]
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CLASSES]
    repeated = sorted({n for n in names if names.count(n) > 1})
    missing = [c for c in CLASSES if c not in names]
    if unknown or repeated or missing:
        faults = [
            f"{label} {', '.join(v)}"
            for label, v in (("unknown", unknown), ("repeated", repeated), ("missing", missing))
            if v
        ]
        raise ValueError(
            f"--classes {text!r}: give the model's output order as the 7 names "
            f"{','.join(CLASSES)} in some order, or one of {', '.join(NAMED_ORDERS)} "
            f"({'; '.join(faults)})"
        )
    return names


def _three(values: Sequence[float], what: str) -> tuple[float, float, float]:
    if len(values) == 1:
        values = [values[0]] * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--normalize: {what} must be 1 or 3 finite numbers, got {list(values)}")
    return float(values[0]), float(values[1]), float(values[2])


def parse_normalize(mean: str, std: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--normalize MEAN STD``: each a comma list of 3 numbers (per channel) or 1 (all).

    Raises:
        ValueError: not numbers, not 1 or 3 of them, or a std that is not > 0.
    """
    try:
        m = [float(v) for v in mean.split(",")]
        s = [float(v) for v in std.split(",")]
    except ValueError:
        raise ValueError(
            f"--normalize {mean} {std}: MEAN and STD are numbers, comma-separated "
            "(e.g. 0.485,0.456,0.406 0.229,0.224,0.225, or 0.5 0.5)"
        ) from None
    m3, s3 = _three(m, "MEAN"), _three(s, "STD")
    if min(s3) <= 0:
        raise ValueError(f"--normalize: STD must be > 0, got {list(s3)}")
    return m3, s3


class Normalize(nn.Module):
    """``model((x - mean) / std)``: a model trained on normalised input, fed [0, 1] pixels.

    Args:
        model: maps ``(N, 3, H, W)`` normalised input to logits.
        mean, std: per channel (3 values) or for all channels (1 value); std > 0.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        m, s = _three(list(mean), "MEAN"), _three(list(std), "STD")
        if min(s) <= 0:
            raise ValueError(f"Normalize: std must be > 0, got {list(s)}")
        self.register_buffer("mean", torch.tensor(m).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(s).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) float in [0, 1] -> the model's output."""
        return self.model((x - self.mean) / self.std)


class ClassOrder(nn.Module):
    """The model's logits reordered from its class order ``classes`` to ``CLASSES``.

    Args:
        model: returns ``(N, 7)`` logits, column ``j`` for class ``classes[j]``.
        classes: the model's order, a permutation of ``CLASSES``.
    """

    def __init__(self, model: nn.Module, classes: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.classes = parse_classes(",".join(classes))
        index = [self.classes.index(c) for c in CLASSES]
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) -> (N, 7) logits, column ``i`` for ``CLASSES[i]``."""
        return self.model(x).index_select(1, self.index)


def adapt(
    model: nn.Module,
    *,
    classes: Sequence[str] | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> nn.Module:
    """``model`` wrapped so it takes [0, 1] pixels and answers in ``CLASSES`` order.

    Args:
        classes: the model's output order (None: already ``CLASSES``).
        normalize: ``(mean, std)`` the model expects its input normalised with (None: none).

    Returns:
        ``model`` itself when there is nothing to adapt, else the wrapper (same device).
    """
    out = model
    if normalize is not None:
        out = Normalize(out, *normalize)
    if classes is not None and tuple(classes) != CLASSES:
        out = ClassOrder(out, classes)
    if out is not model:
        ref = next(iter(model.parameters()), None)
        ref = next(iter(model.buffers()), None) if ref is None else ref
        if ref is not None:  # the wrapper's buffers go where the model is
            out.to(ref.device)
        out.train(model.training)
    return out


__all__ = ["NAMED_ORDERS", "ClassOrder", "Normalize", "adapt", "parse_classes", "parse_normalize"]
