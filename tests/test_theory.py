"""Unit tests of ncprop.theory against independent, deliberately naive references."""

import math

import pytest
import torch

from ncprop import theory

pytestmark = pytest.mark.fast


def _zero_sum(g):
    return g - g.mean(0, keepdim=True)


@pytest.mark.parametrize("momentum,dampening,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.5, 0.3, False),
                                                         (0.9, 0.0, True)])
def test_sgd_multipliers_match_torch_sgd_on_zero_sum_gradients(momentum, dampening, nesterov):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    opt = torch.optim.SGD([w], lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=0.2)
    lrs = [0.1, 0.2, 0.05, 0.1, 0.3, 0.1]
    m0 = w.detach().sum(0).clone()
    pred = theory.predict_row_sums("sgd", m0, lrs, momentum, 0.2, dampening, nesterov)
    for t, eta in enumerate(lrs):
        w.grad = _zero_sum(torch.randn(4, 3, generator=gen, dtype=torch.float64))
        opt.param_groups[0]["lr"] = eta
        opt.step()
        assert torch.allclose(w.detach().sum(0), pred[t + 1], rtol=1e-12, atol=1e-14)


def test_sgdw_multipliers_are_the_product_of_shrinks():
    c = theory.sgdw_multipliers([0.1, 0.2, 0.3], 0.5)
    assert torch.allclose(c, torch.tensor([1.0, 0.95, 0.95 * 0.9, 0.95 * 0.9 * 0.85], dtype=torch.float64))


def test_predict_nc0_trajectory_accepts_a_norm_or_a_vector():
    v = torch.tensor([3.0, 4.0], dtype=torch.float64)
    a = theory.predict_nc0_trajectory("sgd", v, [0.1] * 5, 0.9, 0.1)
    b = theory.predict_nc0_trajectory("sgd", 5.0, [0.1] * 5, 0.9, 0.1)
    assert torch.allclose(a, b) and a[0] == 5.0
    with pytest.raises(ValueError, match="'sgd' or 'sgdw'"):
        theory.predict_nc0_trajectory("adam", 1.0, [0.1], 0.9, 0.1)


def test_stability_boundaries():
    assert theory.sgd_is_stable(1.0, 3.7, 0.9) and not theory.sgd_is_stable(1.0, 3.9, 0.9)  # 2(1+beta) = 3.8
    bound = 2 * 1.9 / 2.8  # Nesterov: 2(1+beta)/(1+2beta)
    assert theory.sgd_is_stable(1.0, bound - 1e-6, 0.9, nesterov=True)
    assert not theory.sgd_is_stable(1.0, bound + 1e-6, 0.9, nesterov=True)
    assert theory.sgd_asymptotic_rate(1.0, bound + 1e-3, 0.9, nesterov=True) > 1
    assert theory.sgd_asymptotic_rate(1.0, 1e-4, 0.9) == pytest.approx(1 - 1e-3, abs=1e-5)


def test_t3_closed_form_matches_recursion_and_limit():
    k, lr, wd = 5, 0.05, 0.1
    alpha = theory.t3_alpha(k, lr, wd, 100)
    w = theory.t3_weight_scalar(k, [lr] * 100, wd)
    assert torch.allclose(alpha, (k - 2) ** 2 * w**2, rtol=1e-12)
    assert theory.t3_alpha_limit(k, wd) == pytest.approx(900.0)
    with pytest.raises(ValueError, match="0 < lr\\*weight_decay < 1"):
        theory.t3_alpha(k, 20.0, 0.1, 3)


def test_etf_margin_gradient_matches_autograd():
    k, u = 5, 0.7
    e = (torch.eye(k, dtype=torch.float64) - 1 / k) / math.sqrt(k - 1)
    w = (u * torch.eye(k, dtype=torch.float64) + 0.3 * torch.ones(k, k, dtype=torch.float64)).requires_grad_()
    torch.nn.functional.cross_entropy(e @ w.T, torch.arange(k)).backward()
    g = float(theory.etf_margin_gradient(k, u))
    assert torch.allclose(w.grad, -g * (torch.eye(k, dtype=torch.float64) - 1 / k), rtol=1e-12, atol=1e-15)


def test_t4_trajectory_starts_like_t3_and_has_a_band():
    tr = theory.signgd_etf_trajectory(5, [0.05] * 200, 0.05)
    assert float(tr.alpha[1]) == pytest.approx(9 * 0.05**2)
    entry = theory.t4_band_entry(tr, 0.05)
    c = theory.t4_band_constant(5, 0.05, 0.05)
    assert entry is not None and float(tr.alpha[entry:].max()) <= c * c * 0.05**2
    assert float(tr.alpha.max()) > 4 * float(tr.alpha[-1])


def test_prop21_and_zero_sum_residual():
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(theory.prop21_lhs(w)) <= float(theory.prop21_rhs(w))
    assert theory.zero_sum_residual(_zero_sum(w)) < 1e-15
    assert theory.zero_sum_residual(torch.ones(3, 2)) == pytest.approx(1.0)


def test_sign_row_sum_increment_k2_cancels():
    g = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(theory.sign_row_sum_increment(g), torch.zeros(2, dtype=torch.float64))
