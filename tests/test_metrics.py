"""Tests of ncprop.metrics: hand-computed values, exact zeros at collapse, invariances (Hypothesis),
streaming == in memory, the K x K NC1 against a naive p x p pseudo-inverse, Proposition 2.1,
float32, bad input. The naive references below are deliberately brute force and live only here."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from ncprop.metrics import (
    METRIC_KEYS,
    NCAccumulator,
    NCMetricWarning,
    collect_nc_metrics,
    nc0,
    nc0_alpha,
    nc0_normalized,
    nc_metrics,
)

pytestmark = pytest.mark.fast

F64 = torch.float64
INVARIANT_UNDER_SCALING = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equiangular_means",
    "nc2",
    "nc2m",
    "nc3",
    "nc3_squared",
)


# ----------------------------------------------------------------------------------------------
# Naive brute-force references (p x p, loops): independent of the library's algebra


def naive_nc1(features, labels, k: int, *, sample_mean: bool = False, rtol: float | None = None):
    """Tr(Sigma_W Sigma_B^+)/K with p x p matrices and torch.linalg.pinv, in features' dtype."""
    h = features
    means = torch.stack([h[labels == c].mean(dim=0) for c in range(k)])
    mu_g = h.mean(dim=0) if sample_mean else means.mean(dim=0)
    p = h.shape[1]
    sigma_w = torch.zeros(p, p, dtype=h.dtype)
    for i in range(h.shape[0]):
        z = h[i] - means[labels[i]]
        sigma_w += torch.outer(z, z)
    sigma_w /= h.shape[0]
    sigma_b = torch.zeros(p, p, dtype=h.dtype)
    for c in range(k):
        d = means[c] - mu_g
        sigma_b += torch.outer(d, d)
    sigma_b /= k
    pinv = torch.linalg.pinv(sigma_b) if rtol is None else torch.linalg.pinv(sigma_b, rtol=rtol)
    return float(torch.trace(sigma_w @ pinv) / k)


def naive_tr_sw(features, labels, k):
    means = torch.stack([features[labels == c].mean(dim=0) for c in range(k)])
    return float(sum((features[i] - means[labels[i]]).square().sum() for i in range(len(labels))))


# ----------------------------------------------------------------------------------------------
# Well-conditioned problems by construction


def random_rotation(p: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def make_problem(
    seed: int,
    k: int,
    p: int,
    counts: list[int],
    noise: float = 0.5,
    offset: float = 2.0,
    with_bias: bool = True,
):
    """Class means M = D Q (Q: k orthonormal rows in R^p, D with singular values in [1, 3]), so the
    centred means have a guaranteed gap (G's non-zero eigenvalues >= 1); Gaussian spread `noise`."""
    gen = torch.Generator().manual_seed(seed)
    basis = random_rotation(p, gen)[:k]
    spectrum = 1 + 2 * torch.rand(k, generator=gen, dtype=F64)
    mix = random_rotation(k, gen) @ torch.diag(spectrum) @ random_rotation(k, gen)
    means = mix @ basis + offset * torch.randn(p, generator=gen, dtype=F64)
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=gen)]
    features = means[labels] + noise * torch.randn(len(labels), p, generator=gen, dtype=F64)
    weight = torch.randn(k, p, generator=gen, dtype=F64)
    bias = torch.randn(k, generator=gen, dtype=F64) if with_bias else None
    return features, labels, weight, bias


@st.composite
def problems(
    draw, max_k: int = 5, max_extra_p: int = 5, max_count: int = 5, noises=(0.01, 0.3, 1.0)
):
    k = draw(st.integers(2, max_k))
    p = draw(st.integers(k, k + max_extra_p))
    counts = draw(st.lists(st.integers(2, max_count), min_size=k, max_size=k))
    seed = draw(st.integers(0, 2**31 - 1))
    noise = draw(st.sampled_from(noises))
    offset = draw(st.sampled_from([0.0, 2.0, 10.0]))
    return dict(seed=seed, k=k, p=p, counts=counts, noise=noise, offset=offset)


def assert_metrics_close(a: dict, b: dict, *, rtol: float, atol: float, keys=METRIC_KEYS):
    for key in keys:
        torch.testing.assert_close(
            a[key],
            b[key],
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            msg=lambda m, key=key: f"{key}: {m}",
        )


# ----------------------------------------------------------------------------------------------
# Hand-computed values


def hand_problem():
    features = torch.tensor([[-1.5, 1.0], [-0.5, -1.0], [0.5, 1.0], [1.5, -1.0]], dtype=F64)
    labels = torch.tensor([0, 0, 1, 1])
    return features, labels, torch.eye(2, dtype=F64)


