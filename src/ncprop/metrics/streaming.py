"""Neural Collapse metrics in two streaming passes over batches (THEORY.md section 2).

Pass 1 (:meth:`NCAccumulator.update_means`, then :meth:`NCAccumulator.finalize_means`) accumulates
class counts and class sums with one product per batch (one-hot labels^T times features). Pass 2
(:meth:`NCAccumulator.update_scatter`) uses the frozen pass-1 means and one product per batch
(features times ``[M~; mu_G]^T``) to accumulate the K x K matrix ``A``, the within-class trace and
the NC4 agreement count. :meth:`NCAccumulator.compute` turns them into the metrics of
:data:`ncprop.metrics.METRIC_KEYS` with the same algebra as :func:`ncprop.metrics.nc_metrics`.

Given class means (``class_means=``): pass 1 is skipped and pass 2 measures the streamed samples
against those means, e.g. NC4 on a test set with the nearest-class-mean classifier built on the
*training* features (the paper's protocol) instead of the test set's own means.

Memory: O(K p) per run; no p x p matrix. Host syncs: one per batch (the label range check); the
NaN/Inf check of the features is deferred to :meth:`finalize_means` / :meth:`compute` (a non-finite
feature makes its class sum, and the K x K statistics, non-finite), so the passes stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ncprop._validation import check_choice, check_positive_int
from ncprop.metrics.functional import (
    GLOBAL_MEANS,
    _check_bias,
    _check_finite,
    _check_float_tensor,
    _check_labels,
    _check_num_classes,
    _check_weight,
    _class_means,
    _class_sums,
    _ClassMeans,
    _metrics_from_stats,
    _run_shape,
    _scatter_terms,
    _ScatterTerms,
)

__all__ = ["NCAccumulator", "collect_nc_metrics"]


class NCAccumulator:
    """Two-pass streaming accumulator of the NC metrics.

    Usage::

        acc = NCAccumulator(num_classes=10, feature_dim=512)
        for x, y in loader:                       # pass 1
            acc.update_means(model.features(x), y)
        acc.finalize_means()
        for x, y in loader:                       # pass 2: the same data, same order not needed
            h = model.features(x)
            acc.update_scatter(h, y, logits=model.classifier(h))
        metrics = acc.compute(model.classifier.weight, model.classifier.bias)

    Features may carry leading run dimensions, (..., B, p), fixed by the first batch; labels are
    (B,). The second pass must see the same samples as the first (checked through the class
    counts); it always uses the class means frozen by :meth:`finalize_means`: calling
    :meth:`update_scatter` before it, or :meth:`update_means` after it, raises RuntimeError.
    NC4 needs the logits (W h + b, bias included) in :meth:`update_scatter`; without them nc4 is NaN
    with a warning.

    Args:
        num_classes: K >= 2.
        feature_dim: p.
        device: where the statistics live; None means the device of the first batch.
        dtype: accumulation dtype (float64 by default; features are cast to it).
        global_mean: ``"class"`` (mean of class means, the default) or ``"sample"``.
        class_means: precomputed class means (..., K, p), e.g. ``acc.class_means`` of an
            accumulator run over the training set. Pass 1 is then skipped (the means count as
            finalized; :meth:`update_means` raises) and pass 2 may see any samples, whose class
            counts need not match anything: NC4 is the agreement of the classifier with the
            nearest of the *given* means, NC1 and ``tr_sw`` measure the streamed samples' scatter
            around them, and NC2/NC3 describe the given means.
        class_counts: (K,) samples per class behind ``class_means``; needed only with
            ``global_mean="sample"`` (mu_G is then the count-weighted mean of the given means).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        global_mean: str = "class",
        class_means: Tensor | None = None,
        class_counts: Tensor | None = None,
    ) -> None:
        self.num_classes = _check_num_classes(num_classes)
        check_positive_int("feature_dim", feature_dim)
        self.feature_dim = int(feature_dim)
        check_choice("global_mean", global_mean, GLOBAL_MEANS)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.global_mean = global_mean
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self._given = self._check_given_means(class_means, class_counts)
        self.reset()

    def _check_given_means(
        self, means: Tensor | None, counts: Tensor | None
    ) -> tuple[Tensor, Tensor | None] | None:
        if means is None:
            if counts is not None:
                raise ValueError("class_counts is given without class_means; give both or neither")
            return None
        means = _check_float_tensor("class_means", means, min_ndim=2)
        if tuple(means.shape[-2:]) != (self.num_classes, self.feature_dim):
            raise ValueError(
                f"class_means must have shape (..., {self.num_classes}, {self.feature_dim}) "
                f"(num_classes, feature_dim), got {tuple(means.shape)}"
            )
        _check_finite("class_means", means)
        if self.device is None:
            self.device = means.device
        means = means.detach().to(self.device, self.dtype)
        if counts is None:
            if self.global_mean == "sample":
                raise ValueError(
                    "global_mean='sample' with class_means needs class_counts (the samples per "
                    "class behind the means); got None"
                )
        else:
            counts = torch.as_tensor(counts).to(self.device, self.dtype)
            if tuple(counts.shape) != (self.num_classes,) or not bool((counts > 0).all()):
                raise ValueError(
                    f"class_counts must be ({self.num_classes},) positive counts, "
                    f"got {counts.tolist()}"
                )
        return means, counts

    def reset(self) -> None:
        """Forget both passes (the configuration, and any given class means, are kept)."""
        self._run_shape: tuple[int, ...] | None = None
        self._sums: Tensor | None = None
        self._counts: Tensor | None = None
        self._means: _ClassMeans | None = None
        self._terms: _ScatterTerms | None = None
        self._scatter_counts: Tensor | None = None
        self._scatter_batches = 0
        self._logit_batches = 0
        self._logits_finite: Tensor | None = None
        if self._given is not None:
            means, counts = self._given
            self._run_shape = tuple(means.shape[:-2])
            self._counts = counts
            if counts is None:  # global_mean="class": the counts play no part (unit weights)
                ones = torch.ones(self.num_classes, dtype=self.dtype, device=self.device)
                self._means = _class_means(means, ones, "class")
            else:
                self._means = _class_means(means * counts.unsqueeze(-1), counts, self.global_mean)

    @property
    def given_means(self) -> bool:
        """True when the class means were given (``class_means=``), not accumulated in pass 1."""
        return self._given is not None

    # -- helpers ---------------------------------------------------------------------------------

    def _prepare(self, features: Any, labels: Any) -> tuple[Tensor, Tensor]:
        features = _check_float_tensor("features", features, min_ndim=2)
        if features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features must have shape (..., B, {self.feature_dim}) (feature_dim), "
                f"got {tuple(features.shape)}"
            )
        run_shape = tuple(features.shape[:-2])
        if self._run_shape is None:
            self._run_shape = run_shape
        elif run_shape != self._run_shape:
            raise ValueError(
                f"features' leading run dimensions must stay {self._run_shape} across batches, "
                f"got {run_shape}"
            )
        if self.device is None:
            self.device = features.device
        labels = _check_labels(labels, self.num_classes, features.shape[-2])
        return features.to(self.device, self.dtype), labels.to(self.device)

    @property
    def means_finalized(self) -> bool:
        return self._means is not None

    @property
    def class_counts(self) -> Tensor:
        """Samples per class seen in pass 1 (or the given ``class_counts``), shape (K,)."""
        if self._counts is None:
            raise RuntimeError("no batch has been given to update_means yet")
        return self._counts

    @property
    def class_means(self) -> Tensor:
        """Class means frozen by :meth:`finalize_means` (or given), shape (..., K, p)."""
        if self._means is None:
            raise RuntimeError("class means are available only after finalize_means()")
        return self._means.means

    # -- pass 1 ----------------------------------------------------------------------------------

    def update_means(self, features: Tensor, labels: Tensor) -> None:
        """Pass 1: add a batch (features (..., B, p), labels (B,)) to the class sums and counts."""
        if self._given is not None:
            raise RuntimeError(
                "update_means called on an accumulator built with class_means=: the class means "
                "are given, there is no first pass"
            )
        if self._means is not None:
            raise RuntimeError(
                "update_means called after finalize_means(): the class means are frozen for the "
                "second pass; call reset() (or make a new NCAccumulator) to start over"
            )
        h, y = self._prepare(features, labels)
        sums, counts = _class_sums(h, y, self.num_classes)
        if self._sums is None:
            self._sums, self._counts = sums, counts
        else:
            self._sums += sums
            self._counts += counts

    def finalize_means(self) -> Tensor:
        """End pass 1: freeze and return the class means (..., K, p).

        Raises ValueError on an empty class or on NaN/Inf in the pass-1 features.
        """
        if self._given is not None:
            raise RuntimeError("finalize_means() called on an accumulator built with class_means=: "
                               "the class means are given, there is no first pass")
        if self._means is not None:
            raise RuntimeError("finalize_means() was already called")
        if self._sums is None or self._counts is None:
            raise RuntimeError("finalize_means() called before any update_means batch")
        if not bool(torch.isfinite(self._sums).all()):
            bad = (~torch.isfinite(self._sums)).any(dim=-1)
            classes = bad.reshape(-1, self.num_classes).any(dim=0).nonzero().flatten().tolist()
            raise ValueError(
                "features given to update_means contain NaN or Inf (or overflow): the class sums "
                f"of class(es) {classes} are not finite"
            )
        self._means = _class_means(self._sums, self._counts, self.global_mean)
        return self._means.means

    # -- pass 2 ----------------------------------------------------------------------------------

    def update_scatter(
        self, features: Tensor, labels: Tensor, logits: Tensor | None = None
    ) -> None:
        """Pass 2: add a batch to the within-class statistics, using the frozen class means.

        Args:
            features: (..., B, p), the same samples as pass 1 (in any batching and order).
            labels: (B,).
            logits: (..., B, K) classifier outputs W h + b (bias included) for NC4, or None.
        """
        if self._means is None:
            raise RuntimeError(
                "update_scatter called before finalize_means(): the second pass needs the class "
                "means of a completed first pass"
            )
        h, y = self._prepare(features, labels)
        if logits is not None:
            logits = _check_float_tensor("logits", logits, min_ndim=2)
            expected = (*self._run_shape, h.shape[-2], self.num_classes)  # type: ignore[misc]
            if tuple(logits.shape) != expected:
                raise ValueError(
                    f"logits must have shape {expected} (..., B, num_classes), "
                    f"got {tuple(logits.shape)}"
                )
            logits = logits.to(self.device)
            finite = torch.isfinite(logits).all()
            self._logits_finite = (
                finite if self._logits_finite is None else self._logits_finite & finite
            )
            self._logit_batches += 1
        terms = _scatter_terms(self._means, h, y, logits)
        counts = torch.bincount(y, minlength=self.num_classes).to(self.dtype)
        self._scatter_batches += 1
        if self._terms is None:
            self._terms, self._scatter_counts = terms, counts
            return
        agree = None
        if terms.agree is not None and self._terms.agree is not None:
            agree = self._terms.agree + terms.agree
        elif terms.agree is not None:
            agree = terms.agree
        else:
            agree = self._terms.agree
        self._terms = _ScatterTerms(
            a_sum=self._terms.a_sum + terms.a_sum,
            sq_sum=self._terms.sq_sum + terms.sq_sum,
            agree=agree,
        )
        self._scatter_counts = self._scatter_counts + counts  # type: ignore[operator]

    # -- result ----------------------------------------------------------------------------------

    def compute(self, weight: Tensor, bias: Tensor | None = None) -> dict[str, Tensor]:
        """All metrics (keys :data:`ncprop.metrics.METRIC_KEYS`), shape (...) of the run dims.

        ``weight`` (..., K, p) and ``bias`` (..., K) are the classifier's; the bias enters only
        through the logits given to :meth:`update_scatter` (NC4). May be called more than once.
        """
        if self._means is None or self._terms is None or self._scatter_counts is None:
            raise RuntimeError(
                "compute() needs both passes: update_means ..., finalize_means(), "
                "update_scatter ..."
            )
        weight = _check_weight(weight, self.num_classes, self.feature_dim)
        bias = _check_bias(bias, self.num_classes)
        _run_shape(
            features=self._run_shape or (),
            weight=tuple(weight.shape[:-2]),
            bias=() if bias is None else tuple(bias.shape[:-1]),
        )
        if self._given is None and not torch.equal(self._scatter_counts, self._counts):
            raise ValueError(
                "the two passes must see the same samples: class counts were "
                f"{self._counts.long().tolist()} in pass 1 but "  # type: ignore[union-attr]
                f"{self._scatter_counts.long().tolist()} in pass 2"
            )
        if not (
            bool(torch.isfinite(self._terms.a_sum).all())
            and bool(torch.isfinite(self._terms.sq_sum).all())
        ):
            raise ValueError("features given to update_scatter contain NaN or Inf (or overflow)")
        terms = self._terms
        if 0 < self._logit_batches < self._scatter_batches:
            raise ValueError(
                f"logits were given for {self._logit_batches} of {self._scatter_batches} "
                "update_scatter batches: give them for all batches (NC4) or for none"
            )
        if self._logits_finite is not None and not bool(self._logits_finite):
            raise ValueError("logits given to update_scatter contain NaN or Inf")
        _check_finite("weight", weight)
        num_samples = float(self._scatter_counts.sum())
        return _metrics_from_stats(self._means, terms, num_samples, weight.to(self.device), bias)


