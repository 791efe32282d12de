"""Named sweeps: the paper's protocol (THEORY.md section 6) and a CPU-scale ``toy`` version.

Each preset is a function returning a list of :class:`RunConfig` in a fixed order;
:func:`expand` looks one up by name (or reads a TOML sweep file, see :func:`load_sweep_file`).

- ``paper``: ResNet9, VGG9 x MNIST, FashionMNIST, CIFAR10 x SGD, SGDW, Adam, AdamW, Signum,
  SignumW x 3 learning rates x 6 momenta x 6 weight decays (the paper's per-optimizer lists):
  3,888 runs of 200 epochs, batch 128, step schedule, every parameter decayed. Data files are read
  from ``NCPROP_DATA`` (or ``data_options.root``).
- ``paper-ufm``: unconstrained features, p = 512, K = 10, N = 10,000; Adam, AdamW, SGD (momentum 0.9);
  lr in {0.1, 0.3, 0.5, 1.0}; weight decay from 0 to 0.05.
- ``paper-interpolation``: ResNet9/MNIST, Adam/AdamW mix, beta1 = 0.9, total decay 5e-4, coupled
  share {0, 1, 2, 3, 4, 5}e-4 / 5e-4.
- ``paper-vit``: ViT (patch 4, hidden 512, depth 6, 8 heads) on CIFAR10, batch 512, 200 epochs,
  cosine with 5% warm-up, lr 1e-3, no decay on LayerNorm parameters and biases.
- ``toy``: the paper's qualitative findings at CPU scale (about 5 minutes on two cores):
  unconstrained features (``ufm`` part, trained as stacks by ``ncprop.batched``) and MNIST-1D with an
  MLP (``mnist1d`` part): every optimizer of the registry, two seeds. MNIST-1D choices: a
  class-balanced training subset of 50 per class (500 samples; the 1,000 test samples kept whole),
  so that 99% training accuracy comes long before the first lr drop; full batch (1 epoch = 1 step)
  for 1,500 steps with the paper's schedule (lr / 10 at 1/3 and 2/3); MLP 40-128-128-10 with every
  parameter decayed; per-optimizer lr in the spirit of the paper's lists (0.1 for SGD/SGDW with
  momentum 0.9; 5e-3 for Adam-type, Signum-type and Lion; 1e-3 for momentum-free SignGD/SignGDW);
  coupled lambda in {0.01, 0.02}, decoupled in {0.5, 5}. Under coupled decay SGD's NC0 follows T2
  (rate lr * lambda / (1 - beta) per step: the first third alone gives about e^-5); the adaptive and
  sign-based coupled methods settle in a band set by their lr, which the schedule shrinks.
- ``toy-mini``: a few seconds' worth of toy runs (tests, smoke checks).
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable

from ncprop.experiments.config import RunConfig, read_toml

PAPER_MODELS = ("resnet9", "vgg9")
PAPER_DATASETS = ("mnist", "fashionmnist", "cifar10")
PAPER_OPTIMIZERS = ("sgd", "sgdw", "adam", "adamw", "signum", "signum_w")
PAPER_MOMENTA = (0.0, 0.5, 0.7, 0.9, 0.95, 0.98)
PAPER_LRS = {"sgd": (0.001, 0.01, 0.0679), "sgdw": (0.001, 0.01, 0.0679)}
PAPER_LRS_OTHER = (0.001, 0.005, 0.01)
PAPER_WDS_COUPLED = (0.0, 5e-5, 5e-4, 5e-3, 0.05, 0.5)
PAPER_WDS_DECOUPLED = (0.0, 5e-4, 0.05, 0.5, 5.0, 10.0)
PAPER_WDS = {"sgd": PAPER_WDS_COUPLED, "sgdw": PAPER_WDS_COUPLED, "adam": PAPER_WDS_COUPLED,
             "signum": PAPER_WDS_COUPLED, "adamw": PAPER_WDS_DECOUPLED, "signum_w": PAPER_WDS_DECOUPLED}


def paper() -> list[RunConfig]:
    out = []
    for model, dataset, opt in itertools.product(PAPER_MODELS, PAPER_DATASETS, PAPER_OPTIMIZERS):
        for lr, mom, wd in itertools.product(PAPER_LRS.get(opt, PAPER_LRS_OTHER), PAPER_MOMENTA, PAPER_WDS[opt]):
            out.append(RunConfig(model=model, dataset=dataset, optimizer=opt, lr=lr, momentum=mom, weight_decay=wd,
                                 schedule="step", epochs=200, batch_size=128, seed=0, metric_epochs="log:24",
                                 decay_norm_and_bias=True, device=_device(),
                                 tags={"preset": "paper", "part": f"{model}-{dataset}"}))
    return out


def paper_ufm() -> list[RunConfig]:
    out = []
    for opt, lr, wd in itertools.product(("adam", "adamw", "sgd"), (0.1, 0.3, 0.5, 1.0),
                                         (0.0, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2)):
        out.append(RunConfig(model="ufm", dataset="ufm", optimizer=opt, lr=lr, momentum=0.9, weight_decay=wd,
                             schedule="step", epochs=3000, batch_size=0, seed=0, metric_epochs="log:24",
                             engine="batched", model_options={"feature_dim": 512},
                             data_options={"num_classes": 10, "per_class": 1000}, device=_device(),
                             tags={"preset": "paper-ufm", "part": "ufm"}))
    return out


def paper_interpolation() -> list[RunConfig]:
    return [RunConfig(model="resnet9", dataset="mnist", optimizer="adam_mix", lr=1e-3, momentum=0.9,
                      weight_decay=5e-4, coupled_share=share / 5, schedule="step", epochs=200, batch_size=128,
                      metric_epochs="log:24", device=_device(),
                      tags={"preset": "paper-interpolation", "part": "resnet9-mnist"})
            for share in range(6)]


def paper_vit() -> list[RunConfig]:
    out = []
    for opt in PAPER_OPTIMIZERS:
        for wd in (0.0, 5e-4) if opt in ("sgd", "sgdw", "adam", "signum") else (0.0, 0.05):
            out.append(RunConfig(model="vit", dataset="cifar10", optimizer=opt, lr=1e-3, momentum=0.9,
                                 weight_decay=wd, schedule="cosine", warmup=0.05, epochs=200, batch_size=512,
                                 decay_norm_and_bias=False, metric_epochs="log:24", device=_device(),
                                 model_options={"patch_size": 4, "hidden": 512, "depth": 6, "heads": 8},
                                 tags={"preset": "paper-vit", "part": "vit-cifar10"}))
    return out


# ---------------------------------------------------------------------------------------------- toy
#: decoupled methods get decays an order of magnitude larger (as in the paper's grid).
TOY_OPTIMIZERS = ("sgd", "sgdw", "adam", "adamw", "adam_mix", "signgd", "signgd_w", "signum", "signum_w", "lion")
_TOY_LR = {"sgd": 0.1, "sgdw": 0.1}
_UFM_LR = {"sgd": 0.5, "sgdw": 0.5}
_TOY_WD_COUPLED = (1e-3, 5e-3, 2e-2)
_TOY_WD_DECOUPLED = (1e-2, 5e-2)
#: MNIST-1D part (see :func:`toy`): paper-style per-optimizer lists: SGD, SGDW, Adam, SignGD, Signum
#: (and the mix) take the coupled list, the decoupled sign-like/adaptive ones a list 50-250x larger
#: (as the paper's {.., 0.5, 5, 10} for AdamW/SignumW); the strongest coupled value is about where
#: the MLP stops reaching 99% training accuracy (the analysis filter).
_MNIST1D_WD_COUPLED = (1e-2, 2e-2)
_MNIST1D_WD_DECOUPLED = (0.5, 5.0)
_MNIST1D_LR = {"sgd": 0.1, "sgdw": 0.1, "adam": 5e-3, "adamw": 5e-3, "adam_mix": 5e-3,
               "signgd": 1e-3, "signgd_w": 1e-3, "signum": 5e-3, "signum_w": 5e-3, "lion": 5e-3}
MNIST1D_PER_CLASS = 50
MNIST1D_WIDTHS = (128, 128)


def _toy_lr(opt: str) -> float:
    return _TOY_LR.get(opt, 2e-3)


def _toy_wds(opt: str, part: str = "ufm") -> tuple[float, ...]:
    from ncprop.optim import get

    decoupled = get(opt).coupling == "decoupled"
    if part == "mnist1d":
        # the paper gives SGDW the coupled list: its decay acts at rate lr * lambda, as SGD's does
        decoupled = decoupled and opt != "sgdw"
        return _MNIST1D_WD_DECOUPLED if decoupled else _MNIST1D_WD_COUPLED
    return _TOY_WD_DECOUPLED if decoupled else _TOY_WD_COUPLED


def _toy_momenta(opt: str) -> tuple[float, ...]:
    return (0.0,) if opt in ("signgd", "signgd_w") else (0.9,)


def toy(*, seeds: tuple[int, ...] = (0, 1), mnist1d_epochs: int = 1500, ufm_steps: int = 1500) -> list[RunConfig]:
    out: list[RunConfig] = []
    # Part 1: unconstrained features, full batch, many runs per process (ncprop.batched).
    for opt in TOY_OPTIMIZERS:
        grid = [(m, wd) for m in _toy_momenta(opt) for wd in (0.0, *_toy_wds(opt))]
        if opt == "sgd":  # the SGD momentum x weight decay heat map
            grid = [(m, wd) for m in (0.0, 0.5, 0.9, 0.95) for wd in (0.0, 1e-3, 5e-3, 1e-2)]
        for (mom, wd), seed in itertools.product(grid, seeds):
            out.append(RunConfig(model="ufm", dataset="ufm", optimizer=opt, lr=_UFM_LR.get(opt, 1e-2), momentum=mom, weight_decay=wd,
                                 coupled_share=0.5 if opt == "adam_mix" else None, schedule="step",
                                 epochs=ufm_steps, batch_size=0, seed=seed, metric_epochs="every:25",
                                 engine="batched", dtype="float64", model_options={"feature_dim": 32},
                                 data_options={"num_classes": 10, "per_class": 10},
                                 tags={"preset": "toy", "part": "ufm"}))
    # Part 2: MNIST-1D with an MLP, full batch on a class-balanced training subset (so that the 99%
    # training-accuracy filter is passed well before the first lr drop), the paper's step schedule,
    # every parameter decayed (classifier and backbone).
    for opt in TOY_OPTIMIZERS:
        for mom, wd, seed in itertools.product(_toy_momenta(opt), _toy_wds(opt, "mnist1d"), seeds):
            out.append(RunConfig(model="mlp", dataset="mnist1d", optimizer=opt, lr=_MNIST1D_LR[opt], momentum=mom,
                                 weight_decay=wd, coupled_share=0.5 if opt == "adam_mix" else None,
                                 schedule="step", epochs=mnist1d_epochs, batch_size=0, seed=seed,
                                 metric_epochs="log:12", decay_norm_and_bias=True,
                                 model_options={"widths": list(MNIST1D_WIDTHS)},
                                 data_options={"train_per_class": MNIST1D_PER_CLASS},
                                 tags={"preset": "toy", "part": "mnist1d"}))
    return out


def toy_mini() -> list[RunConfig]:
    """A handful of tiny runs (seconds): every part of the machinery, no science."""
    out = []
    for opt, wd in (("sgd", 5e-3), ("adamw", 5e-2), ("signum", 5e-3), ("lion", 5e-2)):
        out.append(RunConfig(model="ufm", dataset="ufm", optimizer=opt, lr=0.5 if opt == "sgd" else 1e-2,
                             momentum=0.9, weight_decay=wd, epochs=40, batch_size=10, seed=0, metric_epochs="log:5",
                             model_options={"feature_dim": 8}, data_options={"num_classes": 4, "per_class": 5},
                             tags={"preset": "toy-mini", "part": "ufm"}))
    return out


PRESETS: dict[str, Callable[[], list[RunConfig]]] = {
    "paper": paper, "paper-ufm": paper_ufm, "paper-interpolation": paper_interpolation, "paper-vit": paper_vit,
    "toy": toy, "toy-mini": toy_mini,
}


def _device() -> str:
    return os.environ.get("NCPROP_DEVICE", "cpu")


def load_sweep_file(path: str | os.PathLike) -> list[RunConfig]:
    """A sweep from TOML: ``[base]`` options, ``[grid]`` lists (Cartesian product, in key order) and/or
    ``[[runs]]`` tables (each merged over ``base``)."""
    data = read_toml(path)
    unknown = sorted(set(data) - {"base", "grid", "runs"})
    if unknown:
        raise ValueError(f"{path}: a sweep file holds [base], [grid] and [[runs]] tables; got {unknown}")
    base: dict[str, Any] = dict(data.get("base", {}))
    out = []
    grid = data.get("grid", {})
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            out.append(RunConfig.from_dict({**base, **dict(zip(keys, values))}))
    for run in data.get("runs", []):
        out.append(RunConfig.from_dict({**base, **run}))
    if not grid and "runs" not in data:
        out.append(RunConfig.from_dict(base))
    return out


def expand(name: str) -> list[RunConfig]:
    """The configs of preset ``name``, or of a sweep TOML file when ``name`` is a path."""
    if name in PRESETS:
        return PRESETS[name]()
    if name.endswith(".toml") or os.path.exists(name):
        return load_sweep_file(name)
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a sweep .toml file")