def test_hand_computed_values_k2():
    # mu_0 = (-1, 0), mu_1 = (1, 0), mu_G = 0; z_i = +-(-0.5, 1): Sigma_W = [[.25, -.5], [-.5, 1]],
    # Sigma_B = diag(1, 0) => NC1 = Tr(Sigma_W Sigma_B^+)/2 = .25/2. W = I: W^T 1 = (1, 1).
    features, labels, weight = hand_problem()
    m = nc_metrics(features, labels, weight, num_classes=2)
    expected = {
        "nc0": math.sqrt(2),
        "nc0_alpha": 1.0,
        "nc0_normalized": 1.0,
        "nc1": 0.125,
        "nc2_equinorm_means": 0.0,
        "nc2_equinorm_w": 0.0,
        "nc2_equiangular_means": 0.0,  # cos = -1 = -1/(K-1)
        "nc2_equiangular_w": 1.0,  # cos = 0
        "nc2": 0.0,  # G = [[1, -1], [-1, 1]], G/||G|| = E for K = 2
        "nc2w": math.sqrt(2 - math.sqrt(2)),  # ||I/sqrt2 - E||
        "nc2m": math.sqrt(2 + math.sqrt(2)),  # W M~^T = [[-1, 1], [0, 0]]
        "nc3": math.sqrt(3),  # ||(I - M~)/sqrt2||, M~ = [[-1, 0], [1, 0]]
        "nc3_squared": 3.0,
        "nc4": 0.5,  # argmax(h) = (1, 0, 1, 0), nearest mean = (0, 0, 1, 1)
        "nc4_mismatch": 0.5,
        "tr_sw": 1.25,
        "tr_sb": 1.0,
    }
    assert set(m) == set(METRIC_KEYS)
    for key, value in expected.items():
        assert m[key].dtype == F64 and m[key].shape == ()
        assert m[key].item() == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_nc4_includes_the_bias():
    features, labels, weight = hand_problem()
    # logits + (0, 0.6): argmax = (1, 1, 1, 0), nearest mean = (0, 0, 1, 1): one agreement in four
    bias = torch.tensor([0.0, 0.6], dtype=F64)
    m = nc_metrics(features, labels, weight, bias, num_classes=2)
    assert m["nc4"].item() == pytest.approx(0.25, abs=1e-15)
    assert m["nc4_mismatch"].item() == pytest.approx(0.75, abs=1e-15)


def test_hand_computed_nc2_k3():
    # one sample per class at its mean: (0, 0), (2, 0), (0, 2); mu_G = (2/3, 2/3)
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=F64)
    labels = torch.tensor([0, 1, 2])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=F64)
    m = nc_metrics(features, labels, weight, num_classes=3)
    norms = [2 * math.sqrt(2) / 3, 2 * math.sqrt(5) / 3, 2 * math.sqrt(5) / 3]
    mean = sum(norms) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in norms) / 2)
    assert m["nc2_equinorm_means"].item() == pytest.approx(std / mean, rel=1e-12)
    # centred means a = (-2,-2)/3, b = (4,-2)/3, c = (-2,4)/3: cos(a,b) = cos(a,c) = -1/sqrt10,
    # cos(b,c) = -16/20; |cos + 1/2| averaged over the three pairs
    cosines = [-1 / math.sqrt(10), -1 / math.sqrt(10), -0.8]
    assert m["nc2_equiangular_means"].item() == pytest.approx(
        sum(abs(c + 0.5) for c in cosines) / 3, rel=1e-12
    )
    w_norms = [1, 1, math.sqrt(2)]
    w_mean = sum(w_norms) / 3
    w_std = math.sqrt(sum((x - w_mean) ** 2 for x in w_norms) / 2)
    assert m["nc2_equinorm_w"].item() == pytest.approx(w_std / w_mean, rel=1e-12)
    assert m["nc0"].item() == pytest.approx(0.0, abs=1e-15)  # rows sum to 0
    assert m["nc1"].item() == pytest.approx(0.0, abs=1e-15)  # no within-class spread
    assert m["tr_sw"].item() == pytest.approx(0.0, abs=1e-15)
    assert m["tr_sb"].item() == pytest.approx(sum(x * x for x in norms) / 3, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Exact zeros at a constructed collapsed configuration


@pytest.mark.parametrize("k,p", [(2, 3), (3, 3), (5, 8), (10, 16)])
@pytest.mark.parametrize("global_mean", ["class", "sample"])
def test_collapsed_configuration_gives_zeros(k, p, global_mean):
    gen = torch.Generator().manual_seed(k * 100 + p)
    rot = random_rotation(p, gen)
    etf = (torch.eye(k, dtype=F64) - 1.0 / k) * math.sqrt(k / (k - 1))  # rows: simplex ETF
    centred = 3.0 * etf @ rot[:k]
    offset = 5.0 * rot[k:].sum(dim=0) if p > k else torch.zeros(p, dtype=F64)  # orthogonal to M~
    counts = torch.tensor([2 + (c % 3) for c in range(k)])
    if global_mean == "sample":
        counts = torch.full((k,), 3)  # sample mean = class mean only for balanced classes
    labels = torch.repeat_interleave(torch.arange(k), counts)
    features = (centred + offset)[labels]  # no within-class spread
    weight = 0.7 * centred  # W proportional to the centred means
    m = nc_metrics(features, labels, weight, num_classes=k, global_mean=global_mean)
    for key in METRIC_KEYS:
        if key == "nc4":
            assert m[key].item() == 1.0
        elif key == "tr_sb":
            assert m[key].item() == pytest.approx(9.0 * k / k, rel=1e-12)  # ||M~||^2 / K = 9
        else:
            assert 0.0 <= m[key].item() <= 1e-12, (key, m[key].item())


# ----------------------------------------------------------------------------------------------
# Invariances (Hypothesis)


def metrics_of(prob: dict, **kwargs):
    features, labels, weight, bias = make_problem(
        prob["seed"], prob["k"], prob["p"], prob["counts"], prob["noise"], prob["offset"]
    )
    return features, labels, weight, bias, nc_metrics(
        features, labels, weight, bias, num_classes=prob["k"], **kwargs
    )


@given(problems(), st.sampled_from(["class", "sample"]))
def test_invariant_to_sample_order(prob, global_mean):
    features, labels, weight, bias, ref = metrics_of(prob, global_mean=global_mean)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(prob["seed"] + 1))
    got = nc_metrics(
        features[perm], labels[perm], weight, bias, num_classes=prob["k"], global_mean=global_mean
    )
    assert_metrics_close(got, ref, rtol=1e-9, atol=1e-12)


