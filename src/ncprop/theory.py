"""Closed-form predictions of THEORY.md sections 2, 3 and 5: the zero-sum lemma, Proposition 2.1,
and the theorem-level claims T1-T5 about ``m_t = W_t^T 1`` (the sum of the class vectors).

Every function is pure, works in float64 and takes explicit arguments; nothing here trains a model
(:mod:`ncprop.checks` trains for real and compares with these predictions).

Conventions (THEORY.md section 4). Steps are numbered ``t = 0, 1, ...``; step ``t`` reads ``W_t`` and
uses the learning rate ``eta_t = lrs[t]``; ``m_t = W_t^T 1`` and ``alpha_t = ||m_t||^2 / K``.

Why the row sum is predictable at all (the zero-sum lemma, section 3): for every loss invariant to
adding a constant to all logits, ``1^T grad_W L = 0`` and ``1^T grad_b L = 0``. Every linear
optimizer (SGD, SGDW, any momentum, dampening, Nesterov) therefore moves ``m_t`` only through the
weight-decay term, and ``m_t = c_t m_0`` for a *scalar* multiplier ``c_t`` that depends on the
schedule, the momentum and ``lambda`` but not on the data, the batch or the backbone.

Derivations written here (ours, THEORY.md asks for them):

* T2 with dampening ``tau`` and Nesterov (torch.optim.SGD's conventions). Summing the coupled
  direction ``d_t = g_t + lambda*W_t`` over classes gives ``1^T d_t = lambda m_t``. With
  ``q_t = 1^T buf`` after step ``t-1``:
  ``q_1 = lambda m_0`` (the buffer starts at the first direction, undamped),
  ``q_{t+1} = beta q_t + (1 - tau) lambda m_t`` for ``t >= 1``,
  direction ``q_{t+1}`` (heavy ball) or ``lambda m_t + beta q_{t+1}`` (Nesterov), and
  ``m_{t+1} = m_t - eta_t * direction``. ``beta = 0`` ignores ``tau`` (as torch does).
  For constant ``eta`` and ``c = eta*lambda``:
  heavy ball  ``m_{t+1} = (1 + beta - (1-tau)c) m_t - beta m_{t-1}``, stable iff
  ``0 < (1-tau) c < 2(1 + beta)``;
  Nesterov    ``m_{t+1} = (1+beta)(1-c) m_t - beta(1-c) m_{t-1}``, stable iff
  ``0 < c < 2(1+beta)/(1+2 beta)`` (Jury's conditions ``f(1) = c > 0``, ``f(-1) > 0``,
  ``|beta(1-c)| < 1``; the second is the binding one). The asymptotic rate is the largest root
  magnitude of the characteristic polynomial; for small ``c`` both give ``1 - (1-tau)c/(1-beta)``.

* T4 (SignGD, coupled, on the ETF features ``H = E``, ``p = N = K``, ``W_0 = 0``, full batch).
  For ``W = u I + v J`` the logits are ``z_i = u E e_i`` (``J E = 0``), so the loss gradient is
  ``-g(u) (I - J/K)`` with ``g(u) = 1 / (s (exp(u/s) + K - 1))``, ``s = sqrt(K-1)``. The coupled
  direction ``grad + lambda W`` has diagonal entries ``lambda p - (K-1) g/K`` (``p = u + v`` the
  diagonal of W) and off-diagonal entries ``lambda v + g/K``, so the form is kept and each entry
  does sign descent on its own:
  ``p_{t+1} = p_t - eta_t sign(lambda p_t - (K-1) g(u_t)/K)``,
  ``v_{t+1} = v_t - eta_t sign(lambda v_t + g(u_t)/K)``, ``u = p - v``,
  and ``W_t^T 1 = (p_t + (K-1) v_t) 1``, ``alpha_t = (p_t + (K-1) v_t)^2``.
  (THEORY.md's ``(a+b) I - b J`` is ``u = a + b``, ``v = -b``.) The band constant: write
  ``phi(u) = g(u)/(K lambda)``, ``e_p = p - (K-1) phi(u)``, ``e_v = v + phi(u)`` (then
  ``sign`` of the diagonal / off-diagonal entries is ``sign(e_p)`` / ``sign(e_v)`` and
  ``p + (K-1)v = e_p + (K-1) e_v``). If ``|phi'| <= L`` on the ``u`` visited, a step moves each
  error towards 0 by at least ``eta`` and by at most ``eta(1 + 2L)`` (``e_v``) or
  ``eta(1 + 2(K-1)L)`` (``e_p``), because ``u`` moves by ``0`` or ``2 eta`` and ``phi`` by at most
  ``2 eta L``, in the direction that helps. So the box ``|e_v| <= eta(1+2L)``,
  ``|e_p| <= eta(1 + 2(K-1)L)`` is invariant and inside it
  ``sqrt(alpha) = |e_p + (K-1) e_v| <= C eta`` with ``C = K + 4(K-1)L``.
  Globally ``|g'| <= 1/(4(K-1)^2)``, so ``L <= 1/(4 K (K-1)^2 lambda)``; near the equilibrium
  ``lambda u = g(u)`` the local ``L`` is much smaller and ``C`` is close to the paper's ``K``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from ncprop._validation import check_nonnegative, check_positive_int, check_unit_interval
from ncprop.metrics import nc0, nc0_alpha, nc0_normalized, nc2w  # the metrics module is their one definition

__all__ = [
    "row_sum",
    "nc0",
    "nc0_alpha",
    "nc0_normalized",
    "zero_sum_residual",
    "nc2w",
    "prop21_lhs",
    "prop21_rhs",
    "sgdw_multipliers",
    "sgd_multipliers",
    "row_sum_multipliers",
    "predict_row_sums",
    "predict_nc0_trajectory",
    "sgd_characteristic",
    "sgd_is_stable",
    "sgd_asymptotic_rate",
    "t3_weight_scalar",
    "t3_alpha",
    "t3_alpha_limit",
    "etf_margin_gradient",
    "SignGDTrajectory",
    "signgd_etf_trajectory",
    "t4_band_constant",
    "t4_band_entry",
    "sign_row_sum_increment",
]

Lrs = Union[Sequence[float], Tensor]
_F64 = torch.float64


def _lrs(lrs: Lrs) -> Tensor:
    out = torch.as_tensor(lrs, dtype=_F64).reshape(-1)
    check_nonnegative("lrs", out)
    return out


# ---------------------------------------------------------------------------------------------
# NC0 and the lemma


def row_sum(weight: Tensor) -> Tensor:
    """``m = W^T 1``: the sum of the class vectors (rows), over dim -2 of ``weight`` (..., K, p)."""
    return weight.to(_F64).sum(dim=-2)


def zero_sum_residual(grad: Tensor, scale: float | None = None) -> float:
    """``||1^T G|| / (sqrt(K) * scale)``: 0 when the lemma holds (``1^T grad_W L = 0``).

    ``grad`` is ``(K, p)`` (a weight gradient) or ``(K,)`` (a bias gradient). ``scale`` defaults to
    ``||G||_F`` (then the residual is at most 1); near a perfect fit ``G`` is tiny while the round-off
    of ``softmax - onehot`` is not, so pass the size of the summed terms instead -- the mean feature
    norm ``(1/B) sum_i ||h_i||`` for W, 1 for the bias. Returns 0 when the scale is 0.
    """
    g = grad.detach().to(_F64)
    if g.ndim == 1:
        g = g[:, None]
    scale = float(torch.linalg.matrix_norm(g)) if scale is None else float(scale)
    denom = math.sqrt(g.shape[0]) * scale
    return 0.0 if denom == 0 else float(torch.linalg.vector_norm(g.sum(dim=0))) / denom


def prop21_lhs(weight: Tensor) -> Tensor:
    """``||W^T 1||^2 / ||W||_F^2``, the left side of Proposition 2.1's bound."""
    return nc0_normalized(weight) ** 2


