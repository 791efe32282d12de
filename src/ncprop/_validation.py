"""Argument checks shared by the package: each error names the value and what was expected."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _as_floats(value: Any) -> list[float]:
    """The scalar(s) carried by ``value``: a real number or a tensor (checked element-wise)."""
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().reshape(-1).cpu().tolist()]
    if _is_real(value):
        return [float(value)]
    raise ValueError(f"expected a real number, got {value!r} of type {type(value).__name__}")


def check_nonnegative(name: str, value: Any) -> None:
    """``value`` must be finite and >= 0 (a learning rate, a weight decay, an epsilon)."""
    try:
        values = _as_floats(value)
    except ValueError:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    for v in values:
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """``value`` must lie in [0, 1) (or [0, 1] when ``closed_right``): a beta, a momentum."""
    interval = "[0, 1]" if closed_right else "[0, 1)"
    try:
        values = _as_floats(value)
    except ValueError:
        raise ValueError(f"{name} must lie in {interval}, got {value!r}") from None
    for v in values:
        upper_ok = v <= 1.0 if closed_right else v < 1.0
        if not (math.isfinite(v) and v >= 0.0 and upper_ok):
            raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
