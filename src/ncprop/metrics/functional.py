"""Neural Collapse metrics NC0-NC4 in memory (THEORY.md section 2), batched over leading run dims.

Every metric is computed from a handful of small sufficient statistics:

- pass 1: class counts ``n_k`` and class sums ``S = Y^T H`` (one product: one-hot labels times
  features), giving the class means ``mu_k``, the global mean ``mu_G`` and the centred means ``M~``;
- pass 2: with ``R = H [M~; mu_G]^T`` (one product: features times the centred means and the global
  mean), ``Q_i = M~ (h_i - mu_{y_i})`` (a K-vector), ``A = (1/N) sum_i Q_i Q_i^T`` (K x K), the
  within-class trace ``sum_i ||h_i - mu_{y_i}||^2`` and the nearest-class-mean predictions.

NC1 is ``Tr(G^+ A G^+)`` with ``G = M~ M~^T`` (THEORY.md, "Computing NC1 without a p x p
pseudo-inverse"); no p x p matrix is ever formed. ``G`` has rank K - 1 and a known null vector
``u``:
``u = 1/sqrt(K)`` for the class-mean global mean (``1^T M~ = 0``) and ``u = n/||n||`` (the class
counts) for the sample-weighted global mean (``n^T M~ = 0``). For both,
``G^+ = P (G + c u u^T)^{-1} P`` with ``P = I - u u^T`` and ``c = Tr(G)/(K - 1)`` (the mean non-zero
eigenvalue, so the condition number of ``G + c u u^T`` is exactly that of ``G`` on its range; with
``u = 1/sqrt(K)`` and ``c = 1`` this is THEORY.md's ``(G + J/K)^{-1} - J/K``). When that condition
number exceeds ``1/(1000 eps)`` of the accumulation dtype (two class means coincide, or p < K - 1),
NC1 is NaN and a :class:`NCMetricWarning` says why.

Precision: ``Q_i`` is a difference of K-vectors (relative rounding ~ eps ||h|| / ||h - mu_y||);
``tr_sw`` expands ``||h - mu_y||^2 = ||h||^2 - 2 h.mu_y + ||mu_y||^2`` so as to read the features only
once more (relative rounding ~ eps ||h||^2 / ||h - mu_y||^2, negligible in float64).

The same private helpers serve :mod:`ncprop.metrics.streaming`; :func:`nc_metrics` is their
single-batch use, so streaming and in-memory results agree to rounding.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ncprop._validation import check_choice, check_positive_int

__all__ = [
    "GLOBAL_MEANS",
    "METRIC_KEYS",
    "NCMetricWarning",
    "nc0",
    "nc0_alpha",
    "nc0_normalized",
    "nc2w",
    "nc_metrics",
]

GLOBAL_MEANS = ("class", "sample")
METRIC_KEYS = (
    "nc0",
    "nc0_alpha",
    "nc0_normalized",
    "nc1",
    "nc2_equinorm_means",
    "nc2_equinorm_w",
    "nc2_equiangular_means",
    "nc2_equiangular_w",
    "nc2",
    "nc2w",
    "nc2m",
    "nc3",
    "nc3_squared",
    "nc4",
    "nc4_mismatch",
    "tr_sw",
    "tr_sb",
)


class NCMetricWarning(RuntimeWarning):
    """A metric is undefined for the given input and is reported as NaN; the message says why."""


# ----------------------------------------------------------------------------------------------
# Argument checks (each error names the bad value and what was expected)


def _check_num_classes(num_classes: object) -> int:
    check_positive_int("num_classes", num_classes, minimum=2)
    return int(num_classes)  # type: ignore[arg-type]


def _check_float_tensor(name: str, value: object, *, min_ndim: int) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating dtype, got {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(value.shape)}"
        )
    return value


def _check_labels(labels: object, num_classes: int, num_samples: int) -> Tensor:
    """Labels: an integer tensor of shape (N,) with values in [0, K). One host sync (min, max)."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"labels must have shape ({num_samples},) to match the features' sample dimension, "
            f"got {tuple(labels.shape)}"
        )
    if num_samples:
        low, high = torch.stack(torch.aminmax(labels)).tolist()
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"labels must lie in [0, {num_classes}), got label {bad}")
    return labels.long()


def _first_nonfinite(name: str, value: Tensor) -> str:
    """Describe the first NaN/Inf entry of ``value`` (call only when one exists)."""
    bad = (~torch.isfinite(value)).nonzero()
    if bad.shape[0] == 0:
        return f"{name} is finite but its sums overflowed"
    index = tuple(bad[0].tolist())
    where = ", ".join(map(str, index))
    return f"{name} contains NaN or Inf: {name}[{where}] = {value[index].item()}"


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(_first_nonfinite(name, value))


