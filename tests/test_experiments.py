"""Experiment engine: configs and run ids, schedules, presets, the training loop, the store, sweeps."""

from __future__ import annotations

import math
import sqlite3

import pytest

from ncprop.experiments import (InlineExecutor, ResultStore, RunConfig, expand, load_config, lr_factor,
                                metric_epochs, run_sweep, train_run)
from ncprop.experiments.presets import (PAPER_LRS_OTHER, PAPER_MOMENTA, PAPER_WDS_COUPLED, PAPER_WDS_DECOUPLED,
                                        load_sweep_file)
from ncprop.experiments.train import RunResult, checkpoint_path

# fast tests unless marked slow (module-level marks cannot be removed per test)


def tiny(**kw) -> RunConfig:
    base = dict(model="ufm", dataset="ufm", optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=5e-3, epochs=6,
                batch_size=5, seed=0, metric_epochs="all", model_options={"feature_dim": 4},
                data_options={"num_classes": 3, "per_class": 5}, tags={"part": "tiny"})
    base.update(kw)
    return RunConfig(**base)


# ------------------------------------------------------------------ config
@pytest.mark.fast
def test_run_id_is_stable_and_ignores_device_and_tags():
    a = tiny()
    assert a.run_id == tiny().run_id == RunConfig.from_json(a.to_json()).run_id
    assert a.run_id == tiny(device="cuda", tags={"x": 1}).run_id
    assert a.run_id != tiny(lr=0.25).run_id
    assert a.run_id != tiny(seed=1).run_id
    # fixed hyperparameters are canonical: SignGD's momentum is 0 however it is written
    assert tiny(optimizer="signgd", momentum=0.0).run_id == tiny(optimizer="signgd", momentum=0).run_id


@pytest.mark.fast
def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="lr"):
        tiny(lr=-1.0)
    with pytest.raises(ValueError, match="schedule"):
        tiny(schedule="linear")
    with pytest.raises(ValueError, match="unknown optimizer"):
        tiny(optimizer="rmsprop")
    with pytest.raises(ValueError, match="coupled_share"):
        tiny(optimizer="adam_mix")
    with pytest.raises(ValueError, match="momentum"):
        tiny(optimizer="signgd", momentum=0.9)
    with pytest.raises(ValueError, match="unknown run option"):
        RunConfig.from_dict({"modle": "mlp"})


@pytest.mark.fast
def test_toml_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "ufm"\ndataset = "ufm"\noptimizer = "adamw"\nlr = 0.01\nweight_decay = 0.05\n'
                    'epochs = 4\nbatch_size = 5\n[model_options]\nfeature_dim = 4\n'
                    '[data_options]\nnum_classes = 3\nper_class = 5\n')
    c = load_config(path, epochs=5)
    assert (c.optimizer, c.lr, c.epochs, c.model_options["feature_dim"]) == ("adamw", 0.01, 5, 4)


@pytest.mark.fast
def test_example_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*.toml")):
        configs = load_sweep_file(path) if "sweep" in path.name else [load_config(path)]
        assert configs, path


@pytest.mark.fast
def test_metric_epochs():
    assert metric_epochs(tiny(epochs=200, metric_epochs="log:5")) == (0, 1, 4, 14, 53, 200)
    assert metric_epochs(tiny(epochs=10, metric_epochs="every:4")) == (0, 4, 8, 10)
    assert metric_epochs(tiny(epochs=3, metric_epochs="final")) == (0, 3)
    assert metric_epochs(tiny(epochs=3, metric_epochs=[2])) == (0, 2, 3)
    with pytest.raises(ValueError, match="metric_epochs"):
        tiny(metric_epochs="sometimes")


@pytest.mark.fast
def test_schedules():
    f = [lr_factor("step", t, steps_per_epoch=2, epochs=200) for t in range(400)]
    assert f[131] == 1.0 and f[132] == pytest.approx(0.1) and f[265] == pytest.approx(0.1)
    assert f[266] == pytest.approx(0.01)
    c = [lr_factor("cosine", t, steps_per_epoch=10, epochs=10, warmup=0.1) for t in range(100)]
    assert c[0] == pytest.approx(0.1) and c[9] == pytest.approx(1.0) and c[10] == pytest.approx(1.0)
    assert c[-1] < 1e-3 and all(a >= b for a, b in zip(c[10:], c[11:]))
    assert lr_factor("constant", 77, steps_per_epoch=3, epochs=50) == 1.0


