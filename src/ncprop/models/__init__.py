"""Backbones with a linear classifier (:class:`NCModel`) and the factory :func:`build_model`.

Every model exposes ``features(x) -> (B, p)``, ``classifier = nn.Linear(p, K, bias)``,
``forward_features(x) -> (logits, features)``, ``num_classes`` and ``feature_dim``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ncprop._validation import check_choice
from ncprop.models.base import NCModel, autocast_context, count_parameters, to_channels_last
from ncprop.models.groups import NORM_TYPES, no_decay_parameter_names, param_groups
from ncprop.models.mlp import MLP
from ncprop.models.resnet9 import ResNet9
from ncprop.models.ufm import UFM, etf_features
from ncprop.models.vgg9 import VGG9
from ncprop.models.vit import ViT

MODEL_NAMES = ("ufm", "mlp", "resnet9", "vgg9", "vit")
CNN_NAMES = ("resnet9", "vgg9")


def build_model(name: str, *, in_shape: Sequence[int] | None = None, num_classes: int, bias: bool = True,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                channels_last: bool = False, seed: int | None = None, **kw: Any) -> NCModel:
    """Build a model by name: "ufm", "mlp", "resnet9", "vgg9" or "vit".

    Args:
        in_shape: shape of one input, e.g. (1, 28, 28), (3, 32, 32) or (40,). Not used by "ufm".
        num_classes: K.
        bias: whether the classifier has a bias.
        device, dtype: where and in which float dtype the parameters live.
        channels_last: channels_last memory format (CNNs and the ViT's patch embedding).
        seed: when given, parameters are initialised from this seed without disturbing the global RNG
            (torch.random.fork_rng); otherwise from torch's global RNG, as nn.Linear does.
        **kw: model options; "ufm" needs ``labels`` and ``feature_dim`` (see :class:`UFM`).
    """
    check_choice("name", name, MODEL_NAMES)
    if name != "ufm" and in_shape is None:
        raise ValueError(f"build_model({name!r}) needs in_shape, e.g. (1, 28, 28); got None")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "ufm":
            if "labels" not in kw or "feature_dim" not in kw:
                raise ValueError("build_model('ufm') needs labels=LongTensor(N) and feature_dim=p")
            labels = kw.pop("labels")
            feature_dim = kw.pop("feature_dim")
            model: NCModel = UFM(labels, feature_dim, num_classes, bias=bias, **kw)
        else:
            cls = {"mlp": MLP, "resnet9": ResNet9, "vgg9": VGG9, "vit": ViT}[name]
            model = cls(tuple(in_shape), num_classes, bias=bias, **kw)  # type: ignore[arg-type]
    model = model.to(device=device, dtype=dtype)
    if isinstance(model, UFM):
        model.labels = model.labels.to(torch.int64)
    if channels_last:
        model = to_channels_last(model)
    return model


__all__ = [
    "CNN_NAMES", "MLP", "MODEL_NAMES", "NCModel", "NORM_TYPES", "ResNet9", "UFM", "VGG9", "ViT",
    "autocast_context", "build_model", "count_parameters", "etf_features", "no_decay_parameter_names",
    "param_groups", "to_channels_last",
]