def prop21_rhs(weight: Tensor) -> Tensor:
    """``K * NC2W``: Proposition 2.1's bound, valid for every W (THEORY.md section 2):
    ``||W^T 1||^2/||W||^2 <= ||W^T 1||^2/||W W^T|| = <W W^T/||W W^T|| - E, J> <= NC2W ||J|| = K NC2W``."""
    return weight.shape[-2] * nc2w(weight)


# ---------------------------------------------------------------------------------------------
# T1, T2: the SGD family


def sgdw_multipliers(lrs: Lrs, weight_decay: float) -> Tensor:
    """T1: ``c_0 = 1``, ``c_{t+1} = (1 - eta_t lambda) c_t`` -- for SGDW with any momentum, dampening,
    Nesterov, data, batch and backbone (decoupled decay never enters the momentum buffer, and
    ``1^T buf = 0`` by the lemma). Returns ``(T+1,)`` float64."""
    check_nonnegative("weight_decay", weight_decay)
    factors = 1.0 - _lrs(lrs) * weight_decay
    return torch.cat([torch.ones(1, dtype=_F64), torch.cumprod(factors, 0)])


def sgd_multipliers(lrs: Lrs, momentum: float, weight_decay: float, dampening: float = 0.0,
                    nesterov: bool = False) -> Tensor:
    """T2 (coupled SGD, torch.optim.SGD's conventions): the scalar ``c_t`` with ``m_t = c_t m_0``.

    ``q_1 = lambda c_0``, ``q_{t+1} = beta q_t + (1 - tau) lambda c_t`` (t >= 1);
    ``c_{t+1} = c_t - eta_t q_{t+1}`` (heavy ball) or ``c_t - eta_t (lambda c_t + beta q_{t+1})``
    (Nesterov); with ``beta = 0`` simply ``c_{t+1} = (1 - eta_t lambda) c_t``. Returns ``(T+1,)``.
    """
    check_unit_interval("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)
    check_unit_interval("dampening", dampening, closed_right=True)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"nesterov needs momentum > 0 and dampening 0; got momentum={momentum!r}, "
                         f"dampening={dampening!r}")
    lr = _lrs(lrs).tolist()
    beta, lam, tau = float(momentum), float(weight_decay), float(dampening)
    c = [1.0]
    q = 0.0
    for t, eta in enumerate(lr):
        d = lam * c[-1]
        if beta == 0:
            direction = d
        else:
            q = d if t == 0 else beta * q + (1.0 - tau) * d
            direction = d + beta * q if nesterov else q
        c.append(c[-1] - eta * direction)
    return torch.tensor(c, dtype=_F64)


