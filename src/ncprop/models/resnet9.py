"""ResNet9 (the DAWNBench / Myrtle.ai variant): 8 conv layers + the linear classifier.

    prep    conv(C_in -> w)                          (conv = 3x3 conv, BatchNorm, ReLU)
    layer1  conv(w -> 2w), maxpool 2, + residual[conv(2w -> 2w), conv(2w -> 2w)]
    layer2  conv(2w -> 4w), maxpool 2
    layer3  conv(4w -> 8w), maxpool 2, + residual[conv(8w -> 8w), conv(8w -> 8w)]
    pool    global max pool -> flatten -> features, p = 8w (512 for the default w = 64)

Global pooling makes the feature size independent of the input size (1x28x28 and 3x32x32 alike).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ncprop._validation import check_positive_int
from ncprop.models.base import NCModel, _check_image_shape


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(NCModel):
    """ResNet9 for images of shape ``in_shape = (C, H, W)``; ``width`` is the first layer's channels."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, *, width: int = 64,
                 bias: bool = True) -> None:
        c_in, h, w_ = _check_image_shape("ResNet9", tuple(in_shape))
        check_positive_int("width", width)
        if min(h, w_) < 8:
            raise ValueError(f"ResNet9 needs images of at least 8x8 (three 2x2 poolings), got {h}x{w_}")
        super().__init__(8 * width, num_classes, bias=bias)
        self.in_shape = (c_in, h, w_)
        w = width
        self.body = nn.Sequential(
            conv_bn(c_in, w),
            conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w),
            conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
            conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
