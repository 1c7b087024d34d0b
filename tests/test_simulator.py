import numpy as np
import pytest
import torch

from zdc_sim import checkpoint, features, geometry, reference
from zdc_sim.errors import DomainError, FeatureError, ZdcError
from zdc_sim.models import SIZES, Generator
from zdc_sim.simulator import Simulator, default_model_path


@pytest.fixture(scope="module")
def particles():
    x, _ = reference.sample_particles(300, np.random.default_rng(4))
    return x


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, particles):
    torch.manual_seed(0)
    gen = Generator(SIZES["tiny"])
    std = features.Standardizer.fit(particles)
    gen.conditioner.fit(std, particles)
    gen.set_total_scale(np.log(1000.0))
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    checkpoint.save(path, checkpoint.prefixed("generator", gen.state_dict()),
                    {"model": gen.config.to_dict(), "standardizer": std.to_dict()})
    return path


def test_simulate_shapes_counts_and_channel_sums(saved_model, particles):
    sim = Simulator.load(saved_model, device="cpu")
    out = sim.simulate(particles[:50], seed=1)
    assert out.counts.shape == (50, 44, 44) and out.counts.dtype == np.float32
    assert out.channels.shape == (50, 5) and out.channels.dtype == np.float32
    assert (out.counts >= 0).all() and out.counts.sum() > 0
    np.testing.assert_allclose(out.channels, geometry.channel_sums(out.counts), rtol=1e-5)


def test_same_seed_same_output_whatever_the_batch_size(saved_model, particles):
    whole = Simulator.load(saved_model, batch_size=4096).simulate(particles, seed=42).counts
    small = Simulator.load(saved_model, batch_size=7).simulate(particles, seed=42).counts
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-4)
    again = Simulator.load(saved_model).simulate(particles, seed=42).counts
    np.testing.assert_array_equal(again, whole)
    other = Simulator.load(saved_model).simulate(particles, seed=43).counts
    assert np.abs(other - whole).mean() > 1e-3
    # a prefix of the particles gets the same responses as in the full batch
    np.testing.assert_allclose(Simulator.load(saved_model).simulate(particles[:10], seed=42).counts, whole[:10],
                               rtol=1e-5, atol=1e-4)


def test_simulate_validates_features(saved_model, particles):
    sim = Simulator.load(saved_model)
    bad = particles[:5].copy()
    bad[3, 0] = np.nan
    with pytest.raises(FeatureError, match="row 3.*energy"):
        sim.simulate(bad)
    with pytest.raises(FeatureError, match=r"\(N, 9\)"):
        sim.simulate(np.zeros((4, 8)))


def test_device_and_precision_options(saved_model):
    if not torch.cuda.is_available():
        with pytest.raises(ZdcError, match="no CUDA device"):
            Simulator.load(saved_model, device="cuda")
    with pytest.raises(ZdcError, match="bf16 inference needs a CUDA device"):
        Simulator.load(saved_model, device="cpu", bf16=True)
    with pytest.raises(ZdcError, match="batch_size"):
        Simulator.load(saved_model, batch_size=0)


def test_loading_a_checkpoint_without_a_generator_fails_clearly(tmp_path):
    path = tmp_path / "empty.safetensors"
    checkpoint.save(path, {"w": torch.ones(1)}, {"model": SIZES["tiny"].to_dict()})
    with pytest.raises(checkpoint.CheckpointError, match="does not hold a generator"):
        Simulator.load(path)


def test_the_shipped_default_model_loads_and_is_small():
    path = default_model_path()
    assert path.stat().st_size <= 10 * 1024 * 1024
    sim = Simulator.load()
    meta = sim.metadata
    assert meta["training"]["regularizer"] == "sdi" and "validation" in meta
    x, _ = reference.sample_particles(20, np.random.default_rng(0))
    out = sim.simulate(x, seed=0)
    assert out.counts.shape == (20, 44, 44) and np.isfinite(out.counts).all()


