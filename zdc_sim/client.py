"""A Simulator that runs elsewhere: `RemoteSimulator(url).simulate(features, seed)` returns what
`Simulator.simulate` returns, computed by a zdc-sim server or by NVIDIA Triton serving the
repository of `zdc-sim model export --format triton`, over the binary Open Inference Protocol v2.

For one seed the answer equals the local Simulator's: a zdc-sim server draws the random inputs of
the rows it is sent (the request names the seed and, for a large input split into requests, the
first row); for Triton they are drawn here, in the same seeded blocks, and sent along. Only the
standard library is used (http.client, one kept-alive connection per thread: a new connection per
request costs a round trip and a handshake, a noticeable share of a single particle's request), so a
pipeline needs nothing beyond zdc-sim itself.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

import numpy as np

from . import features, geometry
from .errors import DomainError, FeatureError, ZdcError
from .geometry import N_CHANNELS
from .engines import random_seed, seeded_normals
from .exports.onnx import random_feeds
from .simulator import Simulation

HEADER = "Inference-Header-Content-Length"


class ServerError(ZdcError):
    """The server refused a request or could not be reached; names the URL, status and its message."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RemoteSimulator:
    """`simulate(features, seed=None, extrapolate=False) -> Simulation` against `url`.

    Inputs larger than `max_particles` (default: what the server accepts per request) are sent as
    several requests; a 503 is retried after its Retry-After, at most `retries` times; a 4xx raises
    FeatureError / DomainError (422) or ServerError with the server's message. `token`: the
    server's api_token, sent as "Authorization: Bearer <token>" with every request."""

    def __init__(self, url: str, model: str = "zdc-zn", *, max_particles: int | None = None, retries: int = 5,
                 timeout_s: float = 120.0, triton: bool | None = None, token: str | None = None):
        self.url, self.model, self.retries, self.timeout_s = url.rstrip("/"), model, retries, timeout_s
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ZdcError(f"server URL '{url}'; expected http://host[:port] or https://host[:port]")
        self._address = parts
        self._local = threading.local()  # one connection per thread: http.client is not thread-safe
        meta = self._json("GET", f"/v2/models/{model}")
        names = {tensor["name"]: tensor for tensor in meta["inputs"]}
        self.model_version = meta.get("versions", ["unknown"])[0]
        outputs = {tensor["name"]: tensor for tensor in meta.get("outputs", [])}
        self.shape = tuple(outputs["RESPONSES"]["shape"][1:])  # the detector's image (rows, columns)
        # Triton's repository takes the random inputs; a zdc-sim server takes a seed and draws them.
        self.triton = "LATENTS" in names if triton is None else triton
        self.latent_dim = names["LATENTS"]["shape"][-1] if self.triton else None
        self.noise_dim = names["PHOTON_NOISE"]["shape"][-1] if self.triton and "PHOTON_NOISE" in names else 0
        if max_particles is None:
            config = self._json("GET", f"/v2/models/{model}/config")
            max_particles = config.get("max_batch_size") or None
            if not max_particles:  # a zdc-sim server: its own limit per request
                max_particles = self._json("GET", "/v1/models").get("max_particles_per_request", 4096)
        self.max_particles = int(max_particles)

    def simulate(self, particle_features, seed: int | None = None, *, extrapolate: bool = False) -> Simulation:
        raw = features.validate(particle_features)
        if seed is None:  # one seed for every piece, so a split input is one draw
            seed = random_seed()
        pieces = [self._infer(raw[i : i + self.max_particles], seed, i, extrapolate)
                  for i in range(0, len(raw), self.max_particles)]
        counts = np.concatenate([p[0] for p in pieces]) if pieces else np.empty((0, *self.shape), np.float32)
        channels = np.concatenate([p[1] for p in pieces]) if pieces else np.empty((0, N_CHANNELS), np.float32)
        return Simulation(counts, channels, geometry.reaches(raw, geometry.for_shape(self.shape)))

    def _infer(self, raw: np.ndarray, seed: int, start: int, extrapolate: bool) -> tuple[np.ndarray, np.ndarray]:
        n = len(raw)
        tensors = {"FEATURES": ("FP32", raw.astype("<f4"))}
        parameters: dict = {"binary_data_output": True}
        if self.triton:
            random = seeded_normals(n, self.latent_dim + self.noise_dim, seed, start)
            tensors.update({name: ("FP32", values.astype("<f4", copy=False)) for name, values in
                            random_feeds(random, self.latent_dim, self.noise_dim > 0).items()})
        else:
            tensors["SEED"] = ("INT64", np.array([seed], "<i8"))
            parameters.update(row_start=start, extrapolate=extrapolate)
        head = {"inputs": [{"name": name, "datatype": kind, "shape": list(array.shape),
                            "parameters": {"binary_data_size": array.nbytes}} for name, (kind, array) in tensors.items()],
                "outputs": [{"name": "RESPONSES", "parameters": {"binary_data": True}},
                            {"name": "CHANNELS", "parameters": {"binary_data": True}}],
                "parameters": parameters}
        header = json.dumps(head).encode()
        body = header + b"".join(array.tobytes() for _, array in tensors.values())
        answer, headers = self._request("POST", f"/v2/models/{self.model}/infer", body,
                                        {"Content-Type": "application/octet-stream", HEADER: str(len(header))})
        length = int(headers.get(HEADER, len(answer)))
        outputs, offset, arrays = json.loads(answer[:length])["outputs"], length, {}
        for out in outputs:
            size = out["parameters"]["binary_data_size"]
            arrays[out["name"]] = np.frombuffer(answer[offset : offset + size], "<f4").reshape(out["shape"]).copy()
            offset += size
        return arrays["RESPONSES"], arrays["CHANNELS"]

    def _json(self, method: str, path: str) -> dict:
        return json.loads(self._request(method, path)[0])

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._address.scheme == "https" else http.client.HTTPConnection
            connection = kind(self._address.hostname, self._address.port, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, object]:
        """(status, body, headers) of one request on this thread's kept-alive connection; sent once
        more on a new connection when the server had closed the idle one (every request here is
        idempotent: the seed is fixed before the first)."""
        try:
            return self._exchange(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            return self._exchange(method, path, body, headers)

    def _exchange(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes, object]:
        connection = self._connection()
        connection.request(method, self._address.path + path, body, headers)
        response = connection.getresponse()
        answer = response.status, response.read(), response.headers
        if response.will_close:
            self.close()
        return answer

    def close(self) -> None:
        """Close this thread's connection (a later request opens a new one)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(body, headers) of a 2xx answer, after retrying 503s; ServerError / FeatureError otherwise."""
        where = f"{method} {self.url}{path}"
        for attempt in range(self.retries + 1):
            try:
                status, data, answer_headers = self._send(method, path, body, {**self._auth, **(headers or {})})
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ServerError(f"{where}: the server cannot be reached ({exc}); expected a zdc-sim or Triton "
                                  f"server at {self.url}") from None
            if status < 300:
                return data, answer_headers  # case-insensitive
            text = data.decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            if status == 503 and attempt < self.retries:
                time.sleep(min(float(answer_headers.get("Retry-After", "1") or 1), 10.0))
                continue
            if status == 422 and "outside the range the model was trained on" in message:
                raise DomainError(f"{message} ({where})")
            if status == 422:
                raise FeatureError(f"{message} ({where})")
            retried = f" after {self.retries} retries" if status == 503 else ""
            raise ServerError(f"{where} answered {status}{retried}: {message}", status)
