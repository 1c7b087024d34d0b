import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from service.encoding import _npy_array, npy_features
from zdc_sim.errors import ZdcError

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


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("array", [np.full((3, 9), 1.5, np.float32), np.asfortranarray(np.arange(36.0).reshape(4, 9)),
                                   np.arange(18, dtype=">i8").reshape(2, 9), np.zeros((0, 9))])
def test_npy_bodies_read_as_numpy_reads_them(array, version):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    body = buffer.getvalue()
    for _ in range(2):  # the second read takes the parsed header from the cache
        got = _npy_array(body)
        want = np.load(io.BytesIO(body))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_broken_npy_bodies_are_named():
    good = io.BytesIO()
    np.save(good, np.ones((2, 9), np.float32))
    pickled = io.BytesIO()
    np.save(pickled, np.array([[1, None]], object), allow_pickle=True)
    cases = {b"PK\x03\x04 a zip": "magic", good.getvalue()[:9]: "header needs", good.getvalue()[:-4]: "needs 72 data bytes",
             good.getvalue() + b"\0" * 4: "found 76", pickled.getvalue(): "object arrays"}
    for body, reason in cases.items():
        with pytest.raises(ZdcError, match="not a readable .npy") as err:
            npy_features(body)
        assert reason in str(err.value)
