import numpy as np

from zdc_sim import features as F
from zdc_sim import rootio, metrics, reference, species


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
    assert (chunk.response >= 0).all() and np.array_equal(chunk.response, np.round(chunk.response))
    parts = chunk.parts()  # what rootio.write_dataset takes
    assert tuple(parts) == rootio.PARTS and parts[rootio.PDG] is chunk.pdg and parts[rootio.RESPONSE] is chunk.response


def test_sampled_particles_are_valid_and_mixed():
    feats, pdg = reference.sample_particles(5000, np.random.default_rng(0))
    F.validate(feats)
    shares = {code: (pdg == code).mean() for code in reference.MIX}
    assert shares[2112] > 0.35 and shares[22] > 0.12 and shares[211] > 0.02
    neutrons = feats[pdg == 2112]
    assert np.median(neutrons[:, 0]) > 2000  # spectators at the beam energy dominate


def test_straight_line_and_deflection():
    n = particle(2112, 1000.0, px=1000.0 * 1e-4)  # 0.1 mrad
    x, y = reference.impact_point_cm(n[None])
    np.testing.assert_allclose(x, 1e-4 * reference.FACE_Z_M * 100, rtol=1e-3)
    np.testing.assert_allclose(y, 0.0, atol=1e-6)
    for pdg, sign in ((211, 1), (-211, -1)):
        x, _ = reference.impact_point_cm(particle(pdg, 100.0)[None])
        np.testing.assert_allclose(x, sign * reference.DEFLECTION_GEV_M / 100.0 * 100, rtol=1e-3)
    # A 10 GeV electron is swept off the face; a neutral one of the same energy is not.
    assert not reference.hits_face(particle(11, 10.0)[None])[0]
    assert reference.hits_face(particle(22, 10.0)[None])[0]


def test_misses_are_nearly_empty():
    rng = np.random.default_rng(1)
    hit = np.repeat(particle(2112, 2500.0)[None], 50, 0)
    miss = np.repeat(particle(2112, 2500.0, px=2500.0 * 6e-4)[None], 50, 0)  # 6.7 cm off centre
    pdg = np.full(50, 2112)
    assert not reference.hits_face(miss).any()
    hit_total = reference.simulate(hit, pdg, rng).sum((1, 2))
    miss_total = reference.simulate(miss, pdg, rng).sum((1, 2))
    assert np.median(miss_total) < 0.01 * np.median(hit_total)


def test_hadrons_fluctuate_and_em_showers_are_consistent():
    rng = np.random.default_rng(2)
    k = 40
    cases = {2112: particle(2112, 2500.0), 130: particle(130, 300.0), 22: particle(22, 300.0), 11: particle(11, 1000.0)}
    spread = {}
    for pdg, p in cases.items():
        totals = reference.simulate(np.repeat(p[None], k, 0), np.full(k, pdg), rng).sum((1, 2))
        spread[pdg] = metrics.relative_spread(totals[None])[0]
    assert spread[2112] > 0.15 and spread[130] > 0.15
    assert spread[22] < 0.05 and spread[11] < 0.05


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
    expected = 1000 * 10 * reference.EM_FRACTION[0] * reference.PHOTONS_PER_GEV
    assert 0.9 * expected < totals[2] < 1.05 * expected  # nearly all of a central EM shower is inside
