"""The epoch-end calibration: shape temperature and total refit (training/calibrate.py)."""

import numpy as np
import pytest
import torch

from training import calibrate
from training.losses import energy_score
from training.prefit import solve_impact_head
from zdc_sim import features, geometry, reference
from zdc_sim.models import SIZES, Generator, ModelConfig


def _generator_and_particles(n=600, seed=5):
    torch.manual_seed(seed)  # the generator's initial weights: not whatever the tests before left
    raw, pdg = reference.sample_particles(4 * n, np.random.default_rng(seed))
    x_cm, y_cm = geometry.impact_point_cm(raw)
    inside = (np.abs(x_cm) < 1.5) & (np.abs(y_cm) < 1.5)
    raw, pdg, x_cm, y_cm = raw[inside][:n], pdg[inside][:n], x_cm[inside][:n], y_cm[inside][:n]
    std = features.Standardizer.fit(raw)
    gen = Generator(SIZES["tiny"])
    gen.conditioner.fit(std, raw)
    x = torch.from_numpy(std.transform(raw))
    solve_impact_head(gen, x, torch.from_numpy(np.stack([x_cm, y_cm], 1)))
    return gen, x, raw, pdg


def test_refit_moves_the_total_towards_skewed_real_totals_and_only_the_total_heads():
    gen, x, raw, pdg = _generator_and_particles()
    energy = raw[:, 0].astype(np.float64)
    rng = np.random.default_rng(0)
    real = energy[:, None] * 40.0 * rng.beta(4.0, 2.0, (len(raw), 2))  # left-skewed, mean 26.7 per GeV
    with torch.no_grad():  # start 2x too high, with almost no spread
        gen.total_mean[-1].weight.zero_()
        gen.total_mean[-1].bias.zero_()
        gen.total_mean[-1].bias.add_(torch.log(torch.tensor(2 * 26.7)))
    z = torch.randn(len(x) * 8, gen.config.latent_dim, generator=torch.Generator().manual_seed(2))

    def per_gev():
        with torch.no_grad():
            return gen.mean_counts(z, x.repeat_interleave(8, 0)).sum((1, 2)).view(len(x), 8).numpy() / energy[:, None]

    def spread(values):  # over latents, per particle
        return np.median(values.std(1) / values.mean(1))

    before = spread(per_gev())
    other = {k: v.clone() for k, v in gen.state_dict().items()
             if not k.startswith(("total.", "total_mean.", "total_scale."))}
    # lr raised for the test: tiny model, few steps
    result = calibrate.refit_total(gen, x, energy, pdg, real, steps=400, seed=1, lr=3e-3)
    assert result["score_after"] < 0.5 * result["score_before"]
    for key, value in gen.state_dict().items():
        if key in other:
            torch.testing.assert_close(value, other[key], rtol=0, atol=0)
    after = per_gev()
    assert abs(np.mean(after) / 26.7 - 1) < 0.1
    real_spread = 0.18 / 0.67  # of Beta(4, 2)
    assert abs(spread(after) - real_spread) < 0.5 * abs(before - real_spread), (before, spread(after))


def test_face_shares_are_whole_at_the_centre_and_belong_to_their_latents():
    torch.manual_seed(0)
    gen, x, _, _ = _generator_and_particles(n=50)
    latents, shares = calibrate.face_shares(gen, x, 6, torch.Generator().manual_seed(3), chunk=64)
    assert latents.shape == (50, 6, gen.config.latent_dim) and shares.shape == (50, 6)
    assert float(shares.min()) > 0.9  # impact points within 1.5 cm of the centre of a 7 cm face
    with torch.no_grad():  # the share of particle 7's third latent, computed alone
        z = latents[7, 2][None]
        alone = gen.mean_counts(z, x[7:8]).sum() / torch.exp(calibrate._log_total(gen, z, x[7:8]))
    assert float(shares[7, 2]) == pytest.approx(float(alone), rel=1e-5)


