"""Gaussian class mixtures: K class means on a sphere of radius ``separation``, isotropic noise."""

from __future__ import annotations

from typing import Sequence

import torch

from ncprop._validation import check_choice, check_nonnegative, check_positive_int
from ncprop.data.containers import ArrayDataset


def class_sizes(num_classes: int, per_class: int, imbalance_ratio: float = 1.0) -> list[int]:
    """Geometric class sizes from ``per_class`` (class 0) down to ``per_class / imbalance_ratio``
    (class K-1); ``imbalance_ratio = 1`` is balanced."""
    check_positive_int("num_classes", num_classes, minimum=2)
    check_positive_int("per_class", per_class)
    if not imbalance_ratio >= 1.0:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio!r}")
    sizes = [max(1, round(per_class * imbalance_ratio ** (-k / (num_classes - 1)))) for k in range(num_classes)]
    return sizes


def gaussian_mixture(num_classes: int = 10, dim: int = 32, per_class: int | Sequence[int] = 100, *,
                     imbalance_ratio: float = 1.0, separation: float = 4.0, noise: float = 1.0,
                     seed: int = 0, split: str = "train", dtype: torch.dtype = torch.float32,
                     name: str | None = None) -> ArrayDataset:
    """Samples x = mu_y + noise * N(0, I) with class means of norm ``separation``.

    ``per_class`` is one count (balanced, or geometric with ``imbalance_ratio``) or a list of K counts.
    The means depend on ``seed`` only, so the "train" and "test" splits share them and differ in the
    samples. Labels are sorted by class (shuffle through ``batches``). All randomness comes from
    ``torch.Generator`` objects seeded from ``seed``.
    """
    check_positive_int("dim", dim)
    check_nonnegative("noise", noise)
    check_nonnegative("separation", separation)
    check_choice("split", split, ("train", "test"))
    if isinstance(per_class, int):
        sizes = class_sizes(num_classes, per_class, imbalance_ratio)
    else:
        sizes = [int(s) for s in per_class]
        if len(sizes) != num_classes or any(s < 1 for s in sizes):
            raise ValueError(f"per_class must list {num_classes} positive counts, got {list(per_class)!r}")
    means_gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=means_gen, dtype=torch.float64)
    means = separation * means / means.norm(dim=1, keepdim=True)
    sample_gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2) + 7919)
    y = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(sizes))
    x = means[y] + noise * torch.randn(len(y), dim, generator=sample_gen, dtype=torch.float64)
    return ArrayDataset(x.to(dtype), y, num_classes, name or f"synthetic-{split}")
