"""The O2 export (zdc_sim/exports/o2.py) called as ALICE O2 calls it (docs/o2.md): its scales files
read by a copy of O2's parse_block / loadScales, ONNX Runtime sessions with one intra-op thread,
inputs bound by position (noise, then the scaled features) with O2's shapes, output 0 read flat,
expm1 and calculateChannels' sums."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from zdc_sim import features, geometry, reference
from zdc_sim.errors import ConfigError, ZdcError
from zdc_sim.exports import o2
from zdc_sim.models import SIZES, Generator, ModelConfig
from zdc_sim.simulator import Simulator

A_NEUTRON = [2500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2500.0, 939.6, 0.0]  # our units, straight onto the ZN's centre


# --- O2's side, rewritten from its source (fastsimulation/src/Utils.cxx, FastSimulations.cxx) -------

def parse_block(lines, option):
    """Utils.cxx parse_block: skip to the line equal to `option`, then std::stof every line until an
    empty one or the end; `lines` is one stream, consumed as std::getline consumes it."""
    read, data = False, []
    for line in lines:
        if line == option:
            read = True
            break
    for line in lines:
        if not line:
            break
        if read:
            data.append(np.float32(float(line)))  # std::stof of a plain decimal line
    return data


def load_scales(path):
    """FastSimulations.cxx loadScales: None where O2 gives std::nullopt."""
    text = path.read_bytes().decode()
    lines = iter(text[:-1].split("\n") if text.endswith("\n") else text.split("\n"))  # std::getline
    means = parse_block(lines, "#means")
    if not means:
        return None
    scales = parse_block(lines, "#scales")
    if not scales or len(means) != len(scales):
        return None
    return np.array(means, np.float32), np.array(scales, np.float32)


def o2_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # FastSimulations.cxx: SetIntraOpNumThreads(1), nothing else
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def o2_run(session, *inputs):
    """Inputs bound by position, output 0 only."""
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))[0]


def o2_scaled(our_features, scales):
    """The features as O2 passes them: O2's units (vertex cm, mass MeV, charge |e|/3) in float,
    (raw - mean) / scale in float (Processors.cxx StandardScaler)."""
    mean, scale = scales
    raw = (np.asarray(our_features, np.float64) * [1, 100, 100, 100, 1, 1, 1, 1, 3]).astype(np.float32)
    return (raw - mean) / scale


# --- fixtures ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tiny_checkpoint):
    return Simulator.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def exported(sim, tmp_path_factory):
    """option -> (session, O2's parsed scales) of the tiny ZN model; the classifier's under
    'classifier'; the model files under ('path', option)."""
    out = {}
    for option in o2.PHOTON_STATISTICS:
        folder = tmp_path_factory.mktemp(option)
        model, scales = o2.write_o2_export(sim, folder, photon_statistics=option)
        assert [model.name, scales.name] == ["zn_model.onnx", "zn_scales.txt"]
        out[option], out["path", option] = (o2_session(model), load_scales(scales)), model
    model, scales = o2.write_o2_classifier(tmp_path_factory.mktemp("classifier"))
    out["classifier"] = (o2_session(model), load_scales(scales))
    return out


@pytest.fixture(scope="module")
def reaching():
    """Reference particles that reach the ZN, on both sides, in our units."""
    x, _ = reference.sample_particles(1500, np.random.default_rng(5))
    x = x[geometry.reaches(x, "zn")][:64]
    assert (x[:, 6] < 0).any() and (x[:, 6] > 0).any()
    return x


def noise(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, o2.NOISE_DIM)).astype(np.float32)


# --- the tests ---------------------------------------------------------------------------------------

def test_scales_file_is_read_by_o2_as_our_standardisation(sim, exported, tmp_path):
    model, scales = o2.write_o2_export(sim, tmp_path, photon_statistics="mean")
    text = scales.read_bytes().decode()
    lines = text.split("\n")
    assert lines[0] == "#means" and lines[10] == "" and lines[11] == "#scales" and text.endswith("\n")
    assert len(lines) == 22 and "\r" not in text and all(line == line.strip() for line in lines)
    mean, scale = load_scales(scales)
    assert mean.shape == scale.shape == (9,)
    want_mean, want_scale = o2.o2_scales(sim.standardizer)
    np.testing.assert_array_equal(mean, want_mean)  # the float32 values, to the bit
    np.testing.assert_array_equal(scale, want_scale)
    np.testing.assert_array_equal(o2.parse_scales(text)[0], mean)
    np.testing.assert_allclose(want_mean[[1, 8]], np.array(sim.standardizer.mean)[[1, 8]] * [100, 3], rtol=1e-6)
    x, _ = reference.sample_particles(200, np.random.default_rng(1))
    # What O2 feeds is our standardised features, to float rounding.
    np.testing.assert_allclose(o2_scaled(x, (mean, scale)), sim.standardizer.transform(x), rtol=1e-5, atol=1e-5)
    assert load_scales(tmp_path / "zn_scales.txt") is not None
    bad = tmp_path / "bad.txt"
    bad.write_text(text.replace("#means\n", "#means \n"))  # a trailing space: O2 finds no block
    assert load_scales(bad) is None


def test_inputs_by_position_shapes_and_output(exported, sim):
    session, scales = exported["hashed"]
    inputs, outputs = session.get_inputs(), session.get_outputs()
    assert [i.name for i in inputs] == ["noise", "features"] and [o.name for o in outputs] == ["log_photons"]
    assert [i.shape for i in inputs] == [["batch", 10], ["batch", 9]]
    assert {i.type for i in inputs} | {outputs[0].type} == {"tensor(float)"}
    assert outputs[0].shape == ["batch", 1936]
    # O2 sets every negative (dynamic) dimension to 1 and passes one particle per Run.
    shapes = [[d if isinstance(d, int) else 1 for d in i.shape] for i in inputs]
    assert shapes == [[1, 10], [1, 9]]
    out = o2_run(session, noise(1), o2_scaled([A_NEUTRON], scales))
    assert out.dtype == np.float32 and out.shape == (1, 1936) and out.size == sim.detector.n_pixels
    assert out.min() >= 0 and out.max() > 0
    props = {p.key: p.value for p in onnx.load(exported["path", "hashed"]).metadata_props}
    assert props["detector"] == "zn" and props["photon_statistics"] == "hashed" and props["version"] == sim.model_version
    assert props["units"] == "GeV,cm,cm,cm,GeV,GeV,GeV,MeV,|e|/3"


def test_o2_units_give_the_simulators_response(exported, sim, reaching):
    """One particle a Run in O2's units through the O2 graph == the same particle in our units
    through the Simulator with the same latent: the mean response exactly (to float rounding), and
    the 'hashed' counts with the normals it derives from the noise."""
    z = noise(len(reaching), 1)
    session, scales = exported["mean"]
    got = np.concatenate([o2_run(session, z[k : k + 1], o2_scaled(reaching[k : k + 1], scales))
                          for k in range(len(reaching))])  # one particle a Run
    with torch.no_grad():
        standardized = torch.from_numpy(sim.standardizer.transform(geometry.to_a_side(reaching)))
        want = sim.generator.mean_counts(torch.from_numpy(z), standardized).numpy().reshape(len(reaching), -1)
    np.testing.assert_allclose(np.expm1(got), want, rtol=2e-4, atol=1e-3)

    session, scales = exported["hashed"]
    out = o2_run(session, z, o2_scaled(reaching, scales))
    draws = np.concatenate([z, o2.hashed_normals(z, sim.detector.n_pixels)], 1)
    want = sim.simulate_draws(features.validate(reaching), draws)
    # calculateChannels' float sums and lround give the Simulator's channels (a fibre whose mean +
    # sqrt(mean) x normal lies within float rounding of a half-integer may round the other way).
    np.testing.assert_allclose(o2.o2_channels(out, "zn"), want.channels, rtol=1e-4, atol=2)
    # O2's hits: (int) expm1(pixel) gives back every count.
    counts = np.trunc(np.expm1(out)).reshape(want.counts.shape)
    assert (counts != want.counts).mean() < 1e-3


def test_the_c_side_is_the_a_sides_mirror_image(exported):
    session, scales = exported["hashed"]
    a_side = np.array([A_NEUTRON, [1500.0, 1e-4, -2e-4, 3.0, 0.05, -0.03, 1500.0, 0.0, 0.0]])
    c_side = a_side * [1, 1, 1, -1, 1, 1, -1, 1, 1]  # vz and pz negated: the C side (pz < 0)
    z = noise(2, 3)
    a, c = o2_run(session, z, o2_scaled(a_side, scales)), o2_run(session, z, o2_scaled(c_side, scales))
    assert a.max() > 0
    np.testing.assert_array_equal(a, c)


def test_a_particle_that_reaches_neither_gets_nothing(exported):
    x = np.array([[2500.0, 0, 0, 0, 300.0, 0, 2480.0, 939.6, 0],  # 0.12 rad: far beside both
                  [2500.0, 0, 0, 0, 2499.0, 0, 0.0, 939.6, 0],  # sideways (pz = 0): neither side
                  [2500.0, 0, 0, 0, 0, -2000.0, -1499.0, 0.0, -3]])  # C side, steep
    assert not (geometry.reaches(x, "zn") | geometry.reaches(x, "zp")).any()
    for option in o2.PHOTON_STATISTICS:
        session, scales = exported[option]
        out = o2_run(session, noise(3), o2_scaled(x, scales))
        assert not out.any() and not o2.o2_channels(out, "zn").any()
    session, scales = exported["classifier"]
    assert (np.round(o2_run(session, o2_scaled(x, scales))[:, 0]) == 0).all()


def test_classifier_says_which_particles_reach_the_zn_or_the_zp(exported):
    session, scales = exported["classifier"]
    assert [i.name for i in session.get_inputs()] == ["features"] and session.get_inputs()[0].shape == ["batch", 9]
    np.testing.assert_array_equal(scales[0], np.zeros(9, np.float32))
    np.testing.assert_array_equal(scales[1], np.ones(9, np.float32))
    x, _ = reference.sample_particles(1000, np.random.default_rng(9))  # every species, both sides
    want = geometry.reaches(x, "zn") | geometry.reaches(x, "zp")
    only_zp = geometry.reaches(x, "zp") & ~geometry.reaches(x, "zn")
    assert 50 < want.sum() < 950 and (want & (x[:, 6] < 0)).any() and only_zp.any()
    one = [o2_run(session, o2_scaled(x[k : k + 1], scales)) for k in range(20)]  # O2: one particle a Run
    assert all(r.shape == (1, 1) and r.dtype == np.float32 for r in one)
    first = np.round(o2_run(session, o2_scaled(x, scales))[:, 0])  # Processors.cxx readClassifier
    np.testing.assert_array_equal(first != 0, want)


def test_random_photon_statistics_draw_afresh_each_run(exported):
    session, scales = exported["random"]
    assert "RandomNormalLike" in {n.op_type for n in onnx.load(exported["path", "random"]).graph.node}
    x, z = o2_scaled([A_NEUTRON], scales), noise(1, 4)
    runs = np.concatenate([o2_run(session, z, x) for _ in range(64)])
    assert len({r.tobytes() for r in runs}) == 64  # the latent is the same: only the photons differ
    counts = np.expm1(runs.astype(np.float64))
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-2)  # integral photon counts
    mean_session, _ = exported["mean"]
    mean_total = np.expm1(o2_run(mean_session, z, x).astype(np.float64)).sum()
    totals = counts.sum(1)
    assert abs(totals.mean() - mean_total) < 5 * np.sqrt(mean_total / len(totals)) + 1  # Poisson's mean
    assert 0.5 < totals.var() / mean_total < 2.0  # and about its variance


def test_hashed_normals_look_independent_standard_normals():
    z = noise(3000, 6)
    n = o2.hashed_normals(z, 1936).astype(np.float64)
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01
    picked = n[:, :: 40]
    corr = np.corrcoef(np.concatenate([z, picked], 1).T)
    off = corr[np.triu_indices(len(corr), 1)]
    assert np.abs(off).max() < 0.1  # with the latent and between fibres: chance level for 3,000 rows
    # per row: the same rows alone give the same normals, up to the last bit of float32 (the float64
    # product z @ W is blocked differently for 5 rows than for 3,000, and frac() keeps its low bits)
    np.testing.assert_allclose(o2.hashed_normals(z[:5], 1936), n[:5].astype(np.float32), rtol=1e-5, atol=1e-6)


def test_the_zp_model(tiny_zp_checkpoint, tmp_path):
    zp = Simulator.load(tiny_zp_checkpoint, device="cpu")
    paths = o2.export_o2(Simulator.load(tiny_zp_checkpoint, device="cpu"), tmp_path, detector="zp",
                         photon_statistics="hashed")
    assert [p.name for p in paths] == ["zp_model.onnx", "zp_scales.txt", "classifier.onnx", "classifier_scales.txt"]
    session, scales = o2_session(paths[0]), load_scales(paths[1])
    assert session.get_outputs()[0].shape == ["batch", 1680]
    x, _ = reference.sample_particles(3000, np.random.default_rng(2))
    x = x[geometry.reaches(x, "zp")][:32]
    assert (x[:, 6] < 0).any()
    z = noise(len(x), 8)
    out = o2_run(session, z, o2_scaled(x, scales))
    assert out.shape == (len(x), 1680)
    want = zp.simulate_draws(features.validate(x), np.concatenate([z, o2.hashed_normals(z, 1680)], 1))
    np.testing.assert_allclose(o2.o2_channels(out, "zp"), want.channels, rtol=1e-4, atol=2)
    with pytest.raises(ZdcError, match="simulates the ZP; expected a ZN model"):
        o2.export_o2(zp, tmp_path, detector="zn")


def test_what_cannot_be_exported(sim, tmp_path):
    generator = Generator(ModelConfig(**{**SIZES["tiny"].to_dict(), "latent_dim": 4}))
    with pytest.raises(ZdcError, match="expected latent_dim 10"):
        o2.o2_model_bytes(generator, sim.standardizer)
    with pytest.raises(ConfigError, match="photon_statistics must be one of"):
        o2.write_o2_export(sim, tmp_path, photon_statistics="poisson")
    with pytest.raises(ConfigError, match="non-zero"):
        o2.scales_text(np.zeros(9), np.zeros(9))
