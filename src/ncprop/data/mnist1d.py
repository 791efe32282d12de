"""MNIST-1D generated offline with the ``mnist1d`` package (optional extra ``ncprop[data]``).

``mnist1d.data.make_dataset`` builds the data from templates; nothing is downloaded (its
``get_dataset`` downloader is never called). The package seeds NumPy's and Python's global RNGs; we
save and restore both around the call, so generating the data leaves the caller's RNG state alone.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ncprop._validation import check_choice, check_positive_int
from ncprop.data.containers import ArrayDataset


def _import_mnist1d() -> Any:
    try:
        import mnist1d.data as m1d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MNIST-1D needs the optional package 'mnist1d' "
                          "(pip install 'ncprop[data]' or pip install mnist1d)") from exc
    return m1d


def make_mnist1d(*, num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
                 **overrides: Any) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) MNIST-1D sets: float32 vectors of length 40 (``final_seq_length``), K = 10.

    ``num_samples`` counts both splits (default 5,000 -> 4,000 train, 1,000 test as in the package);
    ``overrides`` replace other entries of ``mnist1d.data.get_dataset_args()``.
    """
    check_positive_int("num_samples", num_samples, minimum=10)
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"train_split must lie in (0, 1), got {train_split!r}")
    m1d = _import_mnist1d()
    args = m1d.get_dataset_args()
    unknown = sorted(set(overrides) - set(vars(args)))
    if unknown:
        raise ValueError(f"unknown MNIST-1D arguments {unknown}; expected some of {sorted(vars(args))}")
    for key, value in {**overrides, "num_samples": num_samples, "train_split": train_split,
                       "seed": seed}.items():
        setattr(args, key, value)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = m1d.make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    train = ArrayDataset(torch.from_numpy(np.asarray(data["x"], dtype=np.float32)),
                         torch.from_numpy(np.asarray(data["y"], dtype=np.int64)), 10, "mnist1d-train")
    test = ArrayDataset(torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32)),
                        torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64)), 10, "mnist1d-test")
    return train, test


def load_mnist1d(split: str = "train", **kwargs: Any) -> ArrayDataset:
    """One split of :func:`make_mnist1d`."""
    check_choice("split", split, ("train", "test"))
    train, test = make_mnist1d(**kwargs)
    return train if split == "train" else test