def test_the_traced_cpu_forward_is_the_generator_bit_for_bit(saved_model, particles):
    """On CPU the torch engine runs the generator traced (one call that releases the GIL, see
    zdc_sim/engines.py): same counts as the module itself at any batch size, and weights
    changed in place after loading reach it."""
    sim = Simulator.load(saved_model, device="cpu", batch_size=64)
    for n in (1, 7, 130):
        raw = features.validate(particles[-n:])
        draws = sim.draws(n, seed=n)
        reached = geometry.reaches(raw, "zn")
        mirrored = geometry.to_a_side(raw[reached])
        with torch.inference_mode():
            eager = torch.cat([sim.generator.counts(torch.from_numpy(draws[reached][i : i + 64]),
                                                    torch.from_numpy(sim.standardizer.transform(mirrored[i : i + 64])))
                               for i in range(0, len(mirrored), 64)])
        out = sim.simulate_draws(raw, draws)
        np.testing.assert_array_equal(out.counts[reached], eager.numpy())
        assert not out.counts[~reached].any() and out.reached.tolist() == reached.tolist()
    before = sim.simulate(particles[:20], seed=1).channels.sum()
    with torch.no_grad():
        sim.generator.intensity.mul_(2.0)
    assert sim.simulate(particles[:20], seed=1).channels.sum() == pytest.approx(2 * before, rel=0.02)


def test_batch_buckets_pad_without_changing_results(tiny_checkpoint):
    from zdc_sim.engines import bucket_sizes

    assert bucket_sizes(1) == [1] and bucket_sizes(8) == [1, 2, 4, 8] and bucket_sizes(12) == [1, 2, 4, 8, 12]
    plain = Simulator.load(tiny_checkpoint, device="cpu", batch_size=12)
    padded = Simulator.load(tiny_checkpoint, device="cpu", batch_size=12)
    padded.engine.buckets = bucket_sizes(12)  # what compile=True uses, without paying for compilation
    feats = np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, 939.6, 0]] * 29, np.float32)  # 12 + 12 + 5 (padded to 8)
    np.testing.assert_allclose(padded.simulate(feats, seed=2).counts, plain.simulate(feats, seed=2).counts, rtol=1e-5)
    padded.warmup()


def test_bf16_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ZdcError, match="bf16 inference needs a CUDA device"):
        Simulator.load(bf16=True)


def test_particles_outside_the_trained_ranges_are_named_unless_extrapolation_is_asked(tiny_checkpoint):
    sim = Simulator.load(tiny_checkpoint, device="cpu")
    feats = pinned_particles()[:5]  # they reach the ZN
    feats[2, [3, 6]] *= -1  # one flies to the C side: checked as its mirror image
    sim.simulate(feats, seed=1)  # inside
    feats[3, features.INDEX["mass"]] = 9000.0  # heavier than anything the model saw (alphas, 3.7 GeV)
    with pytest.raises(DomainError, match=r"row 3, feature 'mass' is 9000 MeV, outside the range the model was trained on "
                                          r"\(0 to 3727.* MeV, 10% tolerance, never across zero; 1 of 5 rows outside\).*extrapolate=True"):
        sim.simulate(feats, seed=1)
    assert sim.outside_domain(feats).tolist() == [False, False, False, True, False]
    assert np.isfinite(sim.simulate(feats, seed=1, extrapolate=True).channels).all()
    feats[3, features.INDEX["mass"]] = 939.565
    far = feats.copy()
    far[:, features.INDEX["charge"]] = 2.0  # bent far off the ZN: nothing to check, an empty response
    assert not sim.outside_domain(far).any() and not sim.simulate(far, seed=1).counts.any()
    low, high = sim.domain.low[0], sim.domain.high[0]
    feats[3, 0] = feats[3, 6] = high + 0.09 * (high - low)  # energy within the 10 % tolerance
    sim.simulate(feats, seed=1)
    feats[3, 0] = feats[3, 6] = high + 0.11 * (high - low)
    assert sim.outside_domain(feats)[3]


def test_engines_never_change_the_generator_they_are_given(tiny_checkpoint):
    """The torch engine runs a channels-last copy and the ONNX export a contiguous one: the model
    a caller (a training run) passes in keeps its layout and weights; changes made through
    simulator.generator reach the torch engine."""
    import torch

    from zdc_sim.exports.onnx import onnx_bytes

    loaded = Simulator.load(tiny_checkpoint, device="cpu")
    given = Generator(loaded.generator.config)
    given.load_state_dict(loaded.generator.state_dict())
    before = {k: v.clone() for k, v in given.state_dict().items()}
    layouts = [p.is_contiguous() for p in given.parameters()]
    for engine in ("torch", "onnxruntime"):
        sim = Simulator(given, loaded.standardizer, device="cpu", engine=engine, metadata=loaded.metadata)
        sim.simulate(np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, 939.6, 0]]), seed=1)
    onnx_bytes(given, loaded.standardizer, loaded.metadata)
    assert [p.is_contiguous() for p in given.parameters()] == layouts
    assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())
    sim = Simulator(given, loaded.standardizer, device="cpu")
    assert sim.generator is not given
    x = np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, 939.6, 0]] * 4)
    first = sim.simulate(x, seed=3).channels.sum()
    with torch.no_grad():
        sim.generator.intensity.mul_(3.0)
    assert sim.simulate(x, seed=3).channels.sum() == pytest.approx(3 * first, rel=0.05)


