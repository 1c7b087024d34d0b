import numpy as np
import torch

from zdc_sim import features, reference
from zdc_sim.models import SIZES, Discriminator, Generator, ModelConfig, generator_flops_per_sample


def _fitted(config=SIZES["tiny"], n=64, seed=0):
    x, _ = reference.sample_particles(n, np.random.default_rng(seed))
    std = features.Standardizer.fit(x)
    gen, disc = Generator(config), Discriminator(config)
    gen.conditioner.fit(std, x)
    disc.conditioner.load_state_dict(gen.conditioner.state_dict())
    return gen, disc, torch.from_numpy(std.transform(x)), x


def test_generator_output_shape_and_non_negative():
    gen, _, x, _ = _fitted()
    out = gen(torch.randn(len(x), 10), x)
    assert out.shape == (len(x), 1, 44, 44) and out.dtype == torch.float32
    assert (out >= 0).all()


def test_discriminator_returns_logit_and_embedding():
    config = SIZES["tiny"]
    gen, disc, x, _ = _fitted(config)
    logit, embedding = disc(gen(torch.randn(len(x), 10), x), x)
    assert logit.shape == (len(x),) and embedding.shape == (len(x), config.hidden)
    torch.testing.assert_close(disc.embed(gen(torch.zeros(2, 10), x[:2])), disc(gen(torch.zeros(2, 10), x[:2]), x[:2])[1])


def test_generator_total_head_sets_the_scale():
    gen, _, x, _ = _fitted()
    gen.set_total_scale(np.log(5000.0))
    with torch.no_grad():
        gen.total[-1].weight.zero_()  # total = exp(bias) exactly
        counts = torch.expm1(gen(torch.randn(len(x), 10), x)).sum((1, 2, 3))
    torch.testing.assert_close(counts, torch.full_like(counts, 5000.0), rtol=2e-3, atol=0)


def test_conditioner_standardises_derived_quantities():
    gen, _, x, raw = _fitted(n=2000)
    cond = gen.conditioner(x).double()
    assert cond.shape == (2000, 15)
    torch.testing.assert_close(cond[:, :9], x.double())
    # log energy is the first derived quantity: mean 0 and unit std on the fitting set
    assert abs(cond[:, 9].mean().item()) < 1e-4 and abs(cond[:, 9].std().item() - 1) < 1e-3
    np.testing.assert_allclose(np.corrcoef(cond[:, 9].numpy(), np.log(raw[:, 0]))[0, 1], 1.0, atol=1e-6)


def test_flops_count_matches_layer_arithmetic():
    c = ModelConfig(latent_dim=10, width=16, hidden=256)
    dense = (10 + 15) * 256 + 256 * 256 + 256 * 64 * 121
    convs = 121 * 64 * 32 * 16 + 484 * 32 * 16 * 16 + 1936 * 16 * 1 * 9
    total_head = (10 + 15) * 128 + 128 * 128 + 128
    assert generator_flops_per_sample(c) == 2 * (dense + convs + total_head)
    assert generator_flops_per_sample(SIZES["small"]) < generator_flops_per_sample(SIZES["base"])
