"""The results database: one SQLite file (WAL mode), written in transactions.

Schema::

    configs(run_id PK, config_json, optimizer, model, dataset, lr, momentum, weight_decay,
            coupled_share, seed, epochs, batch_size, schedule, preset, part)
    runs(run_id PK -> configs, status, attempts, claimed_at, finished_at, wall_s, error,
         resumed_from, last_epoch)
         status: 'pending' | 'running' | 'done' | 'diverged' | 'failed'
    metrics(run_id -> configs, epoch, name, value; PK (run_id, epoch, name))  -- long format

A run's metric rows and its terminal status are written in **one** transaction
(:meth:`ResultStore.commit_result`): after any crash the database holds either all of a run's rows
and ``done``/``diverged``, or none of its rows and a non-terminal status. The write deletes the
run's existing rows first, so nothing partial survives a restart. NaN metrics are stored as NULL.

Only one process writes at a time: the sweep's parent process owns the database
(:mod:`ncprop.experiments.sweep`); workers return results to it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ncprop.experiments.config import RunConfig

TERMINAL = ("done", "diverged", "failed")
STATUSES = ("pending", "running") + TERMINAL
CONFIG_COLUMNS = ("optimizer", "model", "dataset", "lr", "momentum", "weight_decay", "coupled_share", "seed",
                  "epochs", "batch_size", "schedule")
DB_NAME = "results.sqlite"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS configs (
    run_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    optimizer TEXT NOT NULL, model TEXT NOT NULL, dataset TEXT NOT NULL,
    lr REAL, momentum REAL, weight_decay REAL, coupled_share REAL, seed INTEGER,
    epochs INTEGER, batch_size INTEGER, schedule TEXT,
    preset TEXT, part TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY REFERENCES configs(run_id),
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_at REAL, finished_at REAL, wall_s REAL, error TEXT,
    resumed_from INTEGER, last_epoch INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES configs(run_id),
    epoch INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
"""


