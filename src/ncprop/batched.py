"""Many independent toy runs as one batch of stacked tensors.

:func:`train_batched` trains ``R`` runs of a toy model at once, every run with its own seed and its
own hyperparameters, under any optimizer of :data:`ncprop.optim.REGISTRY` that is built from the
core (``info.direction`` set). Two models:

- ``"ufm"``, the unconstrained feature model: features ``H`` (N, p) and classifier ``W`` (K, p)
  (and optionally a bias ``b`` (K,)) are all parameters, trained by the same optimizer.
- ``"fixed"``: a linear head ``W`` (and ``b``) on fixed features ``H``.

Loss: full-batch mean softmax cross-entropy ``L = (1/N) sum_i CE(W h_i + b, y_i)``. Its gradients are
computed for all runs at once in closed form with batched matmuls,
``G = (softmax(Z) - Y)/N``, ``dW = G^T H``, ``dH = G W``, ``db = 1^T G`` (``Z = H W^T + b``);
:func:`closed_form_gradients` is checked against autograd in the tests.

The update is :func:`ncprop.optim.core.apply_update` itself, called on the stacked parameters with
hyperparameters shaped ``(R, 1, 1)``: the update maths is defined once, in ``ncprop.optim.core``.

Weight decay (the optimizer's, coupled or decoupled as the optimizer says): ``W`` and ``b`` take the
run's ``weight_decay``; UFM features take ``feature_weight_decay``, which defaults to the same
``weight_decay`` (the usual regularised UFM, where every parameter is decayed alike). Pass
``feature_weight_decay`` (a number, or one value per run) to decay features differently.

Initialisation of run ``r`` (float64 draws from ``torch.Generator().manual_seed(seeds[r])`` on the
CPU, in this order, then cast to ``dtype`` and moved to ``device``): ``W ~ N(0, weight_init_scale^2)``
(K, p) with ``weight_init_scale = 1/sqrt(p)`` by default; then, unless ``features`` is given,
``H ~ N(0, init_scale^2)`` (N, p); ``b = 0``. :func:`train_single` draws the same numbers, so each run
of a batch can be reproduced alone with the real ``torch.optim.Optimizer`` preset of the registry.

Learning-rate schedule: ``lr_schedule(t)`` for the 0-based update index ``t`` multiplies every run's
base ``lr`` at update ``t + 1`` (like ``torch.optim.lr_scheduler.LambdaLR``); decoupled decay sees the
scheduled rate too (``theta <- (1 - lr_t * lambda) theta``).

Divergence: a run whose parameters hold NaN or Inf at a recorded step is flagged in
``BatchedResult.diverged`` (with ``diverged_at``, the first recorded step where it was seen); its
metrics are NaN from then on. Runs never interact, so one run's NaN cannot reach another.

Performance (CPU): the batch is processed in chunks of ``chunk_size`` runs, each chunk trained for
all ``steps`` before the next, so that a chunk's parameters, gradients and optimizer state stay in
cache across steps. Runs are independent, so the chunking changes results at round-off only: a
hyperparameter that all runs of a chunk share is a Python number, one that differs a tensor, and
the two kernels can round differently (for the same chunks the results are bit-identical).
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncprop._validation import check_choice, check_nonnegative, check_positive_int
from ncprop.metrics import nc_metrics
from ncprop.optim import registry as _registry
from ncprop.optim.core import apply_update, init_state

__all__ = ["BatchedResult", "train_batched", "train_single", "closed_form_gradients", "initial_parameters"]

MODELS = ("ufm", "fixed")
RUN_METRICS = ("loss", "accuracy")
"""Metrics computed here besides :func:`ncprop.metrics.nc_metrics`: full-batch training loss and accuracy."""


@dataclass
class BatchedResult:
    """The outcome of ``R`` stacked runs.

    Attributes:
        optimizer: registry name.
        hyperparameters: one dict of canonical hyperparameters per run (as ``apply_update`` read them).
        seeds: one seed per run.
        weight: (R, K, p) final classifier weights.
        bias: (R, K) final biases, or None without bias.
        features: (R, N, p) final features (the fixed ones for ``model="fixed"``).
        labels: (N,) labels shared by every run.
        history: ``[(step, {metric: Tensor(R,)})]`` at step 0, every ``record_every`` steps and at the end.
        final: ``{metric: Tensor(R,)}`` at the last step.
        diverged: (R,) bool, a NaN/Inf was seen in the run's parameters.
        diverged_at: (R,) int64, the first recorded step where it was seen, -1 if never.
        chunk_size: the most runs trained together (1 for :func:`train_single`).
    """

    optimizer: str
    hyperparameters: list[dict[str, Any]]
    seeds: list[int]
    weight: Tensor
    bias: Tensor | None
    features: Tensor
    labels: Tensor
    history: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)
    final: dict[str, Tensor] = field(default_factory=dict)
    diverged: Tensor | None = None
    diverged_at: Tensor | None = None
    chunk_size: int = 1

    @property
    def num_runs(self) -> int:
        return self.weight.shape[0]


# ----------------------------------------------------------------------------------------- inputs


def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, Tensor):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of integers (one per run), got {seeds!r}")
    out = []
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds[{i}] must be an integer >= 0, got {s!r}")
        out.append(int(s))
    return out


def _per_run_dicts(hyperparameters: Any, num_runs: int) -> list[dict[str, Any]]:
    """``{name: value or R values}`` or R dicts -> R dicts of plain Python values."""
    if isinstance(hyperparameters, Mapping):
        runs: list[dict[str, Any]] = [{} for _ in range(num_runs)]
        for key, value in hyperparameters.items():
            if isinstance(value, Tensor):
                value = value.tolist()
            if isinstance(value, (list, tuple)):
                if len(value) != num_runs:
                    raise ValueError(
                        f"hyperparameter {key!r} has {len(value)} values but there are {num_runs} runs (seeds)"
                    )
                for run, v in zip(runs, value):
                    run[key] = v
            else:
                for run in runs:
                    run[key] = value
        return runs
    if isinstance(hyperparameters, Sequence) and not isinstance(hyperparameters, (str, bytes)):
        if len(hyperparameters) != num_runs:
            raise ValueError(
                f"hyperparameters has {len(hyperparameters)} dicts but there are {num_runs} runs (seeds)"
            )
        out = []
        for i, h in enumerate(hyperparameters):
            if not isinstance(h, Mapping):
                raise ValueError(f"hyperparameters[{i}] must be a dict of hyperparameters, got {h!r}")
            out.append({k: (v.item() if isinstance(v, Tensor) else v) for k, v in h.items()})
        return out
    raise ValueError(
        "hyperparameters must be a dict {name: value or one value per run} or a list of one dict per run, "
        f"got {hyperparameters!r}"
    )


def _optimizer_info(optimizer: Any) -> _registry.OptimizerInfo:
    info = optimizer if isinstance(optimizer, _registry.OptimizerInfo) else _registry.get(optimizer)
    if info.direction is None:
        raise ValueError(
            f"optimizer {info.name!r} is not built from ncprop.optim.core (no direction); "
            "the batched engine can only run core-built optimizers"
        )
    return info


def _canonical_runs(info: _registry.OptimizerInfo, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate each run's hyperparameters exactly as the optimizer preset does, by building it on a
    dummy parameter, and read the completed values from the built optimizer's parameter group: the
    values its ``apply_update`` calls would read, preset defaults included (Adam's and Lion's beta1
    default to 0.9, Lion's beta2 to 0.99, which ``canonical_hyperparameters`` does not know)."""
    seen: dict[tuple, dict[str, Any]] = {}
    out = []
    dummy = [nn.Parameter(torch.zeros(1))]
    for i, hp in enumerate(runs):
        key = tuple(sorted((k, repr(v)) for k, v in hp.items()))
        if key not in seen:
            try:
                group = info.build(dummy, **hp).param_groups[0]
            except (ValueError, TypeError) as error:
                raise ValueError(f"run {i} ({info.name}, hyperparameters {hp}): {error}") from None
            canonical = info.canonical_hyperparameters(**hp)
            canonical.update({k: group[k] for k in _registry.CANONICAL if k in group})
            seen[key] = canonical
        out.append(dict(seen[key]))
    return out


