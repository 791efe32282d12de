"""scikit-learn's 8x8 digits (1,797 images, K = 10; optional extra ``ncprop[data]``), offline.

Pixel values 0..16 are kept as uint8 (scale 16); the train/test split is a seeded, class-stratified
permutation (scikit-learn ships no split).
"""

from __future__ import annotations

import numpy as np
import torch

from ncprop._validation import check_choice
from ncprop.data.containers import ArrayDataset


def load_digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """Images (N, 1, 8, 8) uint8 in [0, 16], labels 0..9."""
    check_choice("split", split, ("train", "test", "all"))
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs the optional package 'scikit-learn' "
                          "(pip install 'ncprop[data]' or pip install scikit-learn)") from exc
    bunch = _sk_load_digits()
    x = np.asarray(bunch.images).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target).astype(np.int64)
    if split == "all":
        return ArrayDataset(x, y, 10, "digits", scale=16.0)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), dtype=bool)
    for k in range(10):  # one draw per class (10 iterations, not per sample)
        idx = np.flatnonzero(y == k)
        n_test = int(round(test_fraction * len(idx)))
        test_mask[rng.choice(idx, size=n_test, replace=False)] = True
    keep = test_mask if split == "test" else ~test_mask
    return ArrayDataset(torch.from_numpy(x[keep]), torch.from_numpy(y[keep]), 10, f"digits-{split}", scale=16.0)
