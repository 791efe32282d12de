"""The NC0 regime each registered optimizer declares (coupled decay decays, decoupled sign-like
decay plateaus, SGD without decay conserves, adaptive without decay drifts), checked on a UFM run."""

import pytest

from ncprop import checks
from ncprop.optim import REGISTRY

NAMES = list(REGISTRY)


def _hp(name):
    return {"coupled_share": 0.5} if REGISTRY[name].coupling == "mixed" else {}


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_declared_regime(name, weight_decay):
    result = checks.check_regime(name, _hp(name), weight_decay=weight_decay, steps_per_stage=100)
    assert result.passed, result.message


@pytest.mark.fast
def test_twin_regime_thresholds_separate():
    t = checks.regime_thresholds(4)
    assert t["decays"] < t["plateaus"] <= checks.plateau_value(4)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [3, 10])
def test_declared_regime_larger(name, k):
    result = checks.check_regime(name, _hp(name), num_classes=k, weight_decay=0.01, steps_per_stage=500)
    assert result.passed, result.message
