"""T1: SGDW's row sum obeys m_{t+1} = (1 - eta_t lambda) m_t exactly; with lambda = 0 any linear
optimizer conserves it. Registry-wide over decoupled, non-sign-like optimizers."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks
from ncprop.optim import REGISTRY
from ncprop.strategies import scaled_examples, seeds, sgd_family_cases

T1_NAMES = [n for n, i in REGISTRY.items() if i.coupling == "decoupled" and not i.sign_like]
CONSERVING = [n for n, i in REGISTRY.items() if i.regime_without_decay == "conserved"]
RTOL = 1e-10  # relative to sqrt(K) max ||W||: float64 round-off over the run


@pytest.mark.fast
@pytest.mark.parametrize("name", T1_NAMES)
@scaled_examples(6)
@given(data=st.data())
def test_t1_row_sum_shrinks_by_one_minus_eta_lambda(name, data):
    case = data.draw(sgd_family_cases(REGISTRY[name]))
    result = checks.check_t1(name, rtol=RTOL, **case)
    assert result.passed, result.message


@pytest.mark.fast
@pytest.mark.parametrize("name", T1_NAMES)
def test_t1_over_1000_minibatch_steps_of_an_mlp(name):
    lrs = checks.constant_then_step_lrs(0.2, 334)[:1000]
    result = checks.check_t1(name, lr=lrs, momentum=0.9, weight_decay=0.01, setup="mlp", num_classes=4,
                             steps=1000, batch_size=4, seed=1234, rtol=RTOL)
    assert result.passed, result.message
    assert result.evidence["steps"] == 1000


@pytest.mark.fast
@scaled_examples(3)
@given(seed=seeds(), wd=st.floats(0.01, 0.1))
def test_twin_coupled_sgd_breaks_t1(seed, wd):
    result = checks.check_t1("sgd", lr=0.2, momentum=0.9, weight_decay=wd, steps=20, seed=seed)
    assert not result.passed and result.message.startswith("T1 violated"), result.message


@pytest.mark.fast
@pytest.mark.parametrize("name", CONSERVING)
@scaled_examples(3)
@given(seed=seeds(), setup=st.sampled_from(["mlp", "ufm"]), momentum=st.floats(0.0, 0.95))
def test_conservation_without_decay(name, seed, setup, momentum):
    hp = {} if "momentum" in REGISTRY[name].fixed else {"momentum": momentum}
    result = checks.check_conservation_without_decay(name, hp, lr=0.2, setup=setup, steps=20, seed=seed)
    assert result.passed, result.message


@pytest.mark.slow
@pytest.mark.parametrize("name", T1_NAMES)
def test_t1_on_a_cnn_over_a_cosine_schedule(name):
    lrs = [0.1 * (0.5 + 0.5 * __import__("math").cos(3.14159 * t / 500)) for t in range(500)]
    result = checks.check_t1(name, lr=lrs, momentum=0.9, weight_decay=5e-3, setup="cnn", num_classes=10,
                             steps=500, batch_size=16, rtol=RTOL)
    assert result.passed, result.message


@pytest.mark.gpu
@pytest.mark.parametrize("name", T1_NAMES)
def test_t1_on_device(name, ncprop_device):
    steps = 1000 if ncprop_device.type == "cuda" else 30
    result = checks.check_t1(name, momentum=0.9, weight_decay=0.01, setup="mlp", steps=steps, device=ncprop_device,
                             rtol=RTOL)
    assert result.passed, result.message
