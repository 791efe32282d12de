"""Data sets: containers, synthetic mixtures, MNIST-1D, digits, IDX and CIFAR-10 files (written here in
the real formats), corrupt and truncated files, and the restricted unpickler."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from ncprop.data import (ArrayDataset, class_balanced_subset, gaussian_mixture, load_cifar10, load_dataset,
                         load_digits, make_mnist1d, read_cifar_binary, read_cifar_python, read_idx,
                         safe_load_pickle, write_idx)
from ncprop.data.cifar import write_cifar_binary

pytestmark = pytest.mark.fast


# ---------------------------------------------------------------------------- helpers
def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _labels(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def _write_mnist(root, n_train=30, n_test=20, gz=False, dotted=False):
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = _images(n, (28, 28), seed=n), _labels(n, seed=n + 1)
        write_idx(root / f"{prefix}-images{sep}idx3-ubyte{ext}", x)
        write_idx(root / f"{prefix}-labels{sep}idx1-ubyte{ext}", y)
        out[prefix] = (x, y)
    return out


def _cifar_python_batch(x: np.ndarray, y: np.ndarray) -> dict:
    return {b"batch_label": b"testing batch", b"labels": [int(v) for v in y],
            b"data": x.reshape(len(y), 3072), b"filenames": [b"f%d.png" % i for i in range(len(y))]}


# ---------------------------------------------------------------------------- container
def test_array_dataset_batches_normalise_uint8_per_batch():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).reshape(2, 1, 2, 2) * 10
    ds = ArrayDataset(x, torch.tensor([0, 1]), 2, "tiny", mean=[0.5], std=[0.25])
    assert ds.x.dtype == torch.uint8  # stays uint8 in memory
    (xb, yb), = list(ds.batches(4))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    torch.testing.assert_close(xb, (x.float() / 255 - 0.5) / 0.25, rtol=0, atol=1e-6)


def test_batches_cover_every_sample_once_and_shuffle_is_seeded():
    ds = gaussian_mixture(num_classes=3, dim=4, per_class=11, seed=0)
    seen = torch.cat([yb for _, yb in ds.batches(5)])
    assert torch.equal(seen, ds.y)
    a = [xb for xb, _ in ds.batches(5, shuffle=True, generator=torch.Generator().manual_seed(3))]
    b = [xb for xb, _ in ds.batches(5, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert sorted(torch.cat(a)[:, 0].tolist()) == sorted(ds.x[:, 0].tolist())
    assert len(list(ds.batches(5, drop_last=True))) == 33 // 5
    with pytest.raises(ValueError, match="generator"):
        next(ds.batches(5, shuffle=True))


def test_array_dataset_rejects_bad_labels_and_shapes():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ArrayDataset(torch.zeros(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="N = len"):
        ArrayDataset(torch.zeros(3, 3), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="integers"):
        ArrayDataset(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), 3)


def test_class_balanced_subset():
    ds = gaussian_mixture(num_classes=4, dim=3, per_class=20, imbalance_ratio=4.0, seed=1)
    sub = class_balanced_subset(ds, 5, torch.Generator().manual_seed(0))
    assert sub.class_counts().tolist() == [5, 5, 5, 5]
    again = class_balanced_subset(ds, 5, torch.Generator().manual_seed(0))
    assert torch.equal(sub.x, again.x)
    with pytest.raises(ValueError, match="per_class=6"):
        class_balanced_subset(ds, 6)


# ---------------------------------------------------------------------------- synthetic / generated
def test_gaussian_mixture_balanced_imbalanced_and_seeded():
    a = gaussian_mixture(num_classes=5, dim=8, per_class=10, seed=2)
    assert a.class_counts().tolist() == [10] * 5 and a.in_shape == (8,)
    b = gaussian_mixture(num_classes=5, dim=8, per_class=10, seed=2)
    assert torch.equal(a.x, b.x)
    imb = gaussian_mixture(num_classes=5, dim=8, per_class=40, imbalance_ratio=8.0)
    counts = imb.class_counts().tolist()
    assert counts[0] == 40 and counts[-1] == 5 and counts == sorted(counts, reverse=True)
    explicit = gaussian_mixture(num_classes=3, dim=2, per_class=[1, 2, 3])
    assert explicit.class_counts().tolist() == [1, 2, 3]
    test = gaussian_mixture(num_classes=5, dim=8, per_class=10, seed=2, split="test")
    assert not torch.equal(test.x, a.x)


def test_gaussian_mixture_leaves_global_rng_alone():
    state = torch.get_rng_state()
    gaussian_mixture(num_classes=3, dim=2, per_class=4)
    assert torch.equal(state, torch.get_rng_state())


def test_mnist1d_generated_offline_without_touching_global_rngs(monkeypatch):
    import mnist1d.data

    def no_download(*a, **k):
        raise AssertionError("mnist1d.get_dataset (the downloader) must not be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    train, test = make_mnist1d(num_samples=200, seed=3)
    assert (np.random.get_state()[1] == np_state).all() and random.getstate() == py_state
    assert len(train) == 160 and len(test) == 40 and train.in_shape == (40,)
    assert train.x.dtype == torch.float32 and set(train.y.tolist()) <= set(range(10))
    again, _ = make_mnist1d(num_samples=200, seed=3)
    assert torch.equal(train.x, again.x)
    with pytest.raises(ValueError, match="unknown MNIST-1D"):
        make_mnist1d(num_samples=200, not_an_arg=1)


def test_digits():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and train.in_shape == (1, 8, 8)
    assert train.x.dtype == torch.uint8
    xb, _ = next(train.batches(64))
    assert float(xb.max()) <= 1.0 and float(xb.min()) >= 0.0


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_round_trip_mnist_layout(tmp_path, gz, dotted):
    written = _write_mnist(tmp_path, gz=gz, dotted=dotted)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", root=tmp_path, split=split)
        x, y = written[prefix]
        assert ds.in_shape == (1, 28, 28) and ds.x.dtype == torch.uint8
        assert np.array_equal(ds.x.numpy()[:, 0], x) and np.array_equal(ds.y.numpy(), y)
    xb, yb = next(ds.batches(8))
    assert xb.shape == (8, 1, 28, 28) and xb.dtype == torch.float32


def test_idx_torchvision_layout_for_fashionmnist(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_mnist(raw, n_train=12, n_test=7, gz=True)
    ds = load_dataset("fashionmnist", root=tmp_path, split="test")
    assert len(ds) == 7 and ds.name == "fashionmnist-test"


def test_idx_other_dtypes_round_trip(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    write_idx(tmp_path / "a.idx", a)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), a)


def test_idx_errors_name_the_file(tmp_path):
    _write_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()
    # truncated data
    img.write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: truncated.*\(30, 28, 28\)"):
        load_dataset("mnist", root=tmp_path)
    # trailing bytes
    img.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(img)
    # bad magic
    img.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(img)
    # unknown type code
    img.write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="type code 0x07"):
        read_idx(img)
    # truncated header
    img.write_bytes(good[:9])
    with pytest.raises(ValueError, match="truncated header"):
        read_idx(img)
    # wrong image size
    write_idx(img, _images(30, (27, 28)))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", root=tmp_path)
    # count mismatch between images and labels
    write_idx(img, _images(31, (28, 28)))
    with pytest.raises(ValueError, match="31 images but .* 30 labels"):
        load_dataset("mnist", root=tmp_path)
    write_idx(img, _images(30, (28, 28)))
    with pytest.raises(ValueError, match="expected 60000 samples"):
        load_dataset("mnist", root=tmp_path, expected_count=60000)
    # label out of range
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        load_dataset("mnist", root=tmp_path)
    # missing file
    os.remove(img)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    _write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root=tmp_path, split="test")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_file_datasets_need_a_root(monkeypatch):
    monkeypatch.delenv("NCPROP_DATA", raising=False)
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="'imagenet'"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------- CIFAR-10 binary
def _write_cifar_bin(folder, n_per_file=4):
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _images(n_per_file, (3, 32, 32), seed=10 + i), _labels(n_per_file, seed=20 + i)
        write_cifar_binary(folder / f"{name}.bin", x, y)
        xs.append(x)
        ys.append(y)
    return xs, ys


def test_cifar_binary_round_trip(tmp_path):
    xs, ys = _write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    train = load_dataset("cifar10", root=tmp_path)
    assert len(train) == 20 and train.in_shape == (3, 32, 32) and train.x.dtype == torch.uint8
    assert np.array_equal(train.x.numpy(), np.concatenate(xs[:5]))
    assert np.array_equal(train.y.numpy(), np.concatenate(ys[:5]))
    test = load_cifar10(tmp_path, "test", format="binary")
    assert np.array_equal(test.x.numpy(), xs[5])
    xb, _ = next(train.batches(3))
    assert xb.shape == (3, 3, 32, 32)


def test_cifar_binary_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder)
    path = folder / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-1])
    with pytest.raises(ValueError, match="data_batch_3.bin: .*3073-byte"):
        load_dataset("cifar10", root=tmp_path)
    path.write_bytes(b"\x0b" + good[1:])
    with pytest.raises(ValueError, match="data_batch_3.bin: record 0 has label 11"):
        read_cifar_binary(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="data_batch_3.bin"):
        read_cifar_binary(path)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="data_batch_3.bin"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no train batches"):
        load_dataset("cifar10", root=tmp_path / "empty")


# ---------------------------------------------------------------------------- CIFAR-10 python + safety
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_python_round_trip(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x, y = _images(3, (3, 32, 32), seed=i), _labels(3, seed=50 + i)
        (folder / name).write_bytes(pickle.dumps(_cifar_python_batch(x, y), protocol=protocol))
        xs.append(x)
        ys.append(y)
    train = load_dataset("cifar10", root=tmp_path)
    assert np.array_equal(train.x.numpy(), np.concatenate(xs[:5]))
    assert np.array_equal(train.y.numpy(), np.concatenate(ys[:5]))
    test = load_cifar10(tmp_path, "test", format="python")
    assert np.array_equal(test.x.numpy(), xs[5])


class _Evil:
    """Unpickling this would create a marker file (and could run any command)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilOpen])
