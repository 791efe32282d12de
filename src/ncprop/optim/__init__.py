"""The optimizer family: one composable core (:mod:`.core`), thin named presets (:mod:`.presets`)
and the registry that every check iterates over (:mod:`.registry`)."""

from ncprop.optim.core import DIRECTIONS, Transform, apply_update, init_state
from ncprop.optim.presets import (
    SGD,
    SGDW,
    Adam,
    AdamMix,
    AdamW,
    Lion,
    NCOptimizer,
    SignGD,
    SignGDW,
    Signum,
    SignumW,
)
from ncprop.optim.registry import REGISTRY, OptimizerInfo, build, from_canonical, get, register

__all__ = [
    "DIRECTIONS", "Transform", "apply_update", "init_state",
    "NCOptimizer", "SGD", "SGDW", "Adam", "AdamW", "AdamMix", "SignGD", "SignGDW", "Signum", "SignumW", "Lion",
    "REGISTRY", "OptimizerInfo", "build", "from_canonical", "get", "register",
]
