"""The named optimizers: thin presets of :mod:`ncprop.optim.core`.

Notation (THEORY.md section 4): ``g`` the mini-batch gradient, ``eta`` the learning rate (``lr``,
possibly scheduled), ``lambda`` the weight decay, ``beta`` the momentum (``beta1`` for Adam and Lion).

*Coupled* weight decay adds ``lambda * theta`` to ``g`` before anything else sees it (L2
regularisation, torch.optim.SGD/Adam's ``weight_decay``). *Decoupled* weight decay shrinks the
parameter by ``(1 - eta * lambda)`` and the rest of the update sees ``g`` alone; the shrink is
multiplied by the learning rate, as in torch.optim.AdamW (Loshchilov and Hutter's schedule-multiplier
form), so ``lr`` scheduling scales it too.

Every optimizer here defaults to ``weight_decay=0``: none of them decays silently (torch's AdamW
defaults to 1e-2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ncprop._validation import check_choice, check_nonnegative, check_unit_interval
from ncprop.optim.core import COUPLINGS, DIRECTIONS, apply_update, init_state

__all__ = [
    "NCOptimizer",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "AdamMix",
    "SignGD",
    "SignGDW",
    "Signum",
    "SignumW",
    "Lion",
]


class NCOptimizer(torch.optim.Optimizer):
    """An optimizer composed of a direction chain and a weight-decay placement.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim.Optimizer``.
        direction: one of ``"sgd"`` (heavy-ball momentum, torch conventions), ``"adam"``,
            ``"sign"``, ``"signum"`` (sign of an EMA), ``"lion"``.
        coupling: ``"coupled"`` (L2: ``lambda * theta`` added to the gradient) or ``"decoupled"``
            (``theta <- (1 - lr * lambda) * theta``). Ignored when ``coupled_share`` is given.
        coupled_share: the coupled share ``s`` of the weight decay, in [0, 1]:
            ``lambda_c = s * lambda`` is added to the gradient, ``lambda_d = (1 - s) * lambda``
            shrinks the parameter. ``s = 1`` is ``"coupled"``, ``s = 0`` is ``"decoupled"``.
        lr, weight_decay, momentum, dampening, nesterov, beta2, eps: hyperparameters; each
            direction reads the ones it needs (``momentum`` is Adam's and Lion's beta1).
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        direction: str,
        lr: float,
        weight_decay: float = 0.0,
        coupling: str | None = None,
        coupled_share: float | None = None,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        check_choice("direction", direction, tuple(DIRECTIONS))
        if coupled_share is None:
            if coupling is None:
                raise ValueError("give coupling ('coupled' or 'decoupled') or coupled_share in [0, 1]")
            check_choice("coupling", coupling, COUPLINGS)
            coupled_share = 1.0 if coupling == "coupled" else 0.0
        elif coupling is not None:
            raise ValueError(f"give coupling or coupled_share, not both (got {coupling!r} and {coupled_share!r})")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            coupled_share=coupled_share,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            beta2=beta2,
            eps=eps,
        )
        self.direction = direction
        self.transforms = DIRECTIONS[direction]
        self._validate(defaults)
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._validate(group)

    def _validate(self, group: dict[str, Any]) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])
        check_unit_interval("coupled_share", group["coupled_share"], closed_right=True)
        check_unit_interval("momentum", group["momentum"])
        check_unit_interval("dampening", group["dampening"], closed_right=True)
        check_unit_interval("beta2", group["beta2"])
        check_nonnegative("eps", group["eps"])
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"nesterov must be a bool, got {group['nesterov']!r}")
        if group["nesterov"] and (self.direction != "sgd" or group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov needs direction 'sgd', momentum > 0 and dampening 0; "
                f"got direction={self.direction!r}, momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "transforms"):
            self._validate(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(init_state(self.transforms, p))
                self._update_parameter(p, state, group)
        return loss

    def _update_parameter(self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One parameter's update: :func:`ncprop.optim.core.apply_update`. The single override point
        for variants (the suite's deliberately broken mutants use it)."""
        apply_update(self.transforms, param, param.grad, state, group)


def _betas(betas: tuple[float, float]) -> tuple[float, float]:
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return float(betas[0]), float(betas[1])


class SGD(NCOptimizer):
    """SGD with coupled weight decay; step-for-step equal to ``torch.optim.SGD``.

    ``d = g + lambda*theta``; ``buf = d`` on the first step, else ``buf = beta*buf + (1 - dampening)*d``;
    with Nesterov ``d = d + beta*buf``, else ``d = buf``; ``theta <- theta - eta*d``.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, direction="sgd", coupling="coupled", lr=lr, momentum=momentum,
                         dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


class SGDW(NCOptimizer):
    """SGD with decoupled weight decay: ``theta <- (1 - eta*lambda)*theta``, then SGD's momentum
    (torch conventions) on ``g`` alone, then ``theta <- theta - eta*buf``."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, direction="sgd", coupling="decoupled", lr=lr, momentum=momentum,
                         dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


class Adam(NCOptimizer):
    """Adam with coupled weight decay; step-for-step equal to ``torch.optim.Adam``.

    ``d = g + lambda*theta``; ``m = beta1*m + (1-beta1)*d``; ``v = beta2*v + (1-beta2)*d^2``;
    ``theta <- theta - eta * (m/(1-beta1^t)) / (sqrt(v/(1-beta2^t)) + eps)``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        beta1, beta2 = _betas(betas)
        super().__init__(params, direction="adam", coupling="coupled", lr=lr, momentum=beta1,
                         beta2=beta2, eps=eps, weight_decay=weight_decay)


class AdamW(NCOptimizer):
    """Adam with decoupled weight decay; step-for-step equal to ``torch.optim.AdamW`` (given the
    same ``weight_decay``: ours defaults to 0, torch's to 1e-2).

    ``theta <- (1 - eta*lambda)*theta``, then Adam's step on ``g`` alone.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        beta1, beta2 = _betas(betas)
        super().__init__(params, direction="adam", coupling="decoupled", lr=lr, momentum=beta1,
                         beta2=beta2, eps=eps, weight_decay=weight_decay)


class AdamMix(NCOptimizer):
    """The Adam/AdamW interpolation at fixed total weight decay ``lambda``.

    ``lambda_c = s*lambda`` is added to the gradient (Adam's coupling), and
    ``theta <- (1 - eta*lambda_d)*theta`` with ``lambda_d = (1-s)*lambda`` is applied to ``theta_t``
    before the step, as AdamW does. ``s = 1`` is :class:`Adam`, ``s = 0`` is :class:`AdamW`.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, coupled_share: float = 0.5) -> None:
        beta1, beta2 = _betas(betas)
        super().__init__(params, direction="adam", coupled_share=coupled_share, lr=lr, momentum=beta1,
                         beta2=beta2, eps=eps, weight_decay=weight_decay)


class SignGD(NCOptimizer):
    """Sign descent with coupled weight decay: ``theta <- theta - eta*sign(g + lambda*theta)``."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, direction="sign", coupling="coupled", lr=lr, weight_decay=weight_decay)


class SignGDW(NCOptimizer):
    """Sign descent with decoupled weight decay: ``theta <- (1 - eta*lambda)*theta - eta*sign(g)``."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, direction="sign", coupling="decoupled", lr=lr, weight_decay=weight_decay)


class Signum(NCOptimizer):
    """Signum with coupled weight decay: ``m = beta*m + (1-beta)*(g + lambda*theta)`` (``m_0 = 0``);
    ``theta <- theta - eta*sign(m)``."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, direction="signum", coupling="coupled", lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


class SignumW(NCOptimizer):
    """Signum with decoupled weight decay: ``m = beta*m + (1-beta)*g``;
    ``theta <- (1 - eta*lambda)*theta - eta*sign(m)``."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, direction="signum", coupling="decoupled", lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


class Lion(NCOptimizer):
    """Lion (decoupled weight decay): ``c = beta1*m + (1-beta1)*g``;
    ``theta <- (1 - eta*lambda)*theta - eta*sign(c)``; ``m = beta2*m + (1-beta2)*g``."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        beta1, beta2 = _betas(betas)
        super().__init__(params, direction="lion", coupling="decoupled", lr=lr, momentum=beta1, beta2=beta2,
                         weight_decay=weight_decay)
