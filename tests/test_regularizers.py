import math

import numpy as np
import pytest
import torch
from torch import nn

from zdc_sim import geometry, regularizers
from zdc_sim.regularizers import SDI, DiversityPair, diversity_weights


def _pair(fake1, fake2, weight, z1=None, z2=None):
    n = len(fake1)
    z1 = torch.zeros(n, 4) if z1 is None else z1
    z2 = torch.ones(n, 4) if z2 is None else z2
    return DiversityPair(z1, z2, fake1, fake2, torch.as_tensor(weight, dtype=torch.float32))


def test_sdi_is_weighted_inverse_mode_seeking_ratio():
    f1 = torch.zeros(2, 1, 44, 44)
    f2 = torch.cat([torch.full((1, 1, 44, 44), 0.5), torch.full((1, 1, 44, 44), 2.0)])
    value = SDI()(_pair(f1, f2, [1.0, 0.25]))
    # d_z = 1 for both; d_x = 0.5 and 2.0
    expected = (1.0 / (0.5 + regularizers.DISTANCE_EPS) + 0.25 / (2.0 + regularizers.DISTANCE_EPS)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_sdi_ignores_zero_weight_conditions_and_punishes_collapse():
    same = torch.ones(3, 1, 44, 44)
    assert SDI()(_pair(same, same, [0.0, 0.0, 0.0])).item() == 0.0
    collapsed = SDI()(_pair(same, same, [1.0, 1.0, 1.0])).item()
    diverse = SDI()(_pair(same, same + 1, [1.0, 1.0, 1.0])).item()
    assert collapsed > 50 * diverse
    # its gradient pushes the two samples apart
    f2 = (same + 0.1).requires_grad_(True)
    SDI()(_pair(same, f2, [1.0, 1.0, 1.0])).backward()
    assert (f2.grad < 0).all()


def test_sdi_embedding_space_and_make():
    pair = _pair(torch.zeros(2, 1, 44, 44), torch.zeros(2, 1, 44, 44), [1.0, 1.0])
    pair.embed1, pair.embed2 = torch.zeros(2, 8), torch.full((2, 8), 3.0)
    assert SDI("embedding")(pair).item() == pytest.approx(1.0 / (3.0 + regularizers.DISTANCE_EPS))
    assert regularizers.make("none")(pair).item() == 0.0
    assert not regularizers.make("none").needs_pair and regularizers.make("sdi", space="embedding").uses_embedding
    with pytest.raises(ValueError, match="unknown regularizer 'msgan'"):
        regularizers.make("msgan")
    with pytest.raises(ValueError, match="space"):
        SDI("pixels")


def test_diversity_weights_absolute_and_relative():
    # particle 7: constant; particle 3: varies a little; particle 5: varies a lot; particle 9: once
    base = np.full((1, 44, 44), np.log1p(100.0), np.float32)
    ids = np.array([7, 7, 3, 3, 5, 5, 9])
    images = np.concatenate([base, base, base, base * 1.01, base * 0.5, base * 1.5, base * 2])
    got_ids, absolute = diversity_weights(ids, images, "absolute")
    assert got_ids.tolist() == [3, 5, 7, 9]
    assert absolute.min() == 0.0 and absolute.max() == 1.0
    w = dict(zip(got_ids.tolist(), absolute))
    assert w[7] == 0.0 and w[9] == 0.0 and 0 < w[3] < 0.05 and w[5] == 1.0
    _, relative = diversity_weights(ids, images, "relative")
    r = dict(zip(got_ids.tolist(), relative))
    assert r[7] == 0.0 and r[9] == 0.0 and r[5] == 1.0 and 0 < r[3] < r[5]


def test_relative_weights_ignore_nearly_empty_responses():
    ids = np.array([1, 1, 2, 2, 3, 3])
    totals = np.array([10, 30, 8000, 12000, 10000, 10100], np.float64)  # particle 1 misses the face
    images = np.zeros((6, 44, 44), np.float32)
    images[:, 0, 0] = np.log1p(totals)
    _, relative = diversity_weights(ids, images, "relative")
    assert relative.tolist()[0] == 0.0 and relative[1] == 1.0 and 0 < relative[2] < 0.1
    with pytest.raises(ValueError, match="unknown diversity weight"):
        diversity_weights(ids, images, "energy")


def test_channel_weights_discount_photon_statistics():
    # particle 1: photon statistics only (Poisson around 2,000 per channel); 2: 30 % shower
    # fluctuations; 3: 5 %; 4 misses the face. Each has 40 repeats.
    rng = np.random.default_rng(0)
    ids = np.repeat([1, 2, 3, 4], 40)
    images = np.zeros((160, 44, 44), np.float32)
    scale = np.concatenate([np.ones(40), rng.normal(1, 0.3, 40).clip(0.1), rng.normal(1, 0.05, 40), np.full(40, 1e-3)])
    for e in range(160):
        mean = np.zeros((44, 44))
        masks = geometry.ZN.masks
        mean[masks[4]] = 2000.0 * scale[e] / masks[4].sum()
        mean[masks[0]] = 2000.0 * scale[e] / masks[0].sum()
        images[e] = np.log1p(rng.poisson(mean))
    _, w = diversity_weights(ids, images, "channels")
    assert w[1] == 1.0 and w[3] == 0.0
    assert w[0] < 0.1 and 0.1 < w[2] < 0.3  # the Poisson-only particle reads as (nearly) no diversity
    _, absolute = diversity_weights(ids, images, "absolute")
    assert absolute[0] > 0.5  # while the published weight counts its pixel noise as diversity


@pytest.mark.parametrize("kind", regularizers.WEIGHT_KINDS)
def test_diversity_weights_by_blocks_of_particles_match_one_block(monkeypatch, kind):
    # Entries of a particle scattered through the file, repeat counts 1-4: blocks of 2 particles
    # must gather each particle's own entries and give the weights of one block, to rounding (sums
    # over blocks of another size may differ in the last bit on some CPUs).
    rng = np.random.default_rng(1)
    ids = rng.permutation(np.repeat(np.arange(11) * 3 + 5, rng.integers(1, 5, 11)))
    images = np.log1p(rng.poisson(200.0 * rng.uniform(0.2, 2.0, (len(ids), 1, 1)), (len(ids), 44, 44))).astype(np.float32)
    whole_ids, whole = diversity_weights(ids, images, kind)
    monkeypatch.setattr(regularizers, "PARTICLE_BLOCK", 2)
    block_ids, blocks = diversity_weights(ids, images, kind)
    assert np.array_equal(block_ids, whole_ids) and np.ptp(whole) == 1.0
    np.testing.assert_allclose(blocks, whole, rtol=1e-12, atol=1e-15)


def test_mode_seeking_by_hand():
    f1, f2 = torch.zeros(2, 3), torch.full((2, 3), 0.5)
    value = regularizers.make("ms")(_pair(f1, f2, [1.0, 1.0]))  # |z1 - z2| = 1: ratio 0.5
    assert value.item() == pytest.approx(1 / (0.5 + 1e-5), rel=1e-6)
    assert regularizers.make("ms", eps=0.5)(_pair(f1, f2, [0.0, 0.0])).item() == pytest.approx(1.0)


def test_diversity_penalty_by_hand():
    pair = _pair(torch.zeros(1, 2), torch.zeros(1, 2), [1.0], z1=torch.tensor([[1.0, 0.0]]), z2=torch.tensor([[0.0, 1.0]]))
    pair.embed1, pair.embed2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    s5 = 1 / (1 + math.exp(-5))
    # G_z: sigmoid(5) on the diagonal, sigmoid(0) = 0.5 off it; G_f: sigmoid(5) everywhere
    assert regularizers.make("dp")(pair).item() == pytest.approx((2 + 2 * s5 / 0.5) / 4, rel=1e-6)
    assert regularizers.make("dp").default_weight == 5.0


def test_normalized_diversification_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    ndiv = regularizers.make("ndiv")
    collapsed = _pair(torch.ones(2, 2), torch.ones(2, 2), [1.0, 1.0], z1=z[:2], z2=z[2:])
    # D^x = 0: every normalised D^z row sums to 1, so the term is 0.8 * 4 rows / (4 * 3)
    assert ndiv(collapsed).item() == pytest.approx(0.8 * 4 / 12, rel=1e-6)
    faithful = _pair(z[:2] * 3, z[2:] * 3, [1.0, 1.0], z1=z[:2], z2=z[2:])
    assert ndiv(faithful).item() == 0.0  # same geometry: alpha D^z < D^x everywhere
    assert regularizers.make("ndiv", alpha=1.0)(faithful).item() == pytest.approx(0.0, abs=1e-7)


class _Identity(nn.Module):
    def forward(self, x, c):
        return x


def test_iid_by_hand():
    z1 = torch.zeros(1, 1)
    pair = DiversityPair(z1, None, z1 + 1.0, None, torch.ones(1), condition=torch.zeros(1, 0), real=torch.full((1, 1), 2.0))
    iid = regularizers.make("iid", encoder=_Identity())
    kernel = sum(math.exp(-4.0 / (2 * b * b)) for b in (0.5, 1.0, 2.0))  # real at 2, source at 0
    assert iid(pair).item() == pytest.approx(1.0 + 3 + 3 - 2 * kernel, rel=1e-6)
    assert not iid.needs_pair and iid.uses_real
    with pytest.raises(ValueError, match="needs an encoder"):
        regularizers.make("iid")


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"got options \['beta'\]; expected only \['alpha'\]"):
        regularizers.make("ndiv", beta=1.0)
    with pytest.raises(ValueError, match="'alpha' is -1"):
        regularizers.make("ndiv", alpha=-1)


