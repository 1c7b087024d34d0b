import numpy as np
import pytest
import torch

from zdc_sim import geometry as G
from zdc_sim.errors import ConfigError, DataError


@pytest.mark.parametrize("det", [G.ZN, G.ZP], ids=["zn", "zp"])
def test_masks_partition_the_image(det):
    masks = det.masks
    rows, cols = det.shape
    assert masks.shape == (5, rows, cols)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)
    assert masks[4].sum() == rows * cols // 2
    assert all(masks[c].sum() == rows * cols // 8 for c in range(4))


def test_detectors_are_o2s_geometry():
    """Face, fibres and positions of Detectors/ZDC/base/include/ZDCBase/Geometry.h."""
    assert G.ZN.shape == (44, 44) and G.ZN.n_pixels == 1936 and G.ZN.face_cm == pytest.approx((7.04, 7.04))
    assert G.ZP.shape == (30, 56) and G.ZP.n_pixels == 1680 and G.ZP.face_cm == pytest.approx((22.4, 12.0))
    assert G.ZP.pitch_cm == pytest.approx(0.4) and G.ZN.pitch_cm == pytest.approx(0.16)
    assert (G.ZN.centre_x_cm, G.ZP.centre_x_cm) == (0.0, 24.35)
    assert G.ZN.face_z_cm == {"A": 11259.8, "C": -11261.3} and G.ZP.face_z_cm == {"A": 11251.8, "C": -11253.3}
    assert G.detector("ZP") is G.ZP and G.for_shape((30, 56)) is G.ZP
    with pytest.raises(ConfigError, match="expected one of"):
        G.detector("zdc")


def test_zn_masks_follow_the_published_rule():
    masks = G.ZN.masks
    # (i, j) -> channel index (0-based) by the rule in the reference notes.
    for (i, j), channel in {(0, 0): 0, (0, 22): 1, (22, 0): 2, (43, 43): 3, (0, 1): 4, (21, 21): 0,
                            (21, 23): 1, (23, 21): 2, (22, 22): 3, (43, 42): 4}.items():
        assert masks[channel, i, j], (i, j, channel)


def test_zp_towers_are_four_strips_along_x_and_quadrants_one_function_away():
    masks = G.ZP.masks
    # tower floor(4 x / 56) + 1 on even parity (O2's FastSimToHits), common channel on odd
    for (i, j), channel in {(0, 0): 0, (29, 13): 0, (1, 13): 0, (0, 14): 1, (0, 28): 2, (1, 55): 3, (0, 1): 4}.items():
        assert masks[channel, i, j], (i, j, channel)
    quadrants = G.channel_masks(G.ZP.shape, G.quadrant_towers(G.ZP.shape))
    assert quadrants[1, 0, 28] and quadrants[2, 16, 0] and quadrants[3, 29, 55] and quadrants[0, 0, 0]
    np.testing.assert_array_equal(quadrants.sum(0), 1)


@pytest.mark.parametrize("det", [G.ZN, G.ZP], ids=["zn", "zp"])
def test_channel_sums_numpy_and_torch_agree_and_batch(det):
    rng = np.random.default_rng(0)
    images = rng.poisson(3.0, size=(2, 3, *det.shape)).astype(np.float32)
    expected = np.array([[[images[a, b][det.masks[c]].sum() for c in range(5)] for b in range(3)] for a in range(2)])
    np.testing.assert_allclose(G.channel_sums(images), expected)
    np.testing.assert_allclose(G.channel_sums(torch.from_numpy(images)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(G.channel_sums(images).sum(-1), images.sum((-1, -2)), rtol=1e-9)


def test_channel_sums_rejects_wrong_shape():
    with pytest.raises(DataError, match="44, 44.*30, 56"):
        G.channel_sums(np.zeros((3, 44, 43)))


def particle(energy=2510.0, charge=0.0, mass=939.565, pz_sign=1.0, angle=(0.0, 0.0), vertex=(0.0, 0.0, 0.0)):
    p = np.sqrt(energy**2 - (mass / 1000) ** 2)
    px, py = p * angle[0], p * angle[1]
    return np.array([[energy, *vertex, px, py, pz_sign * np.sqrt(p**2 - px**2 - py**2), mass, charge]], np.float32)


def test_neutrals_fly_straight_to_the_zn_and_spectator_protons_are_bent_onto_the_zp():
    x, y = G.impact_point_cm(particle(angle=(1e-4, -2e-4)), G.ZN)
    np.testing.assert_allclose([x[0], y[0]], [1e-4 * 11259.8, -2e-4 * 11259.8], rtol=1e-4)
    assert G.reaches(particle(), "zn")[0] and not G.reaches(particle(), "zp")[0]
    proton = particle(charge=1.0, mass=938.272)
    x, y = G.impact_point_cm(proton, G.ZP)  # the beam's momentum per nucleon lands at the ZP's centre
    assert abs(x[0]) < 0.01 and abs(y[0]) < 1e-6
    assert G.reaches(proton, "zp", margin_cm=0.0)[0] and not G.reaches(proton, "zn")[0]
    # rigidity decides where: a 2 TeV proton is bent further (toward +x) than a 3 TeV one
    x2, _ = G.impact_point_cm(particle(2000.0, 1.0, 938.272), G.ZP)
    x3, _ = G.impact_point_cm(particle(3000.0, 1.0, 938.272), G.ZP)
    assert x2[0] > 0 > x3[0]
    pion = particle(100.0, -1.0, 139.57)  # bent away from both
    assert not G.reaches(pion, "zn")[0] and not G.reaches(pion, "zp")[0]


def test_the_c_side_is_the_a_side_mirrored_through_z_0():
    a = particle(angle=(2e-4, 1e-4), vertex=(1e-4, -1e-4, 0.03))
    c = a.copy()
    c[:, [3, 6]] *= -1
    assert G.side(a)[0] == "A" and G.side(c)[0] == "C"
    np.testing.assert_array_equal(G.to_a_side(c), a)
    np.testing.assert_array_equal(G.to_a_side(a), a)
    # the C faces sit 1.5 cm further out: the same impact point to well under a fibre
    for det in (G.ZN, G.ZP):
        np.testing.assert_allclose(G.impact_point_cm(c, det), G.impact_point_cm(a, det), atol=1e-3)
