"""A multilayer perceptron backbone: flatten, then [Linear -> (norm) -> activation] x depth."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ncprop._validation import check_choice, check_positive_int
from ncprop.models.base import NCModel

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
NORMS = ("none", "batch", "layer")


class MLP(NCModel):
    """MLP on flattened inputs.

    Args:
        in_shape: shape of one input (any; flattened), e.g. (40,) for MNIST-1D or (1, 28, 28).
        num_classes: K.
        widths: hidden widths; the last one is the feature dimension p. Default (512, 512).
        activation: one of relu, gelu, tanh, silu.
        norm: none, batch or layer normalisation after each hidden Linear.
        bias: classifier bias (hidden layers always have biases).
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, *, widths: Sequence[int] = (512, 512),
                 activation: str = "relu", norm: str = "none", bias: bool = True) -> None:
        widths = tuple(widths)
        if len(widths) == 0:
            raise ValueError("widths must name at least one hidden layer, got ()")
        for w in widths:
            check_positive_int("widths[i]", w)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_choice("norm", norm, NORMS)
        super().__init__(widths[-1], num_classes, bias=bias)
        in_dim = math.prod(int(s) for s in in_shape)
        check_positive_int("prod(in_shape)", in_dim)
        self.in_shape = tuple(int(s) for s in in_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_dim
        for w in widths:
            layers.append(nn.Linear(prev, w))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(w))
            elif norm == "layer":
                layers.append(nn.LayerNorm(w))
            layers.append(ACTIVATIONS[activation]())
            prev = w
        self.body = nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