def _feature_decays(feature_weight_decay: Any, canonical: list[dict[str, Any]]) -> list[float]:
    if feature_weight_decay is None:
        return [float(hp["weight_decay"]) for hp in canonical]
    values = feature_weight_decay
    if isinstance(values, Tensor):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        values = [values] * len(canonical)
    if len(values) != len(canonical):
        raise ValueError(
            f"feature_weight_decay has {len(values)} values but there are {len(canonical)} runs (seeds)"
        )
    for v in values:
        check_nonnegative("feature_weight_decay", v)
    return [float(v) for v in values]


def _labels(labels: Any, num_classes: int, per_class: int | None, n_features: int | None) -> Tensor:
    if labels is None:
        if per_class is None:
            raise ValueError("give per_class (samples per class) or labels")
        check_positive_int("per_class", per_class)
        labels = torch.arange(num_classes).repeat_interleave(per_class)
    else:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D integer tensor, got shape {tuple(labels.shape)} "
                             f"dtype {labels.dtype}")
        labels = labels.to(torch.int64).cpu()
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
        if per_class is not None:
            check_positive_int("per_class", per_class)
            if labels.numel() != per_class * num_classes:
                raise ValueError(f"per_class={per_class} with num_classes={num_classes} means "
                                 f"{per_class * num_classes} samples, but labels has {labels.numel()}")
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        raise ValueError(f"every class needs a sample; class {int((counts == 0).nonzero()[0])} has none")
    if n_features is not None and n_features != labels.numel():
        raise ValueError(f"features have {n_features} samples but labels have {labels.numel()}")
    return labels