def test_refit_counts_the_fluctuation_of_the_share_on_the_face(monkeypatch):
    """Where the face shows a varying share of the shower (edge hits), the real totals fluctuate by
    that share too; the refitted total must keep the shower's own spread, not take on both."""
    gen, x, raw, pdg = _generator_and_particles()
    energy = raw[:, 0].astype(np.float64)
    rng = np.random.default_rng(0)
    halves = lambda shape: np.where(rng.random(shape) < 0.5, 0.5, 1.0)  # noqa: E731  half or all of it seen
    real = energy[:, None] * 40.0 * rng.beta(4.0, 2.0, (len(raw), 2)) * halves((len(raw), 2))
    real_shares = calibrate.face_shares

    def edge_shares(generator, features, samples, rng_, chunk=1024):
        latents, _ = real_shares(generator, features, samples, rng_, chunk)
        return latents, torch.from_numpy(halves((len(features), samples))).float()

    monkeypatch.setattr(calibrate, "face_shares", edge_shares)
    calibrate.refit_total(gen, x, energy, pdg, real, steps=1200, seed=1, lr=3e-3)
    z = torch.randn(len(x) * 8, gen.config.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        totals = torch.exp(calibrate._log_total(gen, z, x.repeat_interleave(8, 0))).view(len(x), 8).numpy()
    spread = np.median(totals.std(1) / totals.mean(1))
    shower_spread, seen_spread = 0.18 / 0.67, 0.436  # Beta(4, 2); times a share of 1/2 or 1
    # one share per particle for all its latents (the first refit) ends near 0.47 here; this refit
    # ends at 0.30-0.34 over initial weights (a tiny model, 1200 steps): nearer the shower's own spread
    assert abs(spread - shower_spread) < 0.5 * (seen_spread - shower_spread), spread
    assert abs(np.mean(totals / energy[:, None]) / 26.7 - 1) < 0.2


def test_energy_score_1d_is_lowest_for_the_true_spread():
    rng = torch.Generator().manual_seed(0)
    real = torch.randn(4000, 1, generator=rng)
    scores = {s: float(energy_score((s * torch.randn(4000, 8, generator=rng))[..., None], real[..., None]).mean())
              for s in (0.0, 0.5, 1.0, 2.0)}
    assert scores[1.0] < min(scores[0.0], scores[0.5], scores[2.0])


def test_refit_needs_the_location_scale_total():
    gen = Generator(ModelConfig(width=4, hidden=32, disc_width=4, latent_gate=False))
    with pytest.raises(ValueError, match="latent_gate"):
        calibrate.refit_total(gen, torch.zeros(4, 9), np.ones(4), np.full(4, 2112), np.ones((4, 2)), steps=1)


def test_shape_temperature_fit_recovers_the_temperature_that_made_the_showers():
    torch.manual_seed(0)  # the tiny generator's initial weights: not left to the tests that ran before
    gen, x, raw, _ = _generator_and_particles(n=200)
    gen.set_total_scale(np.log(20000.0))  # showers large enough that photon statistics do not hide the shape
    with torch.no_grad():  # a shape that the latent moves a lot, so its spread is measurable
        gen.dense[0][0].weight[:, : gen.config.latent_dim].mul_(20.0)
        gen.upsample[-1].weight.mul_(30.0)
        gen.shape_temperature.fill_(0.5)
        random = torch.randn(len(x) * 2, gen.config.random_dim, generator=torch.Generator().manual_seed(3))
        real = geometry.channel_sums(gen.counts(random, x.repeat_interleave(2, 0)).double().numpy())
    real = real.reshape(len(x), 2, 5)
    gen.shape_temperature.fill_(1.0)
    before = {k: v.clone() for k, v in gen.state_dict().items() if k != "shape_temperature"}
    result = calibrate.fit_shape_temperature(gen, x, real, seed=9, temperatures=[0.2, 0.35, 0.5, 0.65, 1.0])
    assert result["temperature"] == pytest.approx(float(gen.shape_temperature))
    assert abs(result["temperature"] - 0.5) <= 0.1, result
    scores = dict(zip(result["temperatures"], result["tower_ws"]))
    assert scores[1.0] > 1.5 * min(scores.values())  # the first guess, 1, was clearly worse
    for key, value in gen.state_dict().items():  # nothing else moves
        if key in before:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_intensity_is_fitted_on_every_training_particle_unless_told_fewer(tiny_checkpoint, tiny_parts, monkeypatch):
    """Real counts = the model's own draws x 1.00 for the first half of the particles and x 1.06 for
    the second: fitted on all of them the factor lies between, on the first half it is 1.00, also
    when the fit simulates a few rows at a time (each chunk draws what one call draws)."""
    from types import SimpleNamespace

    from zdc_sim.simulator import Simulator

    sim = Simulator.load(tiny_checkpoint)
    feats = tiny_parts["features"][::4]  # one row per particle
    feats = feats[sim.reaches(feats)][:24]
    n, k, seed = len(feats), 2, 9
    own = sim.simulate(np.repeat(feats, k, 0), seed=seed, extrapolate=True).channels.astype(np.float64)
    scale = np.repeat(np.where(np.arange(n) < n // 2, 1.0, 1.06), k)[:, None]
    data = SimpleNamespace(particle_id=np.repeat(np.arange(n), k), features=np.repeat(feats, k, 0), channels=own * scale)
    assert calibrate.fit_intensity(sim, data, seed=seed, particles=n // 2) == pytest.approx(1.0)
    assert 1.005 < calibrate.fit_intensity(sim, data, seed=seed) < 1.055
    monkeypatch.setattr(calibrate, "CHUNK_ROWS", 5)
    assert calibrate.fit_intensity(sim, data, seed=seed, particles=n // 2) == pytest.approx(1.0)
    assert 1.005 < calibrate.fit_intensity(sim, data, seed=seed) < 1.055


def test_refit_intensity_writes_a_checkpoint_scaled_by_the_factor_its_training_file_calls_for(tiny_checkpoint,
                                                                                              tiny_parts, tmp_path):
    """A training file whose responses are the model's own draws x 1.04 (the draws the fit makes:
    same seed, same particles in the same order) calls for exactly 1.04; the refitted copy carries it
    and the record, and the checkpoint it came from is left as it was."""
    from zdc_sim import checkpoint, rootio
    from zdc_sim.cli import main
    from zdc_sim.simulator import Simulator

    sim = Simulator.load(tiny_checkpoint)
    feats, pdg = tiny_parts["features"][::4], tiny_parts["pdg"][::4]
    a_side = np.all(geometry.to_a_side(feats) == feats, axis=1) & sim.reaches(feats)
    feats, pdg, k = feats[a_side], pdg[a_side], 2
    counts = sim.simulate(np.repeat(feats, k, 0), seed=calibrate.INTENSITY_SEED, extrapolate=True).counts
    train = tmp_path / "train.root"
    rootio.write_dataset(train, [{"features": np.repeat(feats, k, 0), "pdg": np.repeat(pdg, k),
                                  "particle_id": np.repeat(np.arange(len(feats)), k),
                                  "response_zn": (1.04 * counts).astype(np.float32)}])
    original = tiny_checkpoint.read_bytes()
    out = tmp_path / "refitted.safetensors"
    assert main(["refit-intensity", "--checkpoint", str(tiny_checkpoint), "--data", str(train), "--out", str(out)]) == 0
    assert tiny_checkpoint.read_bytes() == original
    tensors, metadata = checkpoint.load(out)
    assert float(tensors["generator.intensity"]) == pytest.approx(1.04 * float(sim.generator.intensity))
    assert metadata["intensity_refit"]["factor"] == pytest.approx(1.04)
    assert metadata["intensity_refit"]["particles"] == len(feats)
    assert metadata["model"] == checkpoint.load(tiny_checkpoint)[1]["model"]


def test_the_em_factor_is_fitted_on_top_of_the_common_one(tiny_checkpoint):
    """Real counts = the model's own draws, x 1.04 for electromagnetic showers only (their draws as
    the EM fit makes them): the common factor moves a little, the EM one on top of it brings the EM
    showers' product to 1.04, and both land in the generator's buffers. With fewer EM particles
    than a class needs, no EM factor."""
    from types import SimpleNamespace

    from tests.conftest import make_parts
    from zdc_sim import metrics, species
    from zdc_sim.simulator import Simulator

    sim = Simulator.load(tiny_checkpoint)
    parts = make_parts(n_particles=120, repeats=1, seed=5)
    feats, pdg = parts["features"], parts["pdg"]
    keep = sim.reaches(feats)
    feats, pdg = feats[keep], pdg[keep]
    em = species.shower_class(pdg) == species.ELECTROMAGNETIC
    assert em.sum() >= metrics.MIN_CLASS_PARTICLES and (~em).sum() >= metrics.MIN_CLASS_PARTICLES
    k, seed = 2, 9
    channels = sim.simulate(np.repeat(feats, k, 0), seed=seed, extrapolate=True).channels.astype(np.float64)
    channels = channels.reshape(len(feats), k, -1)
    own_em = sim.simulate(np.repeat(feats[em], k, 0), seed=seed, extrapolate=True).channels.astype(np.float64)
    channels[em] = 1.04 * own_em.reshape(em.sum(), k, -1)
    data = SimpleNamespace(particle_id=np.repeat(np.arange(len(feats)), k), features=np.repeat(feats, k, 0),
                           pdg=np.repeat(pdg, k), channels=channels.reshape(-1, channels.shape[-1]))
    gen = sim.generator
    factors = calibrate.apply_intensities(gen, lambda g: Simulator(g, sim.standardizer, device="cpu"), data, seed)
    assert factors["factor"] >= 1.005  # the EM showers pull the common factor up: the EM fit saw it applied
    assert factors["em_factor"] == pytest.approx(1.04 / factors["factor"], abs=0.003)
    assert float(gen.intensity) == pytest.approx(factors["factor"]) and float(gen.em_intensity) == pytest.approx(
        factors["em_factor"])
    few = np.isin(data.particle_id, np.flatnonzero(~em).tolist() + np.flatnonzero(em)[:3].tolist())
    few_data = SimpleNamespace(**{k: v[few] for k, v in vars(data).items()})
    assert calibrate.fit_em_intensity(sim, few_data, seed) == 1.0
