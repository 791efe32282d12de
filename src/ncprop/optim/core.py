"""The one implementation of every ncprop update rule.

An update is a chain of small *transforms* followed by the parameter write:

    d  = g                                  the mini-batch loss gradient
    d  = d + lambda_c * theta               coupled weight decay (L2), if the chain has it
    d  = direction(d)                       heavy-ball momentum, EMA, Adam scaling, sign, Lion
    theta = (1 - lr * lambda_d) * theta     decoupled weight decay (torch.optim.AdamW's convention:
                                            the shrink is multiplied by the learning rate)
    theta = theta - lr * d

The total weight decay ``lambda`` is split by ``coupled_share`` s in [0, 1] into a coupled part
``lambda_c = s * lambda`` and a decoupled part ``lambda_d = (1 - s) * lambda``. Coupled versus
decoupled weight decay is *where one term sits*, not a second class hierarchy: the named optimizers
of :mod:`ncprop.optim.presets` differ only in their direction transforms and their share.

Every function here works on tensors of any shape, and every hyperparameter may be a Python number
or a tensor that broadcasts against the parameter (shape ``(R, 1, 1)`` for ``R`` runs stacked along
a leading dimension). :class:`ncprop.optim.presets.NCOptimizer` calls :func:`apply_update` once per
parameter; :mod:`ncprop.batched` calls it once on the stacked parameters of many runs. There is no
second implementation to drift apart from this one.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

Scalar = Union[float, Tensor]
"""A hyperparameter: a Python number, or a tensor broadcastable against the parameter."""

COUPLINGS = ("coupled", "decoupled")


def _is_zero(x: Scalar) -> bool:
    """True when ``x`` is the Python number 0 (a tensor is never treated as a constant zero)."""
    return not isinstance(x, Tensor) and x == 0


def _where(condition: Any, if_true: Tensor, if_false: Tensor) -> Tensor:
    """Element-wise choice for tensor hyperparameters, a plain branch for Python numbers."""
    if isinstance(condition, Tensor):
        return torch.where(condition, if_true, if_false)
    return if_true if condition else if_false


def _pow(base: Scalar, exponent: int) -> Scalar:
    return base**exponent


def _sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` in a new tensor.

    On the CPU, float32 and float64 go through numpy, whose square root is the processor's correctly
    rounded instruction (and runs with the GIL released). torch's CPU kernel goes through a vector
    maths library with a slow path for special inputs: for 215,040 float32 values (a chunk of 16
    runs of the issue #7 benchmark) we measured about 130 us on normal values, 950 us on zeros and
    4 ms on subnormals, against 77, 76 and 157 us for numpy. Adam's second moment fills with exactly
    those once a run fits its data and float32 gradients underflow.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad:
        out = torch.empty_like(x)
        np.sqrt(x.numpy(), out=out.numpy())
        return out
    return x.sqrt()


@dataclass(frozen=True)
class Transform:
    """One stage of a direction chain.

    ``state_keys`` names the buffers the stage keeps (created lazily as zeros like the parameter);
    ``hyper`` names the hyperparameters it reads from ``hp``. Subclasses implement :meth:`apply`.
    """

    state_keys: tuple[str, ...] = ()
    hyper: tuple[str, ...] = ()

    def apply(self, d: Tensor, state: MutableMapping[str, Any], hp: Mapping[str, Any], step: int) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class HeavyBall(Transform):
    """torch.optim.SGD's momentum: ``buf = d`` on the first step, else ``beta*buf + (1-dampening)*d``;
    the direction is ``buf``, or ``d + beta*buf`` with Nesterov. ``beta = 0`` leaves ``d`` unchanged
    (and, as in torch, ignores dampening)."""

    state_keys: tuple[str, ...] = ("momentum_buffer",)
    hyper: tuple[str, ...] = ("momentum", "dampening", "nesterov")

    def apply(self, d, state, hp, step):
        beta, dampening, nesterov = hp["momentum"], hp["dampening"], hp["nesterov"]
        if _is_zero(beta):
            return d
        buf = state["momentum_buffer"]
        if step == 1:
            # The buffer starts at the first (weight-decayed) gradient, not at zero.
            buf.copy_(d)
        else:
            buf.mul_(beta).add_(d * (1 - dampening) if not _is_zero(dampening) else d)
        out = d + beta * buf if _as_bool(nesterov) else buf.clone()
        if isinstance(beta, Tensor):
            out = _where(beta == 0, d, out)
        return out


@dataclass(frozen=True)
class EMA(Transform):
    """Exponential moving average ``m = beta*m + (1-beta)*d`` with ``m_0 = 0`` (Signum's momentum)."""

    state_keys: tuple[str, ...] = ("exp_avg",)
    hyper: tuple[str, ...] = ("momentum",)

    def apply(self, d, state, hp, step):
        beta = hp["momentum"]
        m = state["exp_avg"]
        m.mul_(beta).add_(d * (1 - beta))
        return m.clone()


@dataclass(frozen=True)
class AdamScale(Transform):
    """Adam's bias-corrected scaling ``m_hat / (sqrt(v_hat) + eps)`` (torch.optim.Adam's update, with
    ``m_hat = m/bc1``, ``sqrt(v_hat) = sqrt(v)/sqrt(bc2)``), ``beta1 = hp["momentum"]``.

    Computed as ``m / (bc1/sqrt(bc2) * sqrt(v) + bc1*eps)``, the same quantity with the two bias
    corrections folded into one multiply-add on ``sqrt(v)``: one division per element instead of
    three (divisions and square roots are what an element-wise Adam step spends its time on), and
    one temporary. It rounds differently from torch's order by a few ulps (parity with torch.optim
    holds to round-off) but keeps the exact reductions: with ``beta1 = beta2 = eps = 0`` the
    multiplier is exactly 1 and the shift exactly 0, so the direction is ``d / sqrt(d*d) = sign(d)``.
    """

    state_keys: tuple[str, ...] = ("exp_avg", "exp_avg_sq")
    hyper: tuple[str, ...] = ("momentum", "beta2", "eps")

    def apply(self, d, state, hp, step):
        beta1, beta2, eps = hp["momentum"], hp["beta2"], hp["eps"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(d, 1 - beta1)
        if isinstance(beta2, Tensor):
            v.mul_(beta2).addcmul_(d, d * (1 - beta2))
        else:
            v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
        bias_correction1 = 1 - _pow(beta1, step)
        bias_correction2 = 1 - _pow(beta2, step)
        scale = bias_correction1 / bias_correction2**0.5
        shift = bias_correction1 * eps
        denom = _sqrt(v)
        if not isinstance(scale, Tensor) and denom.is_cpu and (scale != 1 or not _is_zero(shift)):
            # shift + scale * sqrt(v) in one pass instead of two (the shift as a 0-d tensor).
            torch.add(torch.as_tensor(shift, dtype=denom.dtype), denom, alpha=scale, out=denom)
        else:  # skipped where it is the identity, which keeps the reduction to sign descent exact
            if isinstance(scale, Tensor) or scale != 1:
                denom.mul_(scale)
            if not _is_zero(shift):
                denom.add_(shift)
        return torch.div(m, denom, out=denom)


@dataclass(frozen=True)
class Sign(Transform):
    """``sign(d)`` with ``sign(0) = 0``."""

    def apply(self, d, state, hp, step):
        return torch.sign(d)


@dataclass(frozen=True)
class LionDirection(Transform):
    """Lion: ``c = beta1*m + (1-beta1)*d``; direction ``sign(c)``; then ``m = beta2*m + (1-beta2)*d``."""

    state_keys: tuple[str, ...] = ("exp_avg",)
    hyper: tuple[str, ...] = ("momentum", "beta2")

    def apply(self, d, state, hp, step):
        beta1, beta2 = hp["momentum"], hp["beta2"]
        m = state["exp_avg"]
        c = m * beta1 + d * (1 - beta1)
        m.mul_(beta2).add_(d * (1 - beta2))
        return torch.sign(c)


def _as_bool(x: Any) -> bool:
    if isinstance(x, Tensor):
        raise ValueError(f"nesterov must be one boolean for all runs, got a tensor {x!r}")
    return bool(x)


DIRECTIONS: dict[str, tuple[Transform, ...]] = {
    "sgd": (HeavyBall(),),
    "adam": (AdamScale(),),
    "sign": (Sign(),),
    "signum": (EMA(), Sign()),
    "lion": (LionDirection(),),
}
"""Direction chains by name; the coupled term (if any) is applied before them."""


def init_state(transforms: Sequence[Transform], param: Tensor) -> dict[str, Any]:
    """Fresh optimizer state for ``param``: ``step = 0`` and a zero buffer per state key."""
    state: dict[str, Any] = {"step": 0}
    for transform in transforms:
        for key in transform.state_keys:
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def apply_update(
    transforms: Sequence[Transform],
    param: Tensor,
    grad: Tensor,
    state: MutableMapping[str, Any],
    hp: Mapping[str, Any],
) -> None:
    """Advance ``param`` and ``state`` in place by one step of the chain ``transforms``.

    ``hp`` holds ``lr``, ``weight_decay`` (total lambda), ``coupled_share`` (s) and whatever the
    transforms read. The step counter ``state["step"]`` is incremented here.
    """
    state["step"] = step = int(state["step"]) + 1
    lr, weight_decay, share = hp["lr"], hp["weight_decay"], hp["coupled_share"]
    no_decay = _is_zero(weight_decay)
    lambda_c = 0.0 if no_decay or _is_zero(share) else weight_decay * share
    lambda_d = 0.0 if no_decay or (not isinstance(share, Tensor) and share == 1) else weight_decay * (1 - share)

    d = grad if _is_zero(lambda_c) else grad.add(param * lambda_c)
    for transform in transforms:
        d = transform.apply(d, state, hp, step)

    if not _is_zero(lambda_d):
        param.mul_(1 - lr * lambda_d)
    if isinstance(lr, Tensor):
        param.addcmul_(d, lr, value=-1)  # theta - d*lr without a temporary the parameter's size
    else:
        param.add_(d, alpha=-lr)