def collect_nc_metrics(
    model: nn.Module,
    batches_factory: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    *,
    num_classes: int,
    device: torch.device | str | None = None,
    global_mean: str = "class",
    class_means: Tensor | None = None,
    class_counts: Tensor | None = None,
) -> dict[str, float]:
    """All NC metrics of an NCModel over a data set, in two streaming passes, as floats.

    Args:
        model: an NCModel: ``model.features(x)`` gives (B, p) features and ``model.classifier`` is
            the final ``nn.Linear``; the logits for NC4 are ``model.classifier(features)``.
        batches_factory: zero-argument callable returning an iterable of (x, y) batches; called
            twice (once per pass) and must yield the same samples both times.
        num_classes: K.
        device: where to run the model and keep the statistics (default: the model's device).
        global_mean: ``"class"`` (default) or ``"sample"``.
        class_means, class_counts: precomputed class means (K, p) (and their class counts, needed
            only with ``global_mean="sample"``), e.g. those of the training set: the first pass is
            skipped, ``batches_factory`` is called once, and NC4 compares the classifier with the
            nearest of the given means (see :class:`NCAccumulator`).

    The model is put in eval mode under ``torch.no_grad()`` and its training mode is restored.
    """
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"model.classifier must be an nn.Linear, got {type(classifier).__name__}"
        )
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    acc = NCAccumulator(
        num_classes,
        classifier.in_features,
        device=device,
        global_mean=global_mean,
        class_means=class_means,
        class_counts=class_counts,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not acc.given_means:
                for x, y in batches_factory():
                    acc.update_means(model.features(x.to(device)), y.to(device))
                acc.finalize_means()
            for x, y in batches_factory():
                h = model.features(x.to(device))
                acc.update_scatter(h, y.to(device), logits=classifier(h))
            bias = classifier.bias
            result = acc.compute(classifier.weight, None if bias is None else bias)
    finally:
        model.train(was_training)
    return {key: float(value) for key, value in result.items()}