def row_sum_multipliers(optimizer_name: str, lrs: Lrs, momentum: float = 0.0, weight_decay: float = 0.0,
                        dampening: float = 0.0, nesterov: bool = False) -> Tensor:
    """``c_t`` for ``"sgd"`` (T2) or ``"sgdw"`` (T1); the same multiplier applies to ``1^T b``."""
    if optimizer_name == "sgdw":
        check_unit_interval("momentum", momentum)
        return sgdw_multipliers(lrs, weight_decay)
    if optimizer_name == "sgd":
        return sgd_multipliers(lrs, momentum, weight_decay, dampening, nesterov)
    raise ValueError(f"optimizer_name must be 'sgd' or 'sgdw' (the SGD family has closed-form NC0); "
                     f"got {optimizer_name!r}")


def predict_row_sums(optimizer_name: str, m0: Tensor, lrs: Lrs, momentum: float = 0.0,
                     weight_decay: float = 0.0, dampening: float = 0.0, nesterov: bool = False) -> Tensor:
    """``m_t = c_t m_0`` for t = 0..T: ``(T+1, *m0.shape)`` float64."""
    c = row_sum_multipliers(optimizer_name, lrs, momentum, weight_decay, dampening, nesterov)
    m0 = torch.as_tensor(m0, dtype=_F64)
    return c.reshape(-1, *([1] * m0.ndim)) * m0


