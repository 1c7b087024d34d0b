import numpy as np
import pytest
import torch

from zdc_sim import regularizers
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
    with pytest.raises(ValueError, match="unknown regularizer 'ms'"):
        regularizers.make("ms")
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
