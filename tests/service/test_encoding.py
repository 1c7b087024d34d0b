import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from .conftest import PARTICLE


@pytest.mark.parametrize("factor", [1.05, 3.9])
def test_oversized_body_from_urllib_gets_413_not_a_reset(server, factor):
    """urllib sends the whole body before reading the answer: the server must read what it
    refuses (up to 4x the limit, 16 MiB here) for the client to see the 413 and its message."""
    size = int(factor * (16 << 20))
    request = urllib.request.Request(f"{server.url}/v1/simulate?seed=1", data=b"\0" * size, method="POST",
                                     headers={"Content-Type": "application/x-npy"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 413
    message = json.loads(answer.value.read())["error"]
    assert f"request body is {size} bytes; expected at most {16 << 20}" in message
    # the server is still there for the next request
    ok = urllib.request.urlopen(urllib.request.Request(
        f"{server.url}/v1/simulate", data=json.dumps({"particles": [PARTICLE], "seed": 1}).encode(),
        headers={"Content-Type": "application/json"}), timeout=30)
    assert np.array(json.loads(ok.read())["channels"]).shape == (1, 5)


def test_binary_answers_name_their_tensors(client):
    r = client.post("/v1/simulate", json={"particles": [PARTICLE] * 2, "seed": 1, "output": "channels"},
                    headers={"Accept": "application/octet-stream"})
    assert r.headers["x-tensors"] == "channels:float32:2,5" and len(r.content) == 2 * 5 * 4
