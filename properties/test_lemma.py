"""The zero-sum gradient lemma (THEORY.md section 3), registry-wide; MSE is the twin where it fails."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks
from ncprop.optim import REGISTRY
from ncprop.strategies import class_counts, scaled_examples, seeds

NAMES = list(REGISTRY)  # read at collection time: a user-registered optimizer joins automatically


def _hp(name):
    return {"coupled_share": 0.5} if REGISTRY[name].coupling == "mixed" else {}


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
@scaled_examples(2)
@given(setup=st.sampled_from(["ufm", "fixed", "mlp"]), k=class_counts(3, 6), seed=seeds(),
       loss=st.sampled_from(["ce", "label_smoothing"]), batch=st.sampled_from([None, 3, 8]))
def test_lemma_holds_along_training(name, setup, k, seed, loss, batch):
    result = checks.check_zero_sum_lemma(name, _hp(name), setup=setup, loss=loss, num_classes=k, steps=8,
                                         lr=0.01, batch_size=batch, seed=seed, rtol=1e-12)
    assert result.passed, result.message


@pytest.mark.fast
@scaled_examples(3)
@given(setup=st.sampled_from(["ufm", "fixed", "mlp"]), k=class_counts(2, 6), seed=seeds())
def test_twin_mse_breaks_the_lemma(setup, k, seed):
    result = checks.check_zero_sum_lemma("sgd", setup=setup, loss="mse", num_classes=k, steps=3, seed=seed)
    assert not result.passed and result.message.startswith("lemma violated"), result.message


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_lemma_on_a_cnn(name):
    result = checks.check_zero_sum_lemma(name, _hp(name), setup="cnn", num_classes=10, steps=50, lr=0.01)
    assert result.passed, result.message


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sgd", "adamw", "signum_w"])
def test_lemma_on_device(name, ncprop_device):
    steps = 200 if ncprop_device.type == "cuda" else 10
    result = checks.check_zero_sum_lemma(name, setup="mlp", num_classes=10, steps=steps, device=ncprop_device)
    assert result.passed, result.message
