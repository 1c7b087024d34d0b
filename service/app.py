"""The FastAPI app: `create_app(settings)`.

Routes: native `POST /v1/simulate` (JSON or .npy in, JSON or binary out), the Open Inference
Protocol v2 (`service.oip`), `POST /v1/export` (ROOT in, ROOT out), `/health/live`,
`/health/ready`, `/metrics`. Every answer carries the model name and version (X-Model-Name,
X-Model-Version headers; JSON bodies name them too). Every error a client can cause is a 4xx
with {"error": message} naming the field and the rule; a full queue (QueueFull, from wherever the
batcher is called) is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from zdc_sim import __version__, features
from zdc_sim import io as io_module
from zdc_sim.export import export_file
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import Simulation, Simulator

from .batcher import DynamicBatcher, QueueFull
from .metrics import Metrics
from .settings import Settings

NPY = "application/x-npy"
OCTET = "application/octet-stream"
MAX_SEED = 2**63 - 1


class ServiceError(Exception):
    """An error answered as {"error": message} with this HTTP status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class SimulateRequest(BaseModel, extra="forbid"):
    """Particles as rows of the 9 features (energy GeV, vx vy vz m, px py pz GeV, mass MeV, charge e),
    or as named columns of equal length."""

    particles: list[list[float]] | None = Field(None, description="N rows of 9 features")
    columns: dict[str, list[float]] | None = Field(None, description="the 9 features by name, equal lengths")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same responses")
    output: Literal["responses", "channels", "both"] = "both"

    @model_validator(mode="after")
    def _one_input(self):
        if (self.particles is None) == (self.columns is None):
            raise ValueError("give exactly one of 'particles' (N x 9 rows) or 'columns' (feature name -> values)")
        return self