class _Collapsing(nn.Module):
    """G(z) = a * (first latent only) + b: a nearly collapsed generator whose diversity is a."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.1))
        self.b = torch.tensor([3.0, 3.0, 3.0])

    def forward(self, z):
        return self.a * z[:, :1] * torch.tensor([1.0, 0.5, -1.0]) + self.b


@pytest.mark.parametrize("name", ["sdi", "ms", "dp", "ndiv"])
def test_each_term_pushes_a_collapsed_generator_towards_diversity(name):
    torch.manual_seed(0)
    g = _Collapsing()
    z1, z2 = torch.randn(16, 4), torch.randn(16, 4)
    f1, f2 = g(z1), g(z2)
    pair = DiversityPair(z1, z2, f1, f2, torch.ones(16), embed1=f1, embed2=f2)
    regularizers.make(name)(pair).backward()
    assert g.a.grad < 0  # gradient descent raises a: the samples move apart


def test_iid_trains_its_encoder_and_spreads_a_collapsed_generator_like_the_data():
    """IID acts through its encoder: pinned by the MMD to map real data (spread ~1) onto N(0, I),
    it can only invert the generator once the generator spreads its samples like the data."""
    torch.manual_seed(0)
    g = _Collapsing()
    iid = regularizers.make("iid", encoder=_Conditional(nn.Linear(3, 4)))
    opt = torch.optim.Adam(list(g.parameters()) + list(iid.parameters()), lr=0.02)
    for _ in range(300):
        z = torch.randn(64, 4)
        real = torch.randn(64, 1) * torch.tensor([1.0, 0.5, -1.0]) + 3.0  # the data: a = 1
        loss = iid(DiversityPair(z, None, g(z), None, torch.ones(64), condition=torch.zeros(64, 0), real=real))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 0.3 < abs(g.a.item()) < 1.5  # from 0.1 towards the data's 1


class _Conditional(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, c):
        return self.net(x)


def test_sdi_leaves_zero_weight_conditions_alone():
    g = _Collapsing()
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    SDI()(DiversityPair(z1, z2, g(z1), g(z2), torch.zeros(8))).backward()
    assert g.a.grad == 0
