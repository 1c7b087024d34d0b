import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from zdc_sim import cli, reference
from zdc_sim.exports import onnx as onnx_export
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import Simulator


@pytest.fixture(scope="module")
def sim(tiny_checkpoint):
    return Simulator.load(tiny_checkpoint, device="cpu")


def _close(a, b):
    """Channel sums within 1e-4 relative, or 2 photons: ONNX Runtime's kernels differ from torch's in
    the last float bits, which moves a fibre whose mean + sqrt(mean) x noise lies within ~1e-6 of a
    half-integer to the neighbouring count."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2.0)


def test_exported_graph_matches_the_simulator_at_any_batch_size(sim, tmp_path):
    path = onnx_export.write_onnx(sim, tmp_path)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["version"] == sim.model_version and props["latent_dim"] == str(sim.latent_dim)
    assert props["features"] == "energy,vx,vy,vz,px,py,pz,mass,charge" and props["opset"] == str(onnx_export.OPSET)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["FEATURES", "LATENTS", "PHOTON_NOISE"]
    for n in (1, 7, 4096):
        x, _ = reference.sample_particles(n, np.random.default_rng(n))
        responses, channels = session.run(["RESPONSES", "CHANNELS"], {"FEATURES": x, **sim.random_inputs(n, seed=11)})
        want = sim.simulate(x, seed=11, extrapolate=True)
        assert responses.shape == (n, 44, 44) and channels.shape == (n, 5)
        _close(channels, want.channels)
        assert (responses != want.counts).mean() < 1e-3


def test_the_em_intensity_is_in_the_exported_graph(tiny_checkpoint, tmp_path):
    """A model with an electromagnetic intensity factor (1.5) exports it: the graph gives the
    Simulator's channels for every species, 1.5x those of the model without it for photons and
    electrons only."""
    from zdc_sim import species

    plain, scaled = (Simulator.load(tiny_checkpoint, device="cpu") for _ in range(2))
    scaled.generator.em_intensity.fill_(1.5)
    x, pdg = reference.sample_particles(600, np.random.default_rng(4))
    em = species.shower_class(pdg) == species.ELECTROMAGNETIC
    got = {}
    for name, model in (("plain", plain), ("scaled", scaled)):
        session = ort.InferenceSession(str(onnx_export.write_onnx(model, tmp_path / name)),
                                       providers=["CPUExecutionProvider"])
        got[name] = session.run(["CHANNELS"], {"FEATURES": x, **model.random_inputs(len(x), seed=5)})[0]
        _close(got[name], model.simulate(x, seed=5, extrapolate=True).channels)
    lit = got["plain"].sum(1) > 1000
    assert (em & lit).sum() >= 10 and (~em & lit).sum() >= 10
    ratio = got["scaled"].sum(1)[lit] / got["plain"].sum(1)[lit]
    np.testing.assert_allclose(ratio[em[lit]], 1.5, rtol=0.03)
    np.testing.assert_allclose(ratio[~em[lit]], 1.0, rtol=1e-6)


def test_a_bounded_total_model_exports_its_responses(tmp_path):
    """The bounded total (model option bounded_total: energy x full yield x a fraction) reads the particle's
    energy inside the graph: the exported graph gives the Simulator's responses, bounded alike."""
    from tests.conftest import save_tiny_model

    bounded = Simulator.load(save_tiny_model(tmp_path / "bounded.safetensors", "zn", bounded_total=True), device="cpu")
    bounded.generator.full_yield.fill_(5.0)
    session = ort.InferenceSession(str(onnx_export.write_onnx(bounded, tmp_path)), providers=["CPUExecutionProvider"])
    x, _ = reference.sample_particles(600, np.random.default_rng(3))
    responses, channels = session.run(["RESPONSES", "CHANNELS"], {"FEATURES": x, **bounded.random_inputs(len(x), seed=5)})
    want = bounded.simulate(x, seed=5, extrapolate=True)
    _close(channels, want.channels)
    assert (responses != want.counts).mean() < 1e-3 and want.counts.sum() > 0
    # energy x full yield bounds the mean total; photon statistics add at most a few sigma:
    assert (want.counts.sum((1, 2)) <= 5.0 * x[:, 0] + 6 * np.sqrt(5.0 * x[:, 0]) + 10).all()


def test_a_shape_zoom_model_exports_its_responses(tmp_path):
    """shape_zoom stretches each sample's shape inside the graph: with the stretch away from 1, the
    exported graph gives the Simulator's responses for the ZN and for the ZP."""
    from tests.conftest import save_tiny_model

    for detector in ("zn", "zp"):
        path = save_tiny_model(tmp_path / f"zoom_{detector}.safetensors", detector, shape_zoom=True)
        zoomed = Simulator.load(path, device="cpu")
        with torch.no_grad():
            zoomed.generator.zoom[-1].bias.copy_(torch.tensor([0.3, -0.2]))
        session = ort.InferenceSession(str(onnx_export.write_onnx(zoomed, tmp_path / detector)),
                                       providers=["CPUExecutionProvider"])
        x, _ = reference.sample_particles(600, np.random.default_rng(3))
        responses, channels = session.run(["RESPONSES", "CHANNELS"],
                                          {"FEATURES": x, **zoomed.random_inputs(len(x), seed=5)})
        want = zoomed.simulate(x, seed=5, extrapolate=True)
        _close(channels, want.channels)
        assert (responses != want.counts).mean() < 1e-3 and want.counts.sum() > 0
        plain = Simulator.load(path, device="cpu").simulate(x, seed=5, extrapolate=True)  # zoom 1: other responses
        assert (plain.counts != want.counts).mean() > 0.01


