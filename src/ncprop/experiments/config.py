"""One run, described once: :class:`RunConfig`, readable from TOML and from command-line flags.

A run is identified by :attr:`RunConfig.run_id`, a hash of its *canonical* form: every field that
changes what is computed, with the optimizer's fixed hyperparameters filled in (SignGD's momentum is
0 whether or not the file says so), floats written by ``repr`` and keys sorted. ``device`` and
``tags`` are left out: they say where a run executes and how a sweep labels it, not what it computes.

TOML layout (flat keys, two option tables)::

    model = "mlp"
    dataset = "mnist1d"
    optimizer = "sgd"
    lr = 0.05
    momentum = 0.9
    weight_decay = 5e-4
    epochs = 60
    schedule = "step"          # "step" (lr / 10 after 1/3 and 2/3), "cosine", "constant"
    metric_epochs = "log:12"   # "log:N", "every:K", "all", "final", or a list of epochs
    [model_options]
    widths = [256, 256]
    [data_options]
    num_samples = 4000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ncprop._validation import check_choice, check_nonnegative, check_positive_int, check_unit_interval

SCHEDULES = ("step", "cosine", "constant")
ENGINES = ("torch", "batched")
DTYPES = ("float32", "float64")
_NOT_HASHED = ("device", "tags")


def _freeze(value: Any) -> Any:
    """JSON-able canonical form: tuples become lists, dict keys sorted by json.dumps."""
    if isinstance(value, Mapping):
        return {str(k): _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_freeze(v) for v in value]
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run.

    Attributes:
        model: ``ncprop.models.build_model`` name ("ufm", "mlp", "resnet9", "vgg9", "vit").
        model_options: extra keyword arguments for the model (``widths``, ``feature_dim``...).
        dataset: ``ncprop.data.load_dataset`` name; for ``model="ufm"`` the data set is the
            unconstrained-feature problem itself (``data_options``: ``per_class``).
        data_options: keyword arguments for ``load_dataset`` (``root``, ``num_samples``...).
        optimizer: an ``ncprop.optim.REGISTRY`` name.
        lr, momentum, weight_decay, beta2, eps, coupled_share: canonical hyperparameters
            (``momentum`` is beta1 for Adam-type and Lion); ``coupled_share`` only for mixes.
        schedule: "step", "cosine" (with ``warmup`` fraction of the steps) or "constant".
        epochs, batch_size (0 = full batch), seed.
        metric_epochs: when metrics are recorded: "log:N" (about N log-spaced epochs), "every:K",
            "all", "final" or an explicit list; epoch 0 (initialisation) and the last epoch are
            always included.
        decay_norm_and_bias: False puts normalisation parameters and biases in a group without
            weight decay (``ncprop.models.param_groups``); True decays every parameter (the paper's CNNs).
        dtype: "float32" or "float64".
        engine: "torch" (one run, :mod:`ncprop.experiments.train`) or "batched" (many UFM runs
            in one process through ``ncprop.batched.train_batched``).
        checkpoint_every: epochs between checkpoints (0: only the metric epochs).
        device: where the run executes (not hashed).
        tags: free labels for sweeps and reports, e.g. {"preset": "toy", "part": "ufm"} (not hashed).
    """

    model: str = "mlp"
    dataset: str = "mnist1d"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    coupled_share: float | None = None
    schedule: str = "step"
    warmup: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    metric_epochs: Any = "log:12"
    decay_norm_and_bias: bool = True
    dtype: str = "float32"
    engine: str = "torch"
    checkpoint_every: int = 0
    model_options: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    tags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ncprop.optim import get

        info = get(self.optimizer)  # ValueError naming the registered optimizers
        for name in ("lr", "weight_decay", "eps"):
            check_nonnegative(name, getattr(self, name))
        check_unit_interval("momentum", self.momentum)
        check_unit_interval("beta2", self.beta2)
        check_unit_interval("warmup", self.warmup)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("engine", self.engine, ENGINES)
        check_choice("dtype", self.dtype, DTYPES)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        if self.coupled_share is not None:
            check_unit_interval("coupled_share", self.coupled_share, closed_right=True)
        if info.coupling == "mixed" and self.coupled_share is None:
            raise ValueError(f"optimizer {self.optimizer!r} mixes coupled and decoupled decay; "
                             f"give coupled_share in [0, 1], got None")
        if "momentum" in info.fixed and self.momentum != info.fixed["momentum"]:
            raise ValueError(f"{self.optimizer} takes no momentum (fixed at {info.fixed['momentum']!r}); "
                             f"got momentum={self.momentum!r}")
        if self.engine == "batched" and self.model != "ufm":
            raise ValueError(f"engine='batched' trains unconstrained features only; got model={self.model!r}")
        metric_epochs(self)  # validates the spec
        # mappings stay plain dicts so the dataclass stays picklable and comparable
        object.__setattr__(self, "model_options", dict(self.model_options))
        object.__setattr__(self, "data_options", dict(self.data_options))
        object.__setattr__(self, "tags", dict(self.tags))
        if isinstance(self.metric_epochs, (list, tuple)):
            object.__setattr__(self, "metric_epochs", tuple(int(e) for e in self.metric_epochs))

    # ------------------------------------------------------------------ identity
    def hyperparameters(self) -> dict[str, Any]:
        """Canonical hyperparameters for ``ncprop.optim.build`` (the optimizer's fixed ones left out)."""
        from ncprop.optim import get

        info = get(self.optimizer)
        hp: dict[str, Any] = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                              "beta2": self.beta2, "eps": self.eps}
        if info.coupling == "mixed":
            hp["coupled_share"] = self.coupled_share
        return {k: v for k, v in hp.items() if k not in info.fixed}

    def canonical(self) -> dict[str, Any]:
        """The hashed form: what is computed, with fixed hyperparameters filled in."""
        from ncprop.optim import get

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_HASHED}
        info = get(self.optimizer)
        for key in ("momentum", "beta2", "eps", "coupled_share"):
            if key in info.fixed:
                d[key] = info.fixed[key]
        for key in ("lr", "momentum", "weight_decay", "beta2", "eps", "warmup"):
            d[key] = float(d[key])
        if d["coupled_share"] is not None:
            d["coupled_share"] = float(d["coupled_share"])
        return _freeze(d)

    @property
    def run_id(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Every field (device and tags included), JSON-able."""
        return _freeze({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run option(s) {unknown}; expected some of {sorted(names)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_config(path: str | os.PathLike, **overrides: Any) -> RunConfig:
    """A :class:`RunConfig` from a TOML file (flat keys, or a ``[run]`` table), then ``overrides``."""
    data = read_toml(path)
    if "run" in data and isinstance(data["run"], dict):
        data = data["run"]
    data = {**data, **overrides}
    return RunConfig.from_dict(data)


def metric_epochs(config: RunConfig) -> tuple[int, ...]:
    """The sorted epochs at which metrics are recorded (0 = initialisation, always with the last)."""
    spec, n = config.metric_epochs, config.epochs
    if isinstance(spec, (list, tuple)):
        epochs = {int(e) for e in spec}
        bad = [e for e in epochs if not 0 <= e <= n]
        if bad:
            raise ValueError(f"metric_epochs must lie in [0, epochs={n}], got {sorted(bad)}")
    elif spec == "all":
        epochs = set(range(n + 1))
    elif spec == "final":
        epochs = set()
    elif isinstance(spec, str) and spec.startswith(("log:", "every:")):
        kind, _, count = spec.partition(":")
        try:
            k = int(count)
        except ValueError:
            raise ValueError(f"metric_epochs {spec!r}: expected an integer after ':'") from None
        check_positive_int(f"metric_epochs {spec!r}", k)
        if kind == "every":
            epochs = set(range(0, n + 1, k))
        else:
            epochs = {1} | {int(round(math.exp(i * math.log(n) / max(k - 1, 1)))) for i in range(k)}
    else:
        raise ValueError(f"metric_epochs must be 'log:N', 'every:K', 'all', 'final' or a list of epochs; "
                         f"got {spec!r}")
    return tuple(sorted(epochs | {0, n}))
