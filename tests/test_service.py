"""The service through the ASGI client, a real uvicorn process driven by tritonclient, and a
bounded schemathesis run against the OpenAPI schema."""

import asyncio
import gzip
import io
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.batcher import DynamicBatcher
from zdc_sim import features, geometry, reference
from zdc_sim.simulator import Simulator

PARTICLE = [2500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2500.0, 939.6, 0.0]


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_batch_size=32,
                        max_particles_per_request=100, max_request_bytes=200_000)
    with TestClient(create_app(settings)) as c:
        yield c


def test_health_and_metadata(client):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["model"] == "zdc-zn"
    version = ready.json()["model_version"]
    assert len(version) == 12 and ready.headers["x-model-version"] == version
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/ready").status_code == 200 and client.get("/v2/health/live").status_code == 200
    meta = client.get("/v2/models/zdc-zn").json()
    assert meta["versions"] == [version] and meta["inputs"][0] == {"name": "FEATURES", "datatype": "FP32", "shape": [-1, 9]}
    assert client.get(f"/v2/models/zdc-zn/versions/{version}/ready").status_code == 200
    assert client.get("/v2/models/zdc-zn/config").json()["max_batch_size"] == 0
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "expected 'zdc-zn'" in missing.json()["error"]
    assert client.get("/v2/models/zdc-zn/versions/0/ready").status_code == 404
    assert client.get("/v1/models").json()["features"] == list(features.NAMES)


def test_simulate_json_rows_columns_and_seed(client):
    rows = client.post("/v1/simulate", json={"particles": [PARTICLE, PARTICLE], "seed": 7}).json()
    assert rows["model"] == "zdc-zn" and rows["particles"] == 2
    counts = np.array(rows["responses"], np.float32)
    assert counts.shape == (2, 44, 44) and (counts >= 0).all()
    np.testing.assert_allclose(np.array(rows["channels"]), geometry.channel_sums(counts), rtol=1e-5)
    columns = {name: [PARTICLE[i]] * 2 for i, name in enumerate(features.NAMES)}
    by_column = client.post("/v1/simulate", json={"columns": columns, "seed": 7, "output": "channels"}).json()
    assert by_column["channels"] == rows["channels"] and "responses" not in by_column
    other = client.post("/v1/simulate", json={"particles": [PARTICLE, PARTICLE], "seed": 8, "output": "channels"}).json()
    assert other["channels"] != rows["channels"]