def _features_input(features: Any, num_runs: int, feature_dim: int) -> Tensor | None:
    if features is None:
        return None
    features = torch.as_tensor(features)
    if not features.dtype.is_floating_point:
        raise ValueError(f"features must be a floating-point tensor, got dtype {features.dtype}")
    if features.ndim == 2:
        features = features.unsqueeze(0).expand(num_runs, -1, -1)
    if features.ndim != 3 or features.shape[0] != num_runs or features.shape[2] != feature_dim:
        raise ValueError(f"features must have shape (N, p) or (R, N, p) with R={num_runs}, p={feature_dim}; "
                         f"got {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf")
    return features.detach().cpu()


def _check_problem(model: str, num_classes: int, feature_dim: int, steps: int, record_every: int | None) -> None:
    """The checks :func:`train_batched` and :func:`train_single` share."""
    check_choice("model", model, MODELS)
    check_positive_int("num_classes", num_classes, minimum=2)
    check_positive_int("feature_dim", feature_dim)
    check_positive_int("steps", steps, minimum=0)
    if record_every is not None:
        check_positive_int("record_every", record_every)


def _schedule(lr_schedule: Callable[[int], float] | None, steps: int) -> list[float] | None:
    if lr_schedule is None:
        return None
    if not callable(lr_schedule):
        raise ValueError(f"lr_schedule must be a callable step -> float, got {lr_schedule!r}")
    out = []
    for t in range(steps):
        m = lr_schedule(t)
        if isinstance(m, Tensor):
            m = m.item()
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"lr_schedule({t}) must be a finite number >= 0, got {m!r}")
        out.append(float(m))
    return out


# ------------------------------------------------------------------------------------ the maths


def initial_parameters(seed: int, *, num_classes: int, feature_dim: int, num_samples: int,
                       draw_features: bool, init_scale: float = 1.0,
                       weight_init_scale: float | None = None) -> tuple[Tensor, Tensor | None]:
    """Run ``seed``'s float64 initial ``W`` (K, p) and, when ``draw_features``, ``H`` (N, p), drawn on
    the CPU from ``torch.Generator().manual_seed(seed)`` in that order (``W`` first)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale_w = 1.0 / math.sqrt(feature_dim) if weight_init_scale is None else weight_init_scale
    w = torch.randn(num_classes, feature_dim, generator=gen, dtype=torch.float64) * scale_w
    h = None
    if draw_features:
        h = torch.randn(num_samples, feature_dim, generator=gen, dtype=torch.float64) * init_scale
    return w, h


def closed_form_gradients(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                          *, out: tuple[Tensor | None, Tensor, Tensor | None] | None = None,
                          need_features: bool = True,
                          target: Tensor | None = None) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Gradients of the mean cross-entropy ``(1/N) sum_i CE(W h_i + b, y_i)`` for stacked runs.

    ``features`` (R, N, p), ``weight`` (R, K, p), ``bias`` (R, K) or None, ``labels`` (N,). Returns
    ``(dH, dW, db)`` with ``G = (softmax(H W^T + b) - onehot(y)) / N``: ``dH = G W`` (None unless
    ``need_features``), ``dW = G^T H``, ``db = sum_i G_i`` (None without bias). ``out`` gives
    preallocated result tensors (views are fine) to write into; ``target`` optionally gives the
    precomputed ``onehot(y)^T / N`` in the features' dtype, (K, N) or (R, K, N) (a contiguous
    (R, K, N) copy makes the subtraction a plain pass instead of a broadcast, about 5x faster).

    The logits are formed transposed, ``Z^T = W H^T`` (R, K, N): with K small, MKL's batched GEMM is
    about twice as fast in this orientation (long output rows) as for ``Z = H W^T`` (R, N, K), and the
    softmax then reduces over K across contiguous rows of N. The maths is the same.
    """
    n = features.shape[-2]
    k = weight.shape[-2]
    ht = features.transpose(1, 2)
    if bias is None:
        zt = torch.bmm(weight, ht)
    else:
        zt = torch.baddbmm(bias.unsqueeze(2), weight, ht)
    if target is None:
        target = F.one_hot(labels, k).T.to(zt.dtype).mul_(1.0 / n)
    # G^T = softmax(Z^T over K) / N - onehot^T / N: one fused softmax kernel (it subtracts the
    # maximum over K itself) and two in-place passes, instead of seven passes spelled out.
    gt = torch.softmax(zt, dim=1).mul_(1.0 / n).sub_(target)
    out_h, out_w, out_b = out if out is not None else (None, None, None)
    # The products go straight into ``out``. Keep it contiguous where speed matters: into a strided
    # view torch's CPU bmm loops over the runs with one GEMM each (train_batched lays H and W out so
    # that their gradients are contiguous views).
    dh = torch.bmm(gt.transpose(1, 2), weight, out=out_h) if need_features else None
    dw = torch.bmm(gt, features, out=out_w)
    db = None
    if bias is not None:
        db = torch.sum(gt, dim=2, out=out_b) if out_b is not None else gt.sum(dim=2)
    return dh, dw, db


