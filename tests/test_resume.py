"""A sweep SIGKILLed mid-way and started again ends with every run exactly once, with the numbers of an
uninterrupted sweep; a run interrupted mid-way continues from its checkpoint."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncprop.experiments import InlineExecutor, ResultStore, run_sweep
from ncprop.experiments.presets import load_sweep_file

pytestmark = pytest.mark.slow

SWEEP = """
[base]
model = "ufm"
dataset = "ufm"
momentum = 0.9
lr = 0.05
epochs = 120
batch_size = 4
metric_epochs = "every:10"
checkpoint_every = 3
model_options = { feature_dim = 8 }
data_options = { num_classes = 4, per_class = 6 }

[grid]
optimizer = ["sgd", "adamw", "signum"]
weight_decay = [5e-3, 5e-2]
seed = [0, 1]
"""


def _sweep_cmd(path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ncprop.cli", "sweep", str(path), "--out", str(out), "--workers", "2"]


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return dict(con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        finally:
            con.close()
    except sqlite3.OperationalError:
        return {}


def test_sigkill_mid_sweep_then_resume(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    configs = load_sweep_file(path)
    out = tmp_path / "killed"
    db = out / "results.sqlite"
    env = {**os.environ, "NCPROP_PROGRESS": "0"}
    proc = subprocess.Popen(_sweep_cmd(path, out), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = _counts(db).get("done", 0)
            in_progress = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
            if done >= 2 and in_progress or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, at an arbitrary moment
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed = _counts(db)
    assert 0 < killed.get("done", 0) < len(configs), killed

    # the database a SIGKILL left behind: terminal runs complete, the others without rows
    with ResultStore(out) as store:
        for run in store.runs():
            epochs = [e for e, _ in store.history(run["run_id"])]
            if run["status"] == "done":
                assert epochs == list(range(0, 121, 10))
            else:
                assert epochs == [] and run["status"] in ("pending", "running")

    subprocess.run(_sweep_cmd(path, out), env=env, check=True, timeout=300, capture_output=True)

    reference = tmp_path / "reference"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the pool's workers
    try:
        run_sweep(configs, reference, executor=InlineExecutor())
    finally:
        torch.set_num_threads(threads)

    with ResultStore(out) as a, ResultStore(reference) as b:
        assert a.status_counts() == {"done": len(configs)}
        rows = a.conn.execute("SELECT run_id, COUNT(*) FROM runs GROUP BY run_id").fetchall()
        assert sorted(r for r, _ in rows) == sorted(c.run_id for c in configs) and {n for _, n in rows} == {1}
        assert a.conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == \
            b.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()
        resumed = [r for r in a.runs() if r["resumed_from"] is not None]
        for c in configs:
            ha, hb = a.history(c.run_id), b.history(c.run_id)
            assert [e for e, _ in ha] == [e for e, _ in hb]
            for (_, ma), (_, mb) in zip(ha, hb):
                assert ma.keys() == mb.keys()
                for key in ma:
                    assert ma[key] == pytest.approx(mb[key], rel=1e-6, abs=1e-12, nan_ok=True), (c.run_id, key)
    # runs caught mid-way continued from their checkpoints (at least the ones the kill interrupted)
    assert resumed, "no run continued from a checkpoint"