@given(problems(), st.sampled_from(["class", "sample"]))
def test_invariant_to_class_relabelling(prob, global_mean):
    features, labels, weight, bias, ref = metrics_of(prob, global_mean=global_mean)
    k = prob["k"]
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(prob["seed"] + 2))
    inverse = torch.argsort(perm)  # new class perm[c] is old class c: W'[perm[c]] = W[c]
    got = nc_metrics(
        features,
        perm[labels],
        weight[inverse],
        bias[inverse],
        num_classes=k,
        global_mean=global_mean,
    )
    assert_metrics_close(got, ref, rtol=1e-9, atol=1e-12)


@given(problems())
def test_invariant_to_rotation_of_feature_space(prob):
    features, labels, weight, bias, ref = metrics_of(prob)
    rot = random_rotation(prob["p"], torch.Generator().manual_seed(prob["seed"] + 3))
    got = nc_metrics(features @ rot, labels, weight @ rot, bias, num_classes=prob["k"])
    assert_metrics_close(got, ref, rtol=1e-8, atol=1e-10)


@given(problems(), st.floats(1e-3, 1e3))
def test_nc1_nc2_nc3_invariant_to_positive_scaling(prob, scale):
    features, labels, weight, bias, ref = metrics_of(prob)
    got = nc_metrics(features * scale, labels, weight, bias, num_classes=prob["k"])
    assert_metrics_close(got, ref, rtol=1e-8, atol=1e-10, keys=INVARIANT_UNDER_SCALING)
    assert got["tr_sw"].item() == pytest.approx(ref["tr_sw"].item() * scale**2, rel=1e-8)


# ----------------------------------------------------------------------------------------------
# K x K NC1 against the naive p x p pseudo-inverse; never negative


@given(problems(), st.sampled_from(["class", "sample"]))
def test_nc1_matches_naive_pxp_pinv(prob, global_mean):
    features, labels, weight, bias, m = metrics_of(prob, global_mean=global_mean)
    ref = naive_nc1(features, labels, prob["k"], sample_mean=global_mean == "sample")
    assert m["nc1"].item() == pytest.approx(ref, rel=1e-8, abs=1e-14)
    assert m["nc1"].item() >= 0.0
    assert m["tr_sw"].item() == pytest.approx(
        naive_tr_sw(features, labels, prob["k"]) / len(labels), rel=1e-8, abs=1e-14
    )


def test_sample_global_mean_differs_from_class_mean_with_unbalanced_classes():
    features, labels, weight, bias = make_problem(7, 4, 6, [2, 9, 3, 5])
    by_class = nc_metrics(features, labels, weight, bias, num_classes=4)
    by_sample = nc_metrics(features, labels, weight, bias, num_classes=4, global_mean="sample")
    assert abs(by_class["nc1"].item() - by_sample["nc1"].item()) > 1e-3
    for m, sample_mean in ((by_class, False), (by_sample, True)):
        ref = naive_nc1(features, labels, 4, sample_mean=sample_mean)
        assert m["nc1"].item() == pytest.approx(ref, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# Streaming == in memory for every batch split; batched runs == one run at a time


@given(problems(), st.data(), st.sampled_from(["class", "sample"]))
def test_streaming_equals_in_memory_for_any_batch_split(prob, data, global_mean):
    features, labels, weight, bias, ref = metrics_of(prob, global_mean=global_mean)
    n = len(labels)
    cuts1 = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1), label="cuts pass 1"))
    cuts2 = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1), label="cuts pass 2"))
    acc = NCAccumulator(prob["k"], prob["p"], global_mean=global_mean)
    for lo, hi in zip([0, *cuts1], [*cuts1, n]):
        acc.update_means(features[lo:hi], labels[lo:hi])
    acc.finalize_means()
    for lo, hi in zip([0, *cuts2], [*cuts2, n]):
        h = features[lo:hi]
        acc.update_scatter(h, labels[lo:hi], logits=h @ weight.T + bias)
    got = acc.compute(weight, bias)
    assert_metrics_close(got, ref, rtol=1e-9, atol=1e-12)


