import numpy as np
import pytest

from zdc_sim import features as F
from zdc_sim import geometry, rootio, metrics, reference, species


def particle(pdg, energy, px=0.0, py=0.0, vz=0.0):
    name, mass, charge, _ = species.SPECIES[pdg]
    pz = np.sqrt(energy**2 - (mass / 1000) ** 2 - px**2 - py**2)
    return np.array([energy, 0.0, 0.0, vz, px, py, pz, mass, charge], np.float32)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = list(reference.generate(600, 2, seed=5))
    b = list(reference.generate(600, 2, seed=5))
    c = list(reference.generate(600, 2, seed=6))
    assert len(a) == 2  # 600 particles span two fixed-size chunks
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.response, y.response)
        np.testing.assert_array_equal(x.features, y.features)
    assert not np.array_equal(a[0].features, c[0].features)


def test_repeats_share_particle_and_features_but_not_response():
    chunk = next(reference.generate(10, 3, seed=1))
    np.testing.assert_array_equal(chunk.particle_id, np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(chunk.features[0], chunk.features[2])
    assert chunk.response.dtype == np.float32 and chunk.response.shape == (30, 44, 44)
    assert chunk.responses["zp"].shape == (30, 30, 56)
    for response in chunk.responses.values():
        assert (response >= 0).all() and np.array_equal(response, np.round(response))
    parts = chunk.parts()  # what rootio.write_dataset takes
    assert tuple(parts) == rootio.PARTS and parts[rootio.PDG] is chunk.pdg and parts[rootio.RESPONSE_ZN] is chunk.response


def test_sampled_particles_are_valid_and_mixed():
    feats, pdg = reference.sample_particles(5000, np.random.default_rng(0))
    F.validate(feats)
    shares = {code: (pdg == code).mean() for code in reference.MIX}
    assert shares[2112] > 0.35 and shares[22] > 0.12 and shares[211] > 0.02
    assert shares[1000010020] > 0.015 and shares[1000020040] > 0.008  # deuterons, alphas
    neutrons = feats[pdg == 2112]
    assert np.median(neutrons[:, 0]) > 2000  # spectators at the beam energy dominate
    alphas = feats[pdg == 1000020040]
    assert np.median(alphas[:, 0]) == pytest.approx(4 * 2510, rel=0.02) and (alphas[:, 8] == 2).all()
    assert 0.45 < (feats[:, 6] < 0).mean() < 0.55  # both beams
    assert np.abs(feats[:, 3]).max() < 0.5  # every vertex in the luminous region (sigma_z 6 cm)


def test_each_particle_reaches_the_zn_the_zp_or_neither():
    feats, pdg = reference.sample_particles(20000, np.random.default_rng(1))
    zn, zp = geometry.reaches(feats, "zn", 0.0), geometry.reaches(feats, "zp", 0.0)
    assert not (zn & zp).any()
    charged = ~np.isin(pdg, (2112, 22, 130))
    assert charged[zn].mean() < 0.01  # the ZN sees neutral particles (and a few wide-angle tritons)
    protons = pdg == 2212
    assert zp[protons].mean() > 0.4 and zp[pdg == 2112].mean() < 0.01
    assert not (zn | zp)[np.isin(pdg, (211, -211, 11, -11))].any()


def test_misses_are_empty():
    rng = np.random.default_rng(1)
    hit = np.repeat(particle(2112, 2500.0)[None], 50, 0)
    edge = np.repeat(particle(2112, 2500.0, px=2500.0 * 4e-4)[None], 50, 0)  # 4.5 cm off centre, 1 cm off the face
    far = np.repeat(particle(2112, 2500.0, px=2500.0 * 1e-3)[None], 50, 0)  # 11 cm: beyond the reach margin
    pdg = np.full(50, 2112)
    assert not geometry.reaches(edge, "zn", 0.0).any() and geometry.reaches(edge, "zn").all()
    hit_total = reference.simulate(hit, pdg, rng).sum((1, 2))
    edge_total = reference.simulate(edge, pdg, rng).sum((1, 2))
    assert 0 < np.median(edge_total) < 0.1 * np.median(hit_total)
    assert reference.simulate(far, pdg, rng).sum() == 0.0


def test_hadrons_fluctuate_em_showers_are_consistent_and_fragments_fluctuate_less():
    rng = np.random.default_rng(2)
    k = 40
    cases = {2112: particle(2112, 2500.0), 130: particle(130, 300.0), 22: particle(22, 300.0)}
    spread = {}
    for pdg, p in cases.items():
        totals = reference.simulate(np.repeat(p[None], k, 0), np.full(k, pdg), rng).sum((1, 2))
        spread[pdg] = metrics.relative_spread(totals[None])[0]
    assert spread[2112] > 0.15 and spread[130] > 0.15
    assert spread[22] < 0.05
    proton, helium3 = particle(2212, 2510.0), particle(1000020030, 3 * 2510.0)  # both land on the ZP face
    zp = {pdg: metrics.relative_spread(reference.simulate(np.repeat(p[None], k, 0), np.full(k, pdg), rng, "zp")
                                        .sum((1, 2))[None])[0] for pdg, p in ((2212, proton), (1000020030, helium3))}
    assert zp[2212] > 0.15 and zp[1000020030] < 0.75 * zp[2212]  # three showers average out


def test_the_c_side_sees_the_mirror_image():
    rng = np.random.default_rng(5)
    a = np.repeat(particle(2112, 2500.0, px=2500.0 * 1e-4, vz=0.05)[None], 200, 0)
    c = a.copy()
    c[:, [3, 6]] *= -1
    pdg = np.full(200, 2112)
    image_a, image_c = reference.simulate(a, pdg, rng).mean(0), reference.simulate(c, pdg, rng).mean(0)
    assert metrics.shower_centres(image_a)[0] > 1.0  # 1.1 cm toward +x on both sides
    np.testing.assert_allclose(metrics.shower_centres(image_c), metrics.shower_centres(image_a), atol=0.05)


def test_zp_showers_are_wider_and_dimmer_than_zn_showers():
    rng = np.random.default_rng(6)
    neutron, proton = particle(2112, 2510.0), particle(2212, 2510.0)
    zn = reference.simulate(np.repeat(neutron[None], 20, 0), np.full(20, 2112), rng, "zn")
    zp = reference.simulate(np.repeat(proton[None], 20, 0), np.full(20, 2212), rng, "zp")
    assert zp.sum((1, 2)).mean() < 0.5 * zn.sum((1, 2)).mean()  # fewer photons per GeV in the ZP

    def width_cm(images, det):
        img = images.mean(0)
        w = img / img.sum()
        x = (w.sum(0) * det.pixel_x_cm).sum()
        return np.sqrt((w.sum(0) * (det.pixel_x_cm - x) ** 2).sum())
    assert width_cm(zp, geometry.ZP) > 1.3 * width_cm(zn, geometry.ZN)


def test_generate_keeps_only_particles_that_reach_the_asked_detector():
    chunks = list(reference.generate(700, 2, seed=3, reaching="zp"))
    feats = np.concatenate([c.features for c in chunks])
    assert len(feats) == 1400 and geometry.reaches(feats, "zp").all()
    np.testing.assert_array_equal(np.concatenate([c.particle_id for c in chunks]), np.repeat(np.arange(700), 2))
    again = np.concatenate([c.responses["zp"] for c in reference.generate(700, 2, seed=3, reaching="zp")])
    np.testing.assert_array_equal(np.concatenate([c.responses["zp"] for c in chunks]), again)


def test_em_shower_is_narrower_than_hadronic():
    rng = np.random.default_rng(3)
    def second_moment(pdg):
        img = reference.simulate(np.repeat(particle(pdg, 1000.0)[None], 20, 0), np.full(20, pdg), rng).mean(0)
        i, j = np.indices(img.shape)
        w = img / img.sum()
        return (w * ((i - (w * i).sum()) ** 2 + (j - (w * j).sum()) ** 2)).sum()
    assert second_moment(22) < 0.3 * second_moment(2112)


def test_counts_grow_with_energy():
    rng = np.random.default_rng(4)
    totals = [reference.simulate(np.repeat(particle(22, e)[None], 10, 0), np.full(10, 22), rng).sum() for e in (10, 100, 1000)]
    assert totals[0] < totals[1] < totals[2]
    expected = 1000 * 10 * reference.SHOWERS["zn"].em_fraction[0] * reference.SHOWERS["zn"].photons_per_gev
    assert 0.9 * expected < totals[2] < 1.05 * expected  # nearly all of a central EM shower is inside
