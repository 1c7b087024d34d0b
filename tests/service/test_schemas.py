import json

import pytest

from service.errors import ServiceError
from service.schemas import MAX_SEED, check_seed

from .conftest import PARTICLE, infer_body


def test_one_seed_rule():
    assert check_seed(None, "x") is None and check_seed(0, "x") == 0 and check_seed(MAX_SEED, "x") == MAX_SEED
    for bad in (-1, MAX_SEED + 1, "seven", 1.5):
        with pytest.raises(ServiceError, match=f"where: seed .*; expected an integer from 0 to {MAX_SEED}"):
            check_seed(bad, "where")


def test_every_route_applies_the_seed_rule(client):
    answers = {
        "query": client.post(f"/v1/simulate?seed={MAX_SEED + 1}", json={"particles": [PARTICLE]}),
        "json": client.post("/v1/simulate", json={"particles": [PARTICLE], "seed": MAX_SEED + 1}),
        "export": client.post("/v1/export?seed=-3", content=b"x"),
    }
    body, headers = infer_body(seed=0)
    head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    head["inputs"][1]["datatype"], head["inputs"][1]["data"] = "UINT64", [MAX_SEED + 1]
    raw = json.dumps(head).encode()
    answers["oip"] = client.post("/v2/models/zdc-zn/infer", content=raw + body[len(body) - 2 * 9 * 4:],
                                 headers={"Inference-Header-Content-Length": str(len(raw))})
    for where, r in answers.items():
        assert r.status_code == 422 and "seed" in r.json()["error"], (where, r.text)
    assert "query 'seed'" in answers["query"].json()["error"]
    assert "input 'SEED'" in answers["oip"].json()["error"]
