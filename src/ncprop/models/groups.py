"""Optimizer parameter groups: weight decay on weights, none on normalisation parameters and biases.

Normalisation parameters are found by module type (every ``torch.nn.modules.batchnorm._NormBase``,
LayerNorm, GroupNorm, LocalResponseNorm, and RMSNorm when torch has it), never by the
parameter's name, so a renamed attribute cannot silently put a LayerNorm weight under decay.
Biases are the parameters a module registers as ``bias`` (or ``*_bias``, e.g. attention's in_proj_bias).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ncprop._validation import check_nonnegative


def _norm_types() -> tuple[type, ...]:
    types: list[type] = [_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm]
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None:
        types.append(rms)
    return tuple(types)


NORM_TYPES = _norm_types()


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Qualified names of the parameters :func:`param_groups` exempts from weight decay."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for p_name, _ in module.named_parameters(recurse=False):
            if is_norm or p_name == "bias" or p_name.endswith("_bias"):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(model: nn.Module, weight_decay: float, *,
                 no_decay_on_norm_and_bias: bool = True) -> list[dict[str, Any]]:
    """Two groups ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others,
    "weight_decay": 0.0}]`` (empty groups are dropped). Each group also carries ``"names"``.

    With ``no_decay_on_norm_and_bias=False`` every parameter is decayed (the paper's CNN runs).
    Shared parameters are listed once.
    """
    check_nonnegative("weight_decay", weight_decay)
    exempt = no_decay_parameter_names(model) if no_decay_on_norm_and_bias else set()
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():  # named_parameters() de-duplicates shared tensors
        if not p.requires_grad:
            continue
        if name in exempt:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups
