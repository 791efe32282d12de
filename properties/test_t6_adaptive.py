"""T6: adaptive and sign methods without weight decay move W^T 1 (contrast with T1); SGD without
decay is the twin that conserves it. Registry-wide over optimizers predicted to drift at lambda = 0."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks
from ncprop.optim import REGISTRY
from ncprop.strategies import class_counts, scaled_examples, seeds

DRIFTING = [n for n, i in REGISTRY.items() if i.regime_without_decay == "drifts"]


@pytest.mark.fast
@pytest.mark.parametrize("name", DRIFTING)
@scaled_examples(2)
@given(seed=seeds(), setup=st.sampled_from(["mlp", "ufm", "fixed"]), k=class_counts(3, 6),
       lr=st.floats(1e-3, 0.05))
def test_t6_row_sum_moves_without_decay(name, seed, setup, k, lr):
    hp = {"coupled_share": 0.5} if REGISTRY[name].coupling == "mixed" else {}
    result = checks.check_t6(name, hp, lr=lr, setup=setup, num_classes=k, steps=10, seed=seed)
    assert result.passed, result.message


@pytest.mark.fast
@scaled_examples(2)
@given(seed=seeds(), momentum=st.floats(0.0, 0.95))
def test_twin_sgd_without_decay_does_not_move_row_sum(seed, momentum):
    result = checks.check_t6("sgd", {"momentum": momentum}, lr=0.1, steps=10, seed=seed)
    assert not result.passed and result.message.startswith("T6 violated"), result.message


@pytest.mark.fast
def test_adam_with_zero_betas_and_eps_equals_sign_descent():
    """THEORY.md section 4: Adam(W) with beta1 = beta2 = 0, eps = 0 is SignGD(W) where no gradient
    coordinate is 0: both reductions follow T3/T4 exactly on the ETF UFM."""
    assert checks.check_t3("adamw", num_classes=4, lr=0.05, weight_decay=0.1, steps=50).passed
    assert checks.check_t4("adam", num_classes=4, lr=0.05, weight_decay=0.1, steps_per_stage=100).passed
