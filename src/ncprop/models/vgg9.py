"""VGG9: 6 conv layers (3x3 conv, BatchNorm, ReLU; 4 max-poolings), 2 hidden linear layers and the
linear classifier, 9 weight layers in all.

    conv 64, pool, conv 128, pool, conv 256, conv 256, pool, conv 512, conv 512, pool,
    flatten, Linear(flat, 512), ReLU, Linear(512, 512), ReLU -> features (p = 512), classifier.

The flattened size is measured with a shape probe at construction, never hard-coded:
512 for 1x28x28 (28 -> 14 -> 7 -> 3 -> 1) and 2048 for 3x32x32 (32 -> 16 -> 8 -> 4 -> 2).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn

from ncprop._validation import check_positive_int
from ncprop.models.base import NCModel, _check_image_shape, _probe_output_shape

DEFAULT_CONFIG: tuple[Union[int, str], ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGG9(NCModel):
    """VGG9 for images of shape ``in_shape = (C, H, W)``.

    Args:
        config: conv channels and "M" for a 2x2 max-pool (default: the 6-conv VGG9 above).
        hidden: width of the two hidden linear layers; it is the feature dimension p.
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, *,
                 config: Sequence[Union[int, str]] = DEFAULT_CONFIG, hidden: int = 512,
                 bias: bool = True) -> None:
        c_in, h, w = _check_image_shape("VGG9", tuple(in_shape))
        check_positive_int("hidden", hidden)
        pools = sum(1 for c in config if c == "M")
        if min(h, w) < 2 ** pools:
            raise ValueError(f"VGG9 with {pools} poolings needs images of at least {2 ** pools}x{2 ** pools}, "
                             f"got {h}x{w}")
        super().__init__(hidden, num_classes, bias=bias)
        self.in_shape = (c_in, h, w)
        layers: list[nn.Module] = []
        prev = c_in
        for c in config:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            elif isinstance(c, int) and c > 0:
                layers += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                prev = c
            else:
                raise ValueError(f"config entries must be positive ints or 'M', got {c!r}")
        self.conv = nn.Sequential(*layers)
        self.flat_dim = math.prod(_probe_output_shape(self.conv, self.in_shape))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(self.flat_dim, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))