def _check_weight(weight: object, num_classes: int, feature_dim: int | None) -> Tensor:
    weight = _check_float_tensor("weight", weight, min_ndim=2)
    k, p = weight.shape[-2:]
    if k != num_classes or (feature_dim is not None and p != feature_dim):
        expected_p = "p" if feature_dim is None else str(feature_dim)
        raise ValueError(
            f"weight must have shape (..., {num_classes}, {expected_p}) "
            "(num_classes, feature_dim), "
            f"got {tuple(weight.shape)}"
        )
    _check_finite("weight", weight)
    return weight


def _check_bias(bias: object, num_classes: int) -> Tensor | None:
    if bias is None:
        return None
    bias = _check_float_tensor("bias", bias, min_ndim=1)
    if bias.shape[-1] != num_classes:
        raise ValueError(f"bias must have shape (..., {num_classes}), got {tuple(bias.shape)}")
    _check_finite("bias", bias)
    return bias


def _run_shape(**shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of the leading run dimensions of all arguments, or a ValueError naming them."""
    try:
        return tuple(torch.broadcast_shapes(*shapes.values()))
    except RuntimeError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"leading run dimensions do not broadcast: {listed}") from None


# ----------------------------------------------------------------------------------------------
# NC0: the norm of the sum of class vectors (bias excluded)


def _nc0_vector(weight: Tensor) -> Tensor:
    weight = _check_float_tensor("weight", weight, min_ndim=2)
    _check_finite("weight", weight)
    return weight.sum(dim=-2)  # W^T 1, shape (..., p)


def nc0(weight: Tensor) -> Tensor:
    """NC0 = ||W^T 1||: the l2 norm of the sum of the class vectors (rows of W, (..., K, p))."""
    return torch.linalg.vector_norm(_nc0_vector(weight), dim=-1)


def nc0_alpha(weight: Tensor) -> Tensor:
    """NC0 alpha = (1/K) ||W^T 1||^2, the quantity of the theory (claims T3, T4)."""
    return _nc0_vector(weight).square().sum(dim=-1) / weight.shape[-2]


def nc0_normalized(weight: Tensor) -> Tensor:
    """NC0 normalized = ||W^T 1|| / ||W|| (Frobenius); NaN with a warning where W = 0."""
    notes: list[str] = []
    out = _ratio(
        nc0(weight), torch.linalg.matrix_norm(weight), "nc0_normalized", "||W|| = 0", notes
    )
    _warn(notes)
    return out


def nc2w(weight: Tensor) -> Tensor:
    """NC2W = ||W W^T / ||W W^T|| - E|| from the weight alone (rows of W, shape (..., K, p));
    NaN with a warning where W = 0. Proposition 2.1 bounds ||W^T 1||^2/||W||^2 by K * NC2W."""
    weight = _check_float_tensor("weight", weight, min_ndim=2)
    _check_finite("weight", weight)
    notes: list[str] = []
    out = _etf_distance(weight @ weight.mT, "nc2w", "W W^T = 0", notes)
    _warn(notes)
    return out


# ----------------------------------------------------------------------------------------------
# Pass 1: class sums and class means


def _one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    classes = torch.arange(num_classes, device=labels.device)
    return (labels.unsqueeze(-1) == classes).to(dtype)  # (N, K)


def _class_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Class sums (..., K, p) by one product (one-hot labels^T times features) and counts (K,)."""
    onehot = _one_hot(labels, num_classes, features.dtype)
    return onehot.mT @ features, onehot.sum(dim=0)


@dataclass(frozen=True)
class _ClassMeans:
    """Everything the second pass and the metric algebra need from the first pass."""

    counts: Tensor  # (K,) samples per class
    means: Tensor  # (..., K, p) class means mu_k
    global_mean: Tensor  # (..., p) mu_G
    centred: Tensor  # (..., K, p) M~, rows mu_k - mu_G
    null_vector: Tensor  # (K,) unit vector u with u^T M~ = 0
    projector: Tensor  # (..., K + 1, p): rows of M~, then mu_G
    cross: Tensor  # (..., K, K): row k is M~ mu_k
    mean_sqnorms: Tensor  # (..., K): ||mu_k||^2
    ncc_offset: Tensor  # (..., K): ||mu_k||^2 - ||mu_G||^2 = ||M~_k||^2 + 2 mu_G . M~_k


def _class_means(sums: Tensor, counts: Tensor, global_mean: str) -> _ClassMeans:
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"every class needs at least one sample; class(es) {empty} have none "
            f"(counts {counts.long().tolist()})"
        )
    means = sums / counts.unsqueeze(-1)
    if global_mean == "class":
        mu_g = means.mean(dim=-2)
        null = torch.ones_like(counts)
    else:
        mu_g = sums.sum(dim=-2) / counts.sum()
        null = counts.clone()
    centred = means - mu_g.unsqueeze(-2)
    cross = means @ centred.mT
    mu_g_dot = centred @ mu_g.unsqueeze(-1)  # (..., K, 1)
    return _ClassMeans(
        counts=counts,
        means=means,
        global_mean=mu_g,
        centred=centred,
        null_vector=null / torch.linalg.vector_norm(null),
        projector=torch.cat([centred, mu_g.unsqueeze(-2)], dim=-2),
        cross=cross,
        mean_sqnorms=means.square().sum(dim=-1),
        ncc_offset=centred.square().sum(dim=-1) + 2 * mu_g_dot.squeeze(-1),
    )


