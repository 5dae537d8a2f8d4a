"""ResNet-18 for small images: MedMNIST's baseline (Yang et al. 2023, the DermaMNIST row:
ACC 73.5 % at 28x28), which follows the CIFAR variant of He et al. 2016: a 3x3 stride-1 stem
and no max-pool, so a 28x28 image keeps 28x28 maps in the first stage (4x4 in the last).

FLOPs per image grow with the input's area: about 0.46 GMACs at 28x28 with ``width=64``
(``skinadv.bench.flops`` counts them), roughly 70 times the width-16 paper CNN's.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from skinadv.models.cnn import HAM10000_MEAN, HAM10000_STD, MAX_PARAMS


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (four stages of two ``BasicBlock``s, ``width`` x 1/2/4/8 channels) with a
    3x3 stem, no max-pool, global average pooling, dropout and one linear layer.

    Args:
        num_classes: number of output logits.
        width: channels of the stem and first stage (64 is the standard ResNet-18).
        dropout: dropout probability before the linear layer (0: none, as in MedMNIST).

    Input: (N, 3, H, W) float in [0, 1], any H, W >= 8 (the model normalises it with the
    HAM10000 mean and std, so attack budgets stay in pixel units). Output: logits.
    """

    def __init__(self, num_classes: int = 7, *, width: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # 3x3 convs: stem 27w, stages ~ 9 * (4 + 12*4 + 12*16 + 12*64) / 4 w^2 ~ 2.5e3 w^2
        if 2600 * width**2 > MAX_PARAMS:
            raise ValueError(f"width={width} gives more than {MAX_PARAMS:.3g} parameters")
        self.register_buffer("mean", torch.tensor(HAM10000_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(HAM10000_STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem((x - self.mean) / self.std)
        x = self.pool(self.layers(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def resnet18(*, num_classes: int = 7, width: int = 64, dropout: float = 0.0) -> ResNet18:
    """ResNet-18 for small images (MedMNIST's DermaMNIST baseline): 3x3 stem, no max-pool."""
    return ResNet18(num_classes, width=width, dropout=dropout)


__all__ = ["BasicBlock", "ResNet18", "resnet18"]