def test_batched_runs_equal_single_runs():
    k, p, runs = 4, 7, 3
    problems_ = [make_problem(seed, k, p, [3, 4, 2, 5]) for seed in range(runs)]
    # same class counts in every run: sorted by label, all runs share one label vector
    labels = torch.sort(problems_[0][1]).values
    features = torch.stack([h[torch.argsort(y, stable=True)] for h, y, _, _ in problems_])
    weight = torch.stack([w for _, _, w, _ in problems_])
    bias = torch.stack([b for _, _, _, b in problems_])
    batched = nc_metrics(features, labels, weight, bias, num_classes=k)
    for r in range(runs):
        single = nc_metrics(features[r], labels, weight[r], bias[r], num_classes=k)
        for key in METRIC_KEYS:
            assert batched[key].shape == (runs,)
            torch.testing.assert_close(batched[key][r], single[key], rtol=1e-10, atol=1e-13)
    # streaming with the same leading run dimension
    acc = NCAccumulator(k, p)
    acc.update_means(features[:, :5], labels[:5])
    acc.update_means(features[:, 5:], labels[5:])
    acc.finalize_means()
    acc.update_scatter(features, labels, logits=features @ weight.mT + bias.unsqueeze(-2))
    assert_metrics_close(acc.compute(weight, bias), batched, rtol=1e-10, atol=1e-13)
    # features shared by all runs, weights stacked
    shared = nc_metrics(features[0], labels, weight, bias, num_classes=k)
    assert shared["nc0"].shape == (runs,)
    torch.testing.assert_close(shared["nc1"], batched["nc1"][0].expand(runs))
    # features stacked, one weight shared by all runs
    one_weight = nc_metrics(features, labels, weight[0], bias[0], num_classes=k)
    for key in METRIC_KEYS:
        assert one_weight[key].shape == (runs,)
    torch.testing.assert_close(one_weight["nc1"], batched["nc1"])
    torch.testing.assert_close(one_weight["nc0"], batched["nc0"][0].expand(runs))


# ----------------------------------------------------------------------------------------------
# Proposition 2.1: ||W^T 1||^2 / ||W||^2 <= K * NC2W for every W


