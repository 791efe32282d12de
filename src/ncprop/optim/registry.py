"""The optimizer registry: each optimizer described once, every check iterates over it.

An :class:`OptimizerInfo` says how to build an optimizer from *canonical* hyperparameters (``lr``,
``momentum`` -- beta1 for Adam-type and Lion --, ``weight_decay``, ``beta2``, ``eps``, ``dampening``,
``nesterov``, ``coupled_share``), where its weight-decay term sits, which values are valid, which
values the property suite samples, and what NC0 (``||W^T 1||``) does under it according to
THEORY.md:

- ``"conserved"``: ``W^T 1`` stays exactly where it started (SGD and SGDW with ``lambda = 0``, T1).
- ``"decays"``: NC0 goes to 0 (SGD, SGDW with ``lambda > 0`` (T1, T2); coupled adaptive and sign
  methods, which reach a band of order ``eta`` that shrinks with a decaying schedule (T4)).
- ``"plateaus"``: NC0 stays bounded away from 0 (decoupled sign-like methods: T3, T5).
- ``"drifts"``: ``W^T 1`` moves, with no prediction of its limit (adaptive methods at ``lambda = 0``: T6).

A user's optimizer is added with :func:`register`; the property suite and ``ncprop gate`` then
treat it like a built-in one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ncprop._validation import check_choice
from ncprop.optim import presets
from ncprop.optim.core import DIRECTIONS, Transform

REGIMES = ("conserved", "decays", "plateaus", "drifts")
COUPLING_KINDS = ("coupled", "decoupled", "mixed", "unknown")
CANONICAL = ("lr", "momentum", "weight_decay", "beta2", "eps", "dampening", "nesterov", "coupled_share")

Factory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerInfo:
    """Everything the suite needs to know about one optimizer.

    Attributes:
        name: registry key (``"sgd"``, ``"adamw"``, ``"signum_w"``...).
        factory: ``factory(params, **canonical_hyperparameters) -> torch.optim.Optimizer``.
        coupling: ``"coupled"``, ``"decoupled"``, ``"mixed"``, or ``"unknown"`` (a user's optimizer
            whose placement of the decay is what the gate measures).
        sign_like: True for methods whose update has a magnitude independent of the gradient's
            scale (sign methods, Lion, Adam-type): the ones for which decoupled decay plateaus.
        regime: the NC0 regime predicted for ``weight_decay > 0`` (None: no prediction).
        regime_without_decay: the NC0 regime predicted for ``weight_decay = 0`` (None: no prediction).
        sample_ranges: ``{hyperparameter: (low, high)}`` that the property suite draws from.
        fixed: canonical hyperparameters this optimizer does not take (``momentum`` for SignGD).
        reference: a trusted implementation to compare with step for step (torch.optim), if any.
        direction, coupled_share: the core composition, for the batched engine; ``None`` for
            optimizers not built from :mod:`ncprop.optim.core`.
    """

    name: str
    factory: Factory
    coupling: str
    sign_like: bool
    regime: str | None
    regime_without_decay: str | None
    sample_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    reference: Factory | None = None
    direction: str | None = None
    coupled_share: float | None = None

    def __post_init__(self) -> None:
        check_choice("coupling", self.coupling, COUPLING_KINDS)
        if self.regime is not None:
            check_choice("regime", self.regime, REGIMES)
        if self.regime_without_decay is not None:
            check_choice("regime_without_decay", self.regime_without_decay, REGIMES)
        if self.direction is not None:
            check_choice("direction", self.direction, tuple(DIRECTIONS))

    @property
    def transforms(self) -> tuple[Transform, ...]:
        if self.direction is None:
            raise ValueError(f"optimizer {self.name!r} is not built from ncprop's core; it has no transforms")
        return DIRECTIONS[self.direction]

    def predicted_regime(self, weight_decay: float, coupled_share: float | None = None) -> str | None:
        """The NC0 regime theory predicts, or None where it makes no prediction (a mix strictly
        between coupled and decoupled decay)."""
        if weight_decay == 0:
            return self.regime_without_decay
        if self.coupling != "mixed":
            return self.regime
        share = self.coupled_share if coupled_share is None else coupled_share
        if share is None:
            raise ValueError(f"{self.name} needs coupled_share to predict a regime")
        return "decays" if share == 1 else "plateaus" if share == 0 else None

    def _canonical_kwargs(self, hp: dict[str, Any]) -> dict[str, Any]:
        hp = dict(hp)
        for key, value in self.fixed.items():
            if key in hp and hp[key] != value:
                raise ValueError(f"{self.name} takes no {key!r} (fixed at {value!r}); got {key}={hp[key]!r}")
            hp.pop(key, None)
        unknown = set(hp) - set(CANONICAL)
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {sorted(unknown)} for {self.name}; expected some of {CANONICAL}"
            )
        return hp

    def build(self, params, **hp: Any) -> torch.optim.Optimizer:
        """Build from canonical hyperparameters; the ones in :attr:`fixed` must be left out or equal."""
        return self.factory(params, **self._canonical_kwargs(hp))

    def build_reference(self, params, **hp: Any) -> torch.optim.Optimizer:
        """Build :attr:`reference` (e.g. torch.optim.SGD) from the same canonical hyperparameters."""
        if self.reference is None:
            raise ValueError(f"optimizer {self.name!r} declares no reference implementation")
        return self.reference(params, **self._canonical_kwargs(hp))

    def canonical_hyperparameters(self, **hp: Any) -> dict[str, Any]:
        """``hp`` completed with the defaults of the optimizer :meth:`build` makes, as
        :func:`ncprop.optim.core.apply_update` reads them (Adam's beta1 = 0.9, Lion's beta2 = 0.99...).

        Read off a built optimizer's parameter group, so there is no second copy of the defaults.
        Only for optimizers built from ncprop's core (:attr:`direction` set).
        """
        if self.direction is None:
            raise ValueError(f"optimizer {self.name!r} is not built from ncprop's core; it has no canonical state")
        probe = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        group = self.build([probe], **hp).param_groups[0]
        return {key: group[key] for key in CANONICAL}


def from_canonical(cls: type[torch.optim.Optimizer]) -> Factory:
    """A factory that maps canonical hyperparameters onto ``cls``'s constructor arguments
    (``momentum`` and ``beta2`` become ``betas`` where ``cls`` takes betas)."""
    accepted = set(inspect.signature(cls).parameters)

    def factory(params, **hp: Any) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {}
        if "betas" in accepted:
            defaults = inspect.signature(cls).parameters["betas"].default
            kwargs["betas"] = (hp.pop("momentum", defaults[0]), hp.pop("beta2", defaults[1]))
        for key, value in hp.items():
            if key not in accepted:
                raise ValueError(f"{cls.__name__} takes no {key!r}; got {key}={value!r}")
            kwargs[key] = value
        return cls(params, **kwargs)

    factory.__name__ = f"{cls.__name__}_from_canonical"
    return factory


REGISTRY: dict[str, OptimizerInfo] = {}


def register(info: OptimizerInfo, *, replace: bool = False) -> OptimizerInfo:
    """Add ``info`` to the registry (a user's optimizer too); refuses to shadow a name silently."""
    if info.name in REGISTRY and not replace:
        raise ValueError(f"an optimizer named {info.name!r} is already registered; pass replace=True")
    REGISTRY[info.name] = info
    return info


def get(name: str) -> OptimizerInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def build(name: str, params, **hp: Any) -> torch.optim.Optimizer:
    """``get(name).build(params, **hp)``: the uniform constructor used by sweeps and the suite."""
    return get(name).build(params, **hp)


_LR_SMALL = (1e-3, 0.05)
_LR_SGD = (1e-2, 0.5)
_MOMENTUM = (0.0, 0.95)
_WD = (1e-3, 0.1)


def _builtin(name, cls, *, direction, coupling, share, sign_like, regime, without, lr, fixed=None,
             reference=None, extra_ranges=None) -> None:
    ranges = {"lr": lr, "weight_decay": _WD}
    if not (fixed and "momentum" in fixed):
        ranges["momentum"] = _MOMENTUM
    ranges.update(extra_ranges or {})
    register(OptimizerInfo(name=name, factory=from_canonical(cls), coupling=coupling, sign_like=sign_like,
                           regime=regime, regime_without_decay=without, sample_ranges=ranges,
                           fixed=fixed or {}, reference=reference, direction=direction, coupled_share=share))


_NO_MOMENTUM = {"momentum": 0.0, "beta2": 0.999, "eps": 1e-8, "dampening": 0.0, "nesterov": False}
_SIGN_FIXED = {"beta2": 0.999, "eps": 1e-8, "dampening": 0.0, "nesterov": False}
_ADAM_FIXED = {"dampening": 0.0, "nesterov": False}

_builtin("sgd", presets.SGD, direction="sgd", coupling="coupled", share=1.0, sign_like=False, regime="decays",
         without="conserved", lr=_LR_SGD, fixed={"beta2": 0.999, "eps": 1e-8, "coupled_share": 1.0},
         reference=from_canonical(torch.optim.SGD))
_builtin("sgdw", presets.SGDW, direction="sgd", coupling="decoupled", share=0.0, sign_like=False, regime="decays",
         without="conserved", lr=_LR_SGD, fixed={"beta2": 0.999, "eps": 1e-8, "coupled_share": 0.0})
_builtin("adam", presets.Adam, direction="adam", coupling="coupled", share=1.0, sign_like=True, regime="decays",
         without="drifts", lr=_LR_SMALL, fixed={**_ADAM_FIXED, "coupled_share": 1.0},
         reference=from_canonical(torch.optim.Adam))
_builtin("adamw", presets.AdamW, direction="adam", coupling="decoupled", share=0.0, sign_like=True,
         regime="plateaus", without="drifts", lr=_LR_SMALL, fixed={**_ADAM_FIXED, "coupled_share": 0.0},
         reference=from_canonical(torch.optim.AdamW))
_builtin("adam_mix", presets.AdamMix, direction="adam", coupling="mixed", share=None, sign_like=True,
         regime="decays", without="drifts", lr=_LR_SMALL, fixed=_ADAM_FIXED,
         extra_ranges={"coupled_share": (0.0, 1.0)})
_builtin("signgd", presets.SignGD, direction="sign", coupling="coupled", share=1.0, sign_like=True,
         regime="decays", without="drifts", lr=_LR_SMALL, fixed={**_NO_MOMENTUM, "coupled_share": 1.0})
_builtin("signgd_w", presets.SignGDW, direction="sign", coupling="decoupled", share=0.0, sign_like=True,
         regime="plateaus", without="drifts", lr=_LR_SMALL, fixed={**_NO_MOMENTUM, "coupled_share": 0.0})
_builtin("signum", presets.Signum, direction="signum", coupling="coupled", share=1.0, sign_like=True,
         regime="decays", without="drifts", lr=_LR_SMALL, fixed={**_SIGN_FIXED, "coupled_share": 1.0})
_builtin("signum_w", presets.SignumW, direction="signum", coupling="decoupled", share=0.0, sign_like=True,
         regime="plateaus", without="drifts", lr=_LR_SMALL, fixed={**_SIGN_FIXED, "coupled_share": 0.0})
_builtin("lion", presets.Lion, direction="lion", coupling="decoupled", share=0.0, sign_like=True,
         regime="plateaus", without="drifts", lr=_LR_SMALL,
         fixed={"eps": 1e-8, "dampening": 0.0, "nesterov": False, "coupled_share": 0.0},
         extra_ranges={"beta2": (0.9, 0.999)})