# ------------------------------------------------------------------ presets
@pytest.mark.fast
def test_paper_preset_is_the_papers_grid():
    runs = expand("paper")
    assert len(runs) == 3888
    assert len({c.run_id for c in runs}) == 3888
    assert {(c.model, c.dataset) for c in runs} == {(m, d) for m in ("resnet9", "vgg9")
                                                    for d in ("mnist", "fashionmnist", "cifar10")}
    for opt in ("sgd", "sgdw", "adam", "adamw", "signum", "signum_w"):
        sub = [c for c in runs if c.optimizer == opt]
        assert len(sub) == 6 * 108
        lrs = {c.lr for c in sub}
        assert lrs == ({0.001, 0.01, 0.0679} if opt in ("sgd", "sgdw") else set(PAPER_LRS_OTHER))
        assert {c.momentum for c in sub} == set(PAPER_MOMENTA) == {0, 0.5, 0.7, 0.9, 0.95, 0.98}
        wds = PAPER_WDS_DECOUPLED if opt in ("adamw", "signum_w") else PAPER_WDS_COUPLED
        assert {c.weight_decay for c in sub} == set(wds)
    assert {(c.epochs, c.batch_size, c.schedule, c.beta2) for c in runs} == {(200, 128, "step", 0.999)}


@pytest.mark.fast
def test_other_presets():
    inter = expand("paper-interpolation")
    assert [c.coupled_share * 5e-4 for c in inter] == pytest.approx([i * 1e-4 for i in range(6)])
    assert {c.weight_decay for c in inter} == {5e-4}
    vit = expand("paper-vit")
    assert {(c.schedule, c.warmup, c.batch_size, c.decay_norm_and_bias) for c in vit} == {("cosine", 0.05, 512, False)}
    ufm = expand("paper-ufm")
    assert {c.optimizer for c in ufm} == {"adam", "adamw", "sgd"} and {c.lr for c in ufm} == {0.1, 0.3, 0.5, 1.0}
    toy = expand("toy")
    from ncprop.optim import REGISTRY

    builtin = {"sgd", "sgdw", "adam", "adamw", "adam_mix", "signgd", "signgd_w", "signum", "signum_w", "lion"}
    assert builtin <= set(REGISTRY)
    for part in ("ufm", "mnist1d"):
        sub = [c for c in toy if c.tags["part"] == part]
        assert {c.optimizer for c in sub} == builtin
        assert len({c.seed for c in sub}) >= 2 and len({c.weight_decay for c in sub}) >= 3
    assert len({c.momentum for c in toy if c.optimizer == "sgd"}) >= 3
    assert len({c.run_id for c in toy}) == len(toy)
    with pytest.raises(ValueError, match="unknown preset"):
        expand("nonsense")


# ------------------------------------------------------------------ training loop
@pytest.mark.fast
def test_train_run_records_every_metric():
    r = train_run(tiny())
    assert r.status == "done" and [e for e, _ in r.history] == list(range(7))
    final = r.final
    for key in ("train_loss", "train_acc", "nc0", "nc0_normalized", "nc1", "nc2", "nc3", "nc4", "step", "lr"):
        assert key in final, key
    assert final["nc0"] < r.history[0][1]["nc0"]


@pytest.mark.fast
def test_divergence_is_recorded_not_raised():
    r = train_run(tiny(lr=1e12, epochs=30))
    assert r.status == "diverged" and "non-finite" in r.error
    assert r.last_epoch < 30 and math.isnan(r.final["train_loss"])


@pytest.mark.fast
def test_checkpoint_resume_gives_the_uninterrupted_numbers(tmp_path):
    config = tiny(epochs=8)
    full = train_run(config)

    class Stop(Exception):
        pass

    def interrupt(epoch, _metrics):
        if epoch == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(config, checkpoint_dir=tmp_path, on_epoch=interrupt)
    assert checkpoint_path(tmp_path, config.run_id).exists()
    resumed = train_run(config, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 4
    assert [e for e, _ in resumed.history] == [e for e, _ in full.history]
    for (_, a), (_, b) in zip(full.history, resumed.history):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-12, nan_ok=True), key


# ------------------------------------------------------------------ store and sweeps
@pytest.mark.fast
def test_store_commit_replaces_partial_rows_and_exports(tmp_path):
    config = tiny()
    with ResultStore(tmp_path) as store:
        store.add_configs([config])
        store.add_configs([config])
        assert store.status_counts() == {"pending": 1}
        store.claim([config.run_id])
        with store.transaction() as db:  # a partial row left by some earlier writer
            db.execute("INSERT INTO metrics VALUES (?, 99, 'nc0', 1.0)", (config.run_id,))
        result = RunResult(config.run_id, "done", [(0, {"nc0": 2.0, "nc1": float("nan")}), (6, {"nc0": 0.5})], 1.0)
        store.commit_result(result)
        assert store.history(config.run_id)[-1] == (6, {"nc0": 0.5})
        assert math.isnan(store.history(config.run_id)[0][1]["nc1"])
        assert store.status_counts() == {"done": 1}
        csv_path = store.export_csv(tmp_path / "m.csv")
        assert csv_path.read_text().splitlines()[0].startswith("run_id,optimizer")
        import pyarrow.parquet as pq

        table = pq.read_table(store.export_parquet(tmp_path / "m.parquet"))
        assert table.num_rows == 2 and "nc0" in table.column_names
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.fast
def test_inline_sweep_runs_each_config_once(tmp_path):
    configs = [tiny(seed=s) for s in range(2)] + [tiny(optimizer="adamw", lr=1e-2, weight_decay=0.05),
                                                 tiny(lr=1e12, epochs=20)]
    summary = run_sweep(configs, tmp_path, executor=InlineExecutor())
    assert summary.executed == 4 and summary.counts == {"done": 3, "diverged": 1}
    again = run_sweep(configs, tmp_path, executor=InlineExecutor())
    assert again.executed == 0
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    with pytest.raises(ValueError, match="more than once"):
        run_sweep(configs + configs[:1], tmp_path / "x", executor=InlineExecutor())


