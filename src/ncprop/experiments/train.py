"""One training run: :func:`train_run` (cross-entropy, mini-batch, on the metric schedule).

At every epoch of :func:`ncprop.experiments.config.metric_epochs` the run records the training loss
and accuracy, the test accuracy, every NC metric of :mod:`ncprop.metrics` on the *training* set and
NC4 on the *test* set (``test_nc4``: agreement of the classifier with the nearest *training*
class mean, the paper's protocol). Epoch 0 is the
initialisation.

Divergence: a non-finite training loss (or non-finite features) ends the run with status
``"diverged"``; the records up to that point are kept. Nothing waits, prints or raises.

Checkpoints: model, optimizer, shuffling-generator state, epoch and the records so far are written to
``checkpoint_dir/<run_id>.pt`` atomically (temporary file, then ``os.replace``) at every metric epoch
and every ``checkpoint_every`` epochs; a run started again with the same ``checkpoint_dir`` continues
from the last checkpoint and ends with the same numbers as an uninterrupted run.

Randomness: the model is initialised from ``seed`` (``build_model(seed=...)``, which forks the RNG)
and the batch order comes from a ``torch.Generator`` seeded from ``seed``; the global RNG is never used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from ncprop.experiments.config import RunConfig, metric_epochs
from ncprop.experiments.schedules import lr_factor

STATUSES = ("done", "diverged", "failed")
IN_MEMORY_LIMIT = 64 * 2**20  # features up to this many bytes are analysed in memory (one pass)


@dataclass
class RunResult:
    """What one run produced. ``history`` is ``[(epoch, {name: value}), ...]`` in epoch order."""

    run_id: str
    status: str
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None
    resumed_from: int | None = None

    @property
    def final(self) -> dict[str, float]:
        return dict(self.history[-1][1]) if self.history else {}

    @property
    def last_epoch(self) -> int:
        return self.history[-1][0] if self.history else -1


# ---------------------------------------------------------------------------------------------- data
_DATA_CACHE: dict[str, Any] = {}


def _data_key(config: RunConfig) -> str:
    blob = json.dumps({"dataset": config.dataset, "options": config.data_options, "model": config.model == "ufm"},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_data(config: RunConfig, cache_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """``(train, test)`` ArrayDatasets for ``config`` (``(labels, None)`` for the UFM).

    ``data_options`` go to ``ncprop.data.load_dataset`` except two read here:
    ``train_per_class`` (keep a class-balanced random subset of that many training samples per
    class, drawn with ``subset_seed``, default 0; the test split is kept whole).

    Data sets are cached in the process and, when ``cache_dir`` is given, on disk (generating
    MNIST-1D takes seconds; a sweep's workers then generate it once).
    """
    key = _data_key(config)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    path = Path(cache_dir) / f"data-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        data = torch.load(path, weights_only=False)
    else:
        data = _make_data(config)
        if path is not None:
            _atomic_torch_save(data, path)
    _DATA_CACHE[key] = data
    return data


def _make_data(config: RunConfig) -> tuple[Any, Any]:
    options = dict(config.data_options)
    if config.model == "ufm":
        k = int(options.get("num_classes", 10))
        per_class = int(options.get("per_class", 10))
        return torch.arange(k).repeat_interleave(per_class), None
    from ncprop.data import class_balanced_subset, load_dataset

    per_class = options.pop("train_per_class", None)
    subset_seed = int(options.pop("subset_seed", 0))
    train = load_dataset(config.dataset, split="train", **options)
    test = load_dataset(config.dataset, split="test", **options)
    if per_class is not None:  # a class-balanced training subset; the test set stays whole
        train = class_balanced_subset(train, int(per_class), torch.Generator().manual_seed(subset_seed))
    return train, test


# ---------------------------------------------------------------------------------------------- model
def build_run(config: RunConfig, train: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (initialised from ``config.seed``) and its optimizer, weight decay by param groups."""
    from ncprop.models import build_model, param_groups
    from ncprop.optim import build

    dtype = getattr(torch, config.dtype)
    options = dict(config.model_options)
    if config.model == "ufm":
        gen = torch.Generator().manual_seed(config.seed)
        num_classes = int(config.data_options.get("num_classes", 10))
        model = build_model("ufm", num_classes=num_classes, labels=train, seed=config.seed, generator=gen,
                            feature_dim=int(options.pop("feature_dim", 32)), dtype=dtype, device=config.device,
                            **options)
    else:
        model = build_model(config.model, in_shape=train.in_shape, num_classes=train.num_classes,
                            seed=config.seed, dtype=dtype, device=config.device, **options)
    groups = param_groups(model, config.weight_decay, no_decay_on_norm_and_bias=not config.decay_norm_and_bias)
    for g in groups:
        g.pop("names", None)
    hp = config.hyperparameters()
    hp.pop("weight_decay", None)
    optimizer = build(config.optimizer, groups, weight_decay=config.weight_decay, **hp)
    return model, optimizer


def _train_batches(config: RunConfig, train: Any, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    dtype = getattr(torch, config.dtype)
    if config.model == "ufm":
        n = len(train)
        bs = config.batch_size or n
        order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            yield idx.to(config.device), train[idx].to(config.device)
        return
    bs = config.batch_size or len(train)
    yield from train.batches(bs, shuffle=True, generator=gen, device=config.device, dtype=dtype)


def _eval_batches(config: RunConfig, data: Any) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    dtype = getattr(torch, config.dtype)
    if config.model == "ufm":
        return lambda: iter([(torch.arange(len(data), device=config.device), data.to(config.device))])
    bs = max(config.batch_size, 1024) if config.batch_size else len(data)
    return lambda: data.batches(bs, device=config.device, dtype=dtype)


# ---------------------------------------------------------------------------------------------- metrics
def _evaluate(model: torch.nn.Module, batches: Callable[[], Iterator], num_classes: int, device: str,
              prefix: str, nc_keys: tuple[str, ...] | None,
              class_means: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor | None]:
    """Loss, accuracy and NC metrics over one data set, and the data set's class means.

    Without ``class_means`` the metrics use the data set's own class means (in memory when small,
    else two streaming passes) and those means are returned. With ``class_means`` (the training
    set's) the metrics are measured against them in the same single pass (NC4: agreement with the
    training set's nearest-class-mean classifier, the paper's protocol for test NC4); None is returned.
    """
    from ncprop.metrics import NCAccumulator, collect_nc_metrics, nc_metrics

    feature_dim = model.classifier.in_features
    given = None
    if class_means is not None:
        given = NCAccumulator(num_classes, feature_dim, device=device, class_means=class_means)
    feats, labels, loss_sum, correct, n = [], [], 0.0, 0, 0
    stream = False
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x, y in batches():
            logits, h = model.forward_features(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
            if given is not None:
                given.update_scatter(h, y, logits=logits)
            elif not stream:
                feats.append(h)
                labels.append(y)
                if sum(f.numel() * f.element_size() for f in feats) > IN_MEMORY_LIMIT:
                    stream, feats, labels = True, [], []
    model.train(was_training)
    out = {f"{prefix}loss": loss_sum / max(n, 1), f"{prefix}acc": correct / max(n, 1)}
    if not math.isfinite(out[f"{prefix}loss"]):
        return out, None
    means = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics come back as NaN; the DB stores them as NULL
        if given is not None:
            w = model.classifier.weight.detach()
            try:
                nc = {k: float(v) for k, v in given.compute(w).items()}
            except ValueError:  # non-finite features or logits: the metrics are undefined
                nc = {k: float("nan") for k in (nc_keys or ())}
        elif stream:
            first = NCAccumulator(num_classes, feature_dim, device=device)
            model.eval()
            with torch.no_grad():
                for x, y in batches():
                    first.update_means(model.features(x), y)
            model.train(was_training)
            means = first.finalize_means()
            nc = collect_nc_metrics(model, batches, num_classes=num_classes, device=device, class_means=means)
        else:
            h, y = torch.cat(feats).double(), torch.cat(labels)
            w = model.classifier.weight.detach()
            b = model.classifier.bias.detach() if model.classifier.bias is not None else None
            nc = {k: float(v) for k, v in nc_metrics(h, y, w, b, num_classes=num_classes).items()}
            onehot = F.one_hot(y, num_classes).to(h.dtype)
            means = (onehot.T @ h) / onehot.sum(0).clamp(min=1).unsqueeze(1)
    keys = nc_keys if nc_keys is not None else tuple(nc)
    out.update({f"{prefix}{k}": nc[k] for k in keys})
    return out, means


def evaluate(model: torch.nn.Module, config: RunConfig, train: Any, test: Any) -> dict[str, float]:
    """Training loss/accuracy and every NC metric on the training set; accuracy and NC4 on the test
    set, where NC4 compares the classifier with the nearest *training* class mean (the paper's protocol)."""
    num_classes = model.num_classes
    out, means = _evaluate(model, _eval_batches(config, train), num_classes, config.device, "", None)
    out = {("train_loss" if k == "loss" else "train_acc" if k == "acc" else k): v for k, v in out.items()}
    if test is not None and "nc0" in out and means is not None:
        t, _ = _evaluate(model, _eval_batches(config, test), num_classes, config.device, "test_", ("nc4",),
                         class_means=means)
        out.update(t)
    return out


# ---------------------------------------------------------------------------------------------- loop
def checkpoint_path(checkpoint_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(checkpoint_dir) / f"{run_id}.pt"


def train_run(config: RunConfig, *, checkpoint_dir: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None,
              show_progress: bool = False) -> RunResult:
    """Train ``config`` to the end (or to divergence) and return its :class:`RunResult`.

    Exceptions other than divergence propagate (the sweep records them as ``"failed"``).
    ``show_progress`` draws an epoch bar through :func:`ncprop.progress.progress` (``ncprop run``).
    """
    start = time.perf_counter()
    run_id = config.run_id
    train, test = load_data(config, cache_dir)
    model, optimizer = build_run(config, train)
    gen = torch.Generator().manual_seed(config.seed)
    schedule = set(metric_epochs(config))
    n = len(train)
    steps_per_epoch = math.ceil(n / (config.batch_size or n))
    history: list[tuple[int, dict[str, float]]] = []
    first_epoch, resumed = 1, None
    ckpt = checkpoint_path(checkpoint_dir, run_id) if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=config.device)
        if state.get("run_id") == run_id:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            history = list(state["history"])
            resumed = int(state["epoch"])
            first_epoch = resumed + 1

    def save(epoch: int) -> None:
        if ckpt is not None:
            _atomic_torch_save({"run_id": run_id, "epoch": epoch, "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "generator": gen.get_state(),
                                "history": history}, ckpt)

    def record(epoch: int) -> bool:
        metrics = evaluate(model, config, train, test)
        metrics["step"] = float(epoch * steps_per_epoch)
        metrics["lr"] = config.lr * lr_factor(config.schedule, max(epoch * steps_per_epoch - 1, 0),
                                              steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                                              warmup=config.warmup)
        history.append((epoch, metrics))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        return math.isfinite(metrics["train_loss"]) and "nc0" in metrics

    if first_epoch == 1:
        if not record(0):
            return RunResult(run_id, "diverged", history, time.perf_counter() - start, "non-finite at init")
    model.train()
    epochs = range(first_epoch, config.epochs + 1)
    if show_progress:
        from ncprop.progress import progress

        epochs = progress(epochs, total=len(epochs), desc=f"run {run_id}")
    for epoch in epochs:
        loss_sum = torch.zeros((), dtype=torch.float64, device=config.device)
        for i, (x, y) in enumerate(_train_batches(config, train, gen)):
            factor = lr_factor(config.schedule, (epoch - 1) * steps_per_epoch + i, steps_per_epoch=steps_per_epoch,
                               epochs=config.epochs, warmup=config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        if not bool(torch.isfinite(loss_sum)):
            history.append((epoch, {"train_loss": float("nan")}))
            return RunResult(run_id, "diverged", history, time.perf_counter() - start,
                             f"non-finite training loss in epoch {epoch}", resumed)
        if epoch in schedule:
            if not record(epoch):
                return RunResult(run_id, "diverged", history, time.perf_counter() - start,
                                 f"non-finite loss or features at epoch {epoch}", resumed)
        if epoch < config.epochs and (epoch in schedule or (
                config.checkpoint_every and epoch % config.checkpoint_every == 0)):
            save(epoch)
    return RunResult(run_id, "done", history, time.perf_counter() - start, None, resumed)


# ---------------------------------------------------------------------------------------------- batched
def train_group(configs: tuple[RunConfig, ...] | list[RunConfig]) -> list[RunResult]:
    """UFM runs that differ only in hyperparameters and seed, trained as one stack of tensors by
    ``ncprop.batched.train_batched`` (full batch: one epoch = one update; ``W ~ N(0, 1/p)``,
    ``H ~ N(0, 1)`` from each run's seed, no bias unless ``model_options["bias"]``).

    Metrics are recorded at the config's metric epochs; ``train_loss``/``train_acc`` are the
    full-batch loss and accuracy. A run that diverges keeps its records up to the divergence.
    """
    from ncprop.batched import train_batched

    start = time.perf_counter()
    c0 = configs[0]
    for c in configs:
        if c.model != "ufm" or c.batch_size != 0:
            raise ValueError(f"train_group trains full-batch UFM runs (model='ufm', batch_size=0); got "
                             f"model={c.model!r}, batch_size={c.batch_size!r} in run {c.run_id}")
    options = dict(c0.model_options)
    k = int(c0.data_options.get("num_classes", 10))
    marks = metric_epochs(c0)
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    every = math.gcd(*gaps) if gaps else c0.epochs
    res = train_batched(
        c0.optimizer, [c.hyperparameters() for c in configs], [c.seed for c in configs], model="ufm",
        num_classes=k, feature_dim=int(options.get("feature_dim", 32)),
        per_class=int(c0.data_options.get("per_class", 10)), steps=c0.epochs,
        lr_schedule=lambda t: lr_factor(c0.schedule, t, steps_per_epoch=1, epochs=c0.epochs, warmup=c0.warmup),
        bias=bool(options.get("bias", False)), record_every=every, dtype=getattr(torch, c0.dtype), device=c0.device)
    wall = (time.perf_counter() - start) / len(configs)
    rename = {"loss": "train_loss", "accuracy": "train_acc"}
    wanted = set(marks)
    out = []
    for i, c in enumerate(configs):
        history = []
        diverged_at = int(res.diverged_at[i]) if res.diverged is not None and bool(res.diverged[i]) else None
        for step, metrics in res.history:
            if step not in wanted or (diverged_at is not None and step >= diverged_at):
                continue
            rec = {rename.get(name, name): float(v[i]) for name, v in metrics.items()}
            rec["step"] = float(step)
            rec["lr"] = c.lr * lr_factor(c.schedule, max(step - 1, 0), steps_per_epoch=1, epochs=c.epochs,
                                         warmup=c.warmup)
            history.append((step, rec))
        if diverged_at is not None:
            history.append((diverged_at, {"train_loss": float("nan")}))
            out.append(RunResult(c.run_id, "diverged", history, wall, f"non-finite parameters at step {diverged_at}"))
        else:
            out.append(RunResult(c.run_id, "done", history, wall))
    return out
