"""Sweeps: many runs into one results database, resumable after a kill at any moment.

Resume protocol (``DIR`` is the sweep's folder):

1. The sweep takes an exclusive ``flock`` on ``DIR/sweep.lock`` (a second sweep on the same folder
   fails at once instead of racing); the kernel releases it when the process dies, even by SIGKILL.
2. Every config is registered (``INSERT OR IGNORE``: a run id is the hash of its config, so a run
   is never registered twice) as ``pending``; runs a killed sweep left ``running`` go back to
   ``pending`` (they are not done: their results were never committed).
3. Pending runs are claimed (``running``, attempts + 1) in a transaction when handed to a worker.
4. A finished run's metric rows and its terminal status (``done``, ``diverged``, ``failed``) are
   committed in one transaction by the parent, replacing any rows the run had; then its
   checkpoint is deleted.
5. A worker writes checkpoints under ``DIR/checkpoints`` (atomically); a re-claimed run continues
   from its last checkpoint, so the work of a killed sweep is not lost and the final numbers are
   those of an uninterrupted run.

Killing the sweep at any point leaves only terminal runs with complete rows and non-terminal runs
without rows, and running the same command again finishes the rest: every run exactly once.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ncprop.experiments.config import RunConfig
from ncprop.experiments.executors import Executor, group_tasks, make_executor
from ncprop.experiments.store import ResultStore
from ncprop.experiments.train import checkpoint_path
from ncprop.progress import progress


@dataclass
class SweepSummary:
    total: int
    executed: int
    counts: dict[str, int]
    wall_s: float
    db_path: Path


@contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    path = out_dir / "sweep.lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another sweep is writing to {out_dir} (lock {path} is held)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def run_sweep(configs: Sequence[RunConfig], out_dir: str | os.PathLike, *, executor: Executor | None = None,
              limit: int | None = None, retry_failed: bool = False) -> SweepSummary:
    """Run every config not yet finished in ``out_dir``'s database (the first ``limit`` ones when given)."""
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = list(configs)[:limit] if limit is not None else list(configs)
    ids = [c.run_id for c in configs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"the sweep lists the same run more than once (run ids {dupes[:5]})")
    executor = executor or make_executor("local")
    ckpt_dir, cache_dir = out / "checkpoints", out / "cache"
    with sweep_lock(out), ResultStore(out) as store:
        store.add_configs(configs)
        store.reset_stale(retry_failed=retry_failed)
        todo_ids = set(store.run_ids("pending"))
        todo = [c for c in configs if c.run_id in todo_ids]
        tasks = group_tasks(todo)
        executed = 0
        try:
            for _task, results in progress(
                    executor.map(tasks, checkpoint_dir=str(ckpt_dir), cache_dir=str(cache_dir),
                                 on_submit=lambda t: store.claim([c.run_id for c in t])),
                    total=len(tasks), desc=f"sweep {out.name}"):
                for result in results:
                    store.commit_result(result)
                    ckpt = checkpoint_path(ckpt_dir, result.run_id)
                    if ckpt.exists():
                        ckpt.unlink()
                    executed += 1
        finally:
            executor.close()
        counts = store.status_counts()
        db_path = store.path
    return SweepSummary(len(configs), executed, counts, time.perf_counter() - start, db_path)
