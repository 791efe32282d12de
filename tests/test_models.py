"""Models: the NCModel contract (features, classifier W, forward_features) for every backbone and
input shape, UFM and its ETF features, param_groups by module type, factory options, a few optimizer
steps on the test device, and (slow) an MLP reaching 99% training accuracy on MNIST-1D."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ncprop.optim as ncprop_optim
from ncprop.models import (MLP, UFM, VGG9, NCModel, ResNet9, ViT, autocast_context, build_model,
                           etf_features, no_decay_parameter_names, param_groups)

SMALL = {  # small but structurally complete configurations, for CPU tests
    "mlp": {"widths": (32, 16)},
    "resnet9": {"width": 4},
    "vgg9": {"config": (8, "M", 8, "M", 16, 16, "M", 16, 16, "M"), "hidden": 24},
    "vit": {"hidden": 32, "depth": 2, "heads": 4, "mlp_dim": 32},
}
IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32)]


def _cases():
    for name in ("mlp", "resnet9", "vgg9", "vit"):
        for shape in IMAGE_SHAPES:
            yield name, shape
    yield "mlp", (40,)  # MNIST-1D


def _expected_p(name: str) -> int:
    return {"mlp": 16, "resnet9": 32, "vgg9": 24, "vit": 32}[name]


# ---------------------------------------------------------------------------- contract
@pytest.mark.fast
@pytest.mark.parametrize("name,shape", list(_cases()))
@pytest.mark.parametrize("bias", [True, False])
def test_forward_backward_shapes_and_exposed_w(name, shape, bias):
    model = build_model(name, in_shape=shape, num_classes=10, bias=bias, seed=0, **SMALL[name])
    assert isinstance(model, NCModel)
    assert model.num_classes == 10 and model.feature_dim == _expected_p(name)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    logits, h = model.forward_features(x)
    assert logits.shape == (3, 10) and h.shape == (3, model.feature_dim)
    assert model.classifier.weight.shape == (10, model.feature_dim)
    assert (model.classifier.bias is not None) == bias
    model.eval()
    with torch.no_grad():
        l2, h2 = model.forward_features(x)
        torch.testing.assert_close(model(x), l2, rtol=0, atol=0)
        torch.testing.assert_close(model.features(x), h2, rtol=0, atol=0)
        torch.testing.assert_close(l2, F.linear(h2, model.classifier.weight, model.classifier.bias))
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.fast
def test_vgg9_flattened_size_is_measured_not_hard_coded():
    assert VGG9((1, 28, 28), 10).flat_dim == 512
    assert VGG9((3, 32, 32), 10).flat_dim == 2048
    assert VGG9((3, 64, 48), 10, hidden=8).flat_dim == 512 * 4 * 3
    with pytest.raises(ValueError, match="at least 16x16"):
        VGG9((3, 8, 8), 10)


@pytest.mark.fast
def test_paper_sizes_have_p_512():
    for cls in (ResNet9, VGG9):
        for shape in IMAGE_SHAPES:
            assert cls(shape, 10).feature_dim == 512
    vit = ViT((3, 32, 32), 10)
    assert vit.feature_dim == 512 and len(vit.blocks) == 6 and vit.blocks[0].heads == 8
    assert vit.patch_size == 4 and vit.pos_embed.shape == (1, 65, 512)


@pytest.mark.fast
def test_model_argument_errors_name_the_value():
    with pytest.raises(ValueError, match="'lenet'"):
        build_model("lenet", in_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ValueError, match="in_shape"):
        build_model("vgg9", num_classes=10)
    with pytest.raises(ValueError, match="patch_size=5"):
        ViT((3, 32, 32), 10, patch_size=5)
    with pytest.raises(ValueError, match="heads=3"):
        ViT((3, 32, 32), 10, hidden=32, heads=3)
    with pytest.raises(ValueError, match="in_shape=\\(C, H, W\\)"):
        ResNet9((28, 28), 10)
    with pytest.raises(ValueError, match="activation"):
        MLP((4,), 3, activation="swish!")
    with pytest.raises(ValueError, match="num_classes"):
        MLP((4,), 1)


# ---------------------------------------------------------------------------- UFM
@pytest.mark.fast
def test_ufm_indices_labels_and_backward():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model = build_model("ufm", num_classes=3, labels=labels, feature_dim=5, seed=1)
    assert torch.equal(model.labels, labels) and model.H.shape == (6, 5)
    assert isinstance(model.H, nn.Parameter)
    idx = torch.tensor([4, 0])
    logits, h = model.forward_features(idx)
    torch.testing.assert_close(h, model.H[idx])
    assert logits.shape == (2, 3)
    F.cross_entropy(model(model.all_indices()), model.labels).backward()
    assert model.H.grad is not None and model.classifier.weight.grad is not None
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        UFM(torch.tensor([0, 3]), 4, 3)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        UFM(torch.tensor([0, 1]), 4, 3, init_features=torch.zeros(3, 4))


@pytest.mark.fast
@pytest.mark.parametrize("k", [2, 3, 10])
def test_etf_features_and_fixed_ufm(k):
    e = etf_features(k, dtype=torch.float64)
    ones = torch.ones(k, dtype=torch.float64)
    torch.testing.assert_close(e, (torch.eye(k, dtype=torch.float64) - 1 / k) / math.sqrt(k - 1))
    torch.testing.assert_close(torch.linalg.matrix_norm(e), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(ones @ e @ ones, torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    model = UFM.etf(k, dtype=torch.float64)
    assert model.feature_dim == k and model.num_samples == k
    assert "H" not in dict(model.named_parameters()) and "H" in dict(model.named_buffers())
    torch.testing.assert_close(model.H, e)
    assert torch.equal(model.labels, torch.arange(k))
    assert model.classifier.bias is None and torch.count_nonzero(model.classifier.weight) == 0
    assert model.classifier.weight.dtype == torch.float64


# ---------------------------------------------------------------------------- parameter groups
class _Renamed(NCModel):
    """Normalisation layers under misleading names, and a Linear whose name says 'norm'."""

    def __init__(self) -> None:
        super().__init__(6, 3)
        self.proj = nn.Linear(4, 6)
        self.blk = nn.LayerNorm(6)  # a LayerNorm whose name has no 'norm'
        self.g = nn.GroupNorm(2, 6)
        self.b = nn.BatchNorm1d(6)
        self.norm_lookalike = nn.Linear(6, 6, bias=False)  # decayed despite its name

    def features(self, x):
        h = self.norm_lookalike(self.b(self.blk(self.proj(x))))
        return self.g(h.unsqueeze(-1)).squeeze(-1)


@pytest.mark.fast
def test_param_groups_by_module_type():
    model = _Renamed()
    exempt = no_decay_parameter_names(model)
    assert exempt == {"proj.bias", "blk.weight", "blk.bias", "g.weight", "g.bias", "b.weight", "b.bias",
                      "classifier.bias"}
    groups = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert set(groups[0]["names"]) == {"proj.weight", "norm_lookalike.weight", "classifier.weight"}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    everything = param_groups(model, 0.1, no_decay_on_norm_and_bias=False)
    assert len(everything) == 1 and len(everything[0]["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1.0)


@pytest.mark.fast
def test_param_groups_vit_and_cnn_norms():
    vit = build_model("vit", in_shape=(3, 32, 32), num_classes=10, **SMALL["vit"])
    exempt = no_decay_parameter_names(vit)
    assert "norm.weight" in exempt and "blocks.0.norm1.weight" in exempt and "blocks.1.qkv.bias" in exempt
    assert "blocks.0.qkv.weight" not in exempt and "classifier.weight" not in exempt
    cnn = build_model("resnet9", in_shape=(1, 28, 28), num_classes=10, **SMALL["resnet9"])
    bn = [n for n, m in cnn.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(f"{n}.weight" in no_decay_parameter_names(cnn) for n in bn) and len(bn) == 8
    opt = torch.optim.SGD(param_groups(cnn, 5e-4), lr=0.1)  # torch accepts the extra "names" key
    assert len(opt.param_groups) == 2


# ---------------------------------------------------------------------------- factory options
@pytest.mark.fast
def test_seed_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model("vgg9", in_shape=(1, 28, 28), num_classes=10, seed=3, **SMALL["vgg9"])
    assert torch.equal(state, torch.get_rng_state())
    b = build_model("vgg9", in_shape=(1, 28, 28), num_classes=10, seed=3, **SMALL["vgg9"])
    c = build_model("vgg9", in_shape=(1, 28, 28), num_classes=10, seed=4, **SMALL["vgg9"])
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


@pytest.mark.fast
def test_dtype_channels_last_and_bf16_autocast_on_cpu():
    m64 = build_model("mlp", in_shape=(40,), num_classes=10, dtype=torch.float64, **SMALL["mlp"])
    assert m64.classifier.weight.dtype == torch.float64
    assert m64(torch.randn(2, 40, dtype=torch.float64)).dtype == torch.float64
    cnn = build_model("resnet9", in_shape=(3, 32, 32), num_classes=10, channels_last=True, **SMALL["resnet9"])
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with autocast_context("cpu", enabled=True):
        logits = cnn(x)
        loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.bfloat16
    loss.backward()
    assert conv.weight.grad.dtype == torch.float32
    with autocast_context("cpu", enabled=False):
        assert cnn(x).dtype == torch.float32


# ---------------------------------------------------------------------------- on the test device
@pytest.mark.gpu
@pytest.mark.parametrize("name,shape", list(_cases()))
def test_a_few_sgd_steps_on_device(ncprop_device, name, shape):
    """Memorise one small batch: the loss must fall (CNNs in bf16 autocast + channels_last on CUDA)."""
    on_cuda = ncprop_device.type == "cuda"
    is_cnn = name in ("resnet9", "vgg9") and len(shape) == 3
    kw = {} if on_cuda else SMALL[name]
    model = build_model(name, in_shape=shape, num_classes=10, device=ncprop_device, seed=0,
                        channels_last=is_cnn and on_cuda, **kw)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, *shape, generator=gen).to(ncprop_device)
    y = torch.arange(16).remainder(10).to(ncprop_device)
    opt = ncprop_optim.SGD(param_groups(model, 5e-4), lr=0.05 if name != "vit" else 0.02, momentum=0.9)
    losses = []
    for _ in range(8):
        with autocast_context(ncprop_device, enabled=is_cnn and on_cuda):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses


@pytest.mark.gpu
def test_ufm_full_batch_steps_on_device(ncprop_device):
    labels = torch.arange(40).remainder(10)
    model = build_model("ufm", num_classes=10, labels=labels, feature_dim=16, device=ncprop_device, seed=0)
    opt = ncprop_optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    idx = model.all_indices()
    first = None
    for _ in range(20):
        loss = F.cross_entropy(model(idx), model.labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


# ---------------------------------------------------------------------------- slow: MNIST-1D
@pytest.mark.slow
def test_mlp_reaches_99_percent_training_accuracy_on_mnist1d(record_property):
    from ncprop.data import make_mnist1d

    start = time.perf_counter()
    train, _ = make_mnist1d(num_samples=5000, seed=42)  # 4,000 training samples
    model = build_model("mlp", in_shape=(40,), num_classes=10, widths=(1024, 1024), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = train.tensors()
    acc, epochs = 0.0, 0
    for epochs in range(1, 61):
        for xb, yb in train.batches(128, shuffle=True, generator=gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).float().mean())
        if acc >= 0.995:
            break
    elapsed = time.perf_counter() - start
    record_property("mnist1d_seconds", round(elapsed, 1))
    record_property("mnist1d_epochs", epochs)
    # Wall time is recorded (pytest's junit properties), never asserted: this machine is shared.
    assert acc >= 0.99, f"training accuracy {acc:.4f} after {epochs} epochs ({elapsed:.0f} s)"
