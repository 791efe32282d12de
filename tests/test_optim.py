"""The optimizer family: parity with torch.optim, exact reductions, validation, state round trips.

A battery over :data:`ncprop.optim.REGISTRY` in the manner of PyTorch's OptimizerInfo tests: adding
an optimizer to the registry adds it to every generic check here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ncprop.optim as optim
from ncprop.optim import REGISTRY

pytestmark = pytest.mark.fast

RTOL = 1e-12  # parity with torch.optim in float64, written here as the issue asks
ATOL = 1e-14


def _hp_for(info, lr=0.05, momentum=0.9, weight_decay=0.01, **extra):
    hp = {"lr": lr, "weight_decay": weight_decay, **extra}
    if "momentum" not in info.fixed:
        hp["momentum"] = momentum
    if info.coupling == "mixed":
        hp.setdefault("coupled_share", 0.5)
    return hp


def _params(shapes, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device).requires_grad_() for s in shapes]


def _grads(shapes, steps, seed, device="cpu", away_from_zero=False):
    """Gradients for ``steps`` steps, drawn once so two optimizers see the very same ones."""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        step = []
        for s in shapes:
            x = torch.randn(s, generator=g, dtype=torch.float64)
            if away_from_zero:  # |x| >= 0.1: no exact zeros, so sign(0) never enters
                x = torch.sign(x) * (0.1 + x.abs())
                x[x == 0] = 0.5
            step.append(x.to(device))
        out.append(step)
    return out


def _run(opt, params, grads):
    trajectory = []
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def _assert_same_trajectory(a, b, rtol=RTOL, atol=ATOL, exact=False):
    for t, (pa, pb) in enumerate(zip(a, b)):
        for x, y in zip(pa, pb):
            if exact:
                assert torch.equal(x, y), f"step {t + 1}: trajectories differ (max |diff| {(x - y).abs().max()})"
            else:
                torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"step {t + 1}: {m}")


shapes_st = st.lists(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3
)


# --- parity with torch.optim -------------------------------------------------------------------

@given(
    shapes=shapes_st,
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 8),
    lr=st.floats(1e-4, 0.5),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]) | st.floats(0.0, 0.99),
    dampening=st.sampled_from([0.0, 0.1, 0.5]),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.05]) | st.floats(0.0, 0.5),
    nesterov=st.booleans(),
)
def test_sgd_matches_torch_sgd(shapes, seed, steps, lr, momentum, dampening, weight_decay, nesterov):
    if nesterov and (momentum == 0 or dampening != 0):
        nesterov = False
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    ours_p, ref_p = _params(shapes, seed), _params(shapes, seed)
    grads = _grads(shapes, steps, seed)
    _assert_same_trajectory(_run(optim.SGD(ours_p, **kw), ours_p, grads),
                            _run(torch.optim.SGD(ref_p, **kw), ref_p, grads))


@pytest.mark.parametrize("ours, theirs", [(optim.Adam, torch.optim.Adam), (optim.AdamW, torch.optim.AdamW)])
@given(
    shapes=shapes_st,
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 8),
    lr=st.floats(1e-5, 0.1),
    beta1=st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0.0, 0.99),
    beta2=st.sampled_from([0.9, 0.999]) | st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 1e-2, 0.5]) | st.floats(0.0, 1.0),
)
def test_adam_family_matches_torch(ours, theirs, shapes, seed, steps, lr, beta1, beta2, eps, weight_decay):
    kw = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    ours_p, ref_p = _params(shapes, seed), _params(shapes, seed)
    grads = _grads(shapes, steps, seed)
    _assert_same_trajectory(_run(ours(ours_p, **kw), ours_p, grads), _run(theirs(ref_p, **kw), ref_p, grads))


@pytest.mark.parametrize("name", [n for n, i in REGISTRY.items() if i.reference is not None])
def test_registry_reference_parity(name):
    """The registry's declared reference agrees with the registered optimizer (canonical names)."""
    info = REGISTRY[name]
    shapes = [(4, 3), (3,)]
    hp = _hp_for(info)
    a, b = _params(shapes, 7), _params(shapes, 7)
    grads = _grads(shapes, 5, 7)
    _assert_same_trajectory(_run(info.build(a, **hp), a, grads), _run(info.build_reference(b, **hp), b, grads))


