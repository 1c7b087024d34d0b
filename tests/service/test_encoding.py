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


def test_a_compressed_body_is_capped_at_the_body_limit_once_decompressed(client):
    """200 kB limit: a 20 MB gzip bomb (~20 kB on the wire) is refused while it decompresses, as
    is deflate; a truncated or broken stream is a 400, an unknown encoding a 415."""
    import gzip
    import time
    import zlib

    for encoding, packed in (("gzip", gzip.compress(bytes(20 << 20))), ("deflate", zlib.compress(bytes(20 << 20)))):
        started = time.perf_counter()
        r = client.post("/v2/models/zdc-zn/infer", content=packed, headers={"Content-Encoding": encoding})
        assert r.status_code == 413 and time.perf_counter() - started < 2, r.text
        assert (f"request body of {len(packed)} bytes {encoding} decompresses to more than 200000 bytes; "
                f"expected at most 200000 bytes decompressed") in r.json()["error"]
    good = gzip.compress(json.dumps({"inputs": [{"name": "FEATURES", "shape": [1, 9], "datatype": "FP32",
                                                 "data": PARTICLE}]}).encode())
    assert client.post("/v2/models/zdc-zn/infer", content=good, headers={"Content-Encoding": "gzip"}).status_code == 200
    for body, status, words in ((good[:-12], 400, "ends early"), (b"not gzip", 400, "does not decompress")):
        r = client.post("/v2/models/zdc-zn/infer", content=body, headers={"Content-Encoding": "gzip"})
        assert r.status_code == status and words in r.json()["error"]
    r = client.post("/v2/models/zdc-zn/infer", content=good, headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and "expected gzip, deflate or none" in r.json()["error"]


def test_too_many_json_values_are_413_before_any_is_parsed(client):
    """100 particles per request: 1,000 rows are refused on their count, even though every row
    is invalid too (the values are never validated)."""
    body = json.dumps({"particles": [[1.0] * 9] * 1000}).encode()
    r = client.post("/v1/simulate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "holds about 9000 JSON values; expected at most 964" in r.json()["error"]
    r = client.post("/v1/simulate", content=json.dumps({"particles": [[1.0] * 9] * 90}).encode())
    assert r.status_code == 422  # within the count: validated, and refused for what it holds


def test_bodies_held_by_all_requests_together_are_capped(tiny_checkpoint):
    from fastapi.testclient import TestClient

    from service import Settings, create_app

    settings = Settings(checkpoint=str(tiny_checkpoint), device="cpu", max_buffered_bytes=4096)
    with TestClient(create_app(settings), base_url="http://localhost") as c:
        small = {"particles": [PARTICLE], "seed": 1}
        assert c.post("/v1/simulate", json=small).status_code == 200
        r = c.post("/v1/simulate", json={"particles": [PARTICLE] * 100})  # ~6 kB
        assert r.status_code == 503 and "would exceed the limit of 4096 (max_buffered_bytes)" in r.json()["error"]
        assert r.headers["retry-after"] == "1"
        assert c.app.state.zdc.buffered_bytes == 0  # what each request held was let go
        assert c.post("/v1/simulate", json=small).status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_408():
    import asyncio

    from starlette.requests import Request

    from service.encoding import receive_body
    from service.errors import ServiceError

    async def trickle():
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    request = Request({"type": "http", "method": "POST", "headers": [(b"content-length", b"1000")]}, trickle)
    kept = []
    with pytest.raises(ServiceError) as refused:
        asyncio.run(receive_body(request, 10_000, 0.3, kept.append))
    assert refused.value.status == 408 and 0 < len(kept) < 10
    assert "request body not received within 0.3 s" in refused.value.message and "of 1000)" in refused.value.message