@given(
    st.integers(2, 8),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
    st.sampled_from([0.0, 0.5, 3.0]),
)
def test_proposition_2_1_bound_holds_for_any_weight(k, p, seed, shift):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, p, generator=gen, dtype=F64)
    weight = weight + shift * torch.randn(p, generator=gen, dtype=F64)
    features, labels, _, _ = make_problem(seed, k, k + 1, [2] * k)
    if p != k + 1:
        features = features[:, :1].expand(-1, p).clone() + torch.randn(
            len(labels), p, generator=gen, dtype=F64
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NCMetricWarning)  # nc1 may be undefined when p < K - 1
        m = nc_metrics(features, labels, weight, num_classes=k)
    lhs = m["nc0_normalized"].item() ** 2
    assert lhs <= k * m["nc2w"].item() + 1e-12
    assert lhs == pytest.approx(nc0(weight).item() ** 2 / weight.square().sum().item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# float32 features


@given(problems(max_k=6, max_extra_p=20, noises=(0.3, 1.0)))
def test_float32_features_nc1_within_1e_4_of_float64(prob):
    # Rounding the features to float32 perturbs h - mu_y by ~eps32 ||h||, i.e. NC1 by about
    # 2 eps32 ||h|| / ||h - mu_y||: the spreads drawn here keep that below 1e-5, so 1e-4 tests the
    # algorithm. Accumulation is float64, so on the float32 values themselves ours equals the
    # float64 p x p reference to 1e-8.
    features, labels, weight, bias, m64 = metrics_of(prob)
    features32 = features.float()
    m32 = nc_metrics(features32, labels, weight.float(), bias.float(), num_classes=prob["k"])
    assert m32["nc1"].dtype == F64
    assert m32["nc1"].item() == pytest.approx(m64["nc1"].item(), rel=1e-4)
    exact = naive_nc1(features32.double(), labels, prob["k"])
    assert m32["nc1"].item() == pytest.approx(exact, rel=1e-8)


def test_float32_pxp_pinv_with_tiny_cutoff_goes_wrong_where_ours_is_right():
    # p = 128 > K: float32 Sigma_B has p - K + 1 rounding-level "eigenvalues" that a 1e-15 cut-off
    # inverts; a large feature offset (as after a ReLU) makes the rounding worse.
    gen = torch.Generator().manual_seed(0)
    k, p, n = 10, 128, 100
    means = torch.randn(k, p, generator=gen, dtype=F64)
    offset = 20 * torch.randn(p, generator=gen, dtype=F64)
    labels = torch.arange(k).repeat_interleave(n)
    features64 = offset + means[labels] + 0.5 * torch.randn(k * n, p, generator=gen, dtype=F64)
    features32 = features64.float()
    weight = torch.randn(k, p, generator=gen, dtype=F64)
    truth = naive_nc1(features32.double(), labels, k)  # float64 p x p reference, same inputs
    bad = naive_nc1(features32, labels, k, rtol=1e-15)  # float32, numpy/torch-style 1e-15 cut-off
    ours = nc_metrics(features32, labels, weight, num_classes=k)["nc1"].item()
    assert bad < 0 or abs(bad - truth) > 100 * truth, (bad, truth)  # it does go wrong
    assert ours == pytest.approx(truth, rel=1e-4)
    ours64 = nc_metrics(features64, labels, weight, num_classes=k)["nc1"].item()
    assert ours == pytest.approx(ours64, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Standalone NC0


def test_standalone_nc0_forms_are_batched():
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 2, 5, 7, generator=gen, dtype=F64)  # run dims (4, 2), K = 5, p = 7
    total = weight.sum(dim=-2)
    torch.testing.assert_close(nc0(weight), total.norm(dim=-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(nc0_alpha(weight), total.square().sum(-1) / 5, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        nc0_normalized(weight),
        total.norm(dim=-1) / weight.flatten(-2).norm(dim=-1),
        rtol=1e-12,
        atol=0,
    )
    assert nc0(weight).shape == (4, 2)


def test_nc0_default_linear_init_is_about_1_75():
    # THEORY.md section 2: initial NC0 ~ 1.75 with PyTorch's default nn.Linear init, K = 10, any p
    torch_gen_state = torch.Generator().manual_seed(0)
    values = []
    for p in (64, 512):
        w = torch.empty(10, p)
        bound = 1 / math.sqrt(p)
        w.uniform_(-bound, bound, generator=torch_gen_state)
        values.append(nc0(w).item())
    for v in values:
        assert 1.2 < v < 2.3  # sqrt(10 * p * bound^2 / 3) = sqrt(10/3) = 1.83 in expectation


def test_nc0_normalized_of_zero_weight_is_nan_with_warning():
    with pytest.warns(NCMetricWarning, match=r"\|\|W\|\| = 0"):
        value = nc0_normalized(torch.zeros(3, 4))
    assert math.isnan(value.item())


# ----------------------------------------------------------------------------------------------
# Undefined metrics: explicit NaN with a warning, never a silent zero


def test_coinciding_class_means_give_nan_nc1_with_warning():
    features, labels, weight, bias = make_problem(1, 4, 6, [3, 3, 3, 3], noise=0.2)
    # move class 3's samples so that its mean equals class 2's mean
    means = torch.stack([features[labels == c].mean(0) for c in range(4)])
    features = features.clone()
    features[labels == 3] += means[2] - means[3]
    with pytest.warns(NCMetricWarning, match="nc1 is NaN because the between-class scatter"):
        m = nc_metrics(features, labels, weight, bias, num_classes=4)
    assert math.isnan(m["nc1"].item())
    for key in METRIC_KEYS:
        if key != "nc1":
            assert math.isfinite(m[key].item()), key


def test_all_class_means_equal_gives_nans_not_zeros():
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 0, 1, 1])
    base = torch.randn(2, 3, generator=gen, dtype=F64)
    features = torch.cat([base, base])  # both classes have mean (base0 + base1)/2
    weight = torch.randn(2, 3, generator=gen, dtype=F64)
    with pytest.warns(NCMetricWarning) as record:
        m = nc_metrics(features, labels, weight, num_classes=2)
    message = " ".join(str(w.message) for w in record)
    for key in ("nc1", "nc2", "nc2m", "nc3", "nc2_equinorm_means", "nc2_equiangular_means"):
        assert math.isnan(m[key].item()), key
        assert key in message
    assert m["tr_sb"].item() == 0.0 and m["tr_sw"].item() > 0


def test_nc1_is_nan_when_feature_dim_below_k_minus_1():
    features, labels, weight, bias = make_problem(2, 3, 3, [3, 3, 3])
    with pytest.warns(NCMetricWarning, match="feature_dim < num_classes - 1"):
        m = nc_metrics(features[:, :1], labels, weight[:, :1], bias, num_classes=3)
    assert math.isnan(m["nc1"].item())


# ----------------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem and the value


def good_inputs():
    features, labels, weight, bias = make_problem(0, 3, 4, [2, 2, 2])
    return features, labels, weight, bias


def test_bad_num_classes():
    features, labels, weight, bias = good_inputs()
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        nc_metrics(features, torch.zeros_like(labels), weight[:1], bias[:1], num_classes=1)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        NCAccumulator(1, 4)


def test_empty_class_is_named():
    features, labels, weight, bias = good_inputs()
    labels = labels.clone()
    labels[labels == 1] = 0
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have none"):
        nc_metrics(features, labels, weight, bias, num_classes=3)
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have none"):
        acc.finalize_means()


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_label_out_of_range_is_named(bad):
    features, labels, weight, bias = good_inputs()
    labels = labels.clone()
    labels[2] = bad
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\), got label {bad}"):
        nc_metrics(features, labels, weight, bias, num_classes=3)
    with pytest.raises(ValueError, match=rf"got label {bad}"):
        NCAccumulator(3, 4).update_means(features, labels)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_inputs_are_named(value):
    features, labels, weight, bias = good_inputs()
    bad_features = features.clone()
    bad_features[4, 2] = value
    with pytest.raises(ValueError, match=r"features contains NaN or Inf: features\[4, 2\] = "):
        nc_metrics(bad_features, labels, weight, bias, num_classes=3)
    bad_weight = weight.clone()
    bad_weight[1, 3] = value
    with pytest.raises(ValueError, match=r"weight contains NaN or Inf: weight\[1, 3\]"):
        nc_metrics(features, labels, bad_weight, bias, num_classes=3)
    bad_bias = bias.clone()
    bad_bias[0] = value
    with pytest.raises(ValueError, match=r"bias contains NaN or Inf: bias\[0\]"):
        nc_metrics(features, labels, weight, bad_bias, num_classes=3)
    acc = NCAccumulator(3, 4)
    acc.update_means(bad_features, labels)
    with pytest.raises(ValueError, match="update_means contain NaN or Inf"):
        acc.finalize_means()
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    acc.finalize_means()
    acc.update_scatter(bad_features, labels)
    with pytest.raises(ValueError, match="update_scatter contain NaN or Inf"):
        acc.compute(weight, bias)
    with pytest.raises(ValueError, match=r"weight contains NaN or Inf"):
        nc0(bad_weight)