def test_simulate_binary_in_and_out(client):
    expected = client.post("/v1/simulate", json={"particles": [PARTICLE] * 3, "seed": 5}).json()
    raw = client.post("/v1/simulate", json={"particles": [PARTICLE] * 3, "seed": 5},
                      headers={"Accept": "application/octet-stream"})
    assert raw.headers["x-tensors"] == "responses:float32:3,44,44;channels:float32:3,5"
    body = np.frombuffer(raw.content, "<f4")
    np.testing.assert_array_equal(body[: 3 * 1936].reshape(3, 44, 44), np.array(expected["responses"], np.float32))
    buffer = io.BytesIO()
    np.save(buffer, np.array([PARTICLE] * 3, np.float32))
    npy = client.post("/v1/simulate?seed=5&output=both", content=buffer.getvalue(),
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    f = io.BytesIO(npy.content)
    responses, channels = np.load(f), np.load(f)
    np.testing.assert_array_equal(channels, np.array(expected["channels"], np.float32))
    assert responses.shape == (3, 44, 44)


@pytest.mark.parametrize("body,status,words", [
    ('{"particles": [[2500, 0, 0, 0, 0, 0, 2500, 939.6, NaN]]}', 422, "feature 'charge'"),
    ('{"particles": [[2500, 0, 0, 0, 0, 0, 2500, 939.6, Infinity]]}', 422, "feature 'charge'"),
    ('{"particles": [[1, 2, 3]]}', 422, "shape (N, 9)"),
    ('{"particles": [[-5, 0, 0, 0, 0, 0, 2500, 939.6, 0]]}', 422, "row 0, feature 'energy'"),
    ('{"particles": [[2500, 0, 0, 0, 0, 0, 2500, 939.6, 0]], "output": "pixels"}', 422, "field 'output'"),
    ('{"particles": "abc"}', 422, "field 'particles'"),
    ('{}', 422, "exactly one of 'particles'"),
    ('{"particles": [[2500, 0, 0, 0, 0, 0, 2500, 939.6, 0]], "seed": -1}', 422, "field 'seed'"),
    ('{"columns": {"energy": [1]}}', 422, "missing ['vx'"),
    ('not json', 422, "Invalid JSON"),
    ('{"particles": []}', 422, "found shape (0,)"),
])
def test_bad_requests_get_4xx_naming_the_problem(client, body, status, words):
    r = client.post("/v1/simulate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status and words in r.json()["error"], r.text


def test_limits_413_and_415(client):
    r = client.post("/v1/simulate", json={"particles": [PARTICLE] * 101})
    assert r.status_code == 413 and "at most 100 per request" in r.json()["error"]
    r = client.post("/v1/simulate", content=b"x" * 300_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "at most 200000" in r.json()["error"]
    r = client.post("/v1/simulate", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    r = client.post("/v1/simulate", content=b"\x93NUMPY junk", headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 422 and "not a readable .npy" in r.json()["error"]


def _infer_body(n=2, seed=3, binary=True):
    feats = np.array([PARTICLE] * n, np.float32)
    head = {"inputs": [{"name": "FEATURES", "shape": [n, 9], "datatype": "FP32",
                        "parameters": {"binary_data_size": feats.nbytes}},
                       {"name": "SEED", "shape": [1], "datatype": "INT64", "data": [seed]}],
            "outputs": [{"name": "CHANNELS", "parameters": {"binary_data": binary}}]}
    head = json.dumps(head).encode()
    return head + feats.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_oip_infer_json_binary_and_gzip(client):
    expected = np.array(client.post("/v1/simulate", json={"particles": [PARTICLE] * 2, "seed": 3}).json()["channels"], np.float32)
    body, headers = _infer_body()
    r = client.post("/v2/models/zdc-zn/infer", content=body, headers=headers)
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 5 * 4
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f4").reshape(2, 5), expected)
    zipped = client.post("/v2/models/zdc-zn/infer", content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"})
    assert zipped.content == r.content
    body, headers = _infer_body(binary=False)
    r = client.post("/v2/models/zdc-zn/infer", content=body, headers=headers)
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 5), expected)


@pytest.mark.parametrize("change,words", [
    (lambda h: h["inputs"][0].update(datatype="BYTES"), "datatype 'BYTES'"),
    (lambda h: h["inputs"][0].update(shape=[3, 9]), "binary_data_size"),
    (lambda h: h["inputs"][1].update(data=[-4]), "input 'SEED'"),
    (lambda h: h["inputs"][0].update(name="X"), "expected FEATURES"),
    (lambda h: h["inputs"][0].update(datatype="FP64", parameters=None, data=[PARTICLE] * 2),
     "input 'FEATURES': datatype must be FP32"),
    (lambda h: h["outputs"][0].update(name="IMAGES"), "output 'IMAGES'"),
])
def test_oip_bad_inputs(client, change, words):
    feats = np.array([PARTICLE] * 2, np.float32)
    head = {"inputs": [{"name": "FEATURES", "shape": [2, 9], "datatype": "FP32", "parameters": {"binary_data_size": feats.nbytes}},
                       {"name": "SEED", "shape": [1], "datatype": "INT64", "data": [1]}],
            "outputs": [{"name": "CHANNELS"}]}
    change(head)
    raw = json.dumps(head).encode()
    r = client.post("/v2/models/zdc-zn/infer", content=raw + feats.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(raw))})
    assert 400 <= r.status_code < 500 and words in r.json()["error"], r.text


def test_metrics_count_requests_batches_and_particles(client):
    client.post("/v1/simulate", json={"particles": [PARTICLE] * 4, "seed": 1})
    client.post("/v1/simulate", json={"particles": [[1.0]]})
    text = client.get("/metrics").text
    assert 'zdc_requests_total{code="200",route="/v1/simulate"}' in text
    assert "zdc_batch_size_bucket" in text and "zdc_queue_duration_seconds_count" in text
    particles = [l for l in text.splitlines() if l.startswith("zdc_particles_simulated_total")]
    assert float(particles[0].split()[-1]) >= 4
    assert 'zdc_request_failures_total{code="422",route="/v1/simulate"}' in text
    pending = [l for l in text.splitlines() if l.startswith("zdc_pending_particles{")]
    assert len(pending) == 1 and float(pending[0].split()[-1]) == 0.0  # nothing queued between requests


def _small_simulator(path):
    return Simulator.load(path, device="cpu", batch_size=8)


def test_batching_coalesces_splits_and_keeps_seeded_outputs(tiny_checkpoint):
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(24, np.random.default_rng(1))[0])
    slices = [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12), slice(12, 24)]  # the last is split: 8 + 4
    alone = [sim.simulate(feats[s], seed=i).channels for i, s in enumerate(slices)]
    batches = []

    async def run(enabled):
        batcher = DynamicBatcher(sim, max_batch_size=8, max_queue_delay_ms=50, max_queue_particles=100,
                                 enabled=enabled, observe=lambda batch, **kw: batches.append(batch))
        batcher.start()
        results = await asyncio.gather(*(batcher.simulate(feats[s], sim.latents(s.stop - s.start, i))
                                         for i, s in enumerate(slices)))
        await batcher.stop()
        return results

    results = asyncio.run(run(True))
    assert sum(batches) == 24 and max(batches) <= 8 and len(batches) < 6  # coalesced, never above the max
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got.channels, want, rtol=1e-5)
    assert results[-1].channels.shape == (12, 5)
    batches.clear()
    asyncio.run(run(False))
    assert batches == [3, 3, 3, 3, 8, 4]