def _run_metrics(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                 num_classes: int) -> tuple[dict[str, Tensor], Tensor]:
    """Metrics (float64, on CPU) for stacked runs, NaN for runs with non-finite parameters.

    Returns ``(metrics, finite)`` with ``finite`` (R,) bool."""
    r = weight.shape[0]
    finite = torch.isfinite(weight).flatten(1).all(1) & torch.isfinite(features).flatten(1).all(1)
    if bias is not None:
        finite &= torch.isfinite(bias).all(1)
    idx = finite.nonzero().squeeze(1)
    out: dict[str, Tensor] = {}
    if idx.numel() > 0:
        h = features[idx].to(torch.float64)
        w = weight[idx].to(torch.float64)
        b = None if bias is None else bias[idx].to(torch.float64)
        lab = labels.to(h.device)
        sub = nc_metrics(h, lab, w, b, num_classes=num_classes)
        logits = h @ w.transpose(1, 2)
        if b is not None:
            logits = logits + b.unsqueeze(1)
        sub["loss"] = F.cross_entropy(logits.transpose(1, 2), lab.unsqueeze(0).expand(idx.numel(), -1),
                                      reduction="none").mean(1)
        sub["accuracy"] = (logits.argmax(-1) == lab).to(torch.float64).mean(1)
        for key, value in sub.items():
            full = torch.full((r,), math.nan, dtype=torch.float64)
            full[idx.cpu()] = value.detach().to("cpu", torch.float64)
            out[key] = full
    else:
        nan = torch.full((r,), math.nan, dtype=torch.float64)
        probe = nc_metrics(torch.eye(num_classes, dtype=torch.float64), torch.arange(num_classes),
                           torch.eye(num_classes, dtype=torch.float64), num_classes=num_classes)
        out = {key: nan.clone() for key in (*probe, *RUN_METRICS)}
    return out, finite.cpu()


def _chunks(canonical: list[dict[str, Any]], feat_decays: list[float] | None, size: int) -> list[list[int]]:
    """Runs grouped into chunks of at most ``size``: runs sorted by hyperparameters, and a chunk closed
    early (once at least half full) where a group of runs sharing all but ``lr`` ends, so that more
    hyperparameters are one number per chunk (Python numbers let ``apply_update`` use scalar kernels).
    Runs are independent: the grouping changes no result."""
    def key(i: int) -> tuple:
        hp = canonical[i]
        rest = tuple(float(hp[k]) for k in ("momentum", "weight_decay", "beta2", "eps", "dampening", "coupled_share"))
        return rest + ((feat_decays[i],) if feat_decays is not None else ())
    order = sorted(range(len(canonical)), key=lambda i: (key(i), float(canonical[i]["lr"]), i))
    chunks: list[list[int]] = [[]]
    for i in order:
        current = chunks[-1]
        if current and (len(current) >= size or (2 * len(current) >= size and key(i) != key(current[0]))):
            chunks.append(current := [])
        current.append(i)
    return chunks


