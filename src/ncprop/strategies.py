"""Public Hypothesis strategies for writing NC properties (ncprop's own suite uses them).

Everything is built by construction rather than filtered with ``assume``: class counts default to
K >= 3 (K = 2 is a special case of T5), hyperparameters come from an
:class:`~ncprop.optim.OptimizerInfo`'s ``sample_ranges``, UFM instances have class means with a
guaranteed gap, and sizes are capped so that one example stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from hypothesis import settings
from hypothesis import strategies as st

from ncprop.optim import REGISTRY, OptimizerInfo

__all__ = [
    "class_counts",
    "widths",
    "batch_sizes",
    "seeds",
    "hyperparameters",
    "optimizer_infos",
    "lr_schedules",
    "ufm_instances",
    "etf_configurations",
    "scaled_examples",
]


def class_counts(min_value: int = 3, max_value: int = 8) -> st.SearchStrategy[int]:
    """K in ``[min_value, max_value]`` (K >= 3 by default: K = 2 is T5's special case)."""
    return st.integers(min_value, max_value)


def widths(min_value: int = 2, max_value: int = 16) -> st.SearchStrategy[int]:
    """A feature width p."""
    return st.integers(min_value, max_value)


def batch_sizes(min_value: int = 1, max_value: int = 16) -> st.SearchStrategy[int]:
    return st.integers(min_value, max_value)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``torch.Generator`` (never the global RNG)."""
    return st.integers(0, 2**31 - 1)


def _log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    if low <= 0:
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.floats(math.log(low), math.log(high)).map(math.exp)


def hyperparameters(info: OptimizerInfo, *, weight_decay: bool | float = True,
                    ranges: Mapping[str, tuple[float, float]] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Canonical hyperparameters for ``info`` drawn from its ``sample_ranges`` (lr and weight decay
    log-uniform, the rest uniform); ``ranges`` overrides entries. ``weight_decay=False`` fixes it at
    0, a number fixes it at that number."""
    spec = dict(info.sample_ranges)
    spec.update(ranges or {})
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for key, (low, high) in spec.items():
        if key in info.fixed:
            continue
        if key in ("lr", "weight_decay"):
            parts[key] = _log_uniform(low, high)
        else:
            parts[key] = st.floats(low, high, allow_nan=False, allow_infinity=False)
    if weight_decay is False:
        parts["weight_decay"] = st.just(0.0)
    elif weight_decay is not True:
        parts["weight_decay"] = st.just(float(weight_decay))
    return st.fixed_dictionaries(parts)


def optimizer_infos(predicate=None) -> st.SearchStrategy[OptimizerInfo]:
    """An entry of ``REGISTRY`` (read when drawn, so registered optimizers join), optionally filtered
    by ``predicate(info)`` -- applied to the list, not with ``assume``."""
    def pick(_):
        infos = [i for i in REGISTRY.values() if predicate is None or predicate(i)]
        if not infos:
            raise ValueError("no registered optimizer satisfies the predicate")
        return st.sampled_from(infos)
    return st.just(None).flatmap(pick)


def lr_schedules(lr: float, steps: int, *, kinds: tuple[str, ...] = ("constant", "step", "cosine", "warmup")
                 ) -> st.SearchStrategy[list[float]]:
    """A per-step schedule of length ``steps`` starting from ``lr``: constant, step (/10 at 1/3 and 2/3),
    cosine, or linear warm-up then constant."""
    def build(kind: str) -> list[float]:
        if kind == "constant":
            return [lr] * steps
        if kind == "step":
            return [lr / 10 ** (3 * t // steps) for t in range(steps)]
        if kind == "cosine":
            return [lr * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
        warm = max(1, steps // 10)
        return [lr * min(1.0, (t + 1) / warm) for t in range(steps)]
    return st.sampled_from(kinds).map(build)


@st.composite
def sgd_family_cases(draw, info: OptimizerInfo, *, steps: int = 30) -> dict[str, Any]:
    """Keyword arguments for :func:`ncprop.checks.check_t1` / :func:`~ncprop.checks.check_t2`: a learning-rate
    schedule of ``steps`` steps, momentum, weight decay, dampening or Nesterov (where ``info`` takes
    them), a training setup (MLP with mini-batches, fixed features, UFM), K >= 3, a batch size, a seed."""
    hp = draw(hyperparameters(info))
    momentum = hp.get("momentum", 0.0)
    nesterov = momentum > 0 and "nesterov" not in info.fixed and draw(st.booleans())
    dampening = 0.0 if nesterov or "dampening" in info.fixed else draw(st.sampled_from([0.0, 0.3, 0.9]))
    return dict(lr=draw(lr_schedules(hp["lr"], steps)), momentum=momentum, weight_decay=hp["weight_decay"],
                dampening=dampening, nesterov=nesterov, setup=draw(st.sampled_from(["mlp", "fixed", "ufm"])),
                num_classes=draw(class_counts(3, 6)), steps=steps, batch_size=draw(st.sampled_from([None, 2, 5])),
                seed=draw(seeds()))


@st.composite
def ufm_instances(draw, *, num_classes: st.SearchStrategy[int] | None = None, max_width: int = 12,
                  max_per_class: int = 4, min_gap: float = 1.0, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """A well-conditioned UFM instance by construction: ``{"features" (N, p), "labels" (N,),
    "num_classes", "feature_dim"}``. Class means are ``gap * Q[:, :K]^T`` rows of a random orthonormal
    ``Q`` (so distinct, pairwise distance ``gap*sqrt(2)``), with ``p >= K``; samples add noise of at
    most a tenth of the gap."""
    k = draw(num_classes if num_classes is not None else class_counts())
    p = draw(st.integers(k, max(k, max_width)))
    per_class = draw(st.integers(1, max_per_class))
    gap = draw(st.floats(min_gap, 4 * min_gap))
    seed = draw(seeds())
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    means = gap * q[:, :k].T
    labels = torch.arange(k).repeat_interleave(per_class)
    noise = torch.randn(labels.numel(), p, generator=gen, dtype=torch.float64)
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12) * (0.1 * gap) * torch.rand(
        labels.numel(), 1, generator=gen, dtype=torch.float64)
    return {"features": (means[labels] + noise).to(dtype), "labels": labels, "num_classes": k, "feature_dim": p}


@st.composite
def etf_configurations(draw, *, num_classes: st.SearchStrategy[int] | None = None, max_width: int = 12,
                       dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """A rotated, scaled simplex ETF: ``{"means" (K, p), "weight" (K, p), "num_classes"}`` with
    ``means = r * E_K^{1/2}-rows`` embedded in R^p by a random orthonormal map, and ``weight``
    proportional to ``means`` (exact NC2 and NC3: NC0 = 0)."""
    k = draw(num_classes if num_classes is not None else class_counts())
    p = draw(st.integers(k, max(k, max_width)))
    radius = draw(st.floats(0.1, 10.0))
    scale = draw(st.floats(0.1, 10.0))
    gen = torch.Generator().manual_seed(draw(seeds()))
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k  # rows sum to zero, Gram proportional to E
    means = radius * centred @ q[:k, :]
    return {"means": means.to(dtype), "weight": (scale * means).to(dtype), "num_classes": k}


def scaled_examples(n: int) -> settings:
    """``settings(max_examples=...)``: ``n`` examples under the ``ci`` profile (20), scaled with the
    loaded profile (``dev`` 10 -> n/2, ``thorough`` 500 -> 25 n), at least 1."""
    base = settings.default.max_examples
    return settings(max_examples=max(1, round(n * base / 20)))