@pytest.mark.fast
def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    bad = tiny(model="mlp", dataset="mnist", data_options={"root": str(tmp_path / "missing")})
    summary = run_sweep([bad, tiny()], tmp_path / "out", executor=InlineExecutor())
    assert summary.counts == {"failed": 1, "done": 1}
    with ResultStore(tmp_path / "out") as store:
        assert store.run_ids("failed") == [bad.run_id]


@pytest.mark.slow
@pytest.mark.parametrize("figures", [False, True])
def test_report_summary_and_figures(tmp_path, figures):
    from ncprop.experiments.report import write_report

    configs = [tiny(optimizer=o, lr=lr, weight_decay=wd, epochs=8, metric_epochs="log:3") for o, lr, wd in
               (("sgd", 0.5, 5e-3), ("sgd", 0.5, 0.0), ("adamw", 1e-2, 5e-2))]
    run_sweep(configs, tmp_path, executor=InlineExecutor())
    text = write_report(tmp_path, min_train_acc=0.0, figures=figures).read_text()
    assert "| SGD | coupled |" in text and "| AdamW | decoupled |" in text
    if figures:
        for name in ("nc_over_epochs_tiny", "final_vs_wd_tiny", "nc0_theory_tiny"):
            for ext in ("png", "pdf"):
                assert (tmp_path / "report" / f"{name}.{ext}").stat().st_size > 1000, name
    assert (tmp_path / "report" / "metrics.csv").exists() and (tmp_path / "report" / "metrics.parquet").exists()


@pytest.mark.fast
def test_test_nc4_uses_the_training_class_means():
    import torch

    from ncprop.experiments.train import build_run, evaluate, load_data

    config = RunConfig(model="mlp", dataset="synthetic", optimizer="sgd", lr=0.1, epochs=1, batch_size=0,
                       model_options={"widths": [6]},
                       data_options={"num_classes": 3, "dim": 5, "per_class": 12, "train_per_class": 7,
                                     "separation": 1.0})
    train, test = load_data(config)
    assert torch.bincount(train.y).tolist() == [7, 7, 7] and len(test) == 36
    model, _ = build_run(config, train)
    got = evaluate(model, config, train, test)
    model.eval()
    with torch.no_grad():
        (x, y), (xt, _) = next(train.batches(len(train))), next(test.batches(len(test)))
        h, (logits_t, ht) = model.features(x).double(), model.forward_features(xt)
    means = torch.stack([h[y == k].mean(0) for k in range(3)])
    nearest = torch.cdist(ht.double(), means).argmin(1)
    assert got["test_nc4"] == pytest.approx((logits_t.argmax(1) == nearest).double().mean().item())


@pytest.mark.fast
def test_coupled_gap_verdict_names_the_optimizers_that_fail():
    from ncprop.experiments.report import _verdict_line, coupled_gap

    def row(opt, nc0):
        return {"optimizer": opt, "kept": 2, "nc0": nc0, "nc0_normalized": nc0 / 10}

    rows = [row("sgd", 1e-3), row("adam", 1e-2), row("signgd", 2.0), row("signum", 1e-2),
            row("adamw", 1.5), row("signum_w", 3.0), row("signgd_w", 3.0), row("lion", 4.0), row("sgdw", 9.0)]
    g = coupled_gap(rows)
    assert g["verdict"] == "partial" and set(g["passed"]) == {"sgd", "adam", "signum"}
    assert g["per"]["sgd"][0] == pytest.approx(math.log10(1.5 / 1e-3))
    line = _verdict_line("mnist1d", rows)
    assert "only in part" in line and "not for SignGD" in line
    rows[2] = row("signgd", 1e-2)
    assert coupled_gap(rows)["verdict"] == "holds" and "holds:" in _verdict_line("ufm", rows)
    assert coupled_gap([row("sgd", 1.0)]) is None