# --- exact reductions --------------------------------------------------------------------------

@pytest.mark.parametrize("adam_cls, sign_cls", [(optim.Adam, optim.SignGD), (optim.AdamW, optim.SignGDW)])
@given(shapes=shapes_st, seed=st.integers(0, 2**16), steps=st.integers(1, 8), lr=st.floats(1e-4, 0.5),
       weight_decay=st.sampled_from([0.0, 0.01]) | st.floats(0.0, 0.5))
def test_adam_with_zero_betas_and_eps_is_sign_descent(adam_cls, sign_cls, shapes, seed, steps, lr, weight_decay):
    a, b = _params(shapes, seed), _params(shapes, seed)
    if adam_cls is optim.Adam:
        # the coupled gradient g + lambda*theta must avoid exact zeros too: use lambda = 0 for Adam
        weight_decay = 0.0
    grads = _grads(shapes, steps, seed, away_from_zero=True)
    ta = _run(adam_cls(a, lr=lr, betas=(0.0, 0.0), eps=0.0, weight_decay=weight_decay), a, grads)
    tb = _run(sign_cls(b, lr=lr, weight_decay=weight_decay), b, grads)
    _assert_same_trajectory(ta, tb, exact=True)


def test_coupled_adam_with_zero_betas_is_signgd_with_decay():
    """Adam(beta=0, eps=0) with coupled decay equals SignGD with coupled decay when g + lambda*theta
    has no zero coordinates (constructed: theta and g positive)."""
    shapes = [(3, 4)]
    a = [torch.full((3, 4), 0.5, dtype=torch.float64, requires_grad=True)]
    b = [torch.full((3, 4), 0.5, dtype=torch.float64, requires_grad=True)]
    grads = [[torch.rand((3, 4), generator=torch.Generator().manual_seed(t), dtype=torch.float64) + 0.1]
             for t in range(4)]
    ta = _run(optim.Adam(a, lr=0.01, betas=(0.0, 0.0), eps=0.0, weight_decay=0.1), a, grads)
    tb = _run(optim.SignGD(b, lr=0.01, weight_decay=0.1), b, grads)
    _assert_same_trajectory(ta, tb, exact=True)
    assert shapes


@given(shapes=shapes_st, seed=st.integers(0, 2**16), steps=st.integers(1, 6), lr=st.floats(1e-4, 0.5),
       momentum=st.floats(0.0, 0.99), nesterov=st.booleans())
def test_sgdw_without_decay_is_sgd(shapes, seed, steps, lr, momentum, nesterov):
    nesterov = nesterov and momentum > 0
    a, b = _params(shapes, seed), _params(shapes, seed)
    grads = _grads(shapes, steps, seed)
    ta = _run(optim.SGDW(a, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0), a, grads)
    tb = _run(optim.SGD(b, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0), b, grads)
    _assert_same_trajectory(ta, tb, exact=True)


@pytest.mark.parametrize("share, pure", [(1.0, optim.Adam), (0.0, optim.AdamW)])
@given(seed=st.integers(0, 2**16), steps=st.integers(1, 6), lr=st.floats(1e-4, 0.1),
       weight_decay=st.floats(0.0, 1.0))
def test_adam_mix_endpoints(share, pure, seed, steps, lr, weight_decay):
    shapes = [(3, 5), (5,)]
    a, b = _params(shapes, seed), _params(shapes, seed)
    grads = _grads(shapes, steps, seed)
    ta = _run(optim.AdamMix(a, lr=lr, weight_decay=weight_decay, coupled_share=share), a, grads)
    tb = _run(pure(b, lr=lr, weight_decay=weight_decay), b, grads)
    _assert_same_trajectory(ta, tb, exact=True)


# --- hand-computed cases -----------------------------------------------------------------------

