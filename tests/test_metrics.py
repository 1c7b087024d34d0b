import numpy as np
import pytest
from scipy.stats import spearmanr, wasserstein_distance

from zdc_sim import geometry, metrics, reference


def test_ws_channels_agrees_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(2.0, 100.0, (300, 5)), rng.gamma(2.5, 90.0, (200, 5))
    expected = [wasserstein_distance(a[:, c], b[:, c]) for c in range(5)]
    np.testing.assert_allclose(metrics.ws_channels(a, b), expected)


def test_ws_by_hand():
    real = np.array([[0, 0, 0, 0, 0], [2, 2, 2, 2, 2]], float)
    np.testing.assert_allclose(metrics.ws_channels(real, real + 1.0), 1.0)
    np.testing.assert_allclose(metrics.ws_channels(real, np.array([[1, 1, 1, 1, 1.0]])), 1.0)


def test_group_repeats_orders_by_particle():
    ids = np.array([7, 3, 7, 3, 9, 7])
    values = np.array([0, 1, 2, 3, 4, 5])
    got_ids, (grouped,) = metrics.group_repeats(ids, values)
    np.testing.assert_array_equal(got_ids, [3, 7])  # 9 has one entry: dropped
    np.testing.assert_array_equal(grouped, [[1, 3], [0, 2]])  # K = smallest count, first K kept
    with pytest.raises(ValueError, match="2 or more"):
        metrics.group_repeats(np.arange(4), values[:4])


def test_floor_protocol_uses_halves():
    rng = np.random.default_rng(1)
    real = rng.normal(100, 10, (50, 4, 5))
    report = metrics.ws_against_floor(real, real[:, 2:])  # "generated" = half B exactly
    assert report.ws_mean == pytest.approx(report.ws_floor)
    assert report.ratio_to_floor == pytest.approx(1.0)
    shifted = metrics.ws_against_floor(real, real[:, 2:] + 30.0)
    assert shifted.ratio_to_floor > 3.0
    with pytest.raises(ValueError, match="expected real"):
        metrics.ws_against_floor(real[:, :1], real)


def test_relative_spread_by_hand():
    totals = np.array([[90.0, 110.0], [10.0, 10.0]])
    shrink = np.sqrt(0.454936423119572)  # median of chi2 with 1 degree of freedom
    np.testing.assert_allclose(metrics.relative_spread(totals), [np.std([90, 110], ddof=1) / 100 / shrink, 0.0])


def _perfect_and_broken(n=1500, k=4, m=10, seed=0):
    chunks = list(reference.generate(n, k, seed))
    feats = np.concatenate([c.features for c in chunks])[::k]
    pdg = np.concatenate([c.pdg for c in chunks])[::k]
    real = np.concatenate([c.response for c in chunks]).sum((1, 2)).reshape(n, k)
    rng = np.random.default_rng(seed + 100)
    perfect = reference.simulate(np.repeat(feats, m, 0), np.repeat(pdg, m), rng).sum((1, 2)).reshape(n, m)
    mean = real.mean(1, keepdims=True)
    collapsed = np.repeat(mean, m, 1)
    spread_everywhere = mean * rng.lognormal(0.0, 0.25, (n, m))
    return real, pdg, perfect, collapsed, spread_everywhere


def test_selectivity_tells_faithful_collapsed_and_over_spread_apart():
    real, pdg, perfect, collapsed, everywhere = _perfect_and_broken()
    good = metrics.selectivity(real, perfect, pdg)
    assert good.calibration > 0.5
    assert abs(good.spread_bias["hadronic"]) < 0.1 and abs(good.spread_bias["electromagnetic"]) < 0.1
    bad = metrics.selectivity(real, collapsed, pdg)
    assert bad.calibration == 0.0 and bad.spread_bias["hadronic"] < -5
    over = metrics.selectivity(real, everywhere, pdg)
    assert over.calibration < 0.2 and over.spread_bias["electromagnetic"] > 1.5
    assert abs(over.spread_bias["hadronic"]) < 0.3  # right for hadrons, wrong for EM: bias per class shows it
    assert good.n_by_class["hadronic"] + good.n_by_class["electromagnetic"] == good.n_particles


