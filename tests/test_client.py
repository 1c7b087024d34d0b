import time

import numpy as np
import pytest

from service.process import ServerProcess as Server
from zdc_sim import reference
from zdc_sim.client import RemoteSimulator, ServerError
from zdc_sim.errors import DomainError, FeatureError, ZdcError
from zdc_sim.simulator import Simulator


def test_remote_simulator_equals_the_local_one_for_a_seed(server, tiny_checkpoint):
    local = Simulator.load(tiny_checkpoint, engine="onnxruntime")  # the server's engine on CPU (auto)
    x, _ = reference.sample_particles(20, np.random.default_rng(8))
    want = local.simulate(x, seed=42)
    remote = RemoteSimulator(server.url)
    assert not remote.triton and remote.model_version == local.model_version
    got = remote.simulate(x, seed=42)
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.channels, want.channels)
    split = RemoteSimulator(server.url, max_particles=7).simulate(x, seed=42)  # three requests, rows 0, 7, 14
    np.testing.assert_array_equal(split.counts, want.counts)
    assert RemoteSimulator(server.url).simulate(x[:3]).counts.shape == (3, 44, 44)  # seed drawn here


def test_remote_simulator_of_the_zp(server, tiny_zp_checkpoint):
    local = Simulator.load(tiny_zp_checkpoint, engine="onnxruntime")
    x, _ = reference.sample_particles(60, np.random.default_rng(8))
    remote = RemoteSimulator(server.url, model="zdc-zp")
    assert remote.shape == (30, 56) and remote.model_version == local.model_version
    got, want = remote.simulate(x, seed=4, extrapolate=True), local.simulate(x, seed=4, extrapolate=True)
    assert want.reached.any() and got.reached.tolist() == want.reached.tolist()
    np.testing.assert_array_equal(got.counts, want.counts)


def test_remote_errors_are_the_projects_errors(server):
    remote = RemoteSimulator(server.url)
    far = np.array([[1e30, 0, 0, 0, 0, 0, 1e30, 939.6, 0]], np.float32)
    with pytest.raises(DomainError, match="feature 'energy' is 1e\\+30 GeV, outside the range"):
        remote.simulate(far, seed=1)
    assert np.isfinite(remote.simulate(far, seed=1, extrapolate=True).channels).all()
    with pytest.raises(FeatureError, match="feature 'energy'"):
        remote.simulate([[-1, 0, 0, 0, 0, 0, 10, 939.6, 0]])  # refused before any request
    with pytest.raises(ServerError, match="cannot be reached"):
        RemoteSimulator("http://127.0.0.1:9")


def test_remote_simulator_retries_503_then_gives_up(tiny_checkpoint):
    busy = Server("--checkpoint", str(tiny_checkpoint), "--device", "cpu", env={"ZDC_SIM_MAX_QUEUE_PARTICLES": "5"})
    with busy.running():
        remote = RemoteSimulator(busy.url, max_particles=6, retries=2)
        x, _ = reference.sample_particles(6, np.random.default_rng(1))
        with pytest.raises(ServerError, match="answered 503 after 2 retries: Exceeds maximum queue size") as error:
            remote.simulate(x, seed=1)
        assert error.value.status == 503


def test_one_kept_alive_connection_per_thread_and_a_closed_one_is_replaced(server):
    from concurrent.futures import ThreadPoolExecutor

    remote = RemoteSimulator(server.url)
    x, _ = reference.sample_particles(4, np.random.default_rng(9))
    first = remote.simulate(x, seed=5)
    connection = remote._connection()
    np.testing.assert_array_equal(remote.simulate(x, seed=5).counts, first.counts)
    assert remote._connection() is connection  # the same connection served both
    time.sleep(1.5)  # past the server's keep-alive timeout (1 s here): it drops the idle connection
    np.testing.assert_array_equal(remote.simulate(x, seed=5).counts, first.counts)
    assert remote._connection() is not connection
    with ThreadPoolExecutor(4) as pool:  # http.client connections are not shared between threads
        answers = list(pool.map(lambda seed: remote.simulate(x, seed=seed).counts, [5] * 8))
    for counts in answers:
        np.testing.assert_array_equal(counts, first.counts)
    with pytest.raises(ZdcError, match="expected http://host"):
        RemoteSimulator("ftp://example.org")
