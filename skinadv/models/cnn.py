"""The paper's CNN: five conv layers with batch norm, max-pooling, dropout and one FC layer."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

#: Refuse to build a model with more parameters than this (1 GiB of float32 weights): a
#: width, pool or class count read from a damaged config must not exhaust memory.
MAX_PARAMS = 2**28

# Per-channel mean / std of the 10015 HAM10000 images at 28x28, in [0, 1] pixel units.
# The model owns its normalisation, so attack budgets (eps) stay in pixel units.
HAM10000_MEAN = (0.7629, 0.5432, 0.5690)
HAM10000_STD = (0.1380, 0.1493, 0.1664)


def _conv_bn(c_in: int, c_out: int, *, pool: bool = False) -> list[nn.Module]:
    """conv, BatchNorm, [2x2 max-pool,] ReLU.

    The pool comes before the ReLU: max-pooling commutes with ReLU (max(relu(a), relu(b)) =
    relu(max(a, b)) exactly, in float too, and the gradient goes to the same element), so
    the network computes bit for bit what conv-BN-ReLU-pool computes, and trains to the same
    weights, while the ReLU and its backward run on a quarter of the elements: 1.07x the
    training images/s and 1.07-1.20x the PGD images/s on 2 CPU threads. The state dict's
    keys are those of the ReLU-first order (neither layer has parameters or buffers).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.ReLU(inplace=True)]


class PaperCNN(nn.Module):
    """Five 3x3 conv + BatchNorm + ReLU layers, three max-pools, dropout, one linear layer.

    Layout (28x28 input): conv(w) pool | conv(2w) pool | conv(2w) conv(4w) pool | conv(4w)
    | adaptive average pool | dropout | linear (each pool before its ReLU: see ``_conv_bn``).
    Pooling early keeps it fast on a CPU (the quick preset trains 13 of these on 2 cores).

    Args:
        num_classes: number of output logits.
        width: channels of the first conv layer; later layers use 2x and 4x.
        dropout: dropout probability before the linear layer.
        pool: side of the adaptive average pool before the linear layer, so any square
            input size >= 8 works.

    Input: (N, 3, H, W) float in [0, 1]. Output: (N, num_classes) logits (no softmax; use
    ``logits.softmax(-1)`` for probabilities and cross-entropy on logits for training).
    """

    def __init__(
        self, num_classes: int = 7, *, width: int = 32, dropout: float = 0.3, pool: int = 1
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("pool", pool)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        # conv weights 27w + 270w^2 (BatchNorm's are negligible), then the linear layer
        n_params = 27 * width + 270 * width**2 + (4 * width * pool**2 + 1) * num_classes
        if n_params > MAX_PARAMS:
            raise ValueError(
                f"width={width}, pool={pool}, num_classes={num_classes} give more than "
                f"{MAX_PARAMS:.3g} parameters (1 GiB of weights)"
            )
        w = width
        self.register_buffer("mean", torch.tensor(HAM10000_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(HAM10000_STD).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            *_conv_bn(3, w, pool=True),  # 28 -> 14
            *_conv_bn(w, 2 * w, pool=True),  # 14 -> 7
            *_conv_bn(2 * w, 2 * w),
            *_conv_bn(2 * w, 4 * w, pool=True),  # 7 -> 3
            *_conv_bn(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(pool),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * w * pool * pool, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        x = self.features(x)
        return self.fc(self.dropout(torch.flatten(x, 1)))


def paper_cnn(
    *, num_classes: int = 7, width: int = 32, dropout: float = 0.3, pool: int = 1
) -> PaperCNN:
    """The paper's CNN (Section III-A): 5 conv layers, BN, max-pool, dropout, one FC."""
    return PaperCNN(num_classes, width=width, dropout=dropout, pool=pool)
