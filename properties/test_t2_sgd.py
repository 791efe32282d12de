"""T2: coupled SGD's row sum follows the data-free recursion (momentum, dampening, Nesterov, any
schedule); the constant-lr stability boundary and rate. Registry-wide over coupled linear optimizers."""


import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks, theory
from ncprop.optim import REGISTRY
from ncprop.strategies import scaled_examples, seeds, sgd_family_cases

T2_NAMES = [n for n, i in REGISTRY.items() if i.coupling == "coupled" and not i.sign_like]
RTOL = 1e-10


@pytest.mark.fast
@pytest.mark.parametrize("name", T2_NAMES)
@scaled_examples(6)
@given(data=st.data())
def test_t2_row_sum_follows_the_recursion(name, data):
    result = checks.check_t2(name, rtol=RTOL, **data.draw(sgd_family_cases(REGISTRY[name])))
    assert result.passed, result.message


@pytest.mark.fast
@pytest.mark.parametrize("name", T2_NAMES)
@pytest.mark.parametrize("variant", [{}, {"dampening": 0.5}, {"nesterov": True}])
def test_t2_over_1000_minibatch_steps_of_an_mlp(name, variant):
    steps = 300 if variant else 1000
    lrs = checks.constant_then_step_lrs(0.2, 334)[:steps]
    result = checks.check_t2(name, lr=lrs, momentum=0.9, weight_decay=0.01, setup="mlp", num_classes=4,
                             steps=steps, batch_size=4, seed=99, rtol=RTOL, **variant)
    assert result.passed, result.message


@pytest.mark.fast
@scaled_examples(3)
@given(seed=seeds(), momentum=st.floats(0.3, 0.95))
def test_twin_decoupled_sgdw_breaks_t2(seed, momentum):
    result = checks.check_t2("sgdw", lr=0.2, momentum=momentum, weight_decay=0.05, steps=20, seed=seed)
    assert not result.passed and result.message.startswith("T2 violated"), result.message


@pytest.mark.fast
@given(lr=st.floats(1e-3, 5.0), wd=st.floats(1e-3, 2.0), beta=st.floats(0.0, 0.99),
       tau=st.sampled_from([0.0, 0.5]), nesterov=st.booleans())
def test_t2_stability_boundary_matches_the_rate(lr, wd, beta, tau, nesterov):
    if nesterov:
        tau = 0.0
        beta = max(beta, 0.01)
    rate = theory.sgd_asymptotic_rate(lr, wd, beta, tau, nesterov)
    stable = theory.sgd_is_stable(lr, wd, beta, tau, nesterov)
    # Away from the boundary (|rate - 1| > 1e-9) the two must agree.
    if abs(rate - 1.0) > 1e-9:
        assert stable == (rate < 1.0), (rate, stable)


@pytest.mark.fast
@given(lr=st.floats(0.01, 0.5), wd=st.floats(1e-3, 0.05), beta=st.floats(0.0, 0.9))
def test_t2_rate_matches_the_simulated_recursion(lr, wd, beta):
    c = theory.sgd_multipliers([lr] * 1200, beta, wd).abs()
    rate = theory.sgd_asymptotic_rate(lr, wd, beta)
    # For eta*lambda << (1 - beta)^2 (real, well-separated roots): rho ~ 1 - eta*lambda/(1 - beta).
    small = lr * wd / (1 - beta) ** 2
    if small < 0.01:
        assert rate == pytest.approx(1 - lr * wd / (1 - beta), abs=2 * small * lr * wd / (1 - beta) + 1e-12)
    # The simulated decay per step tends to rho.
    # Window maxima, so that the oscillation of complex roots does not matter.
    late, early = float(c[1100:1201].max()), float(c[600:701].max())
    if late > 1e-250:
        assert (late / early) ** (1 / 500) == pytest.approx(rate, rel=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", T2_NAMES)
def test_t2_on_a_cnn(name):
    result = checks.check_t2(name, lr=0.05, momentum=0.9, weight_decay=5e-3, setup="cnn", num_classes=10,
                             steps=500, batch_size=16, rtol=RTOL)
    assert result.passed, result.message


@pytest.mark.gpu
@pytest.mark.parametrize("name", T2_NAMES)
def test_t2_on_device(name, ncprop_device):
    steps = 1000 if ncprop_device.type == "cuda" else 30
    result = checks.check_t2(name, momentum=0.9, weight_decay=0.01, nesterov=True, setup="mlp", steps=steps,
                             device=ncprop_device, rtol=RTOL)
    assert result.passed, result.message