def predict_nc0_trajectory(optimizer_name: str, nc0_init: Union[float, Tensor], lrs: Lrs, momentum: float,
                           weight_decay: float, dampening: float = 0.0, nesterov: bool = False) -> Tensor:
    """NC0 ``||W_t^T 1||`` at every step t = 0..T for SGD (T2) or SGDW (T1): ``|c_t| * NC0_0``.

    ``nc0_init`` is ``||W_0^T 1||`` or the vector ``W_0^T 1`` itself; ``lrs[t]`` is the learning rate of
    step t (expand an epoch schedule with ``steps_per_epoch`` first; NC0 after epoch e is entry
    ``e * steps_per_epoch``). Exact for any data, batch and backbone with a linear last layer.
    """
    nc0_init = torch.as_tensor(nc0_init, dtype=_F64)
    norm = torch.linalg.vector_norm(nc0_init) if nc0_init.ndim else nc0_init.abs()
    c = row_sum_multipliers(optimizer_name, lrs, momentum, weight_decay, dampening, nesterov)
    return c.abs() * norm


def sgd_characteristic(lr: float, weight_decay: float, momentum: float, dampening: float = 0.0,
                       nesterov: bool = False) -> tuple[float, float]:
    """``(a1, a0)`` of the characteristic polynomial ``r^2 + a1 r + a0`` of T2 at constant lr.

    Heavy ball: ``r^2 - (1 + beta - (1-tau) eta lambda) r + beta``;
    Nesterov: ``r^2 - (1+beta)(1 - eta lambda) r + beta (1 - eta lambda)``.
    With ``beta = 0`` the recursion is first order, ``r = 1 - eta lambda``, returned as ``a0 = 0``.
    """
    beta, c = float(momentum), float(lr) * float(weight_decay)
    if beta == 0:
        return -(1.0 - c), 0.0
    if nesterov:
        return -(1.0 + beta) * (1.0 - c), beta * (1.0 - c)
    return -(1.0 + beta - (1.0 - dampening) * c), beta


def sgd_asymptotic_rate(lr: float, weight_decay: float, momentum: float, dampening: float = 0.0,
                        nesterov: bool = False) -> float:
    """The largest root magnitude ``rho`` of :func:`sgd_characteristic`: ``NC0_t ~ rho^t``."""
    a1, a0 = sgd_characteristic(lr, weight_decay, momentum, dampening, nesterov)
    disc = complex(a1 * a1 - 4.0 * a0)
    roots = ((-a1 + disc**0.5) / 2.0, (-a1 - disc**0.5) / 2.0)
    return max(abs(r) for r in roots)


def sgd_is_stable(lr: float, weight_decay: float, momentum: float, dampening: float = 0.0,
                  nesterov: bool = False) -> bool:
    """True iff NC0 decays geometrically under T2 at constant lr.

    Heavy ball: ``0 < (1-tau) eta lambda < 2(1 + beta)``; Nesterov: ``0 < eta lambda < 2(1+beta)/(1+2 beta)``.
    """
    beta, c = float(momentum), float(lr) * float(weight_decay)
    if beta == 0:
        return 0.0 < c < 2.0
    if nesterov:
        return 0.0 < c < 2.0 * (1.0 + beta) / (1.0 + 2.0 * beta)
    return 0.0 < (1.0 - dampening) * c < 2.0 * (1.0 + beta)


# ---------------------------------------------------------------------------------------------
# T3, T4: sign descent on the ETF-feature UFM


def t3_weight_scalar(num_classes: int, lrs: Lrs, weight_decay: float) -> Tensor:
    """T3: ``W_t = w_t (J - 2I)`` under SignGDW with ``H = E``, ``W_0 = 0``, full batch;
    ``w_{t+1} = (1 - eta_t lambda) w_t - eta_t`` (closed form for constant eta:
    ``w_t = -(1 - (1 - eta lambda)^t)/lambda``). Returns ``(T+1,)``."""
    check_positive_int("num_classes", num_classes, minimum=3)
    check_nonnegative("weight_decay", weight_decay)
    lr = _lrs(lrs)
    w = [0.0]
    for eta in lr.tolist():
        w.append((1.0 - eta * weight_decay) * w[-1] - eta)
    return torch.tensor(w, dtype=_F64)


def t3_alpha(num_classes: int, lr: float, weight_decay: float, steps: int) -> Tensor:
    """T3's closed form ``alpha_t = ((K-2)^2/lambda^2)(1 - (1 - eta lambda)^t)^2``, t = 0..steps.

    Needs ``0 < eta lambda < 1``: increasing, with limit ``(K-2)^2/lambda^2``."""
    check_positive_int("num_classes", num_classes, minimum=3)
    if not (0 < lr * weight_decay < 1):
        raise ValueError(f"T3 needs 0 < lr*weight_decay < 1, got lr={lr!r}, weight_decay={weight_decay!r}")
    t = torch.arange(steps + 1, dtype=_F64)
    k = num_classes
    return (k - 2) ** 2 / weight_decay**2 * (1.0 - (1.0 - lr * weight_decay) ** t) ** 2


