"""The Ray executor against a local Ray instance (2 CPUs, no dashboard)."""

from __future__ import annotations

import pytest

from ncprop.experiments import RayExecutor, ResultStore, RunConfig, run_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_writes_every_run(ray_local, tmp_path):
    configs = [RunConfig(model="ufm", dataset="ufm", optimizer=opt, lr=lr, momentum=0.9, weight_decay=wd, epochs=10,
                         batch_size=6, seed=seed, metric_epochs="log:3", model_options={"feature_dim": 6},
                         data_options={"num_classes": 3, "per_class": 4})
               for opt, lr, wd in (("sgd", 0.5, 5e-3), ("adamw", 1e-2, 5e-2)) for seed in (0, 1)]
    configs.append(configs[0].replace(lr=1e12, epochs=20))  # diverges: recorded, the sweep goes on
    executor = RayExecutor()
    assert executor.workers == 2
    summary = run_sweep(configs, tmp_path, executor=executor)
    assert summary.executed == len(configs)
    assert summary.counts == {"done": 4, "diverged": 1}
    with ResultStore(tmp_path) as store:
        for c in configs[:4]:
            history = store.history(c.run_id)
            assert [e for e, _ in history] == [0, 1, 3, 10]
            assert "nc0" in history[-1][1]
    assert run_sweep(configs, tmp_path, executor=executor).executed == 0