def pinned_particles() -> np.ndarray:
    """32 A-side particles that reach the ZN (spectator neutrons and photons), drawn from a fixed
    stream without the reference sampler, so that changes to its particle mix leave them alone."""
    rng = np.random.default_rng(2024)
    n = 32
    energy = np.where(np.arange(n) % 2 == 0, rng.normal(2510, 100, n), np.exp(rng.uniform(np.log(5), np.log(500), n)))
    mass = np.where(np.arange(n) % 2 == 0, 939.565, 0.0)
    theta, phi = rng.rayleigh(150e-6, n), rng.uniform(0, 2 * np.pi, n)
    p = np.sqrt(energy**2 - (mass / 1000) ** 2)
    x = np.zeros((n, 9))
    x[:, 0], x[:, 1:4] = energy, rng.normal(0, [1e-4, 1e-4, 0.06], (n, 3))
    x[:, 4], x[:, 5], x[:, 6] = p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi), p * np.cos(theta)
    x[:, 7] = mass
    return x.astype(np.float32)


def test_the_shipped_models_counts_are_those_of_the_release_they_were_pinned_on():
    """Refactoring changes no count: the shipped ZN model's integer photon counts for 32 particles at
    seed 7, hashed when it shipped (model 5c75d883b3b2: the bounded total, seed 2, its intensity
    factors refitted on all its training particles, its tower share map fitted on them);
    their mirror images on the C side get the same counts."""
    import hashlib

    sim = Simulator.load(device="cpu")
    x = pinned_particles()
    counts = sim.simulate(x, seed=7, extrapolate=True).counts
    assert np.array_equal(counts, np.round(counts)) and counts.sum() > 1e6
    assert hashlib.sha256(counts.astype(np.int32).tobytes()).hexdigest() == PINNED_COUNTS
    mirrored = x.copy()
    mirrored[:, [3, 6]] *= -1
    np.testing.assert_array_equal(sim.simulate(mirrored, seed=7, extrapolate=True).counts, counts)


PINNED_COUNTS = "d93daf082a86a702b9df992dce6ec91e72127e0c91092692e192b681f0ac7bb0"


O2_EXAMPLE = [513.318, 1.4543e-08, 3.6505e-08, -2.73101e-03, 0.035456, -0.0518206, -513.318, 0.0, 0.0]
"""O2's example particle (Detectors/ZDC/fastsimulation/tests/run-example.cxx): a 513 GeV photon
flying to the C side (its vertex is in cm there; here read in m, a few um either way)."""


def test_o2s_example_particle_reaches_the_zn_and_not_the_zp(tiny_zp_checkpoint):
    zn = Simulator.load("zn", device="cpu").simulate([O2_EXAMPLE], seed=1)
    zp = Simulator.load(tiny_zp_checkpoint, device="cpu").simulate([O2_EXAMPLE], seed=1)
    assert zn.reached.tolist() == [True] and zn.counts.sum() > 10_000  # ~50 photons per GeV
    assert zp.reached.tolist() == [False] and zp.counts.shape == (1, 30, 56) and zp.counts.sum() == 0


def test_a_zp_model_loads_by_its_checkpoint_and_mirrors_the_c_side(tiny_zp_checkpoint):
    sim = Simulator.load(tiny_zp_checkpoint, device="cpu")
    assert sim.detector is geometry.ZP and sim.random_dim == sim.latent_dim + 1680
    x, _ = reference.sample_particles(2000, np.random.default_rng(8))
    x = x[geometry.reaches(x, "zp")][:50]
    mirrored = x.copy()
    mirrored[:, [3, 6]] *= -1
    a, c = sim.simulate(x, seed=3, extrapolate=True), sim.simulate(mirrored, seed=3, extrapolate=True)
    assert a.counts.shape == (50, 30, 56) and a.reached.all() and a.counts.sum() > 0
    np.testing.assert_array_equal(a.counts, c.counts)
    np.testing.assert_allclose(a.channels, geometry.channel_sums(a.counts), rtol=1e-5)
