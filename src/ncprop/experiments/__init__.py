"""Runs, sweeps, the results database and reports.

- :mod:`.config`: :class:`RunConfig` (TOML and flags, hashed run id), metric schedules.
- :mod:`.schedules`: learning-rate schedules (step, cosine with warm-up, constant).
- :mod:`.train`: :func:`train_run`, one run with NC metrics, divergence detection and checkpoints.
- :mod:`.store`: :class:`ResultStore`, the SQLite database (CSV and Parquet export).
- :mod:`.executors`: in-process, local process pool and Ray executors.
- :mod:`.sweep`: :func:`run_sweep`, resumable after a kill at any moment.
- :mod:`.presets`: the paper's grid and the CPU-scale ``toy`` sweep.
- :mod:`.report`: figures and a Markdown summary.
"""

from ncprop.experiments.config import RunConfig, load_config, metric_epochs
from ncprop.experiments.executors import InlineExecutor, LocalExecutor, RayExecutor, make_executor
from ncprop.experiments.presets import PRESETS, expand
from ncprop.experiments.schedules import lr_factor, lr_sequence
from ncprop.experiments.store import ResultStore
from ncprop.experiments.sweep import SweepSummary, run_sweep
from ncprop.experiments.train import RunResult, train_run

__all__ = [
    "PRESETS", "InlineExecutor", "LocalExecutor", "RayExecutor", "ResultStore", "RunConfig", "RunResult",
    "SweepSummary", "expand", "load_config", "lr_factor", "lr_sequence", "make_executor", "metric_epochs",
    "run_sweep", "train_run",
]
