import numpy as np
import pytest
import torch

from training import benchmark, synthetic


class _Truth:
    """Draws from the task's own modes: what a perfect generator would do."""

    def __init__(self, task, collapse=False):
        self.task, self.collapse = task, collapse
        self.rng = np.random.default_rng(0)

    def __call__(self, z, cond):
        c = int(cond[0].argmax())
        if self.collapse:
            points = self.task.modes[c][:1] + self.rng.normal(0, self.task.std, (len(z), 2))
        else:
            points = self.task.sample_condition(c, len(z), self.rng)
        return torch.as_tensor(points, dtype=torch.float32)


@pytest.mark.parametrize("name,total", [("ring", 8), ("grid", 25), ("selective", 20)])
def test_a_perfect_generator_scores_every_mode(name, total):
    task = synthetic.make_task(name)
    result = synthetic.score(task, _Truth(task), samples_per_condition=1000)
    assert result["modes"] == result["modes_total"] == total
    assert result["hq_share"] > 0.98
    if name == "selective":
        assert result["multi_mode_coverage"] == 1.0
        assert 0.9 < result["single_mode_spread"] < 1.1


def test_a_collapsed_generator_scores_one_mode_per_condition():
    task = synthetic.make_task("selective")
    result = synthetic.score(task, _Truth(task, collapse=True), samples_per_condition=1000)
    assert result["modes"] == 8 and result["multi_mode_coverage"] == 0.25
    assert synthetic.score(synthetic.make_task("ring"), _Truth(synthetic.make_task("ring"), True))["modes"] == 1


def test_selective_weights_separate_single_and_multi_mode_conditions():
    weights = synthetic.make_task("selective").diversity_weights()
    assert weights[:4].max() < 0.01 and weights[4:].min() > 0.9
    assert synthetic.make_task("ring").diversity_weights().tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synthetic.make_task("spiral")


@pytest.mark.parametrize("method", benchmark.METHODS)
def test_every_method_trains_a_toy_gan_without_nan(method):
    task = synthetic.make_task("selective")
    g = synthetic.train_toy(task, method, seed=0, steps=20, batch=64)
    result = synthetic.score(task, g, samples_per_condition=100)
    assert np.isfinite(result["hq_share"]) and np.isfinite(result["single_mode_spread"])


@pytest.mark.slow
def test_benchmark_writes_table_json_and_plot(tmp_path):
    plan = benchmark.BenchPlan(seeds=2, toy_steps=10, zdc_particles=40, zdc_heldout=12, zdc_model="tiny",
                               zdc_epochs=1, zdc_batch=16)
    results = benchmark.run(tmp_path, plan, methods=("none", "sdi"), progress=False)
    assert len(results["runs"]) == 4 * 2 * 2  # benchmarks x methods x seeds
    assert all(r["finite"] for r in results["runs"])
    table = (tmp_path / "results.md").read_text()
    assert "| ZDC WS / floor |" in table and "`sdi` (lambda 1)" in table and "| all runs finite | yes | yes |" in table
    zdc = [r for r in results["runs"] if r["bench"] == "zdc"]
    assert all(r["ratio_to_floor"] > 0 for r in zdc)
    assert (tmp_path / "regularizers.png").stat().st_size > 10_000