def _clean(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


class ResultStore:
    """A handle on ``path`` (a file, or a folder holding ``results.sqlite``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.suffix not in (".sqlite", ".db", ".sqlite3"):
            path.mkdir(parents=True, exist_ok=True)
            path = path / DB_NAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ writing
    def add_configs(self, configs: Iterable[RunConfig]) -> int:
        """Register runs as ``pending`` (runs already known keep their status); returns how many were new."""
        rows = []
        for c in configs:
            rows.append((c.run_id, c.to_json(), c.optimizer, c.model, c.dataset, c.lr, c.momentum, c.weight_decay,
                         c.coupled_share, c.seed, c.epochs, c.batch_size, c.schedule,
                         c.tags.get("preset"), c.tags.get("part")))
        with self.transaction() as db:
            before = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO configs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("INSERT OR IGNORE INTO runs(run_id, status) VALUES (?, 'pending')",
                           [(r[0],) for r in rows])
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] - before

    def reset_stale(self, *, retry_failed: bool = False) -> int:
        """Runs left ``running`` by a killed sweep go back to ``pending`` (and ``failed`` ones when asked)."""
        states = ("running", "failed") if retry_failed else ("running",)
        with self.transaction() as db:
            cur = db.execute(f"UPDATE runs SET status='pending', claimed_at=NULL "
                             f"WHERE status IN ({','.join('?' * len(states))})", states)
            return cur.rowcount

    def claim(self, run_ids: Sequence[str]) -> None:
        """Mark ``run_ids`` as ``running`` (one transaction)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany("UPDATE runs SET status='running', attempts=attempts+1, claimed_at=? "
                           "WHERE run_id=? AND status='pending'", [(now, r) for r in run_ids])

    def commit_result(self, result: Any) -> None:
        """A run's metric rows and its terminal status, in one transaction (old rows replaced)."""
        rows = [(result.run_id, int(epoch), name, _clean(value))
                for epoch, metrics in result.history for name, value in metrics.items()]
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (result.run_id,))
            db.executemany("INSERT INTO metrics VALUES (?,?,?,?)", rows)
            db.execute("UPDATE runs SET status=?, finished_at=?, wall_s=?, error=?, resumed_from=?, last_epoch=? "
                       "WHERE run_id=?", (result.status, time.time(), result.wall_s, result.error,
                                          result.resumed_from, result.last_epoch, result.run_id))

    def mark_failed(self, run_id: str, error: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=?",
                       (time.time(), error[-4000:], run_id))

    # ------------------------------------------------------------------ reading
    def status_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    def run_ids(self, status: str | Sequence[str] | None = None) -> list[str]:
        if status is None:
            return [r[0] for r in self.conn.execute("SELECT run_id FROM runs ORDER BY run_id")]
        states = (status,) if isinstance(status, str) else tuple(status)
        q = f"SELECT run_id FROM runs WHERE status IN ({','.join('?' * len(states))}) ORDER BY run_id"
        return [r[0] for r in self.conn.execute(q, states)]

    def config(self, run_id: str) -> RunConfig:
        row = self.conn.execute("SELECT config_json FROM configs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r} in {self.path}")
        return RunConfig.from_json(row[0])

    def runs(self) -> list[dict[str, Any]]:
        """One dict per run: config columns, status fields and ``config`` (the full dict)."""
        cur = self.conn.execute(
            "SELECT c.run_id, c.config_json, " + ", ".join(f"c.{k}" for k in CONFIG_COLUMNS)
            + ", c.preset, c.part, r.status, r.attempts, r.wall_s, r.error, r.resumed_from, r.last_epoch "
              "FROM configs c JOIN runs r USING (run_id) ORDER BY c.run_id")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur:
            d = dict(zip(names, row))
            d["config"] = json.loads(d.pop("config_json"))
            out.append(d)
        return out

    def history(self, run_id: str) -> list[tuple[int, dict[str, float]]]:
        rows = self.conn.execute("SELECT epoch, name, value FROM metrics WHERE run_id=? ORDER BY epoch, name",
                                 (run_id,)).fetchall()
        out: dict[int, dict[str, float]] = {}
        for epoch, name, value in rows:
            out.setdefault(epoch, {})[name] = float("nan") if value is None else value
        return sorted(out.items())

    def metric_rows(self) -> tuple[list[str], list[tuple]]:
        """Wide table: one row per (run, epoch) with the config columns and every metric as a column."""
        names = [r[0] for r in self.conn.execute("SELECT DISTINCT name FROM metrics ORDER BY name")]
        runs = {r["run_id"]: r for r in self.runs()}
        header = ["run_id", *CONFIG_COLUMNS, "preset", "part", "status", "epoch", *names]
        table: dict[tuple[str, int], dict[str, Any]] = {}
        for run_id, epoch, name, value in self.conn.execute(
                "SELECT run_id, epoch, name, value FROM metrics ORDER BY run_id, epoch"):
            table.setdefault((run_id, epoch), {})[name] = value
        rows = []
        for (run_id, epoch), metrics in table.items():
            r = runs[run_id]
            rows.append((run_id, *(r[k] for k in CONFIG_COLUMNS), r["preset"], r["part"], r["status"], epoch,
                         *(metrics.get(n) for n in names)))
        return header, rows

    # ------------------------------------------------------------------ export
    def export_csv(self, path: str | os.PathLike) -> Path:
        header, rows = self.metric_rows()
        path = Path(path)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        return path

    def export_parquet(self, path: str | os.PathLike) -> Path:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Parquet export needs pyarrow (pip install 'ncprop[export]')") from exc
        header, rows = self.metric_rows()
        columns = list(zip(*rows)) if rows else [[] for _ in header]
        table = pa.table({name: list(col) for name, col in zip(header, columns)})
        path = Path(path)
        pq.write_table(table, path)
        return path
