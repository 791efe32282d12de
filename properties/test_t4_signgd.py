"""T4: coupled sign descent on the ETF UFM follows the exact 2-parameter recursion, rises then falls,
and stays in a band alpha <= C^2 eta^2 per stage (C proved in ncprop.theory) that shrinks by ~eta^2
per stage over three stages. Registry-wide over coupled sign-like optimizers (reduced to sign
descent); decoupled SignGDW is the twin."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks, theory
from ncprop.optim import REGISTRY
from ncprop.strategies import class_counts, scaled_examples

T4_NAMES = [n for n, i in REGISTRY.items() if i.coupling == "coupled" and i.sign_like]


@pytest.mark.fast
@pytest.mark.parametrize("name", T4_NAMES)
@scaled_examples(2)
@given(k=class_counts(3, 6), lr=st.floats(0.04, 0.1), wd=st.floats(0.04, 0.2))
def test_t4_recursion_rise_fall_and_band(name, k, lr, wd):
    result = checks.check_t4(name, num_classes=k, lr=lr, weight_decay=wd, steps_per_stage=120, stages=3, rtol=1e-9)
    assert result.passed, result.message


@pytest.mark.fast
def test_t4_eta_squared_scaling_over_three_stages():
    result = checks.check_t4("signgd", num_classes=5, lr=0.05, weight_decay=0.05, steps_per_stage=200, stages=3)
    assert result.passed, result.message
    ratios = result.evidence["stage_tops_over_eta2"]
    # alpha/eta^2 at the top of the band is the same in every stage (here (K-2)^2 = 9), so alpha
    # drops by the factor 100 = 10^2 per stage.
    assert max(ratios) / min(ratios) < 1.5, ratios
    tops = result.evidence["stage_tops"]
    assert all(50 < a / b < 200 for a, b in zip(tops, tops[1:])), tops


@pytest.mark.fast
@given(k=class_counts(3, 12), lr=st.floats(1e-3, 0.2), wd=st.floats(1e-3, 1.0))
def test_t4_band_constant_is_at_least_k_and_local_is_tighter(k, lr, wd):
    local, glob = theory.t4_band_constant(k, lr, wd), theory.t4_band_constant(k, lr, wd, local=False)
    assert k <= local <= glob


@pytest.mark.fast
@scaled_examples(2)
@given(k=class_counts(3, 6), lr=st.floats(0.03, 0.1), wd=st.floats(0.03, 0.2))
def test_twin_decoupled_signgdw_breaks_t4(k, lr, wd):
    result = checks.check_t4("signgd_w", num_classes=k, lr=lr, weight_decay=wd, steps_per_stage=50)
    assert not result.passed and result.message.startswith("T4 violated"), result.message


@pytest.mark.slow
@pytest.mark.parametrize("name", T4_NAMES)
def test_t4_large_k(name):
    result = checks.check_t4(name, num_classes=10, lr=0.05, weight_decay=0.05, steps_per_stage=1000, stages=3)
    assert result.passed, result.message


@pytest.mark.gpu
def test_t4_with_device_fixture(ncprop_device):
    result = checks.check_t4("signgd", num_classes=10 if ncprop_device.type == "cuda" else 4, lr=0.05,
                             weight_decay=0.1, steps_per_stage=150)
    assert result.passed, result.message
