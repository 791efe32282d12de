"""THEORY.md's claims as library functions that train for real and compare with :mod:`ncprop.theory`.

Each ``check_*`` takes an optimizer -- a registry name or an :class:`~ncprop.optim.OptimizerInfo`,
so a user's ``factory(params, **canonical_hyperparameters)`` is checked exactly like a built-in one
-- trains a small float64 model with it and returns a :class:`CheckResult`. A failed result's
message starts with the violated claim (``"T1 violated: ..."``). The property suite (``properties/``)
drives these functions with Hypothesis; ``ncprop gate`` runs :func:`run_checks` on a user's optimizer.

Training setups (:func:`make_problem`): ``"ufm"`` (unconstrained features, trained with the same
optimizer), ``"fixed"`` (a linear head on fixed random features), ``"etf"`` (T3/T4: ``H = E``,
``W_0 = 0``), ``"mlp"`` (a small MLP on a Gaussian mixture) and ``"cnn"`` (a tiny CNN on random
8x8 images). All use a seeded ``torch.Generator`` (never the global RNG) and float64.

Tolerances are written in each signature. ``1^T grad_W`` is zero only up to round-off, so the
"exact" claims (lemma, T1, T2, T3, T4) are compared with a relative tolerance of order 1e-10 against
the scale of ``W``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncprop import theory
from ncprop._validation import check_choice, check_positive_int
from ncprop.models import MLP, UFM, NCModel
from ncprop.optim import REGISTRY, OptimizerInfo

__all__ = [
    "CheckResult",
    "Problem",
    "TrainRecord",
    "resolve",
    "seeded_generator",
    "make_problem",
    "train",
    "constant_then_step_lrs",
    "sign_reduction",
    "check_zero_sum_lemma",
    "check_t1",
    "check_t2",
    "check_conservation_without_decay",
    "check_t6",
    "check_t3",
    "check_t4",
    "check_t5",
    "check_prop21",
    "check_regime",
    "regime_thresholds",
    "plateau_value",
    "applicable_checks",
    "run_check",
    "run_checks",
]

OptimizerLike = Union[str, OptimizerInfo]
LOSSES = ("ce", "label_smoothing", "mse")
SETUPS = ("ufm", "fixed", "etf", "mlp", "cnn")
_F64 = torch.float64


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one claim on one optimizer: ``message`` names the claim when it fails."""

    claim: str
    passed: bool
    message: str
    evidence: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed


