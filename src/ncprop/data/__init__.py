"""Data sets that work offline: in-memory containers, synthetic mixtures, MNIST-1D, digits, and
readers for the MNIST / Fashion-MNIST IDX files and the CIFAR-10 binary and python batches.

:func:`load_dataset` is the one entry point; nothing here downloads anything.
"""

from __future__ import annotations

import os
from typing import Any

from ncprop._validation import check_choice
from ncprop.data.cifar import load_cifar10, read_cifar_binary, read_cifar_python, safe_load_pickle
from ncprop.data.containers import ArrayDataset, class_balanced_subset
from ncprop.data.digits import load_digits
from ncprop.data.idx import load_idx_dataset, read_idx, write_idx
from ncprop.data.mnist1d import load_mnist1d, make_mnist1d
from ncprop.data.synthetic import class_sizes, gaussian_mixture

DATASET_NAMES = ("synthetic", "mnist1d", "digits", "mnist", "fashionmnist", "cifar10")
FILE_DATASETS = ("mnist", "fashionmnist", "cifar10")
ROOT_ENV = "NCPROP_DATA"


def load_dataset(name: str, *, root: str | os.PathLike | None = None, split: str = "train",
                 **kwargs: Any) -> ArrayDataset:
    """One split of a data set by name.

    - "synthetic": :func:`gaussian_mixture` (kwargs: num_classes, dim, per_class, imbalance_ratio, ...).
    - "mnist1d": :func:`load_mnist1d` (kwargs: num_samples, seed, ...), generated, never downloaded.
    - "digits": :func:`load_digits` (scikit-learn; kwargs: test_fraction, seed).
    - "mnist", "fashionmnist": :func:`load_idx_dataset` from IDX files under ``root``.
    - "cifar10": :func:`load_cifar10` from the binary or python batches under ``root``.

    ``root`` defaults to the environment variable ``NCPROP_DATA``; file data sets need one of them.
    """
    check_choice("name", name, DATASET_NAMES)
    check_choice("split", split, ("train", "test"))
    if name == "synthetic":
        return gaussian_mixture(split=split, **kwargs)
    if name == "mnist1d":
        return load_mnist1d(split, **kwargs)
    if name == "digits":
        return load_digits(split, **kwargs)
    if root is None:
        root = os.environ.get(ROOT_ENV)
    if root is None:
        raise ValueError(f"load_dataset({name!r}) needs root=<folder with the files> "
                         f"(or the environment variable {ROOT_ENV}); got None")
    if name == "cifar10":
        return load_cifar10(root, split, **kwargs)
    return load_idx_dataset(name, root, split, **kwargs)


__all__ = [
    "ArrayDataset", "DATASET_NAMES", "FILE_DATASETS", "class_balanced_subset", "class_sizes",
    "gaussian_mixture", "load_cifar10", "load_dataset", "load_digits", "load_idx_dataset", "load_mnist1d",
    "make_mnist1d", "read_cifar_binary", "read_cifar_python", "read_idx", "safe_load_pickle", "write_idx",
]