def _record_steps(steps: int, record_every: int | None) -> list[int]:
    if record_every is None:
        marks = [0, steps]
    else:
        marks = list(range(0, steps + 1, record_every))
        if marks[-1] != steps:
            marks.append(steps)
    return sorted(set(marks))


def _default_chunk(num_runs: int, per_run_elements: int, dtype: torch.dtype, device: torch.device) -> int:
    if device.type != "cpu":
        return num_runs
    # Keep a chunk's parameters, gradient, two state buffers and the update's temporaries (about
    # 12 tensors of the parameters' size) within about 16 MiB (of the order of a last-level cache):
    # large enough that the ~20 kernel launches of a step are amortised over many runs, small enough
    # to stay in cache across the steps.
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_run = 12 * per_run_elements * itemsize
    return max(1, min(num_runs, (16 << 20) // max(per_run, 1)))


# -------------------------------------------------------------------------------------- engines


def _per_row(values: list[float], rows: list[int], dtype: torch.dtype, device: torch.device) -> float | Tensor:
    """A hyperparameter for a parameter of stacked rows, where ``values[i]`` applies to the next
    ``rows[i]`` rows: the Python number when all values agree, else a (sum(rows), 1) tensor
    (``apply_update`` takes either; the number lets it use fused scalar kernels and skip terms that
    are exactly 0, e.g. the coupled term of AdamW)."""
    first = values[0]
    if all(v == first for v in values):
        return first
    column = torch.tensor(values, dtype=dtype).repeat_interleave(torch.tensor(rows))
    return column.reshape(-1, 1).to(device)


class _Chunk(NamedTuple):
    """What training one chunk of runs produced (its runs' indices in the batch, in order)."""

    members: list[int]
    weight: Tensor
    features: Tensor | None
    bias: Tensor | None
    history: list[dict[str, Tensor]]
    diverged_at: Tensor


def _map_chunks(train_chunk: Callable[[list[int]], _Chunk], chunks: list[list[int]], workers: int,
                device: torch.device) -> list[_Chunk]:
    """``[train_chunk(c) for c in chunks]`` on up to ``workers`` cores.

    On Linux CPUs the workers are forked processes; elsewhere (other systems, GPUs) threads. Threads
    share one GIL, which each of a step's ~20 kernel launches must take back: measured on the
    2-core issue #7 machine, two threads run 200,000-element in-place ops at 1.4x the speed of one
    (20,000-element ops at 0.6x), where two processes run at 2x. Forked children inherit the inputs,
    send their chunks back by value through a pipe, and run one torch thread each.
    """
    workers = min(workers, len(chunks))
    if workers == 1:
        return [train_chunk(members) for members in chunks]
    # (A daemonic process, such as a multiprocessing.Pool worker, may not have children: threads there.)
    if device.type == "cpu" and sys.platform.startswith("linux") and not multiprocessing.current_process().daemon:
        return _map_in_forked_processes(train_chunk, chunks, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(train_chunk, chunks))


def _map_in_forked_processes(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    context = multiprocessing.get_context("fork")
    jobs = []
    try:
        for w in range(workers):
            share = list(range(w, len(items), workers))  # chunks are of similar size: deal them out
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_forked_worker, args=(fn, [items[i] for i in share], send),
                                      name=f"ncprop-batched-{w}", daemon=True)
            process.start()
            send.close()
            jobs.append((process, receive, share))
        results: list[Any] = [None] * len(items)
        for process, receive, share in jobs:
            try:
                status, payload, caught = pickle.loads(receive.recv_bytes())
            except EOFError:
                process.join()
                raise RuntimeError(f"batched worker process {process.name} died (exit code {process.exitcode}) "
                                   "before returning its chunks") from None
            for warning in caught:
                warnings.warn_explicit(*warning)
            if status == "error":
                raise payload
            for i, result in zip(share, payload):
                results[i] = result
            process.join()
        return results
    finally:
        for process, _, _ in jobs:
            if process.is_alive():
                process.terminate()
                process.join()


def _forked_worker(fn: Callable[[Any], Any], items: list[Any], send: Any) -> None:
    """Body of a forked worker: results (or the exception), and the warnings raised, pickled by value
    (not through torch's shared-memory tensor reduction) back to the parent."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            message: tuple = ("ok", [fn(item) for item in items])
        except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent
            detail = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            failure: BaseException = error
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:  # noqa: BLE001 - an exception that cannot be pickled travels as text
                failure = RuntimeError(f"batched worker process failed:\n{detail}")
            else:
                if hasattr(error, "add_note"):
                    error.add_note(f"raised in a batched worker process:\n{detail}")
            message = ("error", failure)
    records = [(str(w.message), w.category, w.filename, w.lineno) for w in caught]
    send.send_bytes(pickle.dumps((*message, records)))
    send.close()


def train_batched(
    optimizer: str | _registry.OptimizerInfo,
    hyperparameters: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    *,
    model: str = "ufm",
    num_classes: int,
    feature_dim: int,
    per_class: int | None = None,
    steps: int,
    features: Tensor | None = None,
    labels: Tensor | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    bias: bool = False,
    record_every: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    feature_weight_decay: float | Sequence[float] | None = None,
    init_scale: float = 1.0,
    weight_init_scale: float | None = None,
    chunk_size: int | None = None,
    workers: int = 1,
) -> BatchedResult:
    """Train ``R = len(seeds)`` independent runs of a toy model as one batch.

    Args:
        optimizer: a registry name (``"sgd"``, ``"adamw"``, ...) or an ``OptimizerInfo`` built from the core.
        hyperparameters: ``{name: value or one value per run}`` or one dict per run, in the registry's
            canonical names (``lr``, ``momentum`` (beta1 for Adam-type and Lion), ``weight_decay``,
            ``beta2``, ``eps``, ``dampening``, ``nesterov``, ``coupled_share``); validated run by run
            as the optimizer preset validates them. ``nesterov`` must be the same for every run.
        seeds: one integer seed per run (initialisation, see the module docstring).
        model: ``"ufm"`` (features trained) or ``"fixed"`` (linear head on fixed features).
        num_classes, feature_dim: K and p.
        per_class: samples per class (labels ``0..0, 1..1, ...``); or give ``labels``.
        steps: number of full-batch updates.
        features: (N, p) or (R, N, p) initial UFM features, or the fixed features; drawn from each
            run's seed when None.
        labels: (N,) labels; default ``arange(K).repeat_interleave(per_class)``.
        lr_schedule: ``t -> multiplier`` of every run's lr at update ``t + 1`` (t from 0).
        bias: train a classifier bias (same weight decay as ``W``).
        record_every: record metrics every this many steps (always at 0 and at the end); None
            records only step 0 and the end.
        dtype: float64 (default, reference precision) or float32 (faster).
        device: where the batch lives.
        feature_weight_decay: UFM feature decay (number or one per run); default: each run's weight_decay.
        init_scale: standard deviation of drawn features.
        weight_init_scale: standard deviation of ``W``; default ``1/sqrt(p)``.
        chunk_size: runs trained together (default: all on GPU, a cache-sized chunk on CPU).
        workers: cores that train chunks concurrently (forked processes on Linux CPUs, threads
            elsewhere; see ``_map_chunks``). Runs are independent, so results do not depend on it.
    """
    info = _optimizer_info(optimizer)
    _check_problem(model, num_classes, feature_dim, steps, record_every)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    check_nonnegative("init_scale", init_scale)
    if weight_init_scale is not None:
        check_nonnegative("weight_init_scale", weight_init_scale)
    if not isinstance(bias, bool):
        raise ValueError(f"bias must be a bool, got {bias!r}")
    device = torch.device(device)
    seeds = _check_seeds(seeds)
    r = len(seeds)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    check_positive_int("workers", workers)
    canonical = _canonical_runs(info, _per_run_dicts(hyperparameters, r))
    nesterov = {bool(hp["nesterov"]) for hp in canonical}
    if len(nesterov) > 1:
        raise ValueError("nesterov must be the same for every run of a batch; got both True and False")
    feat_decays = _feature_decays(feature_weight_decay, canonical) if model == "ufm" else None
    given = _features_input(features, r, feature_dim)
    labels = _labels(labels, num_classes, per_class, None if given is None else given.shape[1])
    n, k, p = labels.numel(), num_classes, feature_dim
    multipliers = _schedule(lr_schedule, steps)

    # Initial parameters, run by run from each seed (the only per-run Python loop).
    ws, hs = [], []
    for i, seed in enumerate(seeds):
        w, h = initial_parameters(seed, num_classes=k, feature_dim=p, num_samples=n, draw_features=given is None,
                                  init_scale=init_scale, weight_init_scale=weight_init_scale)
        ws.append(w)
        hs.append(given[i].to(torch.float64) if given is not None else h)
    w0 = torch.stack(ws).to(device=device, dtype=dtype)
    h0 = torch.stack(hs).to(device=device, dtype=dtype)

    keys = ("lr", "momentum", "weight_decay", "beta2", "eps", "dampening", "coupled_share")
    labels_dev = labels.to(device)
    target = F.one_hot(labels_dev, k).T.to(dtype).mul_(1.0 / n)  # onehot(y)^T / N, the same for all runs
    marks = _record_steps(steps, record_every)
    per_run_elements = (n + k) * p
    chunk = chunk_size or _default_chunk(r, per_run_elements, dtype, device)
    transforms = info.transforms

    def train_chunk(members: list[int]) -> _Chunk:
        sl_dev = torch.tensor(members, dtype=torch.int64).to(device)
        runs = [canonical[i] for i in members]
        fdecays = None if feat_decays is None else [feat_decays[i] for i in members]
        c = len(runs)
        # The chunk's trained parameters live in one buffer of rows of length p: for the UFM the
        # c*N feature rows, then the c*K classifier rows. H (c, N, p) and W (c, K, p) are contiguous
        # views of it, so the batched GEMMs write their gradients in place without a copy, and one
        # apply_update call steps both, with a hyperparameter that differs between runs given per
        # row, shape (rows, 1).
        feature_rows = c * n if model == "ufm" else 0
        head = {key: [float(h[key]) for h in runs] for key in keys}
        feature = dict(head, weight_decay=fdecays) if feature_rows else {key: [] for key in keys}
        row_counts = [n] * c * bool(feature_rows) + [k] * c
        hp: dict[str, Any] = {key: _per_row(feature[key] + head[key], row_counts, dtype, device) for key in keys}
        hp_b: dict[str, Any] = {key: _per_row(head[key], [1] * c, dtype, device) for key in keys}
        hp["nesterov"] = hp_b["nesterov"] = bool(runs[0]["nesterov"])
        base_lr, base_lr_b = hp["lr"], hp_b["lr"]

        flat = torch.empty(feature_rows + c * k, p, dtype=dtype, device=device)
        grad = torch.empty_like(flat)
        state = init_state(transforms, flat)
        w_c = flat[feature_rows:].view(c, k, p)
        w_c.copy_(w0[sl_dev])
        if model == "ufm":
            h_c = flat[:feature_rows].view(c, n, p)
            h_c.copy_(h0[sl_dev])
            out = (grad[:feature_rows].view(c, n, p), grad[feature_rows:].view(c, k, p), None)
        else:
            h_c = h0[sl_dev]
            out = (None, grad.view(c, k, p), None)
        b_c = torch.zeros(c, k, dtype=dtype, device=device) if bias else None
        target_c = target.expand(c, k, n).contiguous()
        if bias:
            grad_b = torch.empty_like(b_c)
            state_b = init_state(transforms, b_c)
            out = (out[0], out[1], grad_b)

        rows: list[dict[str, Tensor]] = []
        diverged_at = torch.full((c,), -1, dtype=torch.int64)

        def record() -> None:
            metrics, finite = _run_metrics(h_c, w_c, b_c, labels_dev, k)
            rows.append(metrics)
            diverged_at.copy_(torch.where((~finite) & (diverged_at < 0), step, diverged_at))

        step = 0
        if 0 in marks:
            record()
        for t in range(steps):
            if multipliers is not None:
                hp["lr"] = base_lr * multipliers[t]
                hp_b["lr"] = base_lr_b * multipliers[t]
            closed_form_gradients(h_c, w_c, b_c, labels_dev, out=out, need_features=model == "ufm", target=target_c)
            apply_update(transforms, flat, grad, state, hp)
            if bias:
                apply_update(transforms, b_c, grad_b, state_b, hp_b)
            step = t + 1
            if step in marks:
                record()
        return _Chunk(members, w_c, h_c if model == "ufm" else None, b_c, rows, diverged_at)

    # Chunks are independent runs: workers only change which core computes which chunk, never the
    # arithmetic, so the results are the same bit for bit.
    done = _map_chunks(train_chunk, _chunks(canonical, feat_decays, chunk), workers, device)

    final_h = h0.clone() if model == "ufm" else h0  # fixed features are never written
    final_w = w0.clone()
    b_all = torch.zeros(r, k, dtype=dtype, device=device) if bias else None
    diverged_at = torch.full((r,), -1, dtype=torch.int64)
    history = [(mark, {}) for mark in marks]
    for part in done:
        index = torch.tensor(part.members, dtype=torch.int64)
        final_w[index.to(device)] = part.weight
        if part.features is not None:
            final_h[index.to(device)] = part.features
        if bias:
            b_all[index.to(device)] = part.bias
        diverged_at[index] = part.diverged_at
        for (_, merged), metrics in zip(history, part.history):
            for key, value in metrics.items():
                merged.setdefault(key, torch.full((r,), math.nan, dtype=torch.float64))[index] = value
    return BatchedResult(
        optimizer=info.name, hyperparameters=canonical, seeds=seeds, weight=final_w, bias=b_all,
        features=final_h, labels=labels, history=history, final=history[-1][1],
        diverged=diverged_at >= 0, diverged_at=diverged_at, chunk_size=chunk,
    )


def train_single(
    optimizer: str | _registry.OptimizerInfo,
    hyperparameters: Mapping[str, Any],
    seed: int,
    *,
    model: str = "ufm",
    num_classes: int,
    feature_dim: int,
    per_class: int | None = None,
    steps: int,
    features: Tensor | None = None,
    labels: Tensor | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    bias: bool = False,
    record_every: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    feature_weight_decay: float | None = None,
    init_scale: float = 1.0,
    weight_init_scale: float | None = None,
) -> BatchedResult:
    """One run, trained the plain way: ``nn.Parameter``s, autograd on ``F.cross_entropy``, and the
    registry's ``torch.optim.Optimizer`` preset (``info.build``), one step at a time.

    Same arguments as :func:`train_batched` for one run (``hyperparameters`` one dict, ``seed`` one
    integer, ``features`` (N, p)); returns a :class:`BatchedResult` with ``R = 1``. It is the per-run
    reference the batched engine is tested and benchmarked against.
    """
    info = _optimizer_info(optimizer)
    _check_problem(model, num_classes, feature_dim, steps, record_every)
    if not isinstance(hyperparameters, Mapping):
        raise ValueError(f"hyperparameters must be one dict for train_single, got {hyperparameters!r}")
    (seed,) = _check_seeds([seed])
    (canonical,) = _canonical_runs(info, _per_run_dicts(dict(hyperparameters), 1))
    device = torch.device(device)
    given = _features_input(features, 1, feature_dim)
    labels = _labels(labels, num_classes, per_class, None if given is None else given.shape[1])
    n, k, p = labels.numel(), num_classes, feature_dim
    multipliers = _schedule(lr_schedule, steps)
    w0, h0 = initial_parameters(seed, num_classes=k, feature_dim=p, num_samples=n, draw_features=given is None,
                                init_scale=init_scale, weight_init_scale=weight_init_scale)
    if given is not None:
        h0 = given[0].to(torch.float64, copy=True)  # never train the caller's tensor in place

    weight = nn.Parameter(w0.to(device=device, dtype=dtype))
    b = nn.Parameter(torch.zeros(k, dtype=dtype, device=device)) if bias else None
    head = [weight] + ([b] if bias else [])
    groups: list[dict[str, Any]] = [{"params": head}]
    if model == "ufm":
        h = nn.Parameter(h0.to(device=device, dtype=dtype))
        (fwd,) = _feature_decays(feature_weight_decay, [canonical])
        groups.append({"params": [h], "weight_decay": fwd})
    else:
        h = h0.to(device=device, dtype=dtype)
    hp = {key: value for key, value in hyperparameters.items()}
    opt = info.build(groups, **hp)
    base_lr = [g["lr"] for g in opt.param_groups]
    labels_dev = labels.to(device)
    marks = _record_steps(steps, record_every)
    history = []
    diverged_at = torch.full((1,), -1, dtype=torch.int64)

    def record(step: int) -> None:
        with torch.no_grad():
            metrics, finite = _run_metrics(h.detach()[None], weight.detach()[None],
                                           None if b is None else b.detach()[None], labels_dev, k)
        history.append((step, metrics))
        if not bool(finite[0]) and diverged_at[0] < 0:
            diverged_at[0] = step

    if 0 in marks:
        record(0)
    for t in range(steps):
        if multipliers is not None:
            for group, lr in zip(opt.param_groups, base_lr):
                group["lr"] = lr * multipliers[t]
        opt.zero_grad(set_to_none=True)
        logits = h @ weight.T
        if b is not None:
            logits = logits + b
        F.cross_entropy(logits, labels_dev).backward()
        opt.step()
        if t + 1 in marks:
            record(t + 1)
    return BatchedResult(
        optimizer=info.name, hyperparameters=[canonical], seeds=[seed], weight=weight.detach()[None].clone(),
        bias=None if b is None else b.detach()[None].clone(), features=h.detach()[None].clone(), labels=labels,
        history=history, final=history[-1][1], diverged=diverged_at >= 0, diverged_at=diverged_at,
    )