def test_mismatched_shapes_are_named():
    features, labels, weight, bias = good_inputs()
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\).*got \(5,\)"):
        nc_metrics(features, labels[:5], weight, bias, num_classes=3)
    with pytest.raises(ValueError, match=r"weight must have shape \(\.\.\., 3, 4\).*got \(3, 5\)"):
        nc_metrics(features, labels, torch.zeros(3, 5, dtype=F64), bias, num_classes=3)
    with pytest.raises(ValueError, match=r"weight must have shape \(\.\.\., 3, 4\).*got \(2, 4\)"):
        nc_metrics(features, labels, weight[:2], bias, num_classes=3)
    with pytest.raises(ValueError, match=r"bias must have shape \(\.\.\., 3\), got \(2,\)"):
        nc_metrics(features, labels, weight, bias[:2], num_classes=3)
    with pytest.raises(ValueError, match="leading run dimensions do not broadcast"):
        nc_metrics(features.expand(2, -1, -1), labels, weight.expand(3, -1, -1), num_classes=3)
    with pytest.raises(ValueError, match="labels must have an integer dtype, got torch.float32"):
        nc_metrics(features, labels.float(), weight, num_classes=3)
    with pytest.raises(ValueError, match="features must have a floating dtype"):
        nc_metrics(features.long(), labels, weight, num_classes=3)
    with pytest.raises(ValueError, match="global_mean must be one of"):
        nc_metrics(features, labels, weight, num_classes=3, global_mean="median")
    acc = NCAccumulator(3, 4)
    with pytest.raises(ValueError, match=r"features must have shape \(\.\.\., B, 4\)"):
        acc.update_means(features[:, :3], labels)
    acc.update_means(features, labels)
    with pytest.raises(ValueError, match=r"must stay \(\) across batches, got \(1,\)"):
        acc.update_means(features.unsqueeze(0), labels)
    acc.finalize_means()
    with pytest.raises(ValueError, match=r"logits must have shape \(6, 3\)"):
        acc.update_scatter(features, labels, logits=torch.zeros(6, 2, dtype=F64))


# ----------------------------------------------------------------------------------------------
# Streaming guards


def test_second_pass_needs_finalized_first_pass():
    features, labels, weight, bias = good_inputs()
    acc = NCAccumulator(3, 4)
    with pytest.raises(RuntimeError, match="before finalize_means"):
        acc.update_scatter(features, labels)
    with pytest.raises(RuntimeError, match="before any update_means"):
        acc.finalize_means()
    acc.update_means(features, labels)
    with pytest.raises(RuntimeError, match="needs both passes"):
        acc.compute(weight, bias)
    acc.finalize_means()
    with pytest.raises(RuntimeError, match="after finalize_means"):
        acc.update_means(features, labels)
    with pytest.raises(RuntimeError, match="already called"):
        acc.finalize_means()
    acc.reset()
    acc.update_means(features, labels)  # allowed again after reset


