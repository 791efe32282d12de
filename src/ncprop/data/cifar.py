"""CIFAR-10 from its binary version (``*.bin``) or its python version (pickled batches), offline.

Binary: each record is 1 label byte + 3,072 pixel bytes (R, G, B planes of 32x32); files
``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin``, in ``root`` or
``root/cifar-10-batches-bin``.

Python: ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in ``root`` or ``root/cifar-10-batches-py``.
They are pickles, so they are read by :class:`SafeCifarUnpickler`, which imports nothing: the only
globals it resolves are the few names a pickled numeric array needs (numpy's ``_reconstruct``,
``_frombuffer`` (protocol 5), ``ndarray``, ``dtype`` and ``_codecs.encode``), each mapped to a small stand-in of ours that records its
arguments; the arrays are then rebuilt with ``np.frombuffer``. Any other global (``os.system``,
``builtins.eval``, a user class, ...) raises ``pickle.UnpicklingError`` before anything runs.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ncprop._validation import check_choice
from ncprop.data.containers import ArrayDataset

RECORD_BYTES = 1 + 3 * 32 * 32
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]


# ---------------------------------------------------------------------------- restricted unpickling
class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` inside a pickle; never instantiated by the unpickler."""


class _DtypeStub:
    _ALLOWED = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"}

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str) or spec.lstrip("<>|=") not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing numpy dtype {spec!r}; expected one of {sorted(self._ALLOWED)}")
        self.spec = spec.lstrip("<>|=")
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"unexpected numpy dtype state {state!r}")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        order = self.byteorder if self.byteorder in "<>" else "="
        return np.dtype(self.spec).newbyteorder(order)


class _ArrayStub:
    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected numpy array state (expected a 5-tuple)")
        _version, shape, dtype, is_fortran, raw = state
        if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"unexpected numpy array shape {shape!r}")
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("refusing a numpy array that is not a plain numeric buffer")
        dt = dtype.to_numpy()
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * dt.itemsize:
            raise pickle.UnpicklingError(f"numpy array of shape {shape} and dtype {dt} needs "
                                         f"{count * dt.itemsize} bytes, pickle holds {len(raw)}")
        self.array = np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if is_fortran else "C").copy()


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _ArrayStub:
    if cls is not _NdarrayMarker:
        raise pickle.UnpicklingError(f"refusing _reconstruct of {cls!r}; only numpy.ndarray is allowed")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _ArrayStub:
    """numpy's protocol-5 reconstructor ``_frombuffer(buffer, dtype, shape, order)``, made safe."""
    stub = _ArrayStub()
    if isinstance(buf, memoryview):
        buf = buf.tobytes()
    stub.__setstate__((1, tuple(shape) if isinstance(shape, (tuple, list)) else shape, dtype,
                       order == "F", buf))
    return stub


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _codecs_encode,
}


class SafeCifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves no real global: see the module docstring."""

    def __init__(self, file: Any, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to load global {module}.{name}; a CIFAR-10 python batch holds "
                "only dicts, lists, bytes and uint8 numpy arrays") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.source}: refusing persistent id {pid!r}")


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without state")
        return obj.array
    if isinstance(obj, (_DtypeStub, _NdarrayMarker)) or obj is _NdarrayMarker:
        raise pickle.UnpicklingError("stray numpy dtype/ndarray reference in pickle")
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a CIFAR-10 python batch without executing anything it contains."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return _materialize(SafeCifarUnpickler(io.BytesIO(data), str(path)).load())
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        raise pickle.UnpicklingError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        raise ValueError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------- readers
def read_cifar_binary(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one ``*.bin`` batch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(f"{path}: {raw.size} bytes is not a positive multiple of the {RECORD_BYTES}-byte "
                         "CIFAR-10 record (1 label byte + 3072 pixel bytes); truncated or corrupt")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if int(labels.max()) > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise ValueError(f"{path}: record {bad} has label {int(labels[bad])}; expected 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar_python(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from one python-version batch."""
    path = Path(path)
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: expected keys 'data' and 'labels', got {sorted(map(str, batch))}")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                         f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise ValueError(f"{path}: 'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, found values in [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels


def _locate(root: Path, fmt: str, names: list[str]) -> tuple[str, list[Path]] | None:
    if fmt in ("auto", "binary"):
        for d in (root, root / "cifar-10-batches-bin"):
            paths = [d / f"{n}.bin" for n in names]
            if any(p.is_file() for p in paths):
                return "binary", paths
    if fmt in ("auto", "python"):
        for d in (root, root / "cifar-10-batches-py"):
            paths = [d / n for n in names]
            if any(p.is_file() for p in paths):
                return "python", paths
    return None


def load_cifar10(root: str | os.PathLike, split: str = "train", *, format: str = "auto",
                 normalize: bool = True, expected_count: int | None = None) -> ArrayDataset:
    """CIFAR-10 as uint8 images (N, 3, 32, 32) and labels 0..9.

    ``format``: "binary", "python" or "auto" (binary if present, else python). All files of the split
    must exist (a missing one is an error naming it). ``expected_count`` (50000 / 10000) is checked when
    given. ``normalize`` attaches the standard per-channel mean/std, applied per batch.
    """
    check_choice("split", split, ("train", "test"))
    check_choice("format", format, ("auto", "binary", "python"))
    root = Path(root)
    names = TRAIN_FILES if split == "train" else TEST_FILES
    found = _locate(root, format, names)
    if found is None:
        wanted = ", ".join(names)
        raise FileNotFoundError(f"cifar10: no {split} batches ({wanted}; '.bin' for the binary version) in "
                                f"{root}, {root / 'cifar-10-batches-bin'} or {root / 'cifar-10-batches-py'}")
    kind, paths = found
    reader = read_cifar_binary if kind == "binary" else read_cifar_python
    parts = [reader(p) for p in paths]  # a missing file raises FileNotFoundError naming it
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if expected_count is not None and len(labels) != expected_count:
        raise ValueError(f"cifar10 {split} in {paths[0].parent}: expected {expected_count} samples, "
                         f"found {len(labels)}")
    mean, std = (MEAN, STD) if normalize else (None, None)
    return ArrayDataset(images, labels, 10, f"cifar10-{split}", mean=mean, std=std)


def write_cifar_binary(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a ``*.bin`` batch (the format :func:`read_cifar_binary` reads); for tests and fixtures."""
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 3072)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    Path(path).write_bytes(np.concatenate([labels, images], axis=1).tobytes())
