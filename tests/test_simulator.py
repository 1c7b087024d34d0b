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
        raw = features.validate(particles[:n])
        draws = sim.draws(n, seed=n)
        with torch.inference_mode():
            eager = torch.cat([sim.generator.counts(torch.from_numpy(draws[i : i + 64]),
                                                    torch.from_numpy(sim.standardizer.transform(raw[i : i + 64])))
                               for i in range(0, n, 64)])
        np.testing.assert_array_equal(sim.simulate_draws(raw, draws).counts, eager.numpy())
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
    feats, _ = reference.sample_particles(5, np.random.default_rng(3))
    sim.simulate(feats, seed=1)  # inside
    feats[3, features.INDEX["charge"]] = 2.0  # a charge the model never saw (trained on -1..1)
    with pytest.raises(DomainError, match=r"row 3, feature 'charge' is 2 e, outside the range the model was trained on "
                                          r"\(-1 to 1 e, 10% tolerance, never across zero; 1 of 5 rows outside\).*extrapolate=True"):
        sim.simulate(feats, seed=1)
    assert sim.outside_domain(feats).tolist() == [False, False, False, True, False]
    assert np.isfinite(sim.simulate(feats, seed=1, extrapolate=True).channels).all()
    feats[3, features.INDEX["charge"]] = 1.0
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


def test_the_shipped_models_counts_are_those_of_the_release_they_were_pinned_on():
    """Refactoring changes no count: the shipped model's integer photon counts for 32 reference
    particles at seed 7, hashed, as 2c7346e computed them (before the engines were split out)."""
    import hashlib

    sim = Simulator.load(device="cpu")
    x, _ = reference.sample_particles(32, np.random.default_rng(2024))
    counts = sim.simulate(x, seed=7, extrapolate=True).counts
    assert np.array_equal(counts, np.round(counts))
    assert hashlib.sha256(counts.astype(np.int32).tobytes()).hexdigest() == PINNED_COUNTS


PINNED_COUNTS = "1db8769109d2bd84cd1b33ab3a5572ed91f454b4620e5c9c05a9f7e1e43e0629"