def t3_alpha_limit(num_classes: int, weight_decay: float) -> float:
    """``(K-2)^2 / lambda^2``: the plateau of T3, > 0 for K >= 3."""
    return (num_classes - 2) ** 2 / weight_decay**2


def etf_margin_gradient(num_classes: int, u: Union[float, Tensor]) -> Tensor:
    """``g(u) = 1 / (s (exp(u/s) + K - 1))``, ``s = sqrt(K-1)``: on ``H = E`` with ``W = uI + vJ`` the
    mean cross-entropy gradient is ``-g(u) (I - J/K)``."""
    s = math.sqrt(num_classes - 1)
    u = torch.as_tensor(u, dtype=_F64)
    return 1.0 / (s * (torch.exp(u / s) + (num_classes - 1)))


def _etf_g_prime_abs(num_classes: int, u: Tensor) -> Tensor:
    s = math.sqrt(num_classes - 1)
    x = torch.exp(u / s)
    return x / (s * s * (x + num_classes - 1) ** 2)


@dataclass(frozen=True)
class SignGDTrajectory:
    """T4's exact trajectory: ``W_t = u_t I + v_t J``, diagonal ``p_t = u_t + v_t``, off-diagonal ``v_t``."""

    u: Tensor
    v: Tensor
    lrs: Tensor
    num_classes: int
    weight_decay: float

    @property
    def p(self) -> Tensor:
        return self.u + self.v

    @property
    def row_sum_scalar(self) -> Tensor:
        """``W_t^T 1 = (p_t + (K-1) v_t) 1``: the common value of the row-sum entries."""
        return self.u + self.num_classes * self.v

    @property
    def alpha(self) -> Tensor:
        """``alpha_t = (1/K) ||W_t^T 1||^2 = (u_t + K v_t)^2``."""
        return self.row_sum_scalar**2

    def weight(self, t: int) -> Tensor:
        k = self.num_classes
        return self.u[t] * torch.eye(k, dtype=_F64) + self.v[t] * torch.ones(k, k, dtype=_F64)

    @property
    def errors(self) -> tuple[Tensor, Tensor]:
        """``(e_p, e_v)``: distances of the diagonal and off-diagonal entries from their moving
        targets ``(K-1) phi(u)`` and ``-phi(u)``, ``phi = g/(K lambda)``."""
        k, lam = self.num_classes, self.weight_decay
        phi = etf_margin_gradient(k, self.u) / (k * lam)
        return self.p - (k - 1) * phi, self.v + phi


def signgd_etf_trajectory(num_classes: int, lrs: Lrs, weight_decay: float) -> SignGDTrajectory:
    """T4: the exact 2-parameter recursion of coupled SignGD on ``H = E``, ``W_0 = 0``, full batch.

    ``p_{t+1} = p_t - eta_t sign(lambda p_t - (K-1) g(u_t)/K)``,
    ``v_{t+1} = v_t - eta_t sign(lambda v_t + g(u_t)/K)``, ``u = p - v`` (module docstring).
    With ``lambda = 0`` the same recursion is plain sign descent on the cross-entropy.
    """
    check_positive_int("num_classes", num_classes, minimum=2)
    check_nonnegative("weight_decay", weight_decay)
    lr = _lrs(lrs)
    k, lam = num_classes, float(weight_decay)
    s = math.sqrt(k - 1)
    p, v = [0.0], [0.0]
    for eta in lr.tolist():
        u = p[-1] - v[-1]
        g = 1.0 / (s * (math.exp(u / s) + (k - 1)))
        diag = lam * p[-1] - (k - 1) * g / k
        off = lam * v[-1] + g / k
        p.append(p[-1] - eta * _sign(diag))
        v.append(v[-1] - eta * _sign(off))
    pt, vt = torch.tensor(p, dtype=_F64), torch.tensor(v, dtype=_F64)
    return SignGDTrajectory(u=pt - vt, v=vt, lrs=lr, num_classes=k, weight_decay=lam)


