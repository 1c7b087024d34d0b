"""Shared by the service tests: an app on the tiny model, in process (the real uvicorn server is the
`server` fixture of tests/conftest.py)."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app

PARTICLE = [2500.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2500.0, 939.6, 0.0]


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tiny_zp_checkpoint):
    """Both detectors served: the tiny ZN model and the tiny ZP one."""
    settings = Settings(checkpoint=str(tiny_checkpoint), zp_checkpoint=str(tiny_zp_checkpoint), device="cpu", max_batch_size=32,
                        max_particles_per_request=100, max_request_bytes=200_000, max_export_particles=50)
    with TestClient(create_app(settings), base_url="http://localhost") as c:
        yield c


def infer_body(n=2, seed=3, binary=True):
    feats = np.array([PARTICLE] * n, np.float32)
    head = {"inputs": [{"name": "FEATURES", "shape": [n, 9], "datatype": "FP32",
                        "parameters": {"binary_data_size": feats.nbytes}},
                       {"name": "SEED", "shape": [1], "datatype": "INT64", "data": [seed]}],
            "outputs": [{"name": "CHANNELS", "parameters": {"binary_data": binary}}]}
    head = json.dumps(head).encode()
    return head + feats.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
