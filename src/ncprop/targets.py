"""Loading a user's optimizer from ``MODULE:FACTORY`` as an :class:`~ncprop.optim.OptimizerInfo`.

Shared by ``ncprop gate`` and the pytest plugin's ``--ncprop-optimizer``. ``MODULE`` is an importable
module name or a path to a ``.py`` file; ``FACTORY`` names, inside it, either

- an :class:`~ncprop.optim.OptimizerInfo` (a full declaration: coupling, predicted regime, ranges), or
- a callable ``factory(params, **hyperparameters) -> torch.optim.Optimizer``. It receives the
  canonical hyperparameters it accepts by name (``lr``, ``weight_decay``, ``momentum``, ``beta2``,
  ``eps``...; ``momentum`` and ``beta2`` are passed as ``betas=(momentum, beta2)`` to a factory that
  takes ``betas``), plus the fixed ``--kwargs`` the user gave.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ncprop.optim.registry import OptimizerInfo

EXPECTATIONS = ("decays", "plateaus", "conserves")
"""What `ncprop gate --expect` accepts; REGIME_OF_EXPECTATION maps each to the registry's regime name."""
REGIME_OF_EXPECTATION = {"decays": "decays", "plateaus": "plateaus", "conserves": "conserved"}


_CANONICAL_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.0, "momentum": 0.0, "beta2": 0.999, "eps": 1e-8,
                       "dampening": 0.0, "nesterov": False}


class TargetError(ValueError):
    """The optimizer named on the command line cannot be loaded or does not build an optimizer."""


def _import(module: str):
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise TargetError(f"cannot import {module!r}: no such file")
        name = f"_ncprop_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"cannot import {module!r}: not a Python file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # the user's module failed while importing: say which and why
            raise TargetError(f"importing {module!r} failed: {type(exc).__name__}: {exc}") from exc
        return mod
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise TargetError(f"cannot import module {module!r}: {type(exc).__name__}: {exc}") from exc


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``"a=1,b=0.5,flag=true"`` -> ``{"a": 1, "b": 0.5, "flag": True}`` (numbers, booleans, strings)."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise TargetError(f"--kwargs expects comma-separated key=value pairs; got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        out[key] = value
    return out


def _canonical_adapter(factory, fixed_kwargs: Mapping[str, Any]):
    """Wrap a user's factory so it takes canonical hyperparameters and ignores those it lacks."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    params = signature.parameters if signature else {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or signature is None

    required = [name for name, p in params.items()
                if p.default is inspect.Parameter.empty and name in _CANONICAL_DEFAULTS]

    def build(param_list, **hp: Any) -> torch.optim.Optimizer:
        for name in required:  # a factory may require what a check leaves at its default
            hp.setdefault(name, _CANONICAL_DEFAULTS[name])
        kwargs: dict[str, Any] = {}
        if "betas" in params and not takes_all:
            default = params["betas"].default
            default = default if isinstance(default, tuple) else (0.9, 0.999)
            kwargs["betas"] = (hp.pop("momentum", default[0]), hp.pop("beta2", default[1]))
        for key, value in hp.items():
            if takes_all or key in params:
                kwargs[key] = value
        kwargs.update(fixed_kwargs)
        optimizer = factory(param_list, **kwargs)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TargetError(
                f"factory {getattr(factory, '__name__', factory)!r} returned {type(optimizer).__name__}, "
                "expected a torch.optim.Optimizer"
            )
        return optimizer

    build.__name__ = getattr(factory, "__name__", "user_factory")
    return build


def load_target(spec: str, *, expect: str | None = None, kwargs: Mapping[str, Any] | None = None,
                name: str | None = None) -> OptimizerInfo:
    """Resolve ``MODULE:FACTORY`` to an OptimizerInfo, checking that it builds a torch optimizer."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise TargetError(f"expected MODULE:FACTORY (e.g. mypkg.opt:make or ./my_opt.py:make), got {spec!r}")
    if expect is not None and expect not in EXPECTATIONS:
        raise TargetError(f"--expect must be one of {', '.join(EXPECTATIONS)}; got {expect!r}")
    module_name, attr = spec.split(":")
    module = _import(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None

    if isinstance(obj, OptimizerInfo):
        info = obj
        if kwargs:
            base = info.factory
            info = dataclasses.replace(info, factory=lambda params, **hp: base(params, **{**hp, **kwargs}))
    elif callable(obj):
        info = OptimizerInfo(
            name=name or attr,
            factory=_canonical_adapter(obj, kwargs or {}),
            coupling="unknown",
            sign_like=expect == "plateaus",
            regime=REGIME_OF_EXPECTATION[expect] if expect else None,
            regime_without_decay=None,
            sample_ranges={"lr": (1e-3, 0.05), "weight_decay": (1e-3, 0.1), "momentum": (0.0, 0.9)},
        )
    else:
        raise TargetError(f"{spec!r} is a {type(obj).__name__}, expected a factory callable or an OptimizerInfo")

    probe = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    try:
        optimizer = info.build([probe], lr=1e-3, weight_decay=1e-3)
    except TargetError:
        raise
    except Exception as exc:
        raise TargetError(f"calling {spec!r} to build an optimizer failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TargetError(f"{spec!r} built a {type(optimizer).__name__}, expected a torch.optim.Optimizer")
    return info

