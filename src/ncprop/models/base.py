"""The one model shape every backbone shares, and small device helpers.

An :class:`NCModel` is a feature extractor followed by one linear layer::

    features(x) -> h in R^{B x p}        (penultimate features)
    classifier   = nn.Linear(p, K, bias)  (W = classifier.weight, K x p)
    forward(x)   = classifier(features(x))

Metrics and theory read ``W`` as ``model.classifier.weight`` and the bias as ``model.classifier.bias``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ncprop._validation import check_positive_int


class NCModel(nn.Module):
    """Base class: subclasses implement :meth:`features`; the classifier is built here.

    Attributes ``num_classes`` (K) and ``feature_dim`` (p) are set by the constructor.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, bias: bool = True) -> None:
        super().__init__()
        check_positive_int("feature_dim", feature_dim)
        check_positive_int("num_classes", num_classes, minimum=2)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes, bias=bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement features(x)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` from one pass through the backbone."""
        h = self.features(x)
        return self.classifier(h), h


def autocast_context(device: torch.device | str, enabled: bool = True,
                     dtype: torch.dtype = torch.bfloat16) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (or CPU when asked), a no-op context when ``enabled`` is False.

    Use around the forward pass and loss of a CNN training step; the backward pass runs outside it.
    Metrics should be computed outside autocast (float32 or float64 features).
    """
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"autocast_context supports cuda and cpu devices, got {device}")
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Move a CNN to the channels_last memory format (in place; returns the model)."""
    return model.to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe_output_shape(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``module``'s output for one input of shape ``in_shape`` (no batch dim).

    Runs on the meta device when possible so no memory or compute is spent.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = next(iter(module.parameters()), None)
            dtype = ref.dtype if ref is not None else torch.float32
            device = ref.device if ref is not None else torch.device("cpu")
            out = module(torch.zeros((1, *in_shape), dtype=dtype, device=device))
    finally:
        module.train(was_training)
    return tuple(out.shape[1:])


def _check_image_shape(name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3 or any((not isinstance(s, int)) or s < 1 for s in in_shape):
        raise ValueError(f"{name} expects in_shape=(C, H, W) with positive ints, got {in_shape!r}")
    return tuple(in_shape)  # type: ignore[return-value]


def iter_modules_of(model: nn.Module, types: tuple[type, ...]) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, types):
            yield m