def test_selectivity_skips_empty_responses_and_matches_spearman():
    real = np.array([[100.0, 120, 80, 110], [0, 1, 0, 0], [1000, 1010, 990, 1000], [500, 700, 300, 550]])
    gen = np.array([[100.0, 130, 70, 100], [0, 0, 3, 0], [1000, 1000, 1001, 999], [400, 800, 450, 600]])
    pdg = np.array([2112, 2112, 22, 2112])
    sel = metrics.selectivity(real, gen, pdg)
    keep = [0, 2, 3]
    expected = spearmanr(metrics.relative_spread(real[keep]), metrics.relative_spread(gen[keep])).statistic
    assert sel.n_particles == 3 and sel.calibration == pytest.approx(expected)
    assert np.isnan(sel.spread_bias["electromagnetic"]) and sel.n_by_class["electromagnetic"] == 1  # one says nothing
    many = metrics.selectivity(np.repeat(real, 10, 0), np.repeat(gen, 10, 0), np.repeat(pdg, 10))  # 10 EM showers: still too few
    assert np.isnan(many.spread_bias["electromagnetic"]) and not np.isnan(many.spread_bias["hadronic"])
    enough = metrics.selectivity(np.repeat(real, 20, 0), np.repeat(gen, 20, 0), np.repeat(pdg, 20))
    assert enough.spread_bias["electromagnetic"] == pytest.approx(
        np.log(metrics.relative_spread(gen[[2]])[0] / metrics.relative_spread(real[[2]])[0]))


def test_channel_sums_feed_the_protocol():
    chunk = next(reference.generate(30, 4, 2))
    channels = geometry.channel_sums(chunk.response).reshape(30, 4, 5)
    report = metrics.ws_against_floor(channels, channels[:, 2:])
    assert len(report.ws_channels) == 5 and report.ratio_to_floor == pytest.approx(1.0)


def _toy(n=3000, k=4, bias=0.0, seed=0):
    """Channel values of n particles: a per-particle mean and unit noise; generated ones shifted by
    `bias` (a systematic error that does not shrink with n)."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(10, 20, (n, 1, 5))
    real = mean + rng.normal(0, 1, (n, k, 5))
    generated = mean + bias + rng.normal(0, 1, (n, k // 2, 5))
    return real, generated


def test_systematic_ws_finds_a_shift_and_not_sampling_noise():
    real, faithful = _toy(bias=0.0)
    _, shifted = _toy(bias=0.3)
    none, some = metrics.systematic_ws(real, faithful), metrics.systematic_ws(real, shifted)
    assert none["mean_photons"] < 0.1 and 0.22 < some["mean_photons"] < 0.38  # the shift of 0.3 in every channel
    assert len(some["photons"]) == 5 and np.allclose(np.array(some["share"]) * real[:, :2].reshape(-1, 5).std(0),
                                                     some["photons"])
    low, high = metrics.bootstrap_systematic(real, shifted, resamples=50)
    assert low < some["mean_photons"] < high and low > 0.1


def test_paired_bootstrap_tells_two_models_apart_where_separate_intervals_overlap():
    real, better = _toy(n=1500, bias=0.1, seed=1)
    _, worse = _toy(n=1500, bias=0.3, seed=1)
    paired = metrics.paired_bootstrap(real, better, worse, resamples=100)
    assert paired["ratio_difference"] < 0 and paired["ratio_interval"][1] < 0  # better is better, surely
    assert paired["systematic_interval"][1] < 0
    width = paired["ratio_interval"][1] - paired["ratio_interval"][0]
    a, b = metrics.bootstrap_ratio(real, better, 100), metrics.bootstrap_ratio(real, worse, 100)
    assert width < 0.5 * min(a[1] - a[0], b[1] - b[0])