# ----------------------------------------------------------------------------------------------
# Pass 2: K x K within-class statistics, within-class trace, NC4 agreement


@dataclass(frozen=True)
class _ScatterTerms:
    a_sum: Tensor  # (..., K, K): sum_i Q_i Q_i^T, Q_i = M~ (h_i - mu_{y_i})
    sq_sum: Tensor  # (...,): sum_i ||h_i - mu_{y_i}||^2
    agree: Tensor | None  # (...,): number of samples where argmax logits == nearest class mean


def _scatter_terms(
    cm: _ClassMeans, features: Tensor, labels: Tensor, logits: Tensor | None
) -> _ScatterTerms:
    """One product with the features, R = H [M~; mu_G]^T; the rest is O(N K) or O(N K^2)."""
    k = cm.counts.shape[0]
    r = features @ cm.projector.mT  # (..., B, K + 1)
    proj = r[..., :k]  # M~ h_i
    q = proj - cm.cross.index_select(-2, labels)  # M~ (h_i - mu_{y_i})
    own = proj.gather(-1, labels.expand(proj.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    # ||h - mu_y||^2 = ||h||^2 - 2 h.mu_y + ||mu_y||^2 with h.mu_y = (M~ h)_y + h.mu_G
    sq = (
        torch.linalg.vector_norm(features, dim=-1).square()
        - 2 * (own + r[..., k])
        + cm.mean_sqnorms.index_select(-1, labels)
    )
    agree = None
    if logits is not None:
        # argmin_k ||h - mu_k||^2 = argmin_k (||mu_k||^2 - ||mu_G||^2 - 2 (M~ h)_k): h.mu_G drops
        nearest = torch.argmin(cm.ncc_offset.unsqueeze(-2) - 2 * proj, dim=-1)
        agree = (logits.argmax(dim=-1) == nearest).sum(dim=-1).to(features.dtype)
    return _ScatterTerms(a_sum=q.mT @ q, sq_sum=sq.sum(dim=-1), agree=agree)


# ----------------------------------------------------------------------------------------------
# Metric algebra on the sufficient statistics


def _warn(notes: list[str], stacklevel: int = 3) -> None:
    """One NCMetricWarning for all notes; stacklevel 3: the caller of the function calling this."""
    if notes:
        warnings.warn("; ".join(notes), NCMetricWarning, stacklevel=stacklevel)


def _count_runs(mask: Tensor) -> str:
    if mask.ndim == 0:
        return ""
    return f" (in {int(mask.sum())} of {mask.numel()} runs)"


def _ratio(num: Tensor, den: Tensor, metric: str, why: str, notes: list[str]) -> Tensor:
    """num / den, NaN (and a note) where den is 0: an undefined metric is never a silent 0."""
    num, den = torch.broadcast_tensors(num, den)
    bad = den == 0
    out = torch.where(bad, torch.nan, num / torch.where(bad, 1, den))
    if bool(bad.any()):
        notes.append(f"{metric} is NaN because {why}{_count_runs(bad)}")
    return out


def _etf_target(k: int, like: Tensor) -> Tensor:
    eye = torch.eye(k, dtype=like.dtype, device=like.device)
    return (eye - 1.0 / k) / math.sqrt(k - 1)


def _etf_distance(gram: Tensor, metric: str, what: str, notes: list[str]) -> Tensor:
    """||G/||G|| - E|| with E = (I - J/K)/sqrt(K - 1)."""
    k = gram.shape[-1]
    scaled = _ratio(gram, torch.linalg.matrix_norm(gram)[..., None, None], metric, what, notes)
    return torch.linalg.matrix_norm(scaled - _etf_target(k, gram))


def _equinorm(vectors: Tensor, metric: str, what: str, notes: list[str]) -> Tensor:
    """std_k ||v_k|| (N - 1 denominator) / mean_k ||v_k||."""
    norms = torch.linalg.vector_norm(vectors, dim=-1)
    return _ratio(norms.std(dim=-1, correction=1), norms.mean(dim=-1), metric, what, notes)


def _equiangularity(vectors: Tensor, metric: str, what: str, notes: list[str]) -> Tensor:
    """Mean over k != k' of |cos(v_k, v_k') + 1/(K - 1)|."""
    k = vectors.shape[-2]
    norms = torch.linalg.vector_norm(vectors, dim=-1)
    zero = (norms == 0).any(dim=-1)
    unit = vectors / torch.where(norms == 0, 1, norms).unsqueeze(-1)
    cos = unit @ unit.mT
    off = ~torch.eye(k, dtype=torch.bool, device=vectors.device)
    value = (cos + 1.0 / (k - 1)).abs().masked_fill(~off, 0).sum(dim=(-2, -1)) / (k * (k - 1))
    if bool(zero.any()):
        notes.append(f"{metric} is NaN because {what}{_count_runs(zero)}")
    return torch.where(zero, torch.nan, value)


def _cond_limit(dtype: torch.dtype) -> float:
    return 1.0 / (1000.0 * torch.finfo(dtype).eps)


def _nc1(
    cm: _ClassMeans, gram: Tensor, a_sum: Tensor, num_samples: float, notes: list[str]
) -> Tensor:
    """NC1 = Tr(Sigma_W Sigma_B^+)/K = Tr(G^+ A G^+), all K x K; NaN where G is rank-deficient."""
    k = cm.counts.shape[0]
    u = cm.null_vector
    uu = u.unsqueeze(-1) * u
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / (k - 1)  # Tr(G)/(K-1)
    evals, evecs = torch.linalg.eigh(gram + scale[..., None, None] * uu)
    low, high = evals[..., 0], evals[..., -1]
    cond = torch.where(low > 0, high / torch.where(low > 0, low, 1), torch.inf)
    singular = ~(cond <= _cond_limit(gram.dtype))  # NaN-safe
    safe = torch.where(singular.unsqueeze(-1), 1, evals)
    inverse = (evecs / safe.unsqueeze(-2)) @ evecs.mT  # (G + c uu^T)^{-1}
    project = torch.eye(k, dtype=gram.dtype, device=gram.device) - uu
    pinv = project @ inverse @ project  # G^+
    # Tr(G^+ A G^+) = sum_j g_j^T A g_j over the columns g_j of G^+: a sum of quadratic forms of the
    # positive semi-definite A, so >= 0; rounding at an exact collapse (A = 0) can leave -1e-30,
    # which is clipped (the true value is 0 to rounding, and it is never a hidden undefined value)
    value = ((a_sum / num_samples) @ pinv * pinv).sum(dim=(-2, -1)).clamp(min=0)
    if bool(singular.any()):
        notes.append(
            "nc1 is NaN because the between-class scatter is rank-deficient: the condition number "
            f"of G + c u u^T (G = M~ M~^T) is {cond.max().item():.3g} > "
            f"{_cond_limit(gram.dtype):.3g} "
            f"(two class means coincide, or feature_dim < num_classes - 1){_count_runs(singular)}"
        )
    return torch.where(singular, torch.nan, value)


def _metrics_from_stats(
    cm: _ClassMeans,
    terms: _ScatterTerms,
    num_samples: float,
    weight: Tensor,
    bias: Tensor | None,
) -> dict[str, Tensor]:
    """All metric keys from pass-1 means, pass-2 terms and the classifier (weight checked)."""
    del bias  # it enters only through the logits (NC4); NC0 excludes it by definition
    notes: list[str] = []
    k = cm.counts.shape[0]
    w = weight.to(device=cm.centred.device, dtype=cm.centred.dtype)
    centred = cm.centred
    w_sum = w.sum(dim=-2)
    w_norm = torch.linalg.matrix_norm(w)
    m_norm = torch.linalg.matrix_norm(centred)

    out: dict[str, Tensor] = {}
    out["nc0"] = torch.linalg.vector_norm(w_sum, dim=-1)
    out["nc0_alpha"] = w_sum.square().sum(dim=-1) / k
    out["nc0_normalized"] = _ratio(out["nc0"], w_norm, "nc0_normalized", "||W|| = 0", notes)
    gram = centred @ centred.mT  # G = M~ M~^T
    out["nc1"] = _nc1(cm, gram, terms.a_sum, num_samples, notes)
    out["nc2_equinorm_means"] = _equinorm(
        centred, "nc2_equinorm_means", "all centred class means are 0", notes
    )
    out["nc2_equinorm_w"] = _equinorm(w, "nc2_equinorm_w", "W = 0", notes)
    out["nc2_equiangular_means"] = _equiangularity(
        centred, "nc2_equiangular_means", "a centred class mean is 0", notes
    )
    out["nc2_equiangular_w"] = _equiangularity(w, "nc2_equiangular_w", "a row of W is 0", notes)
    out["nc2"] = _etf_distance(gram, "nc2", "M~ M~^T = 0", notes)
    out["nc2w"] = _etf_distance(w @ w.mT, "nc2w", "W W^T = 0", notes)
    out["nc2m"] = _etf_distance(w @ centred.mT, "nc2m", "W M~^T = 0", notes)
    w_unit = _ratio(w, w_norm[..., None, None], "nc3", "||W|| = 0", notes)
    m_unit = _ratio(centred, m_norm[..., None, None], "nc3", "||M~|| = 0", notes)
    out["nc3"] = torch.linalg.matrix_norm(w_unit - m_unit)
    out["nc3_squared"] = out["nc3"].square()
    if terms.agree is None:
        notes.append("nc4 and nc4_mismatch are NaN because no logits were given to update_scatter")
        out["nc4"] = torch.full_like(out["nc0"], torch.nan)
    else:
        out["nc4"] = terms.agree / num_samples
    out["nc4_mismatch"] = 1 - out["nc4"]
    # rounding of ||h||^2 - 2 h.mu_y + ||mu_y||^2 can leave a sum of exact zeros at -eps: clip
    out["tr_sw"] = (terms.sq_sum / num_samples).clamp(min=0)
    out["tr_sb"] = m_norm.square() / k
    run_shape = torch.broadcast_shapes(*(v.shape for v in out.values()))
    _warn(notes, stacklevel=4)  # the caller of nc_metrics / NCAccumulator.compute
    return {key: out[key].expand(run_shape).clone() for key in METRIC_KEYS}


# ----------------------------------------------------------------------------------------------
# Public in-memory entry point


def nc_metrics(
    features: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    num_classes: int,
    global_mean: str = "class",
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """All Neural Collapse metrics of THEORY.md section 2 for features held in memory.

    Args:
        features: (..., N, p) penultimate features; leading dimensions index stacked runs.
        labels: (N,) integer class labels in [0, K), shared by all runs.
        weight: (..., K, p) last-layer weight W (row k is the class-k vector).
        bias: (..., K) last-layer bias b or None; it enters NC4 only (logits W h + b).
        num_classes: K >= 2; every class needs at least one sample.
        global_mean: ``"class"`` (mu_G = mean of the class means, the paper's default) or
            ``"sample"`` (mu_G = mean of all samples).
        dtype: accumulation dtype (float64 by default; features are cast to it).

    Returns:
        A dict with the keys of :data:`METRIC_KEYS`, each a tensor of the broadcast run shape
        ``(...)``. Undefined metrics (coinciding class means for NC1, zero norms) are NaN and a
        :class:`NCMetricWarning` says why.

    Raises:
        ValueError: K < 2, an empty class, a label outside [0, K), NaN/Inf in features, weight or
            bias, mismatched shapes or devices.
    """
    k = _check_num_classes(num_classes)
    check_choice("global_mean", global_mean, GLOBAL_MEANS)
    features = _check_float_tensor("features", features, min_ndim=2)
    n, p = features.shape[-2:]
    labels = _check_labels(labels, k, n)
    weight = _check_weight(weight, k, p)
    bias = _check_bias(bias, k)
    for name, value in (("labels", labels), ("weight", weight), ("bias", bias)):
        if value is not None and value.device != features.device:
            raise ValueError(f"{name} is on {value.device} but features are on {features.device}")
    _run_shape(
        features=tuple(features.shape[:-2]),
        weight=tuple(weight.shape[:-2]),
        bias=() if bias is None else tuple(bias.shape[:-1]),
    )
    h = features.to(dtype)
    sums, counts = _class_sums(h, labels, k)
    if not bool(torch.isfinite(sums).all()):
        raise ValueError(_first_nonfinite("features", features))
    cm = _class_means(sums, counts, global_mean)
    w = weight.to(dtype)
    logits = h @ w.mT
    if bias is not None:
        logits = logits + bias.to(dtype).unsqueeze(-2)
    terms = _scatter_terms(cm, h, labels, logits)
    return _metrics_from_stats(cm, terms, float(n), w, bias)