def test_pickle_with_arbitrary_object_is_refused_without_running_it(tmp_path, evil_cls):
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _images(2, (3, 32, 32)), _labels(2)
    batch = _cifar_python_batch(x, y)
    batch[b"payload"] = evil_cls(str(marker))
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="test_batch: refusing to load global"):
        load_dataset("cifar10", root=tmp_path, split="test")
    assert not marker.exists()


class _Plain:
    def __init__(self) -> None:
        self.value = 1


def test_pickle_of_a_user_class_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(_Plain(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        safe_load_pickle(path)


def test_object_dtype_array_is_refused(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.array([object()], dtype=object), b"labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        safe_load_pickle(path)


def test_cifar_python_corrupt_and_invalid(tmp_path):
    path = tmp_path / "test_batch"
    x, y = _images(2, (3, 32, 32)), _labels(2)
    good = pickle.dumps(_cifar_python_batch(x, y), protocol=2)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises((ValueError, pickle.UnpicklingError), match="test_batch"):
        read_cifar_python(path)
    bad = _cifar_python_batch(x, y)
    bad[b"labels"] = [0, 12]
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        read_cifar_python(path)
    bad = _cifar_python_batch(x, y)
    bad[b"labels"] = [0]
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        read_cifar_python(path)
    bad = _cifar_python_batch(x, y)
    bad[b"data"] = x.reshape(2, -1)[:, :100]
    path.write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        read_cifar_python(path)
