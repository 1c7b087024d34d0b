import numpy as np
import pytest
import torch

from training.losses import energy_score, energy_score_loss
from zdc_sim import geometry


def _expected_score(spread, true_spread=1.0, n=20000, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = true_spread * torch.randn(n, dim, generator=g)
    f1, f2 = (spread * torch.randn(n, dim, generator=g) for _ in range(2))
    return energy_score(torch.stack([f1, f2], 1), real[:, None]).mean().item()


def test_energy_score_is_lowest_at_the_true_spread():
    scores = {s: _expected_score(s) for s in (0.0, 0.5, 1.0, 2.0)}
    assert scores[1.0] < scores[0.5] < scores[0.0]  # too little spread costs
    assert scores[1.0] < scores[2.0]  # and so does too much, unlike a diversity term


def test_energy_score_by_hand():
    f1, f2, y = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # 1/2 (5 + 0) - 1/2 * 5 = 0
    assert abs(energy_score(torch.stack([f1, f2], 1), y[:, None]).item()) < 1e-5
    assert abs(energy_score(torch.stack([y, y], 1), f1[:, None]).item() - 5.0) < 1e-5
    # K samples against R reals, one dimension: mean |g - y| - 1/2 mean over distinct pairs |g - g'|
    g, r = torch.tensor([[[0.0], [1.0], [3.0]]]), torch.tensor([[[1.0], [2.0]]])
    to_real = (1 + 2 + 0 + 1 + 2 + 1) / 6
    pairs = (1 + 3 + 2) * 2 / 6
    assert abs(energy_score(g, r).item() - (to_real - 0.5 * pairs)) < 1e-5


def test_energy_score_loss_reads_channels_and_pooled_image():
    rng = np.random.default_rng(0)
    real_counts = rng.poisson(5.0, (3, 44, 44)).astype(np.float32)
    real = torch.log1p(torch.from_numpy(real_counts))[:, None]
    real_channels = torch.log1p(torch.from_numpy(geometry.channel_sums(real_counts)).float())
    same = energy_score_loss(torch.cat([real, real]), real, real_channels, 1.0, 1.0)
    assert abs(same.item()) < 1e-4  # a pair equal to the real response scores 0
    shifted = torch.cat([real + 0.5, real + 0.5]).requires_grad_(True)
    only_channels = energy_score_loss(shifted, real, real_channels, 1.0, 0.0)
    only_image = energy_score_loss(shifted, real, real_channels, 0.0, 1.0)
    both = energy_score_loss(shifted, real, real_channels, 1.0, 1.0)
    assert only_channels > 0.1 and only_image > 0.1
    torch.testing.assert_close(both, only_channels + only_image)
    both.backward()
    assert torch.isfinite(shifted.grad).all() and shifted.grad.abs().sum() > 0


def test_linear_channel_score_uses_each_particles_units():
    rng = np.random.default_rng(1)
    real_counts = rng.poisson(50.0, (4, 44, 44)).astype(np.float32)
    real = torch.log1p(torch.from_numpy(real_counts))[:, None]
    sums = torch.from_numpy(geometry.channel_sums(real_counts)).float()
    real_channels = torch.log1p(sums)
    units = sums.sum(1)  # each particle's own total: every channel value becomes its share
    same = energy_score_loss(torch.cat([real, real]), real, real_channels, 0.0, 0.0, 1.0, units)
    assert abs(same.item()) < 1e-4
    doubled = torch.log1p(2 * torch.expm1(real))  # twice the counts: shares 2x, so |f - y| = |y| = 1 in total
    score = energy_score_loss(torch.cat([doubled, doubled]), real, real_channels, 0.0, 0.0, 1.0, units)
    expected = torch.linalg.norm(sums / units[:, None], dim=1).mean()
    torch.testing.assert_close(score, expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="units"):
        energy_score_loss(torch.cat([real, real]), real, real_channels, 0.0, 0.0, 1.0)
