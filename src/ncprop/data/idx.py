"""MNIST and Fashion-MNIST from their IDX files (raw or gzip), read and validated without torchvision.

IDX layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions d, then d
big-endian uint32 sizes, then the data. We check the magic bytes, the type code, that the file holds
exactly prod(sizes) items after the header, image size 28x28, equal image/label counts and labels < 10.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ncprop._validation import check_choice
from ncprop.data.containers import ArrayDataset

IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# standard per-channel statistics of the training sets (applied after scaling to [0, 1])
NORMALIZATION = {"mnist": ((0.1307,), (0.3081,)), "fashionmnist": ((0.2860,), (0.3530,))}
FOLDERS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: not a valid gzip file ({exc})") from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in one IDX file (``.gz`` is decompressed); ValueError naming the file if the
    header is wrong or the data size disagrees with the header."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (expected >= 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x} "
                         f"(expected one of {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions (expected >= 1)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header, {len(raw)} bytes (expected {header} for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: header dims {dims} of {dtype} need {expected} data bytes, "
                         f"found {found}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: Path, stems: Sequence[str], name: str) -> Path:
    dirs = [root, root / "raw", root / FOLDERS[name] / "raw", root / FOLDERS[name]]
    candidates = [d / (s + gz) for d in dirs for s in stems for gz in ("", ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{name}: none of these files exists: " + ", ".join(str(c) for c in candidates[:4])
                            + f" (also looked in {root / 'raw'} and {root / FOLDERS[name] / 'raw'})")


def load_idx_dataset(name: str, root: str | os.PathLike, split: str = "train", *, normalize: bool = True,
                     expected_count: int | None = None) -> ArrayDataset:
    """MNIST or Fashion-MNIST as uint8 images (N, 1, 28, 28) and labels 0..9.

    Files are looked up by their standard names (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-...``; also with ``.`` before ``idx``, optionally ``.gz``) in ``root``, ``root/raw`` and
    ``root/MNIST/raw`` (``FashionMNIST``), torchvision's layout. ``expected_count`` (e.g. 60000) is checked
    when given. ``normalize`` attaches the standard mean/std, applied per batch.
    """
    check_choice("name", name, tuple(FOLDERS))
    check_choice("split", split, ("train", "test"))
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], name)
    lbl_path = _find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], name)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: expected uint8 images of shape (N, 28, 28), "
                         f"got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lbl_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    if expected_count is not None and len(labels) != expected_count:
        raise ValueError(f"{img_path}: expected {expected_count} samples, found {len(labels)}")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{lbl_path}: labels must lie in 0..9, found {int(labels.max())}")
    mean, std = NORMALIZATION[name] if normalize else (None, None)
    return ArrayDataset(images.reshape(-1, 1, 28, 28), labels.astype(np.int64), 10, f"{name}-{split}",
                        mean=mean, std=std)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (``.gz`` compresses): the format :func:`read_idx` reads."""
    path = Path(path)
    codes = {v.newbyteorder("=").str[1:]: k for k, v in IDX_TYPES.items()}
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=").str[1:]
    if key not in codes or a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"cannot write dtype {a.dtype} with {a.ndim} dims as IDX")
    code = codes[key]
    data = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(a, dtype=IDX_TYPES[code]).tobytes())
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
