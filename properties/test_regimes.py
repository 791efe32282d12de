"""The NC0 regime each registered optimizer declares (coupled decay decays, decoupled sign-like
decay plateaus, SGD without decay conserves, adaptive without decay drifts), checked on a UFM run."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks
from ncprop.optim import REGISTRY
from ncprop.strategies import scaled_examples, seeds

NAMES = list(REGISTRY)


def _hp(name):
    return {"coupled_share": 0.5} if REGISTRY[name].coupling == "mixed" else {}


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_declared_regime(name, weight_decay):
    result = checks.check_regime(name, _hp(name), weight_decay=weight_decay, steps_per_stage=100)
    assert result.passed, result.message


@st.composite
def _regime_instances(draw, sign_like):
    """K, lr, lambda with ``lr * lambda >= 2e-3`` by construction: the regime is asymptotic, and a
    coupled term needs of the order of ``1/(lr lambda)`` steps to take over, so with 100 steps per
    stage smaller products leave Adam short of the decay bound (seen at lr = lambda = 0.02)."""
    k = draw(st.integers(3, 8))
    lr = draw(st.floats(0.02, 0.1))
    weight_decay = draw(st.floats(max(0.02, 2e-3 / lr), 0.1))
    return k, (lr if sign_like else 5 * lr), weight_decay


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
@scaled_examples(2)
@given(data=st.data(), seed=seeds())
def test_declared_regime_on_drawn_instances(name, data, seed):
    k, lr, weight_decay = data.draw(_regime_instances(REGISTRY[name].sign_like))
    result = checks.check_regime(name, _hp(name), num_classes=k, lr=lr, weight_decay=weight_decay,
                                 steps_per_stage=100, seed=seed)
    assert result.passed, result.message


@pytest.mark.fast
@pytest.mark.parametrize("mutant", ["adamw_coupled_decay", "adam_decoupled_decay"])
@scaled_examples(2)
@given(data=st.data(), seed=seeds())
def test_twin_swapped_decay_placement_fails_the_declared_regime(mutant, data, seed):
    """The twin: an optimizer that declares AdamW's regime but couples its decay (or Adam's and
    decouples it) must fail the regime property on the same drawn instances."""
    from ncprop.mutants import MUTANTS

    info = MUTANTS[mutant]
    k, lr, weight_decay = data.draw(_regime_instances(info.sign_like))
    result = checks.check_regime(info, num_classes=k, lr=lr, weight_decay=weight_decay, steps_per_stage=100,
                                 seed=seed)
    assert not result.passed and " violated: predicted regime " in result.message, result.message


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
