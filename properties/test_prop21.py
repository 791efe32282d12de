"""Proposition 2.1, quantitative form: ||W^T 1||^2/||W||^2 <= K * NC2W for every W, and = 0 at an ETF."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ncprop import checks, theory
from ncprop.optim import REGISTRY
from ncprop.strategies import class_counts, etf_configurations, scaled_examples, seeds, widths


@pytest.mark.fast
@given(k=class_counts(2, 10), p=widths(1, 16), seed=seeds(), shift=st.floats(-5, 5))
def test_bound_holds_for_every_w(k, p, seed, shift):
    w = torch.randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift
    assert float(theory.prop21_lhs(w)) <= float(theory.prop21_rhs(w)) + 1e-12


@pytest.mark.fast
@given(etf=etf_configurations())
def test_etf_has_zero_nc0_and_nc2w(etf):
    w = etf["weight"]
    assert float(theory.prop21_lhs(w)) <= 1e-20
    assert float(theory.nc2w(w)) <= 1e-12


@pytest.mark.fast
@pytest.mark.parametrize("name", list(REGISTRY))
def test_bound_along_training(name):
    hp = {"coupled_share": 0.5} if REGISTRY[name].coupling == "mixed" else {}
    hp["weight_decay"] = 0.01
    result = checks.check_prop21(name, hp, lr=0.05, steps=15)
    assert result.passed, result.message


@pytest.mark.fast
@scaled_examples(3)
@given(k=class_counts(3, 8), seed=seeds())
def test_twin_bound_is_tight_enough_to_fail_when_misstated(k, seed):
    """The bound is not vacuous: for W = rows all equal (NC0 maximal), lhs = K, and K * NC2W is at least that
    while (K * NC2W)/K^2 -- a misstated constant -- would fail."""
    w = torch.ones(k, 1, dtype=torch.float64) * torch.randn(1, 3, generator=torch.Generator().manual_seed(seed),
                                                            dtype=torch.float64)
    lhs, rhs = float(theory.prop21_lhs(w)), float(theory.prop21_rhs(w))
    assert lhs == pytest.approx(k) and lhs <= rhs + 1e-12
    assert lhs > rhs / k**2
