import json

import numpy as np

from .conftest import PARTICLE, infer_body

HUGE = [1e30, 0.0, 0.0, 0.0, 0.0, 0.0, 1e30, 939.6, 0.0]  # a 1e30 GeV neutron


def test_particles_outside_the_trained_ranges_are_refused_unless_asked_for(client):
    r = client.post("/v1/simulate", json={"particles": [PARTICLE, HUGE]})
    message = r.json()["error"]
    assert r.status_code == 422 and "particles: row 1, feature 'energy' is 1e+30 GeV" in message
    assert "outside the range the model was trained on" in message and "extrapolate" in message
    ok = client.post("/v1/simulate", json={"particles": [PARTICLE, HUGE], "extrapolate": True, "seed": 1})
    assert ok.status_code == 200 and np.isfinite(ok.json()["channels"]).all()
    npy_query = client.post("/v1/simulate?extrapolate=true", json={"particles": [HUGE]})
    assert npy_query.status_code == 422  # JSON bodies carry their own options: the query does not apply

    body, headers = infer_body(n=1)
    head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    feats = np.array([HUGE], np.float32).tobytes()
    for parameters, status in (({}, 422), ({"extrapolate": True}, 200), ({"extrapolate": "yes"}, 422)):
        head["parameters"] = parameters
        raw = json.dumps(head).encode()
        r = client.post("/v2/models/zdc-zn/infer", content=raw + feats,
                        headers={"Inference-Header-Content-Length": str(len(raw))})
        assert r.status_code == status, (parameters, r.text)
        if status == 422:
            assert "'FEATURES'" in r.json()["error"] or "extrapolate" in r.json()["error"]


def test_model_metadata_publishes_the_trained_ranges(client):
    ranges = client.get("/v1/models").json()["feature_ranges"]
    assert ranges["names"][0] == "energy" and ranges["low"][0] < 100 < 2500 < 10000 < ranges["high"][0] < 20000  # alphas: 4 x 2.5 TeV
