import gzip
import json

import httpx
import numpy as np
import pytest

from .conftest import PARTICLE, infer_body


def test_oip_infer_json_binary_and_gzip(client):
    expected = np.array(client.post("/v1/simulate", json={"particles": [PARTICLE] * 2, "seed": 3}).json()["channels"], np.float32)
    body, headers = infer_body()
    r = client.post("/v2/models/zdc-zn/infer", content=body, headers=headers)
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 2 * 5 * 4
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f4").reshape(2, 5), expected)
    zipped = client.post("/v2/models/zdc-zn/infer", content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"})
    assert zipped.content == r.content
    body, headers = infer_body(binary=False)
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


def test_tritonclient_json_and_binary(server):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("zdc-zn")
    assert client.get_model_metadata("zdc-zn")["outputs"][0]["name"] == "RESPONSES"
    feats = np.array([PARTICLE] * 3, np.float32)
    expected = httpx.post(f"{server.url}/v1/simulate", json={"particles": feats.tolist(), "seed": 11}).json()
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




INT64_EDGES = [0, 1, 9, 100, 101, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, 2**70, -1, -(2**63)]


def test_shapes_and_sizes_at_the_int64_limits_are_json_4xx(client):
    """Every declared shape, however it overflows a machine integer, is a JSON 4xx naming the
    input (an overflowing product was once a plain-text 500)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    dims = st.sampled_from(INT64_EDGES) | st.integers(-(2**80), 2**80)

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(shape=st.lists(dims, min_size=0, max_size=4), data=st.sampled_from([[], [0.0] * 9, None]),
           binary_size=st.sampled_from([None, 0, 36, 2**63 - 1, 2**64]), name=st.sampled_from(["FEATURES", "SEED"]))
    def check(shape, data, binary_size, name):
        tensor = {"name": name, "datatype": "FP32" if name == "FEATURES" else "INT64", "shape": shape}
        if data is not None:
            tensor["data"] = data
        if binary_size is not None:
            tensor["parameters"] = {"binary_data_size": binary_size}
        head = json.dumps({"inputs": [tensor]}).encode()
        r = client.post("/v2/models/zdc-zn/infer", content=head + bytes(36),
                        headers={"Inference-Header-Content-Length": str(len(head))})
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", (shape, r.text)
        assert "error" in r.json()

    check()
    r = client.post("/v2/models/zdc-zn/infer", json={"inputs": [{"name": "FEATURES", "datatype": "FP32",
                                                                 "shape": [4294967296, 4294967296], "data": []}]})
    assert r.status_code == 413 and "holds 18446744073709551616 values; expected at most 900" in r.json()["error"]