def test_lion_one_step_by_hand():
    p = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = optim.Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    opt.step()
    # c = 0.1 * g -> sign = (1, -1, 0); theta = (1 - 0.05) theta - 0.1 sign(c)
    torch.testing.assert_close(p.detach(), torch.tensor([0.95 - 0.1, -1.9 + 0.1, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.01 * p.grad, rtol=1e-15, atol=0)


def test_signum_coupled_versus_decoupled_by_hand():
    theta0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    g = torch.tensor([-0.05, -0.05], dtype=torch.float64)
    a = theta0.clone().requires_grad_()
    b = theta0.clone().requires_grad_()
    coupled = optim.Signum([a], lr=0.1, momentum=0.5, weight_decay=0.1)
    decoupled = optim.SignumW([b], lr=0.1, momentum=0.5, weight_decay=0.1)
    a.grad, b.grad = g.clone(), g.clone()
    coupled.step()
    decoupled.step()
    # coupled: m = 0.5 * (g + 0.1 theta) = (0.025, -0.075) -> theta - 0.1 * (1, -1)
    torch.testing.assert_close(a.detach(), torch.tensor([0.9, -0.9], dtype=torch.float64), rtol=0, atol=1e-15)
    # decoupled: m = 0.5 g -> sign = (-1, -1); theta = 0.99 theta + 0.1
    torch.testing.assert_close(b.detach(), torch.tensor([1.09, -0.89], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_zero_gradient_moves_by_weight_decay_alone(name):
    info = REGISTRY[name]
    theta0 = torch.tensor([[0.7, -1.3], [2.0, 0.4]], dtype=torch.float64)
    p = theta0.clone().requires_grad_()
    lr, wd = 0.1, 0.2
    opt = info.build([p], **_hp_for(info, lr=lr, weight_decay=wd))
    p.grad = torch.zeros_like(p)
    opt.step()
    share = opt.param_groups[0]["coupled_share"]
    if share == 0:
        expected = (1 - lr * wd) * theta0
    elif info.direction == "sgd":
        expected = theta0 - lr * wd * theta0
    elif info.direction == "adam" and share == 1:
        # m_hat / sqrt(v_hat) = sign(lambda*theta) up to eps
        expected = theta0 - lr * (wd * theta0) / ((wd * theta0).abs() + 1e-8)
    elif info.direction in ("sign", "signum"):
        expected = theta0 - lr * torch.sign(theta0)
    else:  # the mix: shrink by the decoupled part, Adam step on the coupled part
        lam_c, lam_d = wd * share, wd * (1 - share)
        expected = (1 - lr * lam_d) * theta0 - lr * (lam_c * theta0) / ((lam_c * theta0).abs() + 1e-8)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)

    q = theta0.clone().requires_grad_()
    opt = info.build([q], **_hp_for(info, lr=lr, weight_decay=0.0))
    q.grad = torch.zeros_like(q)
    opt.step()
    assert torch.equal(q.detach(), theta0), f"{name}: zero gradient and zero weight decay moved the parameter"


# --- generic battery over the registry ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_dict_round_trip_continues_bit_identically(name):
    info = REGISTRY[name]
    shapes = [(4, 3), (3,)]
    grads = _grads(shapes, 6, 3)
    a = _params(shapes, 3)
    opt_a = info.build(a, **_hp_for(info))
    _run(opt_a, a, grads[:3])
    saved_state = copy.deepcopy(opt_a.state_dict())
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = info.build(b, **_hp_for(info, lr=123.0))  # hyperparameters restored from the state dict
    opt_b.load_state_dict(saved_state)
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    _assert_same_trajectory(_run(opt_a, a, grads[3:]), _run(opt_b, b, grads[3:]), exact=True)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_loss_goes_down_on_a_quadratic(name):
    info = REGISTRY[name]
    target = torch.linspace(-1, 1, 6, dtype=torch.float64)
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    opt = info.build([p], **_hp_for(info, lr=0.01, momentum=0.5, weight_decay=0.0))
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = ((p - target) ** 2).sum()
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, f"{name}: loss {first} -> {loss.item()}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_param_group_with_zero_lr_and_decay_does_not_move(name):
    info = REGISTRY[name]
    moving = torch.ones(3, dtype=torch.float64, requires_grad=True)
    frozen = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = info.build([{"params": [moving]}, {"params": [frozen], "lr": 0.0}], **_hp_for(info, lr=0.1))
    for _ in range(3):
        moving.grad = torch.full((3,), 0.5, dtype=torch.float64)
        frozen.grad = torch.full((3,), 0.5, dtype=torch.float64)
        opt.step()
    assert torch.equal(frozen.detach(), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(moving.detach(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_float32_parameters_keep_their_dtype(name):
    info = REGISTRY[name]
    p = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = info.build([p], **_hp_for(info))
    p.grad = torch.ones_like(p)
    opt.step()
    assert p.dtype == torch.float32 and all(
        v.dtype == torch.float32 for v in opt.state[p].values() if isinstance(v, torch.Tensor)
    )


def test_regimes_declared_as_theory_predicts():
    decoupled_sign_like = {n for n, i in REGISTRY.items() if i.coupling == "decoupled" and i.sign_like}
    assert decoupled_sign_like == {"adamw", "signgd_w", "signum_w", "lion"}
    assert all(REGISTRY[n].predicted_regime(0.1) == "plateaus" for n in decoupled_sign_like)
    assert all(REGISTRY[n].predicted_regime(0.1) == "decays" for n in ("sgd", "sgdw", "adam", "signgd", "signum"))
    assert REGISTRY["sgd"].predicted_regime(0.0) == "conserved" and REGISTRY["adam"].predicted_regime(0.0) == "drifts"
    mix = REGISTRY["adam_mix"]
    assert [mix.predicted_regime(0.1, s) for s in (1.0, 0.0, 0.5)] == ["decays", "plateaus", None]


def test_register_refuses_to_shadow_and_accepts_user_optimizers():
    with pytest.raises(ValueError, match="already registered"):
        optim.register(REGISTRY["sgd"])
    info = optim.OptimizerInfo(name="my_sgd", factory=optim.from_canonical(torch.optim.SGD), coupling="coupled",
                               sign_like=False, regime="decays", regime_without_decay="conserved")
    try:
        optim.register(info)
        p = torch.zeros(2, requires_grad=True)
        assert isinstance(optim.build("my_sgd", [p], lr=0.1), torch.optim.SGD)
    finally:
        REGISTRY.pop("my_sgd", None)
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        optim.get("nope")


# --- invalid hyperparameters -------------------------------------------------------------------

def _p():
    return [torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: optim.SGD(_p(), lr=-0.1), r"lr must be a finite number >= 0, got -0\.1"),
        (lambda: optim.Adam(_p(), lr=math.nan), r"lr must be a finite number >= 0, got nan"),
        (lambda: optim.AdamW(_p(), lr=1e-3, betas=(1.0, 0.999)), r"momentum must lie in \[0, 1\), got 1\.0"),
        (lambda: optim.Adam(_p(), lr=1e-3, betas=(0.9, -0.1)), r"beta2 must lie in \[0, 1\), got -0\.1"),
        (lambda: optim.Lion(_p(), lr=1e-3, betas=(0.9, 1.5)), r"beta2 must lie in \[0, 1\), got 1\.5"),
        (lambda: optim.SGD(_p(), lr=0.1, momentum=1.0), r"momentum must lie in \[0, 1\), got 1\.0"),
        (lambda: optim.SignumW(_p(), lr=0.1, weight_decay=-1e-4), r"weight_decay must be a finite number >= 0"),
        (lambda: optim.SGDW(_p(), lr=0.1, weight_decay=math.inf), r"weight_decay must be a finite number >= 0"),
        (lambda: optim.Adam(_p(), lr=0.1, eps=-1.0), r"eps must be a finite number >= 0, got -1\.0"),
        (lambda: optim.AdamMix(_p(), lr=0.1, coupled_share=1.5), r"coupled_share must lie in \[0, 1\], got 1\.5"),
        (lambda: optim.NCOptimizer(_p(), direction="sign", lr=0.1, coupling="L2"),
         r"coupling must be one of 'coupled', 'decoupled'; got 'L2'"),
        (lambda: optim.NCOptimizer(_p(), direction="rmsprop", lr=0.1, coupling="coupled"),
         r"direction must be one of .*got 'rmsprop'"),
        (lambda: optim.SGD(_p(), lr=0.1, nesterov=True), r"nesterov needs direction 'sgd', momentum > 0"),
        (lambda: optim.SGD([{"params": _p(), "lr": -1.0}], lr=0.1), r"lr must be a finite number >= 0, got -1\.0"),
        (lambda: optim.build("signgd", _p(), lr=0.1, momentum=0.9), r"signgd takes no 'momentum'"),
        (lambda: optim.build("sgd", _p(), lr=0.1, betas=(0.9, 0.9)), r"unknown hyperparameter\(s\) \['betas'\]"),
    ],
)
def test_invalid_hyperparameters_raise_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- devices -----------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_device_matches_cpu(name, ncprop_device):
    """Every optimizer on the test device agrees with the CPU (float64) step for step."""
    info = REGISTRY[name]
    shapes = [(8, 4), (4,)]
    grads = _grads(shapes, 4, 11)
    cpu = _params(shapes, 11)
    dev = [p.detach().clone().to(ncprop_device).requires_grad_() for p in cpu]
    t_cpu = _run(info.build(cpu, **_hp_for(info)), cpu, grads)
    t_dev = _run(info.build(dev, **_hp_for(info)), dev, [[g.to(ncprop_device) for g in s] for s in grads])
    for step_cpu, step_dev in zip(t_cpu, t_dev):
        for x, y in zip(step_cpu, step_dev):
            assert y.device.type == ncprop_device.type
            torch.testing.assert_close(y.cpu(), x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_canonical_hyperparameters_are_the_built_optimizers(name):
    """The registry's completed hyperparameters are those the optimizer really uses (one source of
    truth: Adam's beta1 defaults to 0.9, Lion's beta2 to 0.99)."""
    info = REGISTRY[name]
    hp = {"coupled_share": 0.25} if info.coupling == "mixed" else {}
    canonical = info.canonical_hyperparameters(lr=0.02, **hp)
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    group = info.build([p], lr=0.02, **hp).param_groups[0]
    assert canonical == {key: group[key] for key in canonical}
    if name in ("adam", "adamw", "lion"):
        assert canonical["momentum"] == 0.9
    if name == "lion":
        assert canonical["beta2"] == 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_square_root_of_the_second_moment_is_correctly_rounded(dtype):
    """Adam's sqrt(v) is the correctly rounded square root, also on zeros, subnormals and huge values
    (the inputs where torch's CPU kernel is slow), for contiguous and strided tensors alike."""
    from ncprop.optim.core import _sqrt

    info = torch.finfo(dtype)
    special = torch.tensor([0.0, info.tiny / 8, info.tiny, 1.0, 2.0, 3.0, info.max, math.inf], dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    wide = torch.exp(torch.empty(4096, dtype=torch.float64).uniform_(-80.0, 80.0, generator=gen)).to(dtype)
    x = torch.cat([special, wide]).reshape(-1, 8)
    for tensor in (x, x.T):
        got = _sqrt(tensor)
        if dtype == torch.float32:
            # sqrt in float64, rounded once more to float32, is the correctly rounded float32 sqrt.
            want = torch.sqrt(tensor.double()).float()
        else:
            want = torch.tensor([math.sqrt(v) for v in tensor.flatten().tolist()], dtype=dtype).reshape(tensor.shape)
        assert got.shape == tensor.shape and got.stride() == tensor.stride()
        assert torch.equal(got, want)
    # Dtypes numpy cannot hold, and tensors in autograd, take torch's own kernel.
    half = x[:1].to(torch.bfloat16)
    assert torch.equal(_sqrt(half), half.sqrt())
    leaf = torch.tensor([4.0, 9.0], requires_grad=True)
    assert torch.equal(_sqrt(leaf).detach(), torch.tensor([2.0, 3.0]))