def test_the_zp_graph_mirrors_the_c_side_and_empties_what_does_not_reach(tiny_zp_checkpoint, tmp_path):
    zp = Simulator.load(tiny_zp_checkpoint, device="cpu")
    path = onnx_export.write_onnx(zp, tmp_path)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["detector"] == "zp"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = {o.name: o.shape for o in session.get_outputs()}
    assert shapes["RESPONSES"] == ["N", 30, 56] and session.get_inputs()[2].shape == ["N", 1680]
    x, _ = reference.sample_particles(400, np.random.default_rng(3))  # both sides, every species
    responses, channels = session.run(["RESPONSES", "CHANNELS"], {"FEATURES": x, **zp.random_inputs(400, seed=5)})
    want = zp.simulate(x, seed=5, extrapolate=True)
    assert want.reached.sum() > 20 and (x[want.reached, 6] < 0).any()
    _close(channels, want.channels)
    assert not responses[~want.reached].any()


def test_random_inputs_are_the_rows_simulate_draws(sim):
    full = np.random.default_rng([5, 0]).standard_normal((64, sim.random_dim), np.float32)
    np.testing.assert_array_equal(sim.draws(3, 5, start=10), full[10:13])  # a part of a block, drawn alone
    np.testing.assert_array_equal(sim.draws(70, 5)[:64], full)
    inputs = sim.random_inputs(70, 5)
    np.testing.assert_array_equal(np.concatenate([inputs["LATENTS"], inputs["PHOTON_NOISE"]], 1), sim.draws(70, 5))


def test_onnxruntime_engine_gives_the_torch_engines_responses(sim, tiny_checkpoint):
    fast = Simulator.load(tiny_checkpoint, engine="onnxruntime", batch_size=64)
    assert fast.engine.name == "onnxruntime" and str(fast.device) == "cpu"
    x, _ = reference.sample_particles(300, np.random.default_rng(4))
    _close(fast.simulate(x, seed=2, extrapolate=True).channels, sim.simulate(x, seed=2, extrapolate=True).channels)
    assert Simulator.load(tiny_checkpoint, engine="auto", device="cpu").engine.name == "onnxruntime"
    with pytest.raises(ZdcError, match="engine 'tensorflow' is not known"):
        Simulator.load(tiny_checkpoint, engine="tensorflow")
    with pytest.raises(ZdcError, match="engine 'onnxruntime' runs on CPU in fp32"):
        Simulator.load(tiny_checkpoint, engine="onnxruntime", device="cpu", compile=True)


def _triton_model_config():
    """Triton's ModelConfig protobuf, as tritonclient ships it (its grpc package, which would need
    grpcio, is not imported: the generated module needs only protobuf)."""
    import importlib.util
    from pathlib import Path

    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_repository_from_the_command_line(tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["model", "export", str(tiny_checkpoint), "--format", "triton", "--out", str(tmp_path),
                     "--max-batch-size", "512"]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(tmp_path / "zdc-zn/1/model.onnx"))
    config = (tmp_path / "zdc-zn/config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 512" in config
    assert "dynamic_batching" in config and 'name: "PHOTON_NOISE" data_type: TYPE_FP32 dims: [1936]' in config
    assert 'name: "RESPONSES" data_type: TYPE_FP32 dims: [44, 44]' in config
    # What Triton checks when it loads the repository: the config parses as its ModelConfig, and
    # every tensor it names is the graph's, FP32, with the graph's shape after the batch axis.
    parsed = text_format.Parse(config, _triton_model_config().ModelConfig())
    graph = onnx.load(tmp_path / "zdc-zn/1/model.onnx").graph
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    assert parsed.max_batch_size == 512 and parsed.dynamic_batching.max_queue_delay_microseconds > 0
    tensors = [*parsed.input, *parsed.output]
    assert sorted(t.name for t in tensors) == sorted(shapes)
    for t in tensors:
        assert t.data_type == _triton_model_config().TYPE_FP32 and shapes[t.name] == ["N", *t.dims], t.name
    assert cli.main(["model", "export", str(tiny_checkpoint), "--detector", "zp", "--out", str(tmp_path / "x")]) == 2
    assert "simulates the ZN; expected a ZP model" in capsys.readouterr().err
    assert cli.main(["model", "export", str(tiny_checkpoint), "--out", str(tmp_path / "new" / "folder")]) == 0
    onnx.checker.check_model(onnx.load(tmp_path / "new" / "folder" / "model.onnx"))  # the folder is created
