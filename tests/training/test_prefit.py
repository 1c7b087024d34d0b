"""The heads started from the data before GAN training (training/prefit.py)."""

import numpy as np
import torch

from training.config import TrainConfig
from training.data import load
from training.prefit import prefit
from zdc_sim import features, geometry
from zdc_sim.models import SIZES, Generator, ModelConfig


def _prefitted(tiny_file, steps):
    data = load(str(tiny_file))
    standardizer = features.Standardizer.fit(data.features)
    x = torch.from_numpy(standardizer.transform(data.features))
    torch.manual_seed(0)
    generator = Generator(SIZES["tiny"])
    untouched = {k: v.clone() for k, v in generator.state_dict().items()}
    config = TrainConfig(data=str(tiny_file), out="unused", model="tiny", prefit_steps=steps, seed=1)
    residual = prefit(generator, standardizer, x, data, config)
    with torch.no_grad():  # showers the impact head puts inside the face: those the pre-fit fits
        inside = (generator.impact_point(x.float()).abs() < 2.5).all(1).numpy()
    showers = (data.channels.sum(1) >= geometry.MIN_MEAN_COUNTS) & inside
    with torch.no_grad():
        predicted = generator.total_mean(generator.conditioner(x[showers].float()))[:, 0].numpy()
    error = np.sqrt(np.mean((predicted - np.log1p(data.channels.sum(1)[showers])) ** 2))
    state = generator.state_dict()
    return generator, residual, {k for k in state if not torch.equal(state[k], untouched[k])}, error


def test_prefit_starts_every_head_from_the_data(tiny_file):
    generator, residual, moved, error = _prefitted(tiny_file, steps=200)
    # the impact head fits real shower centres to a fraction of a fibre; the envelope is a profile
    assert residual is not None and 0 <= residual < 2 * geometry.ZN.pitch_cm
    assert {"impact_weight", "impact_bias", "prior"} <= moved and float(generator.prior.max()) == 0.0
    assert any(k.startswith("total_mean.") for k in moved) and any(k.startswith("total_scale.") for k in moved)
    assert not any(k.startswith(("dense.", "upsample.")) for k in moved)  # the shape is training's business
    # the mean log total is started where the data is: 200 steps take its error from ~2 to ~0.4
    _, _, _, unfitted = _prefitted(tiny_file, steps=0)
    assert error < 0.6 < 1.5 < unfitted


def test_a_bounded_total_never_exceeds_the_particles_energy(tiny_file):
    """bounded_total: total = energy x full yield x a fraction; the full yield is fitted to the data
    (the reference Monte Carlo's ZN counts 50 photons per GeV deposited), and no latent, however far
    out, takes a total beyond it."""
    data = load(str(tiny_file))
    standardizer = features.Standardizer.fit(data.features)
    x = torch.from_numpy(standardizer.transform(data.features))
    torch.manual_seed(0)
    config = ModelConfig(**{**SIZES["tiny"].to_dict(), "bounded_total": True})
    generator = Generator(config)
    prefit(generator, standardizer, x, data, TrainConfig(data=str(tiny_file), out="unused", model="tiny",
                                                         model_options={"bounded_total": True}, prefit_steps=100, seed=1))
    assert 40 < float(generator.full_yield) < 56
    with torch.no_grad():
        z = 30 * torch.randn(len(x), config.latent_dim)  # far outside the latent's usual range
        condition = generator.conditioner(x.float())
        totals = torch.exp(generator.log_total(generator.gated_inputs(z, condition), condition))[:, 0]
    energy = torch.from_numpy(data.features[:, 0]).double()
    assert (totals.double() <= energy * float(generator.full_yield) * 1.0001).all()
    showers = data.channels.sum(1) >= geometry.MIN_MEAN_COUNTS
    with torch.no_grad():
        typical = torch.exp(generator.log_total(generator.gated_inputs(torch.zeros(len(x), config.latent_dim), condition),
                                                condition))[:, 0].numpy()
    ratio = np.median(typical[showers] / data.channels.sum(1)[showers])
    assert 0.5 < ratio < 2.0  # started where the data is