def _sign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _u_star(num_classes: int, weight_decay: float) -> float:
    """The equilibrium ``lambda u = g(u)`` (bisection; ``u - g(u)/lambda`` is increasing)."""
    lo, hi = 0.0, 1.0
    while hi * weight_decay < float(etf_margin_gradient(num_classes, hi)):
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid * weight_decay < float(etf_margin_gradient(num_classes, mid)):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def t4_band_constant(num_classes: int, lr: float, weight_decay: float, *, local: bool = True) -> float:
    """``C`` with ``alpha_t <= C^2 eta^2`` for every step of a constant-``eta`` stage after the
    trajectory has entered the invariant box (:func:`t4_band_entry`).

    ``C = K + 4(K-1)L`` with ``L`` a bound on ``|phi'| = |g'|/(K lambda)``. ``local=False`` uses the
    global ``|g'| <= 1/(4(K-1)^2)``. ``local=True`` (default) uses ``sup |g'|`` over
    ``|u - u*| <= r + 2 eta``, ``r = eta (2 + 2 K L_global)``: inside the box
    ``|u - u*| <= |e_p| + |e_v|`` because ``u - K phi(u)`` is increasing with slope >= 1, so the box
    built with the local ``L`` keeps ``u`` (and the next ``u``) in that interval.
    """
    k = num_classes
    check_positive_int("num_classes", k, minimum=3)
    if weight_decay <= 0 or lr <= 0:
        raise ValueError(f"T4's band needs lr > 0 and weight_decay > 0; got lr={lr!r}, weight_decay={weight_decay!r}")
    l_global = 1.0 / (4.0 * k * (k - 1) ** 2 * weight_decay)
    if not local:
        return k + 4.0 * (k - 1) * l_global
    u_star = _u_star(k, weight_decay)
    radius = lr * (2.0 + 2.0 * k * l_global) + 2.0 * lr
    grid = torch.linspace(u_star - radius, u_star + radius, 4001, dtype=_F64)
    l_local = float(_etf_g_prime_abs(k, grid).max()) / (k * weight_decay)
    # The sup over a grid of a smooth function: pad by the variation between grid points.
    step = 2 * radius / 4000
    l_local = min(l_global, l_local + step / (4.0 * (k - 1) ** 2 * k * weight_decay))
    return k + 4.0 * (k - 1) * l_local


def t4_band_entry(trajectory: SignGDTrajectory, lr: float, start: int = 0, stop: int | None = None, *,
                  local: bool = True) -> int | None:
    """The first step ``t`` in ``[start, stop]`` at which the trajectory is inside T4's invariant box
    ``|e_v| <= eta(1 + 2L)``, ``|e_p| <= eta(1 + 2(K-1)L)`` for the stage's constant ``eta = lr``;
    None if it never enters. From then on (within the stage) ``alpha_t <= C^2 eta^2``."""
    k, lam = trajectory.num_classes, trajectory.weight_decay
    c = t4_band_constant(k, lr, lam, local=local)
    big_l = (c - k) / (4.0 * (k - 1))
    e_p, e_v = trajectory.errors
    stop = len(trajectory.u) - 1 if stop is None else stop
    tol = 1e-12 * lr
    for t in range(start, stop + 1):
        if abs(float(e_v[t])) <= lr * (1 + 2 * big_l) + tol and abs(float(e_p[t])) <= lr * (1 + 2 * (k - 1) * big_l) + tol:
            return t
    return None


# ---------------------------------------------------------------------------------------------
# T5


def sign_row_sum_increment(grad: Tensor) -> Tensor:
    """T5: the loss part of a SignGDW step moves ``m`` by ``-eta * 1^T sign(g)``; this returns
    ``1^T sign(g)`` (p,). For odd K every entry is an odd integer when the column has no exact zeros;
    for K = 2 the gradient rows are exact negatives and it is 0 (so SignGDW decays like SGDW)."""
    return torch.sign(grad.to(_F64)).sum(dim=-2)