class ServiceState:
    """What the routes share: settings, and once loaded the simulator, batcher and metrics."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.simulator: Simulator | None = None
        self.batcher: DynamicBatcher | None = None
        self.metrics: Metrics | None = None
        self.ready = False

    @property
    def version(self) -> str:
        return self.simulator.model_version if self.simulator else "unloaded"

    def require_ready(self) -> None:
        if not self.ready:
            raise ServiceError(503, "the model is not loaded yet; retry once /health/ready answers 200",
                               {"Retry-After": "1"})

    async def simulate(self, raw: np.ndarray, seed: int | None) -> Simulation:
        """Through the batcher; a full queue raises QueueFull, answered 503 by the app's handler."""
        self.require_ready()
        n, limit = len(raw), self.settings.max_particles_per_request
        if n > limit:
            raise ServiceError(413, f"request has {n} particles; expected at most {limit} per request")
        if n == 0:
            raise ServiceError(422, "request has 0 particles; expected at least 1")
        return await self.batcher.simulate(raw, self.simulator.latents(n, seed))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body is {declared} bytes; expected at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds {limit} bytes; expected at most {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def validation_message(exc: ValidationError | RequestValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"field '{prefix}{where}': {error['msg']}")
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def _features_from_request(req: SimulateRequest) -> np.ndarray:
    if req.particles is not None:
        return features.validate(req.particles, source="particles")
    missing = [n for n in features.NAMES if n not in req.columns]
    extra = sorted(set(req.columns) - set(features.NAMES))
    if missing or extra:
        raise ZdcError(f"columns: missing {missing}, unknown {extra}; expected exactly {list(features.NAMES)}")
    lengths = {len(v) for v in req.columns.values()}
    if len(lengths) != 1:
        raise ZdcError(f"columns: lengths {sorted(lengths)} differ; expected one length for all 9 columns")
    return features.validate(np.stack([np.asarray(req.columns[n], np.float64) for n in features.NAMES], 1),
                             source="columns")


def _npy_features(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a malformed .npy
        raise ZdcError(f"body: not a readable .npy array ({type(exc).__name__}: {exc}); "
                       f"expected np.save of an (N, 9) float array") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ZdcError(f"body: .npy of dtype {getattr(array, 'dtype', type(array))}; expected float32 or float64")
    return features.validate(array, source="body")


def _binary_response(sim: Simulation, output: str, accept: str, headers: dict) -> Response:
    tensors = {"responses": sim.counts, "channels": sim.channels}
    names = ["responses", "channels"] if output == "both" else [output]
    headers = {**headers, "X-Tensors": ";".join(
        f"{n}:float32:{','.join(map(str, tensors[n].shape))}" for n in names)}
    if accept == NPY:  # one .npy per tensor, back to back: np.load(f) once per name in X-Tensors
        buffer = io.BytesIO()
        for n in names:
            np.save(buffer, tensors[n])
        return Response(buffer.getvalue(), media_type=NPY, headers=headers)
    body = b"".join(np.ascontiguousarray(tensors[n], "<f4").tobytes() for n in names)
    return Response(body, media_type=OCTET, headers=headers)


class _Observe:
    """Pure ASGI middleware (cheaper per request than BaseHTTPMiddleware): adds the model name and
    version headers to every answer and records requests, failures and latency by route."""

    def __init__(self, app, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        state = self.state

        async def send_with_headers(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Model-Name"] = state.settings.model_name
                headers["X-Model-Version"] = state.version
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if state.metrics is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.observe_request(route, status, time.perf_counter() - started)


def create_app(settings: Settings | None = None, simulator: Simulator | None = None) -> FastAPI:
    """The service. `simulator` skips loading (tests pass a small one); otherwise the checkpoint of
    `settings` (default: the shipped model) is loaded on startup, then warmed up; only then is the
    app ready."""
    settings = settings or Settings.from_env()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        sim = simulator or await asyncio.to_thread(
            Simulator.load, settings.checkpoint, device=settings.device, bf16=settings.bf16,
            batch_size=settings.max_batch_size, compile=settings.compile)
        await asyncio.to_thread(sim.warmup)  # every batch bucket once (compiles them with compile=True)
        state.simulator = sim
        state.metrics = Metrics(settings.model_name, sim.model_version)
        batcher = DynamicBatcher(sim, settings.max_batch_size, settings.max_queue_delay_ms,
                                 settings.max_queue_particles, settings.dynamic_batching,
                                 observe=state.metrics.observe_batch)
        batcher.start()
        state.metrics.pending.set_function(lambda: batcher.pending)
        state.batcher, state.ready = batcher, True
        try:
            yield
        finally:
            state.ready = False
            await batcher.stop()  # finishes what is queued

    app = FastAPI(title="zdc-sim", version=__version__, lifespan=lifespan,
                  description="Fast simulation of the ALICE ZN calorimeter: particles in, 44 x 44 responses out.")
    app.state.zdc = state

    app.add_middleware(_Observe, state=state)

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc: ServiceError):
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, exc: QueueFull):
        return JSONResponse({"error": str(exc)}, 503, headers={"Retry-After": "1"})

    @app.exception_handler(ZdcError)
    async def _user_error(request, exc: ZdcError):
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.get("/health/live", summary="200 while the process serves HTTP")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready", summary="200 once the model is loaded and warmed up, else 503")
    async def ready():
        if not state.ready:
            return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "1"})
        return {"status": "ready", "model": settings.model_name, "model_version": state.version}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        if state.metrics is None:
            return Response("", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="the served model")
    async def models():
        meta = state.simulator.metadata if state.simulator else {}
        return {"model": settings.model_name, "model_version": state.version, "checksum": meta.get("checksum"),
                "device": str(state.simulator.device) if state.simulator else None,
                "features": list(features.NAMES), "units": list(features.UNITS),
                "max_particles_per_request": settings.max_particles_per_request,
                "training": meta.get("training"), "validation": meta.get("validation")}

    @app.post("/v1/simulate", summary="simulate ZN responses for a batch of particles",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SimulateRequest.model_json_schema()},
                  NPY: {"schema": {"type": "string", "format": "binary"}}}}})
    async def simulate(request: Request, seed: int | None = Query(None, ge=0, le=MAX_SEED),
                       output: Literal["responses", "channels", "both"] = "both"):
        """JSON {"particles": [[9 floats], ...]} or {"columns": {...}}, or an .npy (N, 9) body with
        Content-Type application/x-npy (seed and output then come from the query). Answers JSON, or
        with Accept application/octet-stream (raw little-endian float32) or application/x-npy the
        tensors in binary, their names, dtype and shapes in the X-Tensors header."""
        body = await read_body(request, settings.max_request_bytes)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type == NPY:
            raw = _npy_features(body)
        elif content_type in ("application/json", ""):
            try:
                req = SimulateRequest.model_validate_json(body)
            except ValidationError as exc:
                raise ServiceError(422, validation_message(exc)) from None
            raw, seed, output = _features_from_request(req), req.seed, req.output
        else:
            raise ServiceError(415, f"Content-Type '{content_type}'; expected application/json or {NPY}")
        sim = await state.simulate(raw, seed)
        headers = {"X-Seed": str(seed)} if seed is not None else {}
        accept = request.headers.get("accept", "application/json").split(",")[0].split(";")[0].strip()
        if accept in (NPY, OCTET):
            return _binary_response(sim, output, accept, headers)
        answer = {"model": settings.model_name, "model_version": state.version, "seed": seed, "particles": len(raw)}
        if output in ("responses", "both"):
            answer["responses"] = sim.counts.tolist()
        if output in ("channels", "both"):
            answer["channels"] = sim.channels.tolist()
        return JSONResponse(answer, headers=headers)

    @app.post("/v1/export", summary="upload a ROOT file of particles, receive a ROOT file of responses",
              openapi_extra={"requestBody": {"required": True, "content": {
                  OCTET: {"schema": {"type": "string", "format": "binary"}}}}},
              response_class=Response, responses={200: {"content": {OCTET: {}}}})
    async def export_route(request: Request, seed: int | None = Query(None, ge=0, le=MAX_SEED),
                           channels_only: bool = False, tree: str = io_module.TREE):
        """The body is the ROOT file (at most max_export_bytes); the answer is the `zdc-sim export`
        output for it: the particle branches, `response` (unless channels_only), channel_1..5 and
        the provenance. Simulated through the same batcher as /v1/simulate."""
        state.require_ready()  # before reading an upload of up to max_export_bytes
        body = await read_body(request, settings.max_export_bytes)
        loop = asyncio.get_running_loop()

        def simulate(raw, latents):  # runs in the export thread; the batcher owns the model
            return asyncio.run_coroutine_threadsafe(state.batcher.simulate(raw, latents), loop).result()

        def run(folder: str) -> bytes:
            source, target = Path(folder) / "upload.root", Path(folder) / "export.root"
            source.write_bytes(body)
            try:
                export_file(source, target, state.simulator, seed=seed, schema=io_module.Schema(tree=tree), tree=tree,
                            channels_only=channels_only, progress=False, simulate=simulate,
                            chunk_size=settings.max_batch_size)
            except ZdcError as exc:  # name the upload, not the server's temporary path
                raise ZdcError(str(exc).replace(str(source), "uploaded file")) from None
            return target.read_bytes()

        with tempfile.TemporaryDirectory(prefix="zdc-export-") as folder:
            data = await asyncio.to_thread(run, folder)
        return Response(data, media_type=OCTET, headers={"Content-Disposition": 'attachment; filename="export.root"'})

    from .oip import router as oip_router

    app.include_router(oip_router(state))
    return app
