import numpy as np
import pytest
import torch

from training.prefit import set_envelope, solve_impact_head
from zdc_sim import features, geometry, metrics, reference
from zdc_sim.models import (LEGACY, SIZES, Discriminator, Generator, ModelConfig, generator_flops_per_sample,
                            photon_counts)


def _fitted(config=SIZES["tiny"], n=64, seed=0):
    x, _ = reference.sample_particles(n, np.random.default_rng(seed))
    x = geometry.to_a_side(x)  # the frame models work in (the Simulator mirrors C-side particles)
    std = features.Standardizer.fit(x)
    gen, disc = Generator(config), Discriminator(config)
    gen.conditioner.fit(std, x)
    disc.conditioner.load_state_dict(gen.conditioner.state_dict())
    return gen, disc, torch.from_numpy(std.transform(x)), x


def _random(gen, n, seed=0):
    return torch.randn(n, gen.config.random_dim, generator=torch.Generator().manual_seed(seed))


def test_generator_output_shape_and_non_negative():
    gen, _, x, _ = _fitted()
    random = _random(gen, len(x))
    torch.testing.assert_close(torch.log1p(gen.counts(random, x))[:, None], gen(random, x))
    out = gen(random, x)
    assert out.shape == (len(x), 1, 44, 44) and out.dtype == torch.float32
    assert (out >= 0).all()
    counts = torch.expm1(out)
    torch.testing.assert_close(counts, counts.round(), atol=1e-3, rtol=0)  # photon counts are whole numbers


def test_discriminator_returns_logit_and_embedding():
    config = SIZES["tiny"]
    gen, disc, x, _ = _fitted(config)
    logit, embedding = disc(gen(_random(gen, len(x)), x), x)
    assert logit.shape == (len(x),) and embedding.shape == (len(x), config.hidden)
    images = gen(_random(gen, 2), x[:2])
    torch.testing.assert_close(disc.embed(images), disc(images, x[:2])[1])


@pytest.mark.parametrize("config", [SIZES["tiny"], ModelConfig.from_dict({**SIZES["tiny"].to_dict(), **LEGACY})])
def test_generator_total_head_sets_the_scale(config):
    gen, _, x, _ = _fitted(config)
    gen.set_total_scale(np.log(5000.0))
    with torch.no_grad():
        gen.total[-1].weight.zero_()  # total = exp(bias) exactly (with the gate: h(z, c) = 0)
        if config.latent_gate:
            gen.total[-1].bias.zero_()
            gen.total_mean[-1].weight.zero_()
        _, mean = gen(_random(gen, len(x)), x, with_mean=True)
        counts = torch.expm1(mean).sum((1, 2, 3))
    if config.impact_frame:  # what lands outside the face is lost: never more than the total
        assert (counts <= 5000.0 * 1.002).all() and (counts > 0).all()
    else:
        torch.testing.assert_close(counts, torch.full_like(counts, 5000.0), rtol=2e-3, atol=0)


def test_checkpoints_of_the_first_design_load_with_its_structure():
    config = ModelConfig.from_dict({"latent_dim": 10, "width": 16, "hidden": 256, "disc_width": 16})
    assert (config.impact_frame, config.latent_gate, config.upsample, config.photon_noise, config.halo,
            config.envelope) == (False, False, "transposed", False, False, "gaussian")
    assert config.random_dim == 10 and SIZES["base"].random_dim == 10 + 44 * 44
    with pytest.raises(ValueError, match="upsample"):
        ModelConfig(upsample="bicubic")
    with pytest.raises(ValueError, match="halo needs impact_frame"):
        ModelConfig(impact_frame=False, halo=True)
    with pytest.raises(ValueError, match="envelope"):
        ModelConfig(envelope="cauchy")


