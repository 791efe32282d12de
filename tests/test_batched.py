"""ncprop.batched: every run of a batch equals the same run trained alone, for every optimizer."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from ncprop.batched import BatchedResult, closed_form_gradients, initial_parameters, train_batched, train_single
from ncprop.metrics import NCMetricWarning
from ncprop.optim import REGISTRY

pytestmark = pytest.mark.fast

SEEDS = [11, 12, 13]
SIZES = dict(num_classes=4, feature_dim=5, per_class=3)
TOL = dict(rtol=1e-10, atol=1e-12)  # float64 round-off, amplified a little over the steps


def _hyperparameters(name: str) -> dict[str, list]:
    """Three runs with different lr, weight decay and (where the optimizer takes them) momentum and share."""
    info = REGISTRY[name]
    hp: dict[str, list] = {"lr": [0.05, 0.01, 0.02], "weight_decay": [0.0, 1e-2, 5e-2]}
    if "momentum" not in info.fixed:
        hp["momentum"] = [0.0, 0.5, 0.9]
    if "coupled_share" not in info.fixed:
        hp["coupled_share"] = [0.0, 0.3, 1.0]
    if "beta2" not in info.fixed:
        hp["beta2"] = [0.99, 0.999, 0.9]
    if "dampening" not in info.fixed:
        hp["dampening"] = [0.0, 0.1, 0.0]
    return hp


def _run(hp: dict[str, list], i: int) -> dict:
    return {key: values[i] for key, values in hp.items()}


def _assert_same_run(batch: BatchedResult, i: int, one: BatchedResult, **tol) -> None:
    tol = tol or TOL
    torch.testing.assert_close(batch.weight[i], one.weight[0], **tol)
    torch.testing.assert_close(batch.features[i], one.features[0], **tol)
    if one.bias is not None:
        torch.testing.assert_close(batch.bias[i], one.bias[0], **tol)
    assert [s for s, _ in batch.history] == [s for s, _ in one.history]
    for (_, got), (_, want) in zip(batch.history, one.history):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key][i], want[key][0], equal_nan=True, **tol)
    assert bool(batch.diverged[i]) == bool(one.diverged[0])


def _halve_late(t: int) -> float:
    return 1.0 if t < 12 else 0.5


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("model,bias", [("ufm", False), ("ufm", True), ("fixed", True)])
def test_every_run_equals_the_run_trained_alone(name, model, bias):
    hp = _hyperparameters(name)
    kwargs = dict(model=model, steps=25, bias=bias, lr_schedule=_halve_late, record_every=10, **SIZES)
    if model == "ufm":
        kwargs["feature_weight_decay"] = [1e-3, 0.0, 2e-2]
    batch = train_batched(name, hp, SEEDS, **kwargs)
    assert batch.weight.shape == (3, 4, 5) and batch.features.shape == (3, 12, 5)
    for i, seed in enumerate(SEEDS):
        single_kwargs = dict(kwargs)
        if model == "ufm":
            single_kwargs["feature_weight_decay"] = kwargs["feature_weight_decay"][i]
        one = train_single(name, _run(hp, i), seed, **single_kwargs)
        _assert_same_run(batch, i, one)
    # The batch really trained: parameters moved and runs differ.
    w0 = torch.stack([initial_parameters(s, num_classes=4, feature_dim=5, num_samples=12, draw_features=True)[0]
                      for s in SEEDS])
    assert not torch.equal(batch.weight, w0)


def test_sgd_nesterov_parity():
    hp = {"lr": [0.1, 0.05], "momentum": [0.9, 0.5], "weight_decay": [1e-2, 0.0], "nesterov": True}
    batch = train_batched("sgd", hp, [1, 2], steps=20, **SIZES)
    for i, seed in enumerate([1, 2]):
        _assert_same_run(batch, i, train_single("sgd", _run({k: v for k, v in hp.items() if k != "nesterov"}, i)
                                                | {"nesterov": True}, seed, steps=20, **SIZES))


def test_given_features_and_labels():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    feats = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    hp = {"lr": [0.1, 0.2], "momentum": 0.9, "weight_decay": 1e-3}
    for model in ("ufm", "fixed"):
        batch = train_batched("sgd", hp, [3, 4], model=model, num_classes=3, feature_dim=6, steps=15,
                              features=feats, labels=labels)
        assert torch.equal(batch.labels, labels)
        if model == "fixed":
            assert torch.equal(batch.features[1], feats)
        for i, seed in enumerate([3, 4]):
            one = train_single("sgd", _run({"lr": [0.1, 0.2]}, i) | {"momentum": 0.9, "weight_decay": 1e-3}, seed,
                               model=model, num_classes=3, feature_dim=6, steps=15, features=feats, labels=labels)
            _assert_same_run(batch, i, one)


@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_gradients_match_autograd(bias):
    gen = torch.Generator().manual_seed(5)
    r, n, k, p = 3, 9, 4, 6
    h = torch.randn(r, n, p, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(r, k, p, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(r, k, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.randint(0, k, (n,), generator=gen)
    logits = h @ w.transpose(1, 2) + (b.unsqueeze(1) if bias else 0)
    # Sum over runs of each run's mean cross-entropy: the runs' gradients do not mix.
    loss = sum(F.cross_entropy(logits[i], labels) for i in range(r))
    loss.backward()
    dh, dw, db = closed_form_gradients(h.detach(), w.detach(), None if b is None else b.detach(), labels)
    torch.testing.assert_close(dh, h.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(dw, w.grad, rtol=1e-13, atol=1e-15)
    if bias:
        torch.testing.assert_close(db, b.grad, rtol=1e-13, atol=1e-15)
        # The zero-sum lemma (THEORY.md section 3): 1^T dW = 0 and 1^T db = 0 up to round-off.
        torch.testing.assert_close(db.sum(1), torch.zeros(r, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(dw.sum(1), torch.zeros(r, p, dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_gradients_into_packed_views(bias):
    """Written into strided views of one packed (R, N + K, p) buffer, as train_batched does, and with
    a precomputed target, the gradients are the very same numbers as the freshly allocated ones."""
    gen = torch.Generator().manual_seed(6)
    r, n, k, p = 3, 9, 4, 6
    packed = torch.randn(r, n + k, p, generator=gen, dtype=torch.float64)
    h, w = packed[:, :n], packed[:, n:]
    b = torch.randn(r, k, generator=gen, dtype=torch.float64) if bias else None
    labels = torch.randint(0, k, (n,), generator=gen)
    want = closed_form_gradients(h, w, b, labels)
    grad = torch.full_like(packed, float("nan"))
    grad_b = torch.full((r, k), float("nan"), dtype=torch.float64) if bias else None
    target = F.one_hot(labels, k).T.to(torch.float64).mul_(1.0 / n)
    got = closed_form_gradients(h, w, b, labels, out=(grad[:, :n], grad[:, n:], grad_b), target=target)
    assert torch.equal(grad[:, :n], want[0]) and torch.equal(grad[:, n:], want[1])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if bias:
        assert torch.equal(grad_b, want[2])


def test_chunking_changes_nothing():
    hp = {"lr": [0.01, 0.02, 0.03, 0.04, 0.05], "momentum": 0.9, "weight_decay": 5e-3}
    seeds = [0, 1, 2, 3, 4]
    whole = train_batched("adamw", hp, seeds, steps=20, record_every=5, chunk_size=5, **SIZES)
    split = train_batched("adamw", hp, seeds, steps=20, record_every=5, chunk_size=2, **SIZES)
    torch.testing.assert_close(split.weight, whole.weight, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(split.features, whole.features, rtol=1e-14, atol=1e-15)
    for (s1, m1), (s2, m2) in zip(split.history, whole.history):
        assert s1 == s2
        for key in m1:
            torch.testing.assert_close(m1[key], m2[key], rtol=1e-12, atol=1e-14, equal_nan=True)


def test_sgdw_nc0_follows_t1_exactly():
    """T1: under SGDW, W^T 1 shrinks by exactly (1 - lr*lambda) per step, for any momentum."""
    hp = {"lr": [0.1, 0.05, 0.2], "momentum": [0.0, 0.9, 0.5], "weight_decay": [0.0, 0.1, 0.03]}
    batch = train_batched("sgdw", hp, SEEDS, steps=30, record_every=30, **SIZES)
    lr, wd = torch.tensor(hp["lr"], dtype=torch.float64), torch.tensor(hp["weight_decay"], dtype=torch.float64)
    start = batch.history[0][1]["nc0"]
    torch.testing.assert_close(batch.final["nc0"], start * (1 - lr * wd) ** 30, rtol=1e-10, atol=1e-13)
    # and not under Adam (T6 contrast): NC0 moves at lambda = 0.
    adam = train_batched("adam", {"lr": 0.05, "momentum": 0.9}, SEEDS, steps=30, **SIZES)
    assert not torch.allclose(adam.final["nc0"], adam.history[0][1]["nc0"], rtol=1e-3)


def test_divergent_run_is_flagged_and_others_are_untouched():
    hp = {"lr": [0.1, 1e200, 0.05], "momentum": 0.9, "weight_decay": 1e-3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NCMetricWarning)
        batch = train_batched("sgd", hp, SEEDS, steps=10, record_every=2, **SIZES)
    assert batch.diverged.tolist() == [False, True, False]
    assert batch.diverged_at[1] > 0 and batch.diverged_at[0] == -1
    assert torch.isnan(batch.final["nc0"][1]) and torch.isfinite(batch.final["nc0"][[0, 2]]).all()
    for i in (0, 2):
        one = train_single("sgd", {"lr": hp["lr"][i], "momentum": 0.9, "weight_decay": 1e-3}, SEEDS[i], steps=10,
                           record_every=2, **SIZES)
        _assert_same_run(batch, i, one)


def test_history_and_result_shapes():
    batch = train_batched("signum", {"lr": 0.01, "momentum": 0.9}, [0, 1], steps=7, record_every=3, bias=True,
                          **SIZES)
    assert [s for s, _ in batch.history] == [0, 3, 6, 7]
    assert batch.final is batch.history[-1][1]
    for key in ("nc0", "nc0_alpha", "nc0_normalized", "nc1", "nc3", "loss", "accuracy"):
        assert batch.final[key].shape == (2,)
    assert batch.bias.shape == (2, 4) and batch.labels.shape == (12,) and batch.diverged.dtype == torch.bool
    assert batch.hyperparameters[0]["momentum"] == 0.9 and batch.num_runs == 2
    # Training lowers the loss.
    assert (batch.final["loss"] < batch.history[0][1]["loss"]).all()


def test_float32_is_close_to_float64():
    hp = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-2}
    f64 = train_batched("adamw", hp, SEEDS, steps=20, **SIZES)
    f32 = train_batched("adamw", hp, SEEDS, steps=20, dtype=torch.float32, **SIZES)
    assert f32.weight.dtype == torch.float32
    torch.testing.assert_close(f32.weight.double(), f64.weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(optimizer="nope"), "unknown optimizer 'nope'"),
        (dict(hyperparameters={"lr": [0.1, 0.2]}), "2 values but there are 3 runs"),
        (dict(hyperparameters={"lr": -1.0}), "lr must be a finite number >= 0"),
        (dict(optimizer="signgd", hyperparameters={"lr": 0.1, "momentum": 0.9}), "takes no 'momentum'"),
        (dict(hyperparameters={"lr": 0.1, "bogus": 1}), "unknown hyperparameter"),
        (dict(seeds=[1, -2, 3]), r"seeds\[1\] must be an integer >= 0"),
        (dict(seeds=[]), "seeds must be a non-empty sequence"),
        (dict(model="mlp"), "model must be one of"),
        (dict(steps=-1), "steps must be an integer >= 0"),
        (dict(per_class=None), "give per_class"),
        (dict(features=torch.zeros(12, 7)), r"features must have shape \(N, p\)"),
        (dict(features=torch.zeros(10, 5)), "features have 10 samples but labels have 12"),
        (dict(labels=torch.tensor([0, 1, 5])), r"labels must lie in \[0, 4\)"),
        (dict(lr_schedule=lambda t: -1.0), r"lr_schedule\(0\) must be a finite number >= 0"),
        (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64"),
        (dict(record_every=0), "record_every must be an integer >= 1"),
        (dict(hyperparameters={"lr": 0.1, "momentum": [0.9, 0.9, 0.9], "nesterov": [True, False, True]}),
         "nesterov must be the same for every run"),
        (dict(feature_weight_decay=[0.1]), "feature_weight_decay has 1 values"),
    ],
)
def test_bad_inputs_name_the_value(kwargs, match):
    args = dict(optimizer="sgd", hyperparameters={"lr": 0.1}, seeds=SEEDS, steps=3, **SIZES)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train_batched(args.pop("optimizer"), args.pop("hyperparameters"), args.pop("seeds"), **args)


@pytest.mark.gpu
def test_parity_on_device(ncprop_device):
    """The batch on the test device (CUDA when present) equals the runs trained alone on the same device."""
    big = ncprop_device.type != "cpu"
    sizes = dict(num_classes=10, feature_dim=32, per_class=8) if big else SIZES
    seeds = list(range(8 if big else 3))
    r = len(seeds)
    for name in ("sgd", "adamw", "signum_w", "lion"):
        hp = {"lr": [0.01 * (1 + i) for i in range(r)], "weight_decay": [1e-3 * i for i in range(r)]}
        if "momentum" not in REGISTRY[name].fixed:
            hp["momentum"] = [0.9 if i % 2 else 0.5 for i in range(r)]
        batch = train_batched(name, hp, seeds, steps=30, bias=True, device=ncprop_device, record_every=10, **sizes)
        assert batch.weight.device.type == ncprop_device.type
        for i in (0, r - 1):
            one = train_single(name, _run(hp, i), seeds[i], steps=30, bias=True, device=ncprop_device,
                               record_every=10, **sizes)
            _assert_same_run(batch, i, one, rtol=1e-9, atol=1e-11)


@pytest.mark.fast
@pytest.mark.parametrize("chunk_size", [1, None])
def test_worker_processes_change_nothing(chunk_size):
    """Chunks trained on two workers (forked processes on Linux) give bit-identical results to one
    worker, history and divergence flags included (runs are independent); the chunk size is reported."""
    hp = {"lr": [0.01, 0.02, 0.03, 1e200], "weight_decay": [0.0, 0.01, 0.05, 0.1], "momentum": 0.9}
    kw = dict(model="ufm", num_classes=3, feature_dim=4, per_class=2, steps=20, record_every=10,
              chunk_size=chunk_size, bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NCMetricWarning)  # the diverged run's metrics are NaN
        one = train_batched("sgd", hp, [0, 1, 2, 3], workers=1, **kw)
        two = train_batched("sgd", hp, [0, 1, 2, 3], workers=2, **kw)
    assert one.chunk_size == two.chunk_size == (chunk_size or 4)
    assert one.diverged.tolist() == [False, False, False, True]
    for a, b in ((one.weight, two.weight), (one.features, two.features), (one.bias, two.bias),
                 (one.diverged_at, two.diverged_at)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # bit for bit, NaN where diverged
    for (s1, m1), (s2, m2) in zip(one.history, two.history):
        assert s1 == s2 and m1.keys() == m2.keys()
        for key in m1:
            torch.testing.assert_close(m1[key], m2[key], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        train_batched("sgd", hp, [0, 1, 2, 3], workers=0, **kw)


@pytest.mark.fast
def test_a_failing_worker_process_raises_in_the_caller(monkeypatch):
    """An exception in a worker comes back as itself, with the worker's traceback as a note; warnings
    raised in a worker are re-issued in the caller."""
    from ncprop import batched

    def fail(members):
        warnings.warn(f"chunk {members}", UserWarning, stacklevel=1)
        if 3 in members:
            raise ArithmeticError(f"no good: {members}")
        return members

    with warnings.catch_warnings(record=True) as caught, pytest.raises(ArithmeticError, match=r"no good: \[3\]") as info:
        warnings.simplefilter("always")
        batched._map_chunks(fail, [[0], [1], [2], [3]], 2, torch.device("cpu"))
    assert {str(w.message) for w in caught} == {"chunk [0]", "chunk [1]", "chunk [2]", "chunk [3]"}
    if sys.platform.startswith("linux"):
        assert any("batched worker process" in note for note in getattr(info.value, "__notes__", []))
    assert batched._map_chunks(lambda m: m[0] * 2, [[0], [1], [2]], 2, torch.device("cpu")) == [0, 2, 4]


def _map_in_pool_worker(_: int) -> list[int]:
    from ncprop import batched

    return batched._map_chunks(lambda m: m[0] + 1, [[0], [1], [2]], 2, torch.device("cpu"))


@pytest.mark.fast
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers are Linux-only")
def test_workers_inside_a_daemonic_process_fall_back_to_threads():
    """A multiprocessing.Pool worker is daemonic and may not fork children: the engine uses threads there."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_map_in_pool_worker, [0]) == [[1, 2, 3]]
