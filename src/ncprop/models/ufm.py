"""The unconstrained feature model (UFM): features are free parameters, one row per sample.

The input to :class:`UFM` is a LongTensor of sample indices ``idx`` (B,); ``features(idx) = H[idx]``.
``H`` is an ``nn.Parameter`` (N, p) trained with W, or a buffer when ``trainable_features=False``
(for instance fixed to the simplex ETF of THEORY.md T3: ``H = E``, ``p = N = K``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ncprop._validation import check_positive_int
from ncprop.models.base import NCModel


def etf_features(num_classes: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The simplex ETF Gram target E = (I - J/K)/sqrt(K - 1), a K x K matrix with ||E||_F = 1.

    Used as fixed UFM features (one sample per class, sample k has label k, p = N = K) in T3/T4.
    """
    check_positive_int("num_classes", num_classes, minimum=2)
    k = num_classes
    eye = torch.eye(k, dtype=dtype, device=device)
    return (eye - torch.full((k, k), 1.0 / k, dtype=dtype, device=device)) / math.sqrt(k - 1)


class UFM(NCModel):
    """Unconstrained feature model.

    Args:
        labels: LongTensor (N,) with values in [0, num_classes); stored as the buffer ``labels``.
        feature_dim: p.
        num_classes: K.
        bias: classifier bias.
        init_features: optional (N, p) initial H; default N(0, init_scale^2) from ``generator``.
        trainable_features: False stores H as a buffer (fixed features).
        init_scale: standard deviation of the default H initialisation.
        generator: torch.Generator for the default H initialisation (never the global RNG when given).
    """

    def __init__(self, labels: torch.Tensor, feature_dim: int, num_classes: int, *, bias: bool = True,
                 init_features: torch.Tensor | None = None, trainable_features: bool = True,
                 init_scale: float = 1.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(feature_dim, num_classes, bias=bias)
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} "
                             f"dtype {labels.dtype}")
        if labels.numel() == 0:
            raise ValueError("labels must not be empty")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
        n = labels.numel()
        if init_features is None:
            h = torch.randn(n, feature_dim, generator=generator) * init_scale
        else:
            h = torch.as_tensor(init_features).detach().clone()
            if tuple(h.shape) != (n, feature_dim):
                raise ValueError(f"init_features must have shape (N, p) = ({n}, {feature_dim}), "
                                 f"got {tuple(h.shape)}")
        h = h.to(dtype or torch.get_default_dtype())
        if trainable_features:
            self.H = nn.Parameter(h)
        else:
            self.register_buffer("H", h)
        self.register_buffer("labels", labels.to(torch.int64))
        self.num_samples = n
        if dtype is not None or device is not None:
            self.to(device=device, dtype=dtype)
            self.labels = self.labels.to(torch.int64)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"UFM input must be a LongTensor of sample indices, got dtype {idx.dtype}")
        return self.H[idx]

    def all_indices(self) -> torch.Tensor:
        """Indices 0..N-1 on the model's device (a full-batch input)."""
        return torch.arange(self.num_samples, device=self.labels.device)

    @classmethod
    def etf(cls, num_classes: int, *, bias: bool = False, trainable_features: bool = False,
            zero_classifier: bool = True, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> "UFM":
        """The T3/T4 setting: H = E fixed (p = N = K, sample k has label k) and W_0 = 0."""
        labels = torch.arange(num_classes)
        model = cls(labels, num_classes, num_classes, bias=bias,
                    init_features=etf_features(num_classes, dtype=torch.float64),
                    trainable_features=trainable_features, dtype=dtype or torch.float32, device=device)
        if zero_classifier:
            with torch.no_grad():
                model.classifier.weight.zero_()
                if model.classifier.bias is not None:
                    model.classifier.bias.zero_()
        return model