def test_fitted_envelope_is_the_mean_radial_profile_of_real_showers():
    """Showers that are round Gaussians of 1.2 cm around their impact point: the fitted envelope
    alone (shape logits 0) must put the same share of the counts beyond each radius, and a wider
    share than the fixed 1 cm Gaussian it replaces."""
    gen, _, x, raw = _fitted(n=400, seed=4)
    x_cm, y_cm = geometry.impact_point_cm(raw)
    inside = (np.abs(x_cm) < 2.0) & (np.abs(y_cm) < 2.0)
    points = np.stack([x_cm, y_cm], 1)[inside]
    solve_impact_head(gen, x[torch.from_numpy(inside)], torch.from_numpy(points))
    offset = (np.arange(44) - 21.5) * geometry.ZN.pitch_cm
    fitted = gen.impact_point(x[torch.from_numpy(inside)]).detach().numpy()
    r2 = (offset[None, None, :] - fitted[:, :1, None]) ** 2 + (offset[::-1][None, :, None] - fitted[:, 1:, None]) ** 2
    showers = 1e4 * np.exp(-r2 / (2 * 1.2**2))
    gaussian = torch.softmax(gen.prior, 1).reshape(44, 44).numpy()
    set_envelope(gen, x[torch.from_numpy(inside)], torch.from_numpy(showers))
    assert gen.prior.max() == 0 and torch.isfinite(gen.prior).all()
    envelope = torch.softmax(gen.prior, 1).reshape(44, 44).numpy()
    r = np.hypot(offset[:, None], offset[None, :])
    for radius in (0.5, 1.0, 2.0, 3.0):
        expected = np.exp(-radius**2 / (2 * 1.2**2))  # share of a round Gaussian beyond a radius
        assert abs(envelope[r > radius].sum() - expected) < 0.02 + 0.1 * expected, radius
    assert envelope[r > 2.0].sum() > 1.5 * gaussian[r > 2.0].sum()  # exp(-2 / 1.44) against exp(-2)
    with pytest.raises(ValueError, match="empty"):
        set_envelope(gen, x[:4], torch.zeros(4, 44, 44))


def test_conditioner_standardises_derived_quantities():
    gen, _, x, raw = _fitted(n=2000)
    cond = gen.conditioner(x).double()
    assert cond.shape == (2000, 15)
    torch.testing.assert_close(cond[:, :9], x.double())
    # log energy is the first derived quantity: mean 0 and unit std on the fitting set
    assert abs(cond[:, 9].mean().item()) < 1e-4 and abs(cond[:, 9].std().item() - 1) < 1e-3
    np.testing.assert_allclose(np.corrcoef(cond[:, 9].numpy(), np.log(raw[:, 0]))[0, 1], 1.0, atol=1e-6)


def test_flops_count_matches_layer_arithmetic():
    legacy = ModelConfig.from_dict({"latent_dim": 10, "width": 16, "hidden": 256})
    dense = (10 + 15) * 256 + 256 * 256 + 256 * 64 * 121
    convs = 121 * 64 * 32 * 16 + 484 * 32 * 16 * 16 + 1936 * 16 * 1 * 9
    total_head = (10 + 15) * 128 + 128 * 128 + 128
    assert generator_flops_per_sample(legacy) == 2 * (dense + convs + total_head)
    c = ModelConfig(width=12)  # nearest x2 + 3x3 convolutions; gate and location-scale total head
    dense = (10 + 15) * 256 + 256 * 256 + 256 * 48 * 121
    convs = 484 * 48 * 24 * 9 + 1936 * 24 * 12 * 9 + 1936 * 12 * 9
    heads = 15 * 10 + total_head + (15 * 128 + 128 * 128 + 128) + (15 * 128 + 128)
    assert generator_flops_per_sample(c) == 2 * (dense + convs + heads)
    halo = (10 + 15) * 64 + 64 * 2
    heads += halo
    c = ModelConfig(width=12, halo=True)
    assert generator_flops_per_sample(c) == 2 * (dense + convs + heads)
    assert generator_flops_per_sample(SIZES["small"]) < generator_flops_per_sample(SIZES["base"])


# --- the fidelity levers -------------------------------------------------------------------------

@pytest.mark.parametrize("mean", [0.05, 0.4, 3.0, 40.0, 900.0])
def test_photon_counts_have_poisson_mean_and_variance(mean):
    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    counts = photon_counts(torch.full_like(noise, mean), noise)
    assert abs(counts.mean().item() / mean - 1) < 0.03 + 3 * (1 / (mean * 200_000)) ** 0.5
    variance = mean * (1 - mean) if mean < 1 else mean  # one photon at most below a mean of one
    assert abs(counts.var().item() / variance - 1) < 0.05
    assert (counts >= 0).all() and torch.equal(counts, counts.round())


def test_photon_counts_pass_gradients_straight_through():
    mean = torch.tensor([0.3, 5.0, 200.0], requires_grad=True)
    photon_counts(mean, torch.tensor([0.1, -0.7, 1.3])).sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(3))


