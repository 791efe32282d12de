"""An in-memory data set and batch iteration without per-sample Python loops.

Images stay uint8 in memory (4x less memory and host-to-device traffic than float32); each batch is
converted on the target device: ``x.float() / scale``, then ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ncprop._validation import check_positive_int


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(np.ascontiguousarray(a))


class ArrayDataset:
    """Inputs ``x`` (N, ...) and integer labels ``y`` (N,) held in memory.

    Args:
        x: uint8 images (N, C, H, W), or float features (N, ...).
        y: labels in [0, num_classes).
        num_classes: K.
        name: a label for messages and records.
        scale: divisor applied per batch; default 255 for uint8 inputs, 1 otherwise.
        mean, std: optional per-channel (dim 1) normalisation applied after ``scale``.
    """

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, num_classes: int,
                 name: str = "dataset", *, scale: float | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        check_positive_int("num_classes", num_classes, minimum=2)
        x, y = _as_tensor(x), _as_tensor(y)
        if y.ndim != 1:
            raise ValueError(f"{name}: labels must be 1-D, got shape {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
            raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: x must have shape (N, ...) with N = len(y) = {y.shape[0]}, "
                             f"got {tuple(x.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
            raise ValueError(f"{name}: x must be uint8 or floating point, got dtype {x.dtype}")
        self.x = x
        self.y = y.to(torch.int64)
        self.num_classes = num_classes
        self.name = name
        self.scale = float(scale) if scale is not None else (255.0 if x.dtype == torch.uint8 else 1.0)
        if (mean is None) != (std is None):
            raise ValueError(f"{name}: give both mean and std or neither, got mean={mean!r}, std={std!r}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        if self.mean is not None:
            channels = x.shape[1] if x.ndim >= 3 else 1
            if len(self.mean) != channels or len(self.std) != channels:  # type: ignore[arg-type]
                raise ValueError(f"{name}: mean/std need one value per channel ({channels}), "
                                 f"got {len(self.mean)} and {len(self.std)}")  # type: ignore[arg-type]
            if any(s <= 0 for s in self.std):  # type: ignore[union-attr]
                raise ValueError(f"{name}: std values must be > 0, got {self.std}")

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y.cpu(), minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, in_shape={self.in_shape}, "
                f"num_classes={self.num_classes}, dtype={self.x.dtype}, device={self.device})")

    # ------------------------------------------------------------------ derived data sets
    def _like(self, x: torch.Tensor, y: torch.Tensor, name: str | None = None) -> "ArrayDataset":
        return ArrayDataset(x, y, self.num_classes, name or self.name, scale=self.scale,
                            mean=self.mean, std=self.std)

    def subset(self, indices: torch.Tensor | Sequence[int], name: str | None = None) -> "ArrayDataset":
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.x.device)
        return self._like(self.x[idx], self.y[idx.to(self.y.device)], name)

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """The same data moved to ``device`` (still uint8 for images): batches then need no copies."""
        return self._like(self.x.to(device), self.y.to(device))

    # ------------------------------------------------------------------ batches
    def normalize(self, xb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Raw stored values -> model inputs (float ``dtype``), on ``xb``'s device."""
        xb = xb.to(dtype)
        if self.scale != 1.0:
            xb = xb / self.scale
        if self.mean is not None:
            shape = (1, len(self.mean)) + (1,) * (xb.ndim - 2)
            mean = torch.tensor(self.mean, dtype=dtype, device=xb.device).view(shape)
            std = torch.tensor(self.std, dtype=dtype, device=xb.device).view(shape)  # type: ignore[arg-type]
            xb = (xb - mean) / std
        return xb

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, pin_memory: bool = False, drop_last: bool = False,
                dtype: torch.dtype = torch.float32, channels_last: bool = False,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches: x normalised to ``dtype`` on ``device``, y int64.

        ``shuffle=True`` needs a ``torch.Generator`` (on the CPU): the order is drawn from it, never
        from the global RNG. Indexing is one gather per batch.
        """
        check_positive_int("batch_size", batch_size)
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs generator=torch.Generator().manual_seed(seed); got None")
        device = torch.device(device) if device is not None else self.x.device
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start:start + batch_size], self.y[start:start + batch_size]
            else:
                idx = order[start:start + batch_size].to(self.x.device)
                xb, yb = self.x[idx], self.y[idx]
            if xb.device != device:
                if pin_memory and xb.device.type == "cpu" and device.type == "cuda":
                    xb, yb = xb.pin_memory(), yb.pin_memory()
                xb = xb.to(device, non_blocking=pin_memory)
                yb = yb.to(device, non_blocking=pin_memory)
            xb = self.normalize(xb, dtype)
            if channels_last and xb.ndim == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb

    def tensors(self, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole data set as one normalised batch ``(x, y)``."""
        device = torch.device(device) if device is not None else self.x.device
        return self.normalize(self.x.to(device), dtype), self.y.to(device)


def class_balanced_subset(dataset: ArrayDataset, per_class: int, generator: torch.Generator | None = None,
                          ) -> ArrayDataset:
    """``per_class`` samples of every class, drawn without replacement (random when ``generator`` is
    given, otherwise the first ones in data-set order). Indices are kept in data-set order.
    """
    check_positive_int("per_class", per_class)
    y = dataset.y.cpu()
    counts = torch.bincount(y, minlength=dataset.num_classes)
    short = [(k, int(c)) for k, c in enumerate(counts.tolist()) if c < per_class]
    if short:
        raise ValueError(f"{dataset.name}: per_class={per_class} but classes have fewer samples "
                         f"(class, count): {short}")
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    # stable sort by label keeps the (random) order within each class
    by_class = order[torch.sort(y[order], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    take = (starts.unsqueeze(1) + torch.arange(per_class).unsqueeze(0)).reshape(-1)
    chosen = torch.sort(by_class[take]).values
    return dataset.subset(chosen, name=f"{dataset.name}[{per_class}/class]")
