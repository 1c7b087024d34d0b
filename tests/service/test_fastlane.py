import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.fastlane import FastLane

from .conftest import PARTICLE, infer_body


def _npy(rows):
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, np.float32))
    return buffer.getvalue()


def test_the_simulate_routes_are_answered_ahead_of_fastapi_routing(tiny_checkpoint):
    """The app's FastLane answers POST /v1/simulate and OIP infer itself: what lies behind it
    (FastAPI's routing, here replaced by an app that records what reaches it) sees only the rest."""
    reached = []

    async def behind(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with TestClient(create_app(Settings(checkpoint=str(tiny_checkpoint), device="cpu")), base_url="http://localhost") as direct:
        lane = direct.app.middleware_stack
        while not isinstance(lane, FastLane):
            lane = lane.app
        lane.app = behind
        r = direct.post("/v1/simulate?seed=1", content=_npy([PARTICLE]), headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 200 and np.array(r.json()["channels"]).shape == (1, 5)
        body, headers = infer_body()
        assert direct.post("/v2/models/zdc-zn/versions/nope/infer", content=body, headers=headers).status_code == 404
        assert direct.post("/v2/models/zdc-zn/infer", content=body, headers=headers).status_code == 200
        assert direct.get("/v1/simulate").status_code == 204 and direct.post("/v1/export").status_code == 204
    assert reached == ["/v1/simulate", "/v1/export"]


def test_the_fast_lane_answers_as_the_routes_would(client):
    npy = {"Content-Type": "application/x-npy", "Accept": "application/octet-stream"}
    r = client.post("/v1/simulate?seed=4&output=channels", content=_npy([PARTICLE] * 2), headers=npy)
    assert r.status_code == 200 and r.headers["x-tensors"] == "channels:float32:2,5" and r.headers["x-seed"] == "4"
    assert r.headers["x-model-name"] == "zdc-zn"  # the metrics/headers middleware sees the lane's answers
    json_answer = client.post("/v1/simulate", json={"particles": [PARTICLE] * 2, "seed": 4, "output": "channels"})
    np.testing.assert_array_equal(np.frombuffer(r.content, "<f4").reshape(2, 5), json_answer.json()["channels"])
    for query, message in [("output=pixels", "query 'output': 'pixels'"), ("extrapolate=perhaps", "query 'extrapolate'"),
                           ("seed=-1", "query 'seed'")]:
        bad = client.post(f"/v1/simulate?{query}", content=_npy([PARTICLE]), headers=npy)
        assert bad.status_code == 422 and message in bad.json()["error"]
    body, headers = infer_body()
    assert client.post("/v2/models/zdc-zn/infer", content=body, headers=headers).status_code == 200
    metrics = client.get("/metrics").text
    assert 'zdc_requests_total{code="422",route="/v1/simulate"}' in metrics
    assert 'zdc_requests_total{code="200",route="/v2/models/{model}/infer"}' in metrics


def test_an_unexpected_failure_in_the_lane_is_a_500_not_a_hang(tiny_checkpoint, monkeypatch):
    import service.native

    async def broken(state, request):
        raise RuntimeError("bug")

    monkeypatch.setattr(service.native, "simulate_response", broken)
    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu")
    with TestClient(create_app(settings), base_url="http://localhost", raise_server_exceptions=False) as c:
        assert c.post("/v1/simulate", json={"particles": [PARTICLE]}).status_code == 500
        assert c.get("/health/live").status_code == 200


def test_the_lane_is_derived_from_the_marked_routes_and_refuses_what_it_cannot_honour():
    from fastapi import FastAPI, Request

    from service.fastlane import fast_routes

    app = FastAPI()

    @app.post("/a/{name}")
    async def plain(name: str, request: Request):
        return {"name": name}

    @app.post("/b")
    async def with_query(request: Request, n: int = 1):
        return {}

    @app.post("/c")
    async def unmarked(request: Request):
        return {}

    plain.fast_lane = True
    assert [r.path for r in fast_routes(app.router.routes)] == ["/a/{name}"]
    with_query.fast_lane = True
    with pytest.raises(ValueError, match="route /b is marked for the fast lane but takes more"):
        fast_routes(app.router.routes)


def test_the_app_marks_exactly_the_simulate_routes(client):
    from service.fastlane import fast_routes

    assert sorted(r.path for r in fast_routes(client.app.router.routes)) == [
        "/v1/simulate", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"]