def test_stopping_the_batcher_finishes_what_is_queued(tiny_checkpoint):
    sim = _small_simulator(tiny_checkpoint)
    feats = features.validate(reference.sample_particles(40, np.random.default_rng(2))[0])

    async def run():
        batcher = DynamicBatcher(sim, max_batch_size=4, max_queue_delay_ms=20, max_queue_particles=100)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.simulate(feats[i : i + 10], sim.latents(10, i))) for i in range(0, 40, 10)]
        await asyncio.sleep(0)  # the requests are queued, none is done
        await batcher.stop()
        return [t.result() for t in tasks]

    assert [r.channels.shape for r in asyncio.run(run())] == [(10, 5)] * 4


def test_full_queue_answers_503_with_retry_after(tiny_checkpoint, tmp_path):
    from .test_export import write_particles

    write_particles(tmp_path / "in.root", n=11)
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_queue_particles=10)
    with TestClient(create_app(settings)) as c:
        body, headers = _infer_body(n=11)
        answers = [c.post("/v1/simulate", json={"particles": [PARTICLE] * 11}),
                   c.post("/v2/models/zdc-zn/infer", content=body, headers=headers),
                   c.post("/v1/export", content=(tmp_path / "in.root").read_bytes())]
        for r in answers:
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.url
            assert "Exceeds maximum queue size" in r.json()["error"]


def test_settings_from_environment():
    s = Settings.from_env({"ZDC_SIM_MAX_BATCH_SIZE": "512", "ZDC_SIM_DEVICE": "cpu"}, port=9000)
    assert (s.max_batch_size, s.device, s.port) == (512, "cpu", 9000)
    with pytest.raises(Exception, match="max_batch_size"):
        Settings.from_env({"ZDC_SIM_MAX_BATCH_SIZE": "0"})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zdc_sim", "serve", "--port", str(port), "--checkpoint",
                             str(tiny_checkpoint), "--device", "cpu", "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("server did not become ready")
    yield port
    proc.terminate()
    # uvicorn drains, then re-raises the SIGTERM it caught, so the exit status names the signal
    assert proc.wait(30) in (0, -signal.SIGTERM)


def test_tritonclient_json_and_binary(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("zdc-zn")
    assert client.get_model_metadata("zdc-zn")["outputs"][0]["name"] == "RESPONSES"
    feats = np.array([PARTICLE] * 3, np.float32)
    expected = httpx.post(f"http://127.0.0.1:{server}/v1/simulate", json={"particles": feats.tolist(), "seed": 11}).json()
    for binary in (True, False):
        inputs = [triton.InferInput("FEATURES", [3, 9], "FP32"), triton.InferInput("SEED", [1], "INT64")]
        inputs[0].set_data_from_numpy(feats, binary_data=binary)
        inputs[1].set_data_from_numpy(np.array([11], np.int64), binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("RESPONSES", "CHANNELS")]
        result = client.infer("zdc-zn", inputs, outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("CHANNELS"), np.array(expected["channels"], np.float32))
        np.testing.assert_array_equal(result.as_numpy("RESPONSES"), np.array(expected["responses"], np.float32))
    # no outputs named: the client asks for all of them in binary
    inputs[0].set_data_from_numpy(feats, binary_data=True)
    assert client.infer("zdc-zn", inputs).as_numpy("RESPONSES").shape == (3, 44, 44)
    with pytest.raises(Exception, match="feature 'energy'"):
        bad = triton.InferInput("FEATURES", [1, 9], "FP32")
        bad.set_data_from_numpy(np.array([[-1] + PARTICLE[1:]], np.float32))
        client.infer("zdc-zn", [bad])


def test_schemathesis_finds_no_server_errors(tiny_checkpoint):
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    app = create_app(Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_particles_per_request=50))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # each call runs the app's lifespan
    failures, calls = [], []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call()
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))

        check()
    assert not failures, failures
    assert len(calls) > 100 and any(400 <= c < 500 for c in calls) and 200 in calls


def test_export_route_round_trip_and_bad_upload(client, tmp_path):
    import uproot

    from zdc_sim import export

    from .test_export import write_particles

    write_particles(tmp_path / "in.root", n=40)
    r = client.post("/v1/export?seed=3", content=(tmp_path / "in.root").read_bytes())
    assert r.status_code == 200 and r.headers["x-model-version"]
    (tmp_path / "got.root").write_bytes(r.content)
    sim = Simulator.load(client.app.state.zdc.settings.checkpoint, device="cpu")
    export.export_file(tmp_path / "in.root", tmp_path / "local.root", sim, seed=3, progress=False)
    with uproot.open(tmp_path / "got.root") as got, uproot.open(tmp_path / "local.root") as local:
        np.testing.assert_allclose(got["zdc"]["response"].array(library="np"),
                                   local["zdc"]["response"].array(library="np"), rtol=1e-5)
    bad = client.post("/v1/export", content=b"junk" * 100)
    assert bad.status_code == 422 and "uploaded file" in bad.json()["error"] and "zdc-export-" not in bad.json()["error"]
    big = client.post("/v1/export", content=b"0" * 2048, headers={"Content-Length": str(10**12)})
    assert big.status_code == 413