def resolve(optimizer: OptimizerLike) -> OptimizerInfo:
    """A registry name or an OptimizerInfo (for example a user's or a mutant) -> OptimizerInfo."""
    if isinstance(optimizer, OptimizerInfo):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer not in REGISTRY:
            raise ValueError(f"unknown optimizer {optimizer!r}; registered: {', '.join(sorted(REGISTRY))}")
        return REGISTRY[optimizer]
    raise ValueError(f"optimizer must be a registry name or an OptimizerInfo, got {optimizer!r}")


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: the only source of randomness in checks."""
    return torch.Generator().manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
# Harness


@dataclass
class Problem:
    """A model and its training set. ``inputs`` are sample indices for the UFM-type setups."""

    model: NCModel
    inputs: Tensor
    labels: Tensor
    num_classes: int
    setup: str

    @property
    def num_samples(self) -> int:
        return int(self.labels.numel())


class _TinyCNN(NCModel):
    """Two 3x3 convolutions and a global average pool: a CNN backbone small enough for the fast suite."""

    def __init__(self, num_classes: int, channels: int = 4, bias: bool = True) -> None:
        super().__init__(channels, num_classes, bias=bias)
        self.body = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


def _init_module(module: nn.Module, generator: torch.Generator, scale: float = 1.0) -> None:
    """Re-initialise every parameter from ``generator`` (PyTorch-default-like uniform fan-in scale)."""
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[1] * (p[0][0].numel() if p.ndim > 2 else 1) if p.ndim >= 2 else p.numel()
            bound = scale / math.sqrt(max(fan_in, 1))
            p.copy_((torch.rand(p.shape, generator=generator, dtype=_F64) * 2 - 1) * bound)


def make_problem(setup: str, num_classes: int, *, seed: int = 0, feature_dim: int = 8, per_class: int = 4,
                 in_dim: int = 6, widths: Sequence[int] = (12, 8), bias: bool = True,
                 init_scale: float = 1.0, device: str | torch.device = "cpu") -> Problem:
    """Build one of the training setups of this module, in float64, from ``seed`` alone.

    - ``"ufm"``: N = K * per_class trainable features N(0, init_scale^2), a K x p head.
    - ``"fixed"``: the same with the features frozen (a linear head on fixed features).
    - ``"etf"``: T3/T4's setting, ``H = E`` fixed, ``p = N = K``, ``W_0 = 0``, no bias.
    - ``"mlp"``: a Gaussian mixture in R^in_dim (class means 2 * N(0, I)), an MLP with ``widths``.
    - ``"cnn"``: random 1x8x8 images with a class-dependent mean, a two-layer CNN.

    Data and parameters are drawn on the CPU and then moved to ``device``.
    """
    problem = _make_problem_cpu(setup, num_classes, seed=seed, feature_dim=feature_dim, per_class=per_class,
                                in_dim=in_dim, widths=widths, bias=bias, init_scale=init_scale)
    device = torch.device(device)
    if device.type != "cpu":
        problem.model.to(device)
        problem.inputs, problem.labels = problem.inputs.to(device), problem.labels.to(device)
    return problem


def _make_problem_cpu(setup: str, num_classes: int, *, seed: int, feature_dim: int, per_class: int, in_dim: int,
                      widths: Sequence[int], bias: bool, init_scale: float) -> Problem:
    check_choice("setup", setup, SETUPS)
    check_positive_int("num_classes", num_classes, minimum=2)
    gen = seeded_generator(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    if setup == "etf":
        model = UFM.etf(num_classes, bias=False, dtype=_F64)
        return Problem(model, model.all_indices(), model.labels.clone(), num_classes, setup)
    if setup in ("ufm", "fixed"):
        h = torch.randn(labels.numel(), feature_dim, generator=gen, dtype=_F64) * init_scale
        model = UFM(labels, feature_dim, num_classes, bias=bias, init_features=h,
                    trainable_features=setup == "ufm", dtype=_F64)
        _init_module(model.classifier, gen)
        return Problem(model, model.all_indices(), model.labels.clone(), num_classes, setup)
    if setup == "mlp":
        means = 2.0 * torch.randn(num_classes, in_dim, generator=gen, dtype=_F64)
        x = means[labels] + torch.randn(labels.numel(), in_dim, generator=gen, dtype=_F64)
        model = MLP((in_dim,), num_classes, widths=widths, bias=bias).to(_F64)
    else:
        means = torch.randn(num_classes, 1, 8, 8, generator=gen, dtype=_F64)
        x = means[labels] + 0.5 * torch.randn(labels.numel(), 1, 8, 8, generator=gen, dtype=_F64)
        model = _TinyCNN(num_classes, bias=bias).to(_F64)
    _init_module(model, gen)
    return Problem(model, x, labels, num_classes, setup)


def _loss(name: str, logits: Tensor, labels: Tensor) -> Tensor:
    if name == "ce":
        return F.cross_entropy(logits, labels)
    if name == "label_smoothing":
        return F.cross_entropy(logits, labels, label_smoothing=0.1)
    return F.mse_loss(logits, F.one_hot(labels, logits.shape[-1]).to(logits.dtype))


@dataclass
class TrainRecord:
    """What :func:`train` saw, one entry per step (index t = state before step t; T+1 entries).

    ``row_sums`` (T+1, p): ``W_t^T 1``; ``bias_sums`` (T+1,): ``1^T b_t`` (or None);
    ``weight_norms`` (T+1,); ``lemma_residuals`` (T,): ``||1^T grad_W L|| / (sqrt(K) mean_i ||h_i||)``
    at step t (and ``|1^T grad_b L| / sqrt(K)``, whichever is larger): the sum relative to the size
    of the terms ``(softmax(z_i) - e_{y_i}) h_i^T`` it adds up; ``lrs`` (T,) the rates used;
    ``weights``: W_t at every step when asked for (else only the last); ``diverged``.
    """

    row_sums: Tensor
    bias_sums: Tensor | None
    weight_norms: Tensor
    lemma_residuals: Tensor
    lrs: Tensor
    weights: list[Tensor]
    diverged: bool
    final_weight: Tensor


def constant_then_step_lrs(lr: float, steps_per_stage: int, stages: int = 3, factor: float = 10.0) -> list[float]:
    """``lr`` for ``steps_per_stage`` steps, then ``lr/factor``, ... (the paper's step schedule)."""
    return [lr / factor**j for j in range(stages) for _ in range(steps_per_stage)]


def train(problem: Problem, optimizer: OptimizerLike, hp: Mapping[str, Any], lrs: Sequence[float], *,
          loss: str = "ce", batch_size: int | None = None, seed: int = 0,
          keep_weights: bool = False) -> TrainRecord:
    """Train ``problem.model`` in place with ``optimizer`` built from canonical ``hp`` (``lr`` is
    taken from ``lrs[t]`` at step t and written into every parameter group).

    Mini-batches of ``batch_size`` samples are drawn without replacement per step from a generator
    seeded with ``seed`` (full batch when None). Stops early, marking ``diverged``, on a non-finite W.
    """
    check_choice("loss", loss, LOSSES)
    info = resolve(optimizer)
    lrs = [float(x) for x in lrs]
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    model = problem.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = info.build(params, **{**dict(hp), "lr": lrs[0]})
    gen = seeded_generator(seed)
    weight, bias = model.classifier.weight, model.classifier.bias
    n = problem.num_samples

    def snapshot() -> tuple[Tensor, Tensor | None]:
        return weight.detach().sum(0).clone(), None if bias is None else bias.detach().sum().clone()

    m, b = snapshot()
    row_sums, bias_sums, norms, residuals = [m], [b], [torch.linalg.matrix_norm(weight.detach())], []
    weights = [weight.detach().clone()] if keep_weights else []
    diverged = False
    for eta in lrs:
        if batch_size is None or batch_size >= n:
            idx = None
        else:
            idx = torch.randperm(n, generator=gen)[:batch_size]
        x = problem.inputs if idx is None else problem.inputs[idx]
        y = problem.labels if idx is None else problem.labels[idx]
        opt.zero_grad(set_to_none=True)
        logits, feats = model.forward_features(x)
        value = _loss(loss, logits, y)
        value.backward()
        feature_scale = float(torch.linalg.vector_norm(feats.detach(), dim=-1).mean())
        res = theory.zero_sum_residual(weight.grad, feature_scale)
        if bias is not None and bias.grad is not None:
            res = max(res, theory.zero_sum_residual(bias.grad, 1.0))
        residuals.append(res)
        for group in opt.param_groups:
            group["lr"] = eta
        opt.step()
        m, b = snapshot()
        row_sums.append(m)
        bias_sums.append(b)
        norms.append(torch.linalg.matrix_norm(weight.detach()))
        if keep_weights:
            weights.append(weight.detach().clone())
        if not torch.isfinite(weight).all():
            diverged = True
            break
    return TrainRecord(
        row_sums=torch.stack(row_sums),
        bias_sums=None if bias is None else torch.stack(bias_sums),
        weight_norms=torch.stack(norms),
        lemma_residuals=torch.tensor(residuals, dtype=_F64),
        lrs=torch.tensor(lrs[: len(residuals)], dtype=_F64),
        weights=weights,
        diverged=diverged,
        final_weight=weight.detach().clone(),
    )


def _canonical(info: OptimizerInfo, **hp: Any) -> dict[str, Any]:
    """``hp`` without the keys ``info`` fixes (they must then equal the fixed value or be absent)."""
    out = {}
    for key, value in hp.items():
        if key in info.fixed:
            if info.fixed[key] != value:
                raise ValueError(f"{info.name} fixes {key}={info.fixed[key]!r}; the check asked for {value!r}")
            continue
        out[key] = value
    return out


def _hp_value(info: OptimizerInfo, hp: Mapping[str, Any], key: str, default: Any) -> Any:
    return hp.get(key, info.fixed.get(key, default))


def _fail(claim: str, message: str, evidence: dict) -> CheckResult:
    return CheckResult(claim, False, f"{claim} violated: {message}", evidence)


def _ok(claim: str, message: str, evidence: dict) -> CheckResult:
    return CheckResult(claim, True, f"{claim} holds: {message}", evidence)


# ---------------------------------------------------------------------------------------------
# The lemma


def check_zero_sum_lemma(optimizer: OptimizerLike = "sgd", hp: Mapping[str, Any] | None = None, *,
                         setup: str = "mlp", loss: str = "ce", num_classes: int = 4, steps: int = 30,
                         lr: float = 0.05, batch_size: int | None = 8, seed: int = 0,
                         rtol: float = 1e-12, device: str | torch.device = "cpu") -> CheckResult:
    """Lemma (THEORY.md section 3): ``1^T grad_W L = 0`` and ``1^T grad_b L = 0`` at every step of a
    real training run, for every shift-invariant loss (``"ce"``, ``"label_smoothing"``).

    Passes when ``max_t ||1^T G_t|| / (sqrt(K) mean_i ||h_i||) <= rtol`` (:class:`TrainRecord`). With ``loss="mse"`` theory says the
    lemma does not hold, and the check is expected to fail.
    """
    info = resolve(optimizer)
    problem = make_problem(setup, num_classes, seed=seed, device=device)
    hp = dict(hp or {})
    rec = train(problem, info, hp, [lr] * steps, loss=loss, batch_size=batch_size, seed=seed)
    worst = float(rec.lemma_residuals.max())
    evidence = {"max_relative_residual": worst, "rtol": rtol, "loss": loss, "setup": setup, "steps": steps,
                "optimizer": info.name}
    if worst > rtol:
        t = int(rec.lemma_residuals.argmax())
        return _fail("lemma", f"||1^T grad_W L|| / (sqrt(K) mean||h||) = {worst:.3e} > {rtol:.0e} at step {t} "
                     f"(loss {loss!r}, setup {setup!r})", evidence)
    return _ok("lemma", f"max relative ||1^T grad|| = {worst:.1e} <= {rtol:.0e} over {steps} steps", evidence)


# ---------------------------------------------------------------------------------------------
# T1, T2 and conservation


def _row_sum_error(rec: TrainRecord, multipliers: Tensor, num_classes: int) -> tuple[float, int]:
    """``max_t ||m_t - c_t m_0|| / scale_t`` (and the step) with scale_t = sqrt(K) max_{s<=t} ||W_s|| + |m_0|
    (a bound on the size of any row sum so far: the round-off yardstick)."""
    steps = rec.row_sums.shape[0]
    c = multipliers[:steps]
    pred = c[:, None] * rec.row_sums[0]
    err = torch.linalg.vector_norm(rec.row_sums - pred, dim=-1)
    if rec.bias_sums is not None:
        err = torch.maximum(err, (rec.bias_sums - c * rec.bias_sums[0]).abs())
    scale = math.sqrt(num_classes) * torch.cummax(rec.weight_norms, 0).values + torch.linalg.vector_norm(rec.row_sums[0])
    rel = err / scale.clamp_min(1e-300)
    t = int(rel.argmax())
    return float(rel[t]), t


def _sgd_family_check(claim: str, kind: str, optimizer: OptimizerLike, *, lr: float | Sequence[float], momentum: float,
                      weight_decay: float, dampening: float, nesterov: bool, setup: str, num_classes: int,
                      steps: int, batch_size: int | None, seed: int, rtol: float, loss: str,
                      device: str | torch.device = "cpu") -> CheckResult:
    info = resolve(optimizer)
    lrs = [float(lr)] * steps if isinstance(lr, (int, float)) else [float(x) for x in lr]
    hp = _canonical(info, momentum=momentum, weight_decay=weight_decay, dampening=dampening, nesterov=nesterov)
    problem = make_problem(setup, num_classes, seed=seed, device=device)
    rec = train(problem, info, hp, lrs, loss=loss, batch_size=batch_size, seed=seed)
    rec.row_sums, rec.weight_norms = rec.row_sums.cpu(), rec.weight_norms.cpu()
    rec.bias_sums = None if rec.bias_sums is None else rec.bias_sums.cpu()
    c = theory.row_sum_multipliers(kind, lrs, momentum=momentum, weight_decay=weight_decay,
                                   dampening=dampening, nesterov=nesterov)
    err, t = _row_sum_error(rec, c, num_classes)
    evidence = {"optimizer": info.name, "max_relative_error": err, "at_step": t, "rtol": rtol, "steps": len(lrs),
                "setup": setup, "lr": lrs[0], "momentum": momentum, "weight_decay": weight_decay,
                "dampening": dampening, "nesterov": nesterov, "nc0_init": float(rec.row_sums[0].norm()),
                "nc0_final": float(rec.row_sums[-1].norm()),
                "nc0_final_predicted": float(c[rec.row_sums.shape[0] - 1].abs() * rec.row_sums[0].norm())}
    equation = ("m_{t+1} = (1 - eta_t lambda) m_t" if kind == "sgdw"
                else "q_{t+1} = beta q_t + (1-tau) lambda m_t, m_{t+1} = m_t - eta_t q_{t+1} (torch conventions)")
    if rec.diverged:
        return _fail(claim, f"training diverged at step {len(rec.lemma_residuals)} ({equation})", evidence)
    if not err <= rtol:
        return _fail(claim, f"W^T 1 departs from {equation} by {err:.3e} (relative) at step {t}; "
                     f"NC0 {evidence['nc0_final']:.6g} vs predicted {evidence['nc0_final_predicted']:.6g}", evidence)
    return _ok(claim, f"{equation} to {err:.1e} over {len(lrs)} steps", evidence)


def check_t1(optimizer: OptimizerLike = "sgdw", *, lr: float | Sequence[float] = 0.1, momentum: float = 0.9,
             weight_decay: float = 0.05, dampening: float = 0.0, nesterov: bool = False, setup: str = "mlp",
             num_classes: int = 4, steps: int = 200, batch_size: int | None = 8, seed: int = 0,
             rtol: float = 1e-10, loss: str = "ce", device: str | torch.device = "cpu") -> CheckResult:
    """T1: with decoupled weight decay and a linear optimizer (SGDW), ``m_{t+1} = (1 - eta_t lambda) m_t``
    at every step, whatever the momentum, dampening, Nesterov, data, batch and backbone.

    ``lr`` is a constant or a per-step schedule. ``rtol`` is relative to ``sqrt(K) max ||W||``."""
    return _sgd_family_check("T1", "sgdw", optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                             dampening=dampening, nesterov=nesterov, setup=setup, num_classes=num_classes,
                             steps=steps, batch_size=batch_size, seed=seed, rtol=rtol, loss=loss,
                             device=device)


def check_t2(optimizer: OptimizerLike = "sgd", *, lr: float | Sequence[float] = 0.1, momentum: float = 0.9,
             weight_decay: float = 0.05, dampening: float = 0.0, nesterov: bool = False, setup: str = "mlp",
             num_classes: int = 4, steps: int = 200, batch_size: int | None = 8, seed: int = 0,
             rtol: float = 1e-10, loss: str = "ce", device: str | torch.device = "cpu") -> CheckResult:
    """T2: with coupled weight decay (SGD), ``W_t^T 1`` follows the data-free recursion of
    :func:`ncprop.theory.sgd_multipliers` (momentum, dampening, Nesterov, schedule) at every step."""
    return _sgd_family_check("T2", "sgd", optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                             dampening=dampening, nesterov=nesterov, setup=setup, num_classes=num_classes,
                             steps=steps, batch_size=batch_size, seed=seed, rtol=rtol, loss=loss,
                             device=device)


def _no_decay_run(optimizer: OptimizerLike, hp: Mapping[str, Any] | None, lr: float, setup: str, num_classes: int,
                  steps: int, batch_size: int | None, seed: int) -> tuple[OptimizerInfo, TrainRecord, float]:
    info = resolve(optimizer)
    hp = {**dict(hp or {}), "weight_decay": 0.0}
    problem = make_problem(setup, num_classes, seed=seed)
    rec = train(problem, info, _canonical(info, **hp), [lr] * steps, batch_size=batch_size, seed=seed)
    err, _ = _row_sum_error(rec, torch.ones(steps + 1, dtype=_F64), num_classes)
    return info, rec, err


def check_conservation_without_decay(optimizer: OptimizerLike = "sgd", hp: Mapping[str, Any] | None = None, *,
                                     lr: float = 0.1, setup: str = "mlp", num_classes: int = 4, steps: int = 100,
                                     batch_size: int | None = 8, seed: int = 0, rtol: float = 1e-10) -> CheckResult:
    """T1 with ``lambda = 0``: a linear optimizer (SGD or SGDW, any momentum) conserves ``W^T 1`` exactly."""
    info, rec, err = _no_decay_run(optimizer, hp, lr, setup, num_classes, steps, batch_size, seed)
    evidence = {"optimizer": info.name, "max_relative_change": err, "rtol": rtol, "steps": steps, "setup": setup}
    if not err <= rtol:
        return _fail("T1", f"W^T 1 is not conserved without weight decay: relative change {err:.3e} > {rtol:.0e}",
                     evidence)
    return _ok("T1", f"W^T 1 conserved to {err:.1e} without weight decay", evidence)


def check_t6(optimizer: OptimizerLike = "adam", hp: Mapping[str, Any] | None = None, *, lr: float = 0.01,
             setup: str = "mlp", num_classes: int = 4, steps: int = 30, batch_size: int | None = 8, seed: int = 0,
             min_change: float = 1e-6) -> CheckResult:
    """T6: an adaptive or sign method without weight decay moves ``W^T 1`` (contrast with T1).

    Passes when the relative change of ``W^T 1`` exceeds ``min_change`` (10^4 times round-off)."""
    info, rec, err = _no_decay_run(optimizer, hp, lr, setup, num_classes, steps, batch_size, seed)
    evidence = {"optimizer": info.name, "max_relative_change": err, "min_change": min_change, "steps": steps}
    if not err > min_change:
        return _fail("T6", f"W^T 1 stayed put (relative change {err:.3e} <= {min_change:.0e}) under an adaptive "
                     f"optimizer without weight decay", evidence)
    return _ok("T6", f"W^T 1 moved by {err:.3e} (relative) without weight decay", evidence)


# ---------------------------------------------------------------------------------------------
# T3, T4, T5: sign descent on the ETF UFM


def sign_reduction(info: OptimizerInfo) -> dict[str, float]:
    """Canonical hyperparameters that reduce ``info`` to plain sign descent: ``momentum = 0`` (beta1),
    ``beta2 = 0``, ``eps = 0`` wherever ``info`` takes them (Adam(W) with beta1 = beta2 = eps = 0 is
    SignGD(W) wherever no gradient coordinate is 0; Signum(W) and Lion with beta1 = 0 are too)."""
    return {key: 0.0 for key in ("momentum", "beta2", "eps") if key not in info.fixed}


def _etf_run(info: OptimizerInfo, num_classes: int, lrs: Sequence[float], weight_decay: float,
             hp: Mapping[str, Any] | None) -> TrainRecord:
    problem = make_problem("etf", num_classes)
    hp = {**sign_reduction(info), **dict(hp or {}), "weight_decay": weight_decay}
    return train(problem, info, _canonical(info, **hp), lrs, keep_weights=True)


def check_t3(optimizer: OptimizerLike = "signgd_w", *, num_classes: int = 5, lr: float = 0.05,
             weight_decay: float = 0.1, steps: int = 200, hp: Mapping[str, Any] | None = None,
             rtol: float = 1e-10) -> CheckResult:
    """T3: decoupled sign descent on ``H = E`` from ``W_0 = 0`` gives ``W_t = w_t (J - 2I)`` and
    ``alpha_t = ((K-2)^2/lambda^2)(1 - (1 - eta lambda)^t)^2``: increasing, never reaching 0.

    The optimizer is run with :func:`sign_reduction`'s hyperparameters (overridable by ``hp``).
    Passes when ``|alpha_t - closed form| <= rtol * closed form`` for every ``t >= 1`` and
    ``W_t = w_t (J - 2I)`` to ``rtol`` relative to ``||W_t||``."""
    info = resolve(optimizer)
    rec = _etf_run(info, num_classes, [lr] * steps, weight_decay, hp)
    k = num_classes
    alpha_obs = (rec.row_sums**2).sum(-1) / k
    alpha_pred = theory.t3_alpha(k, lr, weight_decay, steps)[: alpha_obs.numel()]
    rel = ((alpha_obs - alpha_pred).abs() / alpha_pred.clamp_min(1e-300))[1:]
    w = theory.t3_weight_scalar(k, [lr] * steps, weight_decay)
    shape = torch.ones(k, k, dtype=_F64) - 2 * torch.eye(k, dtype=_F64)
    werr = max(float((wt - w[t] * shape).abs().max() / max(float(wt.abs().max()), 1e-300))
               for t, wt in enumerate(rec.weights) if t > 0)
    t_bad = int(rel.argmax()) + 1
    evidence = {"optimizer": info.name, "max_relative_error_alpha": float(rel.max()), "max_relative_error_weight": werr,
                "rtol": rtol, "alpha_final": float(alpha_obs[-1]), "alpha_final_predicted": float(alpha_pred[-1]),
                "alpha_limit": theory.t3_alpha_limit(k, weight_decay), "num_classes": k, "lr": lr,
                "weight_decay": weight_decay, "steps": steps}
    if rec.diverged or not (float(rel.max()) <= rtol and werr <= rtol):
        return _fail("T3", f"alpha_t = {float(alpha_obs[t_bad]):.6g} at step {t_bad}, closed form "
                     f"((K-2)^2/lambda^2)(1-(1-eta lambda)^t)^2 = {float(alpha_pred[t_bad]):.6g} (relative error "
                     f"{float(rel.max()):.2e}); W_t vs w_t (J - 2I): {werr:.2e}", evidence)
    return _ok("T3", f"alpha_t matches the closed form to {float(rel.max()):.1e} over {steps} steps "
               f"(final {float(alpha_obs[-1]):.4g}, limit {evidence['alpha_limit']:.4g})", evidence)


def check_t4(optimizer: OptimizerLike = "signgd", *, num_classes: int = 5, lr: float = 0.05,
             weight_decay: float = 0.05, steps_per_stage: int = 150, stages: int = 3, factor: float = 10.0,
             hp: Mapping[str, Any] | None = None, rtol: float = 1e-9) -> CheckResult:
    """T4: coupled sign descent on ``H = E`` from ``W_0 = 0`` follows the exact 2-parameter recursion
    of :func:`ncprop.theory.signgd_etf_trajectory`; ``alpha`` rises then falls; in every constant-lr
    stage, once inside the invariant box, ``alpha_t <= C^2 eta^2`` with ``C`` from
    :func:`ncprop.theory.t4_band_constant`; and the band's top decreases from stage to stage
    (``eta`` divided by ``factor``).

    Checked: (1) ``max_t |W_t - (u_t I + v_t J)| <= rtol * max(1, |W_t|)``; (2) ``alpha`` is not
    monotone: its maximum is at an interior step and exceeds both ``alpha_0 = 0`` and the last value
    by a factor >= 4; (3) each stage enters the box and then stays under ``C^2 eta_j^2``; (4) the
    maximum of ``alpha`` over the last half of each stage decreases strictly from stage to stage.
    """
    info = resolve(optimizer)
    k = num_classes
    lrs = constant_then_step_lrs(lr, steps_per_stage, stages, factor)
    rec = _etf_run(info, k, lrs, weight_decay, hp)
    traj = theory.signgd_etf_trajectory(k, lrs, weight_decay)
    alpha_obs = (rec.row_sums**2).sum(-1) / k
    werr = 0.0
    for t, wt in enumerate(rec.weights):
        werr = max(werr, float((wt - traj.weight(t)).abs().max()) / max(1.0, float(wt.abs().max())))
    evidence: dict[str, Any] = {"optimizer": info.name, "max_weight_error": werr, "rtol": rtol, "num_classes": k,
                                "lr": lr, "weight_decay": weight_decay, "stages": stages,
                                "alpha_peak": float(alpha_obs.max()), "peak_step": int(alpha_obs.argmax())}
    if rec.diverged or not werr <= rtol:
        return _fail("T4", f"W_t departs from the recursion W_t = u_t I + v_t J (p = u+v, v sign-descend "
                     f"toward the coupled targets) by {werr:.3e} > {rtol:.0e}", evidence)
    peak, t_peak = float(alpha_obs.max()), int(alpha_obs.argmax())
    if not (0 < t_peak < len(lrs) and peak >= 4 * float(alpha_obs[-1]) and peak > 0):
        return _fail("T4", f"alpha does not rise then fall: peak {peak:.4g} at step {t_peak}, last "
                     f"{float(alpha_obs[-1]):.4g}", evidence)
    tops, bands, entries = [], [], []
    for j in range(stages):
        eta = lr / factor**j
        start, stop = j * steps_per_stage, (j + 1) * steps_per_stage
        c = theory.t4_band_constant(k, eta, weight_decay)
        entry = theory.t4_band_entry(traj, eta, start, stop)
        entries.append(entry)
        bands.append(c * c * eta * eta)
        tops.append(float(alpha_obs[start + steps_per_stage // 2: stop + 1].max()))
        if entry is None:
            evidence.update(entries=entries, band_bounds=bands)
            return _fail("T4", f"stage {j} (eta = {eta:.3g}) never enters the invariant band", evidence)
        worst = float(alpha_obs[entry: stop + 1].max())
        if worst > bands[-1] * (1 + 1e-9):
            evidence.update(entries=entries, band_bounds=bands)
            return _fail("T4", f"stage {j}: alpha = {worst:.4g} > C^2 eta^2 = {bands[-1]:.4g} after entering the "
                         f"band (C = {c:.4g}, eta = {eta:.3g})", evidence)
    evidence.update(entries=entries, band_bounds=bands, stage_tops=tops,
                    stage_tops_over_eta2=[top / (lr / factor**j) ** 2 for j, top in enumerate(tops)])
    if any(b >= a for a, b in zip(tops, tops[1:])):
        return _fail("T4", f"the band's top does not decrease from stage to stage: {tops}", evidence)
    return _ok("T4", f"recursion exact to {werr:.1e}; peak {peak:.4g} at step {t_peak}; stage tops {tops} "
               f"(alpha/eta^2 = {[round(x, 3) for x in evidence['stage_tops_over_eta2']]})", evidence)


def check_t5(optimizer: OptimizerLike = "signgd_w", *, num_classes: int = 2, lr: float = 0.05,
             weight_decay: float = 0.05, setup: str = "fixed", steps: int = 100, batch_size: int | None = None,
             seed: int = 0, hp: Mapping[str, Any] | None = None, rtol: float = 1e-10) -> CheckResult:
    """T5: under decoupled sign descent ``m_{t+1} = (1 - eta lambda) m_t - eta 1^T sign(g_t)``.
    For K = 2 the signs cancel and ``m_{t+1} = (1 - eta lambda) m_t`` exactly (SignGDW decays like SGDW);
    for K >= 3 it does not (the check then fails, as theory says it must)."""
    info = resolve(optimizer)
    problem = make_problem(setup, num_classes, seed=seed, bias=False)
    hp = {**sign_reduction(info), **dict(hp or {}), "weight_decay": weight_decay}
    rec = train(problem, info, _canonical(info, **hp), [lr] * steps, batch_size=batch_size, seed=seed)
    err, t = _row_sum_error(rec, theory.sgdw_multipliers([lr] * steps, weight_decay), num_classes)
    evidence = {"optimizer": info.name, "num_classes": num_classes, "max_relative_error": err, "at_step": t, "rtol": rtol}
    if not err <= rtol:
        return _fail("T5", f"with K = {num_classes}, W^T 1 does not decay like SGDW's (1 - eta lambda)^t: relative "
                     f"error {err:.3e} at step {t}", evidence)
    return _ok("T5", f"K = {num_classes}: W^T 1 = (1 - eta lambda)^t W_0^T 1 to {err:.1e}", evidence)


# ---------------------------------------------------------------------------------------------
# Proposition 2.1 and the regimes


def check_prop21(optimizer: OptimizerLike = "sgd", hp: Mapping[str, Any] | None = None, *, setup: str = "ufm",
                 num_classes: int = 4, lr: float = 0.1, steps: int = 50, seed: int = 0,
                 slack: float = 1e-12) -> CheckResult:
    """Proposition 2.1 (quantitative, ours): ``||W^T 1||^2 / ||W||^2 <= K * NC2W`` at every step."""
    info = resolve(optimizer)
    problem = make_problem(setup, num_classes, seed=seed)
    rec = train(problem, info, _canonical(info, **dict(hp or {})), [lr] * steps, keep_weights=True)
    w = torch.stack(rec.weights)
    lhs, rhs = theory.prop21_lhs(w), theory.prop21_rhs(w)
    gap = lhs - rhs
    t = int(gap.argmax())
    evidence = {"optimizer": info.name, "max_lhs_minus_rhs": float(gap.max()), "lhs_final": float(lhs[-1]),
                "rhs_final": float(rhs[-1]), "slack": slack}
    if float(gap.max()) > slack:
        return _fail("Prop2.1", f"||W^T1||^2/||W||^2 = {float(lhs[t]):.6g} > K*NC2W = {float(rhs[t]):.6g} at step {t}",
                     evidence)
    return _ok("Prop2.1", f"||W^T1||^2/||W||^2 <= K*NC2W at all {steps + 1} steps", evidence)


def plateau_value(num_classes: int) -> float:
    """``(K-2)/sqrt(K)``: normalized NC0 of ``W = w (J - 2I)``, T3's shape.

    On the ETF UFM (``H = E`` fixed, ``W_0 = 0``) every optimizer that acts entry-wise and treats
    classes alike keeps ``W_t = u_t I + v_t J`` (the problem is invariant under permuting classes and
    features together). The loss gradient is ``-g(u)(I - J/K)`` with ``g > 0``: a fixed sign pattern
    ``J - 2I`` with the same magnitude in every diagonal and every off-diagonal entry up to the
    factor ``K - 1``. A *decoupled* sign-like direction (sign, sign of an EMA, Lion; Adam's
    ``m/sqrt(v)`` up to ``eps``) of such gradients is ``r_t (J - 2I)``, and the decoupled shrink keeps
    the shape, so ``W_t = w_t (J - 2I)`` and ``||W^T 1||/||W|| = (K-2)/sqrt(K)`` at every ``t >= 1``.
    """
    check_positive_int("num_classes", num_classes, minimum=3)
    return (num_classes - 2) / math.sqrt(num_classes)


def regime_thresholds(num_classes: int) -> dict[str, float]:
    """The bounds on normalized NC0 ``||W^T 1||/||W||`` that :func:`check_regime` applies to a
    sign-like optimizer at the end of its ETF-UFM run (three stages, lr / 10 per stage):

    - ``"plateaus"``: at least ``0.9 (K-2)/sqrt(K)`` -- :func:`plateau_value` is the exact value for
      decoupled sign-like methods (0.9 leaves room for Adam's ``eps``).
    - ``"decays"``: at most ``0.1 (K-2)/sqrt(K)``. For SignGD the proved T4 band gives far less
      (``C eta sqrt(K)/||W||``, about 1e-3 here); methods with momentum settle more slowly, so the
      bound is a separation from the plateau by a factor 10, not the band itself.
    """
    p = plateau_value(num_classes)
    return {"decays": 0.1 * p, "plateaus": 0.9 * p}


def check_regime(optimizer: OptimizerLike, hp: Mapping[str, Any] | None = None, *, num_classes: int = 4,
                 lr: float | None = None, weight_decay: float = 0.05, steps_per_stage: int = 150, stages: int = 3,
                 seed: int = 0) -> CheckResult:
    """The NC0 regime the registry predicts (``info.predicted_regime``) against a real UFM run.

    Sign-like optimizers (default lr 0.05): the ETF UFM from ``W_0 = 0``, full batch, lr divided by
    10 per stage; ``"decays"`` / ``"plateaus"`` are judged on normalized NC0 at the end against
    :func:`regime_thresholds`. Linear optimizers (default lr 0.5): a UFM with trainable features from
    a random W (the ETF start would keep ``W^T 1 = 0`` for any linear method); ``"decays"`` needs
    ``NC0_T <= |c_T| NC0_0`` with the T2 multiplier ``|c_T| < 1`` (T1 for SGDW is the same bound),
    and ``"conserved"`` needs ``W^T 1`` unchanged to 1e-10. ``"drifts"`` needs ``W^T 1`` to move by
    more than 1e-6 (relative). A regime of None (mixed coupling) passes with the value recorded.
    """
    info = resolve(optimizer)
    hp = dict(hp or {})
    hp["weight_decay"] = weight_decay
    share = hp.get("coupled_share", info.coupled_share)
    regime = info.predicted_regime(weight_decay, share)
    if lr is None:
        lr = 0.05 if info.sign_like else 0.5
    lrs = constant_then_step_lrs(lr, steps_per_stage, stages)
    if info.sign_like:
        problem = make_problem("etf", num_classes, seed=seed)
    else:
        problem = make_problem("ufm", num_classes, seed=seed, bias=False)
    rec = train(problem, info, _canonical(info, **hp), lrs)
    normalized = float(rec.row_sums[-1].norm() / rec.weight_norms[-1])
    err, _ = _row_sum_error(rec, torch.ones(len(lrs) + 1, dtype=_F64), num_classes)
    evidence: dict[str, Any] = {"optimizer": info.name, "regime": regime, "nc0_normalized_final": normalized,
                                "relative_change_of_row_sum": err, "weight_decay": weight_decay, "lr": lr,
                                "setup": problem.setup}
    claim = {"decays": "T4" if info.sign_like else "T2", "plateaus": "T3", "conserved": "T1",
             "drifts": "T6"}.get(regime, "regime")
    if rec.diverged:
        return _fail(claim, f"{info.name} diverged on the UFM (lr {lr})", evidence)
    if regime in ("decays", "plateaus") and info.sign_like:
        bounds = regime_thresholds(num_classes)
        evidence["bounds"] = bounds
        if regime == "decays" and not normalized <= bounds["decays"]:
            return _fail(claim, f"predicted regime 'decays' (coupled decay) but normalized NC0 = {normalized:.4g} > "
                         f"{bounds['decays']:.4g} = (K-2)/(10 sqrt(K)) at the end of the ETF-UFM run", evidence)
        if regime == "plateaus" and not normalized >= bounds["plateaus"]:
            return _fail(claim, f"predicted regime 'plateaus' (decoupled decay) but normalized NC0 = {normalized:.4g} "
                         f"< {bounds['plateaus']:.4g} = 0.9 (K-2)/sqrt(K) at the end of the ETF-UFM run", evidence)
    elif regime == "decays":
        c = (theory.sgd_multipliers(lrs, _hp_value(info, hp, "momentum", 0.0), weight_decay)
             if info.coupling == "coupled" else theory.sgdw_multipliers(lrs, weight_decay))
        ratio = float(rec.row_sums[-1].norm() / rec.row_sums[0].norm())
        evidence.update(nc0_ratio=ratio, predicted_ratio=float(c[-1].abs()))
        if not (float(c[-1].abs()) < 1 and ratio <= float(c[-1].abs()) * (1 + 1e-8) + 1e-12):
            return _fail(claim, f"predicted regime 'decays' but NC0_T/NC0_0 = {ratio:.4g} > |c_T| = "
                         f"{float(c[-1].abs()):.4g}", evidence)
    elif regime == "plateaus":
        if not normalized >= 0.5:
            return _fail(claim, f"predicted regime 'plateaus' but normalized NC0 = {normalized:.4g} < 0.5", evidence)
    elif regime == "conserved" and not err <= 1e-10:
        return _fail(claim, f"predicted regime 'conserved' but W^T 1 changed by {err:.3e}", evidence)
    elif regime == "drifts" and not err > 1e-6:
        return _fail(claim, f"predicted regime 'drifts' but W^T 1 changed by only {err:.3e}", evidence)
    return _ok(claim, f"regime {regime!r}: normalized NC0 = {normalized:.4g}", evidence)


# ---------------------------------------------------------------------------------------------
# Which checks apply to an optimizer


def applicable_checks(optimizer: OptimizerLike) -> list[tuple[str, Callable[..., CheckResult], dict[str, Any]]]:
    """``[(name, check, kwargs)]``: the claims theory makes about ``optimizer`` given its declared
    coupling and ``sign_like`` flag, with the configurations ``ncprop gate`` runs (including
    dampening and Nesterov for the SGD family, which a buffer started at 0 or a misplaced decay
    term would get wrong)."""
    info = resolve(optimizer)
    out: list[tuple[str, Callable[..., CheckResult], dict[str, Any]]] = [
        ("lemma", check_zero_sum_lemma, {"optimizer": info}),
    ]
    takes_momentum = "momentum" not in info.fixed
    if not info.sign_like:
        check, name = (check_t1, "T1") if info.coupling == "decoupled" else (check_t2, "T2")
        if info.coupling in ("coupled", "decoupled"):
            configs: list[dict[str, Any]] = [{"momentum": 0.9 if takes_momentum else 0.0}]
            if takes_momentum and "dampening" not in info.fixed:
                configs.append({"momentum": 0.5, "dampening": 0.3})
            if takes_momentum and "nesterov" not in info.fixed:
                configs.append({"momentum": 0.9, "nesterov": True})
            for cfg in configs:
                out.append((name, check, {"optimizer": info, **cfg}))
        out.append(("T1 (lambda = 0)", check_conservation_without_decay, {"optimizer": info}))
    else:
        out.append(("T6", check_t6, {"optimizer": info}))
        if info.coupling == "decoupled":
            out.append(("T3", check_t3, {"optimizer": info}))
        elif info.coupling == "coupled":
            out.append(("T4", check_t4, {"optimizer": info}))
    if info.coupling in ("coupled", "decoupled"):
        out.append(("regime", check_regime, {"optimizer": info}))
    return out


def run_check(name: str, check: Callable[..., CheckResult], kwargs: Mapping[str, Any]) -> CheckResult:
    """``check(**kwargs)``, with an exception (a user's optimizer may raise anything) reported as a
    failed result naming ``name`` instead of propagating."""
    try:
        return check(**kwargs)
    except Exception as exc:  # noqa: BLE001 - report it, never raise it
        return CheckResult(name, False, f"{name} violated: the check raised {type(exc).__name__}: {exc}",
                           {"exception": repr(exc)})


def run_checks(optimizer: OptimizerLike) -> list[CheckResult]:
    """Run :func:`applicable_checks` and return every result (failures included, never raised)."""
    return [run_check(name, check, kwargs) for name, check, kwargs in applicable_checks(optimizer)]
