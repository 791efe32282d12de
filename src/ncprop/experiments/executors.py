"""Where tasks run: in this process, in a local process pool, or on a Ray cluster.

A *task* is a tuple of :class:`RunConfig` trained together: one config for the per-run training loop,
several for a group of unconstrained-feature runs that ``ncprop.batched.train_batched`` trains as
one stack of tensors. :func:`execute_task` runs a task and returns one :class:`RunResult` per config;
it never raises (an exception becomes a ``"failed"`` result with the traceback).

Executor model: workers only compute and write their own checkpoints; they return results to the
parent (the sweep), which owns the SQLite database and writes each result in one transaction. This
works the same for local processes and for Ray workers on other machines (which only need the
checkpoint folder to be shared for mid-run resume; without it an interrupted run restarts from
scratch). Every executor keeps at most ``2 * workers`` tasks in flight, so the runs marked
``running`` in the database are the ones actually being computed.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import signal
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence

from ncprop.experiments.config import RunConfig
from ncprop.experiments.train import RunResult, train_group, train_run

Task = tuple[RunConfig, ...]
EXECUTORS = ("local", "ray")


# ---------------------------------------------------------------------------------------------- tasks
def _worker_init() -> None:
    """One torch thread per worker (the pool provides the parallelism) and, on Linux, die with the parent."""
    import torch

    torch.set_num_threads(int(os.environ.get("NCPROP_WORKER_THREADS", "1")))
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a SIGKILLed sweep leaves no orphan workers
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def execute_task(task: Task, checkpoint_dir: str | None = None, cache_dir: str | None = None) -> list[RunResult]:
    """Train every config of ``task``; failures come back as ``"failed"`` results, never as exceptions."""
    try:
        if len(task) > 1 or task[0].engine == "batched":
            return train_group(task)  # one stack of UFM runs through ncprop.batched
        return [train_run(task[0], checkpoint_dir=checkpoint_dir, cache_dir=cache_dir)]
    except Exception:  # noqa: BLE001 - a sweep records the failure and goes on
        err = traceback.format_exc()
        return [RunResult(c.run_id, "failed", [], 0.0, err) for c in task]


# ---------------------------------------------------------------------------------------------- executors
def _in_flight(tasks: Iterable[Task], limit: int, on_submit: Callable[[Task], None], source: str, *,
               submit: Callable[[Task], Any], wait_any: Callable[[list[Any]], Iterable[Any]],
               outcome: Callable[[Any], list[RunResult]]) -> Iterator[tuple[Task, list[RunResult]]]:
    """Keep at most ``limit`` tasks submitted and yield ``(task, results)`` as each finishes.

    ``submit`` returns a handle (a future, a Ray object ref), ``wait_any`` returns the handles that
    are done, ``outcome`` a handle's results. A task whose worker failed (a crashed process, a lost
    node, an unpicklable result) is reported as failed runs, so the sweep goes on.
    """
    pending: dict[Any, Task] = {}
    it = iter(tasks)
    while True:
        while len(pending) < limit:
            task = next(it, None)
            if task is None:
                break
            on_submit(task)
            pending[submit(task)] = task
        if not pending:
            return
        for handle in wait_any(list(pending)):
            task = pending.pop(handle)
            try:
                results = outcome(handle)
            except Exception as exc:  # noqa: BLE001 - BrokenProcessPool, RayError, pickling: all end the same way
                results = [RunResult(c.run_id, "failed", [], 0.0, f"{source} error: {exc!r}") for c in task]
            yield task, results


class Executor:
    """Runs tasks and yields ``(task, results)`` as they finish, in any order."""

    workers: int = 1

    def map(self, tasks: Iterable[Task], *, checkpoint_dir: str | None, cache_dir: str | None,
            on_submit: Callable[[Task], None] = lambda t: None) -> Iterator[tuple[Task, list[RunResult]]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InlineExecutor(Executor):
    """Everything in this process, one task after the other (debugging, tests, ``--workers 1``)."""

    def map(self, tasks, *, checkpoint_dir, cache_dir, on_submit=lambda t: None):
        for task in tasks:
            on_submit(task)
            yield task, execute_task(task, checkpoint_dir, cache_dir)


class LocalExecutor(Executor):
    """A pool of ``workers`` spawned processes, each with one torch thread."""

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        self.workers = workers
        self._pool: cf.ProcessPoolExecutor | None = None

    def map(self, tasks, *, checkpoint_dir, cache_dir, on_submit=lambda t: None):
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                            initializer=_worker_init)
        try:
            yield from _in_flight(
                tasks, 2 * self.workers, on_submit, "worker",
                submit=lambda task: self._pool.submit(execute_task, task, checkpoint_dir, cache_dir),
                wait_any=lambda handles: cf.wait(handles, return_when=cf.FIRST_COMPLETED)[0],
                outcome=lambda future: future.result())
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Tasks as Ray remote functions (``num_cpus`` each) on the cluster at ``address``.

    ``address=None`` starts (or joins) a local Ray instance; ``"auto"`` joins a running cluster.
    Ray workers must be able to import ncprop (same environment, or a ``runtime_env``).
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, num_cpus: float = 1.0,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the Ray executor needs ray (pip install 'ncprop[ray]')") from exc
        self.ray = ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False)
            kwargs.update(init_kwargs or {})
            ray.init(address=address, **kwargs)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.workers = workers or max(1, int(cpus // num_cpus))
        self.num_cpus = num_cpus
        self._remote = ray.remote(_ray_task).options(num_cpus=num_cpus, max_retries=0)

    def map(self, tasks, *, checkpoint_dir, cache_dir, on_submit=lambda t: None):
        yield from _in_flight(
            tasks, 2 * self.workers, on_submit, "ray",
            submit=lambda task: self._remote.remote(task, checkpoint_dir, cache_dir),
            wait_any=lambda handles: self.ray.wait(handles, num_returns=1)[0],
            outcome=self.ray.get)


def _ray_task(task: Task, checkpoint_dir: str | None, cache_dir: str | None) -> list[RunResult]:
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("NCPROP_WORKER_THREADS", "1"))))
    return execute_task(task, checkpoint_dir, cache_dir)


def make_executor(kind: str = "local", *, workers: int | None = None, address: str | None = None) -> Executor:
    """``"local"`` (``workers`` processes; 1 means in this process) or ``"ray"``."""
    if kind == "local":
        workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        return InlineExecutor() if workers <= 1 else LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers=workers)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")


def group_tasks(configs: Sequence[RunConfig], *, max_group: int = 256) -> list[Task]:
    """Tasks in a stable order: batched-engine configs that can share one stack form one task
    (same everything but hyperparameters and seed), every other config is a task of its own."""
    groups: dict[str, list[RunConfig]] = {}
    tasks: list[Task] = []
    for c in configs:
        if c.engine != "batched":
            tasks.append((c,))
            continue
        key = repr((c.model, c.optimizer, c.schedule, c.warmup, c.epochs, c.batch_size, c.dtype,
                    sorted(c.model_options.items()), sorted(c.data_options.items()), c.metric_epochs))
        groups.setdefault(key, []).append(c)
    for members in groups.values():
        for i in range(math.ceil(len(members) / max_group)):
            tasks.append(tuple(members[i * max_group:(i + 1) * max_group]))
    return tasks