def test_passes_must_see_the_same_samples():
    features, labels, weight, bias = good_inputs()
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    acc.finalize_means()
    acc.update_scatter(features[:4], labels[:4])
    with pytest.raises(ValueError, match=r"class counts were \[2, 2, 2\] in pass 1"):
        acc.compute(weight, bias)


def test_nc4_needs_logits_for_all_or_no_batches():
    features, labels, weight, bias = good_inputs()
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    acc.finalize_means()
    acc.update_scatter(features[:3], labels[:3])
    acc.update_scatter(features[3:], labels[3:], logits=features[3:] @ weight.T + bias)
    with pytest.raises(ValueError, match="logits were given for 1 of 2"):
        acc.compute(weight, bias)
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    acc.finalize_means()
    acc.update_scatter(features, labels)
    with pytest.warns(NCMetricWarning, match="nc4 and nc4_mismatch are NaN because no logits"):
        m = acc.compute(weight, bias)
    assert math.isnan(m["nc4"].item()) and math.isnan(m["nc4_mismatch"].item())
    ref = nc_metrics(features, labels, weight, bias, num_classes=3)
    assert m["nc1"].item() == pytest.approx(ref["nc1"].item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# collect_nc_metrics on an NCModel-shaped module


class TinyModel(nn.Module):
    """The NCModel surface collect_nc_metrics relies on: features(x) and classifier."""

    def __init__(self, in_dim: int, feature_dim: int, num_classes: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Linear(in_dim, feature_dim)
        self.dropout = nn.Dropout(0.5)  # eval mode must switch it off
        self.classifier = nn.Linear(feature_dim, num_classes)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=gen))
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.tanh(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_collect_nc_metrics_matches_in_memory():
    k, gen = 4, torch.Generator().manual_seed(11)
    model = TinyModel(5, 8, k, seed=1)
    x = torch.randn(37, 5, generator=gen)
    y = torch.arange(37) % k
    model.train()
    result = collect_nc_metrics(
        model, lambda: zip(x.split(10), y.split(10)), num_classes=k
    )
    assert model.training  # mode restored
    assert set(result) == set(METRIC_KEYS) and all(isinstance(v, float) for v in result.values())
    model.eval()
    with torch.no_grad():
        h = model.features(x)
    w, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    ref = nc_metrics(h, y, w, b, num_classes=k)
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(ref[key].item(), rel=1e-9, abs=1e-12), key


# ----------------------------------------------------------------------------------------------
# Device test (CUDA when present, else the CPU at small scale)


@pytest.mark.gpu
def test_streaming_on_device_matches_cpu_float64(ncprop_device):
    large = ncprop_device.type == "cuda"
    k, p, per_class = (10, 256, 300) if large else (5, 16, 12)
    features, labels, weight, bias = make_problem(21, k, p, [per_class] * k, offset=5.0)
    features32 = features.float()
    ref = nc_metrics(features32, labels, weight, bias, num_classes=k)
    dev = ncprop_device
    h, y, w, b = (t.to(dev) for t in (features32, labels, weight.float(), bias.float()))
    acc = NCAccumulator(k, p, device=dev)
    for hb, yb in zip(h.split(97), y.split(97)):
        acc.update_means(hb, yb)
    acc.finalize_means()
    for hb, yb in zip(h.split(131), y.split(131)):
        acc.update_scatter(hb, yb, logits=hb.double() @ w.double().T + b.double())
    got = acc.compute(w, b)
    assert all(v.device.type == dev.type for v in got.values())
    assert_metrics_close({kk: v.cpu() for kk, v in got.items()}, ref, rtol=1e-6, atol=1e-6)
    in_memory = nc_metrics(h, y, w, b, num_classes=k)
    assert_metrics_close({kk: v.cpu() for kk, v in in_memory.items()}, ref, rtol=1e-6, atol=1e-6)


def test_warnings_point_at_the_callers_line():
    features, labels, weight, bias = good_inputs()
    acc = NCAccumulator(3, 4)
    acc.update_means(features, labels)
    acc.finalize_means()
    acc.update_scatter(features, labels)
    with pytest.warns(NCMetricWarning) as record:
        acc.compute(weight, bias)
    assert record[0].filename == __file__


def test_float32_accumulation_is_available():
    features, labels, weight, bias = make_problem(4, 3, 5, [4, 4, 4], offset=0.0)
    acc = NCAccumulator(3, 5, dtype=torch.float32)
    acc.update_means(features.float(), labels)
    acc.finalize_means()
    acc.update_scatter(features.float(), labels, logits=(features @ weight.T + bias).float())
    got = acc.compute(weight.float(), bias.float())
    ref = nc_metrics(features, labels, weight, bias, num_classes=3)
    assert got["nc1"].dtype == torch.float32
    assert_metrics_close({k: v.double() for k, v in got.items()}, ref, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# NC4 against given (training-set) class means


def _ncc_agreement(h: torch.Tensor, logits: torch.Tensor, means: torch.Tensor) -> float:
    """Brute force: argmax logits == argmin_k ||h - mu_k||."""
    nearest = torch.cdist(h, means).argmin(dim=1)
    return (logits.argmax(dim=1) == nearest).double().mean().item()


def _train_and_test_problem():
    # training means; the nearest-training-mean classifier is linear: W = 2 mu, b = -||mu||^2
    train_means = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=F64)
    weight, bias = 2 * train_means, -train_means.square().sum(1)
    # test samples whose own class means sit elsewhere: (0.2, 0) and (0.4, 0) are class 0, nearer
    # the training mean of class 1 but nearer their own test mean (0.3, 0)
    test_h = torch.tensor([[0.2, 0.0], [0.4, 0.0], [1.0, 0.0], [1.2, 0.0], [0.0, 3.0], [0.2, 2.8]],
                          dtype=F64)
    test_y = torch.tensor([0, 0, 1, 1, 2, 2])
    return train_means, weight, bias, test_h, test_y


def test_nc4_against_given_training_means_differs_from_own_means():
    train_means, weight, bias, h, y = _train_and_test_problem()
    logits = h @ weight.T + bias
    own_means = torch.stack([h[y == k].mean(0) for k in range(3)])
    expect_train = _ncc_agreement(h, logits, train_means)
    expect_own = _ncc_agreement(h, logits, own_means)
    assert expect_train == 1.0 and expect_own < 1.0  # the construction separates the two readings
    acc = NCAccumulator(3, 2, class_means=train_means)
    assert acc.given_means and acc.means_finalized
    for hb, yb, lb in zip(h.split(4), y.split(4), logits.split(4)):
        acc.update_scatter(hb, yb, logits=lb)
    got = acc.compute(weight, bias)
    assert got["nc4"].item() == pytest.approx(expect_train)
    assert got["nc4_mismatch"].item() == pytest.approx(0.0)
    # the test set's own means (the in-memory default) give the other value
    own = nc_metrics(h, y, weight, bias, num_classes=3)
    assert own["nc4"].item() == pytest.approx(expect_own)
    # within-class trace is measured around the given means
    tr_sw = (h - train_means[y]).square().sum(1).mean().item()
    assert got["tr_sw"].item() == pytest.approx(tr_sw)
    assert torch.equal(acc.class_means, train_means)


def test_given_means_equal_accumulated_means_reproduce_two_passes():
    features, labels, weight, bias = make_problem(5, 4, 6, [5, 6, 7, 5], offset=2.0)
    ref = nc_metrics(features, labels, weight, bias, num_classes=4)
    means = torch.stack([features[labels == k].mean(0) for k in range(4)])
    acc = NCAccumulator(4, 6, class_means=means)
    acc.update_scatter(features, labels, logits=features @ weight.T + bias)
    assert_metrics_close(acc.compute(weight, bias), ref, rtol=1e-9, atol=1e-12)
    counts = torch.bincount(labels, minlength=4)
    ref_s = nc_metrics(features, labels, weight, bias, num_classes=4, global_mean="sample")
    acc = NCAccumulator(4, 6, class_means=means, class_counts=counts, global_mean="sample")
    acc.update_scatter(features, labels, logits=features @ weight.T + bias)
    assert_metrics_close(acc.compute(weight, bias), ref_s, rtol=1e-9, atol=1e-12)


def test_given_means_bad_use():
    means = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="class_means must have shape"):
        NCAccumulator(3, 4, class_means=means)
    with pytest.raises(ValueError, match="needs class_counts"):
        NCAccumulator(3, 2, class_means=means, global_mean="sample")
    with pytest.raises(ValueError, match="without class_means"):
        NCAccumulator(3, 2, class_counts=torch.ones(3))
    with pytest.raises(ValueError, match="NaN|Inf|finite"):
        NCAccumulator(3, 2, class_means=torch.full((3, 2), math.nan, dtype=F64))
    acc = NCAccumulator(3, 2, class_means=means)
    with pytest.raises(RuntimeError, match="class_means="):
        acc.update_means(means, torch.arange(3))
    with pytest.raises(RuntimeError, match="class_means="):
        acc.finalize_means()


def test_collect_nc_metrics_with_training_means():
    k, gen = 3, torch.Generator().manual_seed(5)
    model = TinyModel(5, 6, k, seed=2)
    x_train, x_test = torch.randn(30, 5, generator=gen), torch.randn(21, 5, generator=gen)
    y_train, y_test = torch.arange(30) % k, torch.arange(21) % k
    model.eval()
    with torch.no_grad():
        h_train, h_test = model.features(x_train).double(), model.features(x_test).double()
        logits = model.classifier(model.features(x_test)).double()
    means = torch.stack([h_train[y_train == c].mean(0) for c in range(k)])
    calls = []

    def batches():
        calls.append(1)
        return zip(x_test.split(8), y_test.split(8))

    got = collect_nc_metrics(model, batches, num_classes=k, class_means=means)
    assert len(calls) == 1  # no first pass
    assert got["nc4"] == pytest.approx(_ncc_agreement(h_test, logits, means))
