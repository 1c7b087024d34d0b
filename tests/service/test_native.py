import io

import numpy as np
import pytest

from zdc_sim import features, geometry
from zdc_sim.simulator import Simulator

from .conftest import PARTICLE


def test_health_and_metadata(client):
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["model"] == "zdc-zn"
    version = ready.json()["model_version"]
    assert len(version) == 12 and ready.headers["x-model-version"] == version
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/health/ready").status_code == 200 and client.get("/v2/health/live").status_code == 200
    meta = client.get("/v2/models/zdc-zn").json()
    assert meta["versions"] == [version] and meta["inputs"][0] == {"name": "FEATURES", "datatype": "FP32", "shape": [-1, 9]}
    assert client.get(f"/v2/models/zdc-zn/versions/{version}/ready").status_code == 200
    assert client.get("/v2/models/zdc-zn/config").json()["max_batch_size"] == 0
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "expected one of ['zdc-zn', 'zdc-zp']" in missing.json()["error"]
    assert client.get("/v2/models/zdc-zn/versions/0/ready").status_code == 404
    models = client.get("/v1/models").json()
    assert models["features"] == list(features.NAMES) and models["detector"] == "zn"
    assert {d: m["response_shape"] for d, m in models["models"].items()} == {"zn": [44, 44], "zp": [30, 56]}


def test_both_detectors_are_served_and_the_zn_is_the_default(client):
    index = client.post("/v2/repository/index").json()
    assert [(m["name"], m["state"]) for m in index] == [("zdc-zn", "READY"), ("zdc-zp", "READY")]
    zp_meta = client.get("/v2/models/zdc-zp").json()
    assert zp_meta["outputs"][0] == {"name": "RESPONSES", "datatype": "FP32", "shape": [-1, 30, 56]}
    assert zp_meta["parameters"]["detector"] == "zp"
    proton = [2510.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2509.8, 938.272, 1.0]  # bent onto the ZP's centre
    zp = client.post("/v1/simulate?detector=zp", json={"particles": [proton, PARTICLE], "seed": 7}).json()
    counts = np.array(zp["responses"], np.float32)
    assert zp["model"] == "zdc-zp" and zp["detector"] == "zp" and counts.shape == (2, 30, 56)
    assert counts[0].sum() > 0 and counts[1].sum() == 0  # the neutron never reaches the ZP
    zn = client.post("/v1/simulate", json={"particles": [proton, PARTICLE], "seed": 7}).json()
    assert np.array(zn["responses"]).shape == (2, 44, 44) and np.array(zn["responses"])[0].sum() == 0
    c_side = [PARTICLE[:3] + [-PARTICLE[3]] + PARTICLE[4:6] + [-PARTICLE[6]] + PARTICLE[7:]]
    mirrored = client.post("/v1/simulate", json={"particles": c_side, "seed": 7}).json()
    a_side = client.post("/v1/simulate", json={"particles": [PARTICLE], "seed": 7}).json()
    assert mirrored["responses"] == a_side["responses"]
    bad = client.post("/v1/simulate?detector=zdc", json={"particles": [PARTICLE]})
    assert bad.status_code == 422 and "expected one of ['zn', 'zp']" in bad.json()["error"]


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



def test_export_route_round_trip_and_bad_upload(client, tmp_path):
    import uproot

    from zdc_sim import export

    from tests.test_export import write_particles

    write_particles(tmp_path / "in.root", n=40)
    r = client.post("/v1/export?seed=3", content=(tmp_path / "in.root").read_bytes())
    assert r.status_code == 200 and r.headers["x-model-version"]
    (tmp_path / "got.root").write_bytes(r.content)
    settings = client.app.state.zdc.settings
    sims = {"zn": Simulator.load(settings.checkpoint, device="cpu"), "zp": Simulator.load(settings.zp_checkpoint, device="cpu")}
    export.export_file(tmp_path / "in.root", tmp_path / "local.root", sims, seed=3, progress=False)
    with uproot.open(tmp_path / "got.root") as got, uproot.open(tmp_path / "local.root") as local:
        for name in ("response_zn", "response_zp", "channels_zp", "reached_zp"):
            np.testing.assert_allclose(got["zdc"][name].array(library="np"), local["zdc"][name].array(library="np"),
                                       rtol=1e-5, err_msg=name)
    only_zp = client.post("/v1/export?seed=3&detectors=zp", content=(tmp_path / "in.root").read_bytes())
    (tmp_path / "zp.root").write_bytes(only_zp.content)
    with uproot.open(tmp_path / "zp.root") as got:
        assert "response_zp" in got["zdc"] and "response_zn" not in got["zdc"]
    bad = client.post("/v1/export", content=b"junk" * 100)
    assert bad.status_code == 422 and "uploaded file" in bad.json()["error"] and "zdc-export-" not in bad.json()["error"]
    big = client.post("/v1/export", content=b"0" * 2048, headers={"Content-Length": str(10**12)})
    assert big.status_code == 413


def test_export_is_capped_in_particles_and_streamed(client, tmp_path):
    """max_export_particles is 50 here: 60 are refused naming the cap, before any is simulated;
    within it the answer is a streamed file and the temporary folder is gone afterwards."""
    import tempfile
    from pathlib import Path

    from tests.test_export import write_particles

    before = {p.name for p in Path(tempfile.gettempdir()).glob("zdc-export-*")}
    write_particles(tmp_path / "many.root", n=60)
    r = client.post("/v1/export", content=(tmp_path / "many.root").read_bytes())
    assert r.status_code == 413
    assert r.json()["error"] == "uploaded file has 60 particles; expected at most 50 per export (max_export_particles)"
    write_particles(tmp_path / "few.root", n=50)
    with client.stream("POST", "/v1/export", content=(tmp_path / "few.root").read_bytes()) as answer:
        assert answer.status_code == 200 and "content-length" in answer.headers  # a file, sent in chunks
        size = sum(len(chunk) for chunk in answer.iter_bytes())
    assert size == int(answer.headers["content-length"]) > 50 * 44 * 44 * 4
    assert {p.name for p in Path(tempfile.gettempdir()).glob("zdc-export-*")} == before


def test_the_served_metadata_shows_no_local_paths_and_no_nan():
    from service.native import servable

    training = {"data": "/home/someone/data/train.root", "out": "runs/sdi", "val_data": "C:\\data\\val.root",
                "lr_g": 2e-4, "regularizer": "sdi", "list": ["/abs/a.root", 1]}
    assert servable(training) == {"data": "train.root", "out": "sdi", "val_data": "val.root", "lr_g": 2e-4,
                                  "regularizer": "sdi", "list": ["a.root", 1]}
    # a class with too few showers has no spread bias: NaN in the checkpoint, null when served
    validation = {"spread_bias": {"hadronic": 0.01, "electromagnetic": float("nan")}, "ws": [1.5, float("inf")]}
    assert servable(validation) == {"spread_bias": {"hadronic": 0.01, "electromagnetic": None}, "ws": [1.5, None]}
