"""Is this model something our attacks can score? One probe batch, one small check each.

auto-attack's ``checks.py`` habit, made strict: a model that takes no ``(N, 3, H, W)`` batch,
returns the wrong number of outputs, returns probabilities instead of logits, gives no input
gradient, or answers two identical calls differently would make white-box figures
meaningless, so each is an error (one line), not a warning.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from skinadv.attacks.craft import eval_mode
from skinadv.data.dataset import CLASSES

#: images in the probe batch (more than one: a model that assumes N == 1 is caught too)
PROBE_N = 4


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def check_runs(model: nn.Module, x: Tensor, what: str) -> Tensor:
    """The model's output on ``x``; a model that cannot take it raises, naming the size."""
    try:
        with torch.no_grad():
            return model(x)
    except Exception as exc:  # any failure here means: wrong input for this model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"{what} cannot take a {_shape(tuple(x.shape))} float batch in [0, 1] "
            f"(N, 3, H, W): {type(exc).__name__}: {first}"
        ) from exc


def check_logits(out: object, n: int, what: str, num_classes: int = len(CLASSES)) -> Tensor:
    """``out`` must be an ``(n, num_classes)`` float tensor of finite values."""
    if not isinstance(out, Tensor):
        raise ValueError(  # noqa: TRY004 (a user's model: the CLI's exit 2)
            f"{what} returns a {type(out).__name__}, not a tensor of logits: wrap it so "
            f"forward returns the (N, {num_classes}) logits alone"
        )
    if out.dim() != 2 or out.shape[0] != n or out.shape[1] != num_classes:
        got = out.shape[1] if out.dim() == 2 and out.shape[0] == n else None
        per = f"{got} outputs per image" if got is not None else f"shape {_shape(out.shape)}"
        raise ValueError(
            f"{what} returns {per} for a batch of {n}; expected ({n}, {num_classes}) logits, "
            f"one per class ({', '.join(CLASSES)}; --classes gives the model's own order)"
        )
    if not out.is_floating_point():
        raise ValueError(f"{what} returns {out.dtype} outputs, not float logits")
    if not torch.isfinite(out).all():
        raise ValueError(f"{what} returns non-finite outputs (NaN or inf) on a [0, 1] batch")
    return out


def check_not_probabilities(out: Tensor, what: str) -> None:
    """Rows that are non-negative and sum to 1 are probabilities: attacks need the logits
    (cross-entropy on a softmax output saturates, its gradient vanishes and robustness looks
    better than it is)."""
    sums = out.double().sum(dim=1)
    if (out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError(
            f"{what} returns probabilities (each row non-negative, summing to 1), not "
            f"logits: remove its final softmax (attacks on probabilities mask the gradient)"
        )


def check_deterministic(model: nn.Module, x: Tensor, first: Tensor, what: str) -> None:
    """A second identical call must give the same answer; a randomised model needs EOT."""
    with torch.no_grad():
        second = model(x)
    diff = float((second - first).abs().max())
    if diff > 1e-4 * max(1.0, float(first.abs().max())):
        raise ValueError(
            f"{what} answers two identical calls differently (max logit difference "
            f"{diff:.3g}): a randomised model needs an EOT attack (expectation over its "
            f"randomness), not a plain white-box attack"
        )


def check_gradient(model: nn.Module, x: Tensor, what: str) -> None:
    """White-box attacks need the gradient of the logits with respect to the input."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        if not out.requires_grad:
            grad = None
        else:
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    if grad is None:
        raise ValueError(
            f"{what} gives no gradient with respect to its input (detached or no_grad inside "
            f"forward): white-box attacks need a differentiable model"
        )


def check_classifier(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    *,
    what: str = "the model",
    num_classes: int = len(CLASSES),
) -> None:
    """Check that ``model`` is a deterministic, differentiable classifier returning logits.

    Runs in eval mode (each submodule's mode restored afterwards), on a seeded random probe
    batch on the model's device.

    Args:
        model: maps ``(N, 3, H, W)`` float in [0, 1] to ``(N, num_classes)`` logits.
        input_shape: the probe batch's shape ``(N, 3, H, W)``, the data's image size.
        what: how error messages name the model (e.g. ``--model path``).
        num_classes: the logits expected per image.

    Raises:
        ValueError: one line: the input size it cannot take, the wrong number of outputs,
            probabilities, a randomised model (needs EOT), or no input gradient.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.rand(input_shape, generator=g).to(_device(model))
    with eval_mode(model):
        out = check_logits(check_runs(model, x, what), input_shape[0], what, num_classes)
        check_not_probabilities(out, what)
        check_deterministic(model, x, out, what)
        check_gradient(model, x, what)


__all__ = [
    "PROBE_N",
    "check_classifier",
    "check_deterministic",
    "check_gradient",
    "check_logits",
    "check_not_probabilities",
    "check_runs",
]
