"""Deliberately broken optimizers, for testing that the suite's checks can fail.

Each mutant is an :class:`~ncprop.optim.OptimizerInfo` that *declares* a correct optimizer's
coupling and regime but implements something else, built by composing or subclassing the core
(:mod:`ncprop.optim.core`) -- the core itself is untouched. None is in ``REGISTRY``; pass them to
the ``ncprop.checks`` functions directly, or :func:`register_mutants` for a test session.

=========================  ==============================================  ======================
name                       what is wrong                                   claim that must fail
=========================  ==============================================  ======================
adamw_coupled_decay        AdamW's decay added to the gradient (L2)        T3 (and the regime)
adam_decoupled_decay       Adam's decay applied as a decoupled shrink      T4 (and the regime)
sgd_zero_buffer            SGD's momentum buffer starts at 0, not at d_1   T2 (with dampening)
sgdw_shrink_without_lr     SGDW shrinks by (1 - lambda), not (1 - eta lambda)  T1
sgd_decay_after_momentum   SGD adds lambda*theta after the momentum buffer T2 (with momentum)
=========================  ==============================================  ======================
"""

from __future__ import annotations

from dataclasses import dataclass

from ncprop.optim.core import HeavyBall, apply_update
from ncprop.optim.presets import NCOptimizer
from ncprop.optim.registry import REGISTRY, OptimizerInfo, from_canonical, register

__all__ = ["MUTANTS", "ZeroStartHeavyBall", "register_mutants", "unregister_mutants"]


@dataclass(frozen=True)
class ZeroStartHeavyBall(HeavyBall):
    """Heavy-ball momentum whose buffer starts at 0: ``buf = beta*buf + (1-dampening)*d`` from step 1
    (torch starts it at ``d``; the two differ on the first step when dampening > 0)."""

    def apply(self, d, state, hp, step):
        beta, dampening = hp["momentum"], hp["dampening"]
        if beta == 0:
            return d
        buf = state["momentum_buffer"]
        buf.mul_(beta).add_(d * (1 - dampening))
        return d + beta * buf if hp["nesterov"] else buf.clone()


class _AdamWCoupledDecay(NCOptimizer):
    """Claims to be AdamW; its weight decay is added to the gradient (Adam's coupling)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, direction="adam", coupling="coupled", lr=lr, momentum=betas[0], beta2=betas[1],
                         eps=eps, weight_decay=weight_decay)


class _AdamDecoupledDecay(NCOptimizer):
    """Claims to be Adam; its weight decay is a decoupled shrink (AdamW's placement)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, direction="adam", coupling="decoupled", lr=lr, momentum=betas[0], beta2=betas[1],
                         eps=eps, weight_decay=weight_decay)


class _SGDZeroBuffer(NCOptimizer):
    """Claims to be torch's SGD; the momentum buffer starts at zero."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, direction="sgd", coupling="coupled", lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
        self.transforms = (ZeroStartHeavyBall(),)


class _SGDWShrinkWithoutLr(NCOptimizer):
    """Claims to be SGDW; shrinks by ``(1 - lambda)`` instead of ``(1 - eta lambda)``."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, direction="sgd", coupling="decoupled", lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _update_parameter(self, param, state, group):
        param.mul_(1 - group["weight_decay"])
        apply_update(self.transforms, param, param.grad, state, {**group, "weight_decay": 0.0})


class _SGDDecayAfterMomentum(NCOptimizer):
    """Claims to be torch's SGD; adds ``lambda*theta`` to the direction after the momentum buffer."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, direction="sgd", coupling="coupled", lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _update_parameter(self, param, state, group):
        decay = param.detach() * group["weight_decay"]
        apply_update(self.transforms, param, param.grad, state, {**group, "weight_decay": 0.0})
        param.sub_(decay * group["lr"])


def _like(name: str, base: str, cls) -> OptimizerInfo:
    """An OptimizerInfo that copies ``base``'s declarations (coupling, regime, ranges) but builds ``cls``."""
    ref = REGISTRY[base]
    return OptimizerInfo(name=name, factory=from_canonical(cls), coupling=ref.coupling, sign_like=ref.sign_like,
                         regime=ref.regime, regime_without_decay=ref.regime_without_decay,
                         sample_ranges=dict(ref.sample_ranges), fixed=dict(ref.fixed), reference=None,
                         direction=None, coupled_share=ref.coupled_share)


MUTANTS: dict[str, OptimizerInfo] = {
    info.name: info
    for info in (
        _like("adamw_coupled_decay", "adamw", _AdamWCoupledDecay),
        _like("adam_decoupled_decay", "adam", _AdamDecoupledDecay),
        _like("sgd_zero_buffer", "sgd", _SGDZeroBuffer),
        _like("sgdw_shrink_without_lr", "sgdw", _SGDWShrinkWithoutLr),
        _like("sgd_decay_after_momentum", "sgd", _SGDDecayAfterMomentum),
    )
}
"""Every mutant by name, with the claim the suite must find violated in :data:`EXPECTED_VIOLATION`."""

EXPECTED_VIOLATION: dict[str, str] = {
    "adamw_coupled_decay": "T3",
    "adam_decoupled_decay": "T4",
    "sgd_zero_buffer": "T2",
    "sgdw_shrink_without_lr": "T1",
    "sgd_decay_after_momentum": "T2",
}

__all__.append("EXPECTED_VIOLATION")


def register_mutants() -> list[str]:
    """Add every mutant to ``REGISTRY`` (for a gate self-test); returns their names."""
    for info in MUTANTS.values():
        register(info, replace=True)
    return list(MUTANTS)


def unregister_mutants() -> None:
    """Remove the mutants from ``REGISTRY`` again."""
    for name in MUTANTS:
        if REGISTRY.get(name) is MUTANTS[name]:
            del REGISTRY[name]
