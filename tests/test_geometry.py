import numpy as np
import torch

from zdc_sim import geometry as G


def test_masks_partition_the_grid():
    masks = G.channel_masks()
    assert masks.shape == (5, 44, 44)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    assert masks[4].sum() == 44 * 44 // 2
    assert all(masks[c].sum() == 44 * 44 // 8 for c in range(4))


def test_masks_follow_the_published_rule():
    masks = G.channel_masks()
    # (i, j) -> channel index (0-based) by the rule in the reference notes.
    for (i, j), channel in {(0, 0): 0, (0, 22): 1, (22, 0): 2, (43, 43): 3, (0, 1): 4, (21, 21): 0,
                            (21, 23): 1, (23, 21): 2, (22, 22): 3, (43, 42): 4}.items():
        assert masks[channel, i, j], (i, j, channel)


def test_channel_sums_numpy_and_torch_agree_and_batch():
    rng = np.random.default_rng(0)
    images = rng.poisson(3.0, size=(2, 3, 44, 44)).astype(np.float32)
    expected = np.array([[[images[a, b][G.MASKS[c]].sum() for c in range(5)] for b in range(3)] for a in range(2)])
    np.testing.assert_allclose(G.channel_sums(images), expected)
    np.testing.assert_allclose(G.channel_sums(torch.from_numpy(images)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(G.channel_sums(images).sum(-1), images.sum((-1, -2)), rtol=1e-9)


def test_channel_sums_rejects_wrong_shape():
    import pytest

    with pytest.raises(ValueError, match="44, 44"):
        G.channel_sums(np.zeros((3, 44, 43)))
