"""The ncprop command line: run, sweep (dry run, resume), report, and the subcommand registry."""

from __future__ import annotations

import json

import pytest

from ncprop import cli

# fast tests unless marked slow (module-level marks cannot be removed per test)

TINY = ["--model", "ufm", "--dataset", "ufm", "--optimizer", "sgd", "--lr", "0.5", "--momentum", "0.9",
        "--weight-decay", "5e-3", "--epochs", "4", "--batch-size", "5", "--metric-epochs", "final",
        "--model-options", '{"feature_dim": 4}', "--data-options", '{"num_classes": 3, "per_class": 5}']


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.fast
def test_run_from_flags(capsys):
    assert cli.main(["run", *TINY]) == 0
    out = _json(capsys)
    assert out["status"] == "done" and "nc0" in out["final"]


@pytest.mark.fast
def test_run_from_toml_with_override_into_a_database(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('model = "ufm"\ndataset = "ufm"\noptimizer = "adamw"\nlr = 0.01\nweight_decay = 0.05\n'
                    'epochs = 3\nbatch_size = 5\nmetric_epochs = "all"\n[model_options]\nfeature_dim = 4\n'
                    '[data_options]\nnum_classes = 3\nper_class = 5\n')
    assert cli.main(["run", str(path), "--epochs", "2", "--out", str(tmp_path / "db")]) == 0
    out = _json(capsys)
    assert out["counts"] == {"done": 1}
    from ncprop.experiments import ResultStore

    with ResultStore(tmp_path / "db") as store:
        assert store.config(out["run_id"]).epochs == 2


@pytest.mark.fast
def test_sweep_dry_run_counts_the_paper_grid(tmp_path, capsys):
    assert cli.main(["sweep", "paper", "--out", str(tmp_path), "--dry-run"]) == 0
    assert _json(capsys) == {"preset": "paper", "runs": 3888}


@pytest.mark.slow
def test_sweep_limit_resume_and_report(tmp_path, capsys):
    out = str(tmp_path / "mini")
    assert cli.main(["sweep", "toy-mini", "--out", out, "--workers", "1", "--limit", "2"]) == 0
    assert _json(capsys)["executed"] == 2
    assert cli.main(["sweep", "toy-mini", "--out", out, "--workers", "1"]) == 0
    summary = _json(capsys)
    assert summary["executed"] == 2 and summary["counts"] == {"done": 4}
    assert cli.main(["report", out, "--no-figures", "--min-train-acc", "0"]) == 0
    assert (tmp_path / "mini" / "report" / "summary.md").exists()


@pytest.mark.fast
def test_errors_exit_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sweep", "no-such-preset", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "unknown preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", *TINY, "--lr", "-1"])
    assert exc.value.code == 2 and "lr" in capsys.readouterr().err


@pytest.mark.fast
def test_subcommand_registry_is_extensible(monkeypatch, capsys):
    assert {"run", "sweep", "report", "gate"} <= set(cli.SUBCOMMANDS)

    def add_hello(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: 7)

    import types
    import sys

    module = types.ModuleType("ncprop_test_hello")
    module.add_parser = add_hello
    monkeypatch.setitem(sys.modules, "ncprop_test_hello", module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", "ncprop_test_hello:add_parser")
    assert cli.main(["hello"]) == 7


@pytest.mark.fast
def test_unknown_subcommand_lists_the_choices(capsys):
    from ncprop.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["nosuch"])
    assert exc.value.code == 2
    assert "invalid choice: 'nosuch' (choose from 'run', 'sweep', 'report', 'gate')" in capsys.readouterr().err