def test_impact_head_puts_the_shower_centre_on_the_impact_point():
    gen, _, x, raw = _fitted(n=4000, seed=2)
    x_cm, y_cm = geometry.impact_point_cm(raw)
    inside = (np.abs(x_cm) < 2.0) & (np.abs(y_cm) < 2.0)
    target = torch.from_numpy(np.stack([x_cm, y_cm], 1)[inside])
    residual = solve_impact_head(gen, x[torch.from_numpy(inside)], target)
    assert residual < 0.01  # the impact point is linear in the condition
    with torch.no_grad():
        gen.upsample[-1].weight.zero_()  # shape = the centred Gaussian envelope alone,
        gen.upsample[-1].bias.zero_()
        gen.prior.mul_(25.0)  # narrowed to 0.2 cm so that the face edge cuts nothing off
        _, mean = gen(_random(gen, int(inside.sum())), x[torch.from_numpy(inside)], with_mean=True)
        head = gen.impact_point(x[torch.from_numpy(inside)]).numpy()
    centres = metrics.shower_centres(torch.expm1(mean[:, 0]).numpy())
    np.testing.assert_allclose(centres, head, atol=0.005)  # translation is exact to a twentieth of a mm


def test_latent_gate_makes_a_response_deterministic_with_one_parameter():
    gen, _, x, _ = _fitted()
    with torch.no_grad():
        gen.gate.bias.fill_(-30.0)  # the gate closes: the latent no longer reaches the network
        gen.total_scale[-1].bias.fill_(-30.0)
        a = gen.mean_counts(torch.randn(len(x), 10), x)
        b = gen.mean_counts(torch.randn(len(x), 10), x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_nearest_upsampling_has_no_checkerboard():
    gen, _, x, _ = _fitted(ModelConfig(width=8, hidden=64, impact_frame=False, halo=False), n=256)
    with torch.no_grad():
        mean = gen.mean_counts(torch.randn(len(x), 10), x).numpy()
    sums = geometry.channel_sums(mean)
    share = sums[:, 4] / sums.sum(1)
    assert np.abs(share - 0.5).max() < 0.03


def test_halo_reaches_fibres_beyond_the_canvas():
    gen, _, x, raw = _fitted(ModelConfig(width=4, hidden=32, disc_width=4, halo=True), n=4000, seed=2)
    x_cm, y_cm = geometry.impact_point_cm(raw)
    inside = (np.abs(x_cm) < 2.0) & (np.abs(y_cm) < 2.0)
    solve_impact_head(gen, x[torch.from_numpy(inside)], torch.from_numpy(np.stack([x_cm, y_cm], 1)[inside]))
    with torch.no_grad():
        gen.halo[-1].bias.copy_(torch.tensor([30.0, np.log(0.8)]))  # all of the shower in a 0.8 cm halo
        gen.total_mean[-1].weight.zero_()
        gen.total[-1].weight.zero_()
        gen.total[-1].bias.zero_()  # total = exp(bias of the mean head)
        mean = gen.mean_counts(torch.randn(len(x), 10), x)
        total = float(torch.exp(gen.total_mean[-1].bias))
    centre = (np.abs(x_cm) < 0.5) & (np.abs(y_cm) < 0.5)
    # Round Gaussian of 0.8 cm around the impact point: all on the face, centred, RMS radius 0.8 sqrt 2.
    np.testing.assert_allclose(mean.sum((1, 2))[centre].numpy(), total, rtol=1e-3)
    centres = metrics.shower_centres(mean[centre].numpy())
    np.testing.assert_allclose(centres, gen.impact_point(x[torch.from_numpy(centre)]).detach().numpy(), atol=0.005)
    offset = (np.arange(44) - 21.5) * geometry.ZN.pitch_cm
    r2 = (offset[None, None, :] - centres[:, :1, None]) ** 2 + (offset[::-1][None, :, None] - centres[:, 1:, None]) ** 2
    rms = np.sqrt((mean[centre].numpy() * r2).sum((1, 2)) / mean[centre].numpy().sum((1, 2)))
    np.testing.assert_allclose(rms, 0.8 * np.sqrt(2), rtol=0.02)
    # Near a corner the halo lights fibres more than 3.5 cm away, which the 44 x 44 canvas cannot reach.
    with torch.no_grad():
        gen.halo[-1].bias.copy_(torch.tensor([30.0, np.log(2.0)]))
        corner = gen._halo_on_face(torch.tensor([[3.0, 3.0]]), torch.tensor([2.0]))[0].numpy()
    far = (offset[None, :] < -0.5) & (offset[::-1][:, None] < -0.5)
    assert 0.0012 < corner[far].sum() < 0.0022  # Phi(-1.75)^2 = 0.0016 of a 2 cm halo at (3, 3) cm


def test_shape_zoom_starts_as_no_zoom_and_stretches_each_sample_about_its_impact_point():
    """shape_zoom: at the start the response is exactly that of the model without it; a stretch
    (sx, sy) keeps the shower's mass and centre and multiplies its width by sx along x and sy along
    y, each sample by its own factors."""
    zoomed = ModelConfig(**{**SIZES["tiny"].to_dict(), "shape_zoom": True})
    gen, _, x, _ = _fitted(zoomed, n=64)
    plain = Generator(SIZES["tiny"])
    plain.load_state_dict({k: v for k, v in gen.state_dict().items() if not k.startswith("zoom.")})
    latent = _random(gen, len(x))[:, :10]
    with torch.no_grad():
        torch.testing.assert_close(gen.mean_counts(latent, x), plain.mean_counts(latent, x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape_zoom needs impact_frame"):
        ModelConfig(impact_frame=False, shape_zoom=True)

    det = zoomed.geometry
    px, py = (torch.tensor(v, dtype=torch.float32) for v in (det.pixel_x_cm, det.pixel_y_cm))
    blob = torch.exp(-(px[None, :] ** 2 + py[:, None] ** 2) / (2 * 0.6**2))  # a round 0.6 cm shower
    shapes = (blob / blob.sum()).expand(3, 1, 44, 44)
    impact = torch.tensor([[0.5, -0.3], [0.5, -0.3], [-1.0, 0.8]])
    stretch = torch.tensor([[1.0, 1.0], [1.4, 0.7], [0.7, 1.4]])
    with torch.no_grad():
        on_face = gen._to_face(shapes, impact, stretch)
    mass = on_face.sum((1, 2))
    cx = (on_face.sum(1) * px).sum(1) / mass
    cy = (on_face.sum(2) * py).sum(1) / mass
    sx = ((on_face.sum(1) * (px[None] - cx[:, None]) ** 2).sum(1) / mass).sqrt()
    sy = ((on_face.sum(2) * (py[None] - cy[:, None]) ** 2).sum(1) / mass).sqrt()
    torch.testing.assert_close(mass, torch.ones(3), rtol=0, atol=2e-3)
    torch.testing.assert_close(torch.stack([cx, cy], 1), impact, rtol=0, atol=0.01)
    torch.testing.assert_close(sx / sx[0], stretch[:, 0], rtol=0.03, atol=0)
    torch.testing.assert_close(sy / sy[0], stretch[:, 1], rtol=0.03, atol=0)
    with torch.no_grad():  # the head's output is bounded: no shower collapses to a point or fills the face
        gen.zoom[-1].bias.fill_(10.0)
        assert torch.allclose(gen._zoom(torch.zeros(2, 10 + 15)), torch.full((2, 2), 1.6))


def test_the_em_intensity_scales_the_electromagnetic_species_and_no_other(tiny_checkpoint):
    """Every species of zdc_sim/species.py at 2.5 TeV on the axis: em_intensity x 2 doubles the mean
    counts of photons and electrons exactly and leaves every hadron and nucleus as it was; the
    species' own class and the model's (from the mass feature) agree for each."""
    from zdc_sim import species
    from zdc_sim.simulator import Simulator

    sim = Simulator.load(tiny_checkpoint)
    pdgs = list(species.SPECIES)
    raw = np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, species.SPECIES[p][1], abs(species.SPECIES[p][2])] for p in pdgs])
    x = torch.from_numpy(sim.standardizer.transform(raw))
    z = torch.randn(len(pdgs), sim.generator.config.latent_dim, generator=torch.Generator().manual_seed(0))
    gen = sim.generator
    with torch.no_grad():
        before = gen.mean_counts(z, x).sum((1, 2))
        gen.em_intensity.fill_(2.0)
        after = gen.mean_counts(z, x).sum((1, 2))
        gen.em_intensity.fill_(1.0)
    em = species.shower_class(pdgs) == species.ELECTROMAGNETIC
    assert em.sum() == 3 and gen.conditioner.electromagnetic(x).tolist() == em.tolist()
    np.testing.assert_allclose((after / before).numpy(), np.where(em, 2.0, 1.0), rtol=1e-5)
