"""The native routes: health, metrics, the served model, POST /v1/simulate (JSON or .npy in, JSON
or binary out) and POST /v1/export (ROOT in, ROOT out)."""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
from pathlib import Path, PurePath
from typing import get_args

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.background import BackgroundTask

from zdc_sim import features, rootio
from zdc_sim.errors import ZdcError
from zdc_sim.export import export_file

from .encoding import (NPY, OCTET, binary_response, check_json_values, npy_features, read_body, request_features,
                       save_body)
from .errors import ServiceError, validation_message
from .schemas import MAX_SEED, Output, SimulateRequest, check_seed
from .state import ServiceState


SIMULATE_QUERY = [  # read by simulate_query, for .npy bodies (a JSON body carries its own)
    {"name": "seed", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}},
    {"name": "output", "in": "query", "schema": {"enum": list(get_args(Output)), "default": "both"}},
    {"name": "extrapolate", "in": "query", "schema": {"type": "boolean", "default": False}},
    {"name": "timeout_ms", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0}},
    {"name": "detector", "in": "query", "schema": {"enum": ["zn", "zp"], "default": "zn"}},
]
_BOOL = TypeAdapter(bool)


def simulate_query(query) -> tuple[int | None, str, bool, float | None]:
    """(seed, output, extrapolate, timeout_ms) from the query string, or 422 naming the parameter."""
    seed = check_seed(query.get("seed"), "query 'seed'")
    output = query.get("output", "both")
    if output not in get_args(Output):
        raise ServiceError(422, f"query 'output': {output!r}; expected one of {list(get_args(Output))}")
    try:
        extrapolate = _BOOL.validate_python(query.get("extrapolate", False))
    except ValidationError:
        raise ServiceError(422, f"query 'extrapolate': {query.get('extrapolate')!r}; expected true or false") from None
    timeout_ms = query.get("timeout_ms")
    if timeout_ms is not None:
        try:
            timeout_ms = float(timeout_ms)
        except ValueError:
            timeout_ms = -1.0
        if not 0 < timeout_ms < float("inf"):
            raise ServiceError(422, f"query 'timeout_ms': {query.get('timeout_ms')!r}; expected a number of "
                                    f"milliseconds > 0")
    return seed, output, extrapolate, timeout_ms


async def simulate_response(state: ServiceState, request: Request) -> Response:
    """POST /v1/simulate (the route's docstring says what it takes and answers)."""
    seed, output, extrapolate, timeout_ms = simulate_query(request.query_params)
    state.require_ready()
    served = state.detector(request.query_params.get("detector"))
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type not in (NPY, "application/json", ""):
        raise ServiceError(415, f"Content-Type '{content_type}'; expected application/json or {NPY}")
    body = await read_body(request, state.settings.max_request_bytes, state)
    if content_type == NPY:
        raw, source = npy_features(body), "body"
    else:
        check_json_values(body, state.settings.max_particles_per_request)
        try:
            req = SimulateRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ServiceError(422, validation_message(exc)) from None
        raw, seed, output, extrapolate = request_features(req), req.seed, req.output, req.extrapolate
        timeout_ms = req.timeout_ms if req.timeout_ms is not None else timeout_ms
        source = "particles" if req.particles is not None else "columns"
    sim = await state.simulate(raw, seed, extrapolate, source, disconnected=request.receive,
                               timeout_s=None if timeout_ms is None else timeout_ms / 1000, detector=served.detector)
    headers = {"X-Seed": str(seed)} if seed is not None else {}
    accept = request.headers.get("accept", "application/json").split(",")[0].split(";")[0].strip()
    if accept in (NPY, OCTET):
        return binary_response(sim, output, accept, headers)
    answer = {"model": served.name, "model_version": served.simulator.model_version, "detector": served.detector,
              "seed": seed, "particles": len(raw)}
    if output in ("responses", "both"):
        answer["responses"] = sim.counts.tolist()
    if output in ("channels", "both"):
        answer["channels"] = sim.channels.tolist()
    return JSONResponse(answer, headers=headers)


def servable(value):
    """`value` as served metadata: every file path reduced to its file name (which data a model was
    trained on, without the folders of the machine that trained it), and every NaN or infinity, a
    figure the evaluation could not measure (too few showers of a class), as null, which JSON has."""
    if isinstance(value, dict):
        return {k: servable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [servable(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return PurePath(value.replace("\\", "/")).name
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def add_routes(api: FastAPI, state: ServiceState) -> None:
    """Register the native routes on the app itself (not an included router, whose routes FastAPI
    keeps behind an internal wrapper): the fast lane finds the marked ones among app.router.routes."""
    settings = state.settings

    @api.get("/health/live", summary="200 while the process serves HTTP")
    async def live():
        return {"status": "live"}

    @api.get("/health/ready", summary="200 once the model is loaded and warmed up, else 503")
    async def ready():
        if state.ready_status != 200:
            return JSONResponse({"status": "loading"}, state.ready_status, headers={"Retry-After": "1"})
        return {"status": "ready", "model": settings.model_name, "model_version": state.version,
                "models": {s.name: s.simulator.model_version for s in state.served.values()}}

    @api.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        if state.metrics is None:
            return Response("", media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def describe(served) -> dict:
        sim, meta = served.simulator, served.simulator.metadata
        return {"model": served.name, "detector": served.detector, "model_version": sim.model_version,
                "checksum": meta.get("checksum"), "device": str(sim.device), "response_shape": list(sim.detector.shape),
                "feature_ranges": meta.get("feature_ranges"),
                "training": servable(meta.get("training")), "validation": servable(meta.get("validation"))}

    @api.get("/v1/models", summary="the served models (the ZN's fields at the top level, every model under 'models')")
    async def models():
        top = describe(state.default) if state.default else {"model": settings.model_name, "model_version": state.version}
        return {**top, "features": list(features.NAMES), "units": list(features.UNITS),
                "max_particles_per_request": settings.max_particles_per_request,
                "models": {d: describe(s) for d, s in state.served.items()}}

    @api.post("/v1/simulate", summary="simulate ZN (default) or ZP (?detector=zp) responses for a batch of particles",
              openapi_extra={"parameters": SIMULATE_QUERY, "requestBody": {"required": True, "content": {
                  "application/json": {"schema": SimulateRequest.model_json_schema()},
                  NPY: {"schema": {"type": "string", "format": "binary"}}}}})
    async def simulate(request: Request):
        """JSON {"particles": [[9 floats], ...]} or {"columns": {...}}, or an .npy (N, 9) body with
        Content-Type application/x-npy (seed, output and extrapolate then come from the query).
        Answers JSON, or with Accept application/octet-stream (raw little-endian float32) or
        application/x-npy the tensors in binary, their names, dtype and shapes in the X-Tensors
        header. Particles outside the model's trained feature ranges are refused (422) unless
        extrapolate is true. `detector` (query): zn (default) or zp. Particles flying to the C side
        (pz < 0) are simulated by the C-side calorimeter; particles that do not reach the detector
        get an empty response."""
        return await simulate_response(state, request)

    simulate.fast_lane = True  # answered ahead of FastAPI's routing (service/fastlane.py)

    export_lock = asyncio.Lock()  # one export at a time: each holds an upload and an answer on disk

    @api.post("/v1/export", summary="upload a ROOT file of particles, receive a ROOT file of responses",
              openapi_extra={"requestBody": {"required": True, "content": {
                  OCTET: {"schema": {"type": "string", "format": "binary"}}}}},
              response_class=Response, responses={200: {"content": {OCTET: {}}}})
    async def export_route(request: Request, seed: int | None = None, channels_only: bool = False,
                           tree: str = rootio.TREE, detectors: str | None = None):
        """The body is the ROOT file (at most max_export_bytes, max_export_particles entries); the
        answer is the `zdc-sim export` output for it, streamed from a temporary file: the particle
        branches and, per detector (`detectors`, comma-separated; default every served one),
        `response_<det>` (unless channels_only), `channels_<det>`, the out_of_domain and reached
        flags, and the provenance. Simulated through the same batchers as /v1/simulate; one export
        at a time (another gets 503 with Retry-After)."""
        seed = check_seed(seed, "query 'seed'")
        state.require_ready()  # before reading an upload of up to max_export_bytes
        chosen = [state.detector(d.strip(), "query 'detectors'").detector for d in detectors.split(",")] \
            if detectors else list(state.served)
        if export_lock.locked():
            raise ServiceError(503, "an export is running; one runs at a time, retry later", {"Retry-After": "5"})
        async with export_lock:
            folder = Path(tempfile.mkdtemp(prefix="zdc-export-"))
            try:
                source, target = folder / "upload.root", folder / "export.root"
                await save_body(request, source, settings.max_export_bytes, settings.body_timeout_s)
                loop = asyncio.get_running_loop()

                def through(batcher):  # runs in the export thread; the batcher owns the model
                    return lambda raw, draws: asyncio.run_coroutine_threadsafe(batcher.simulate(raw, draws), loop).result()

                simulate = {d: through(state.served[d].batcher) for d in chosen}
                await asyncio.to_thread(export_upload, source, target, seed, tree, channels_only, simulate)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        return FileResponse(target, media_type=OCTET, filename="export.root",
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    def export_upload(source: Path, target: Path, seed: int | None, tree: str, channels_only: bool, simulate) -> None:
        """The export of an uploaded file (in a thread), after checking its size in particles;
        errors name the upload, not the server's temporary path."""
        schema = rootio.Schema(tree=tree)
        try:
            entries = rootio.num_entries(source, schema)
            if entries > settings.max_export_particles:
                raise ServiceError(413, f"uploaded file has {entries} particles; expected at most "
                                        f"{settings.max_export_particles} per export (max_export_particles)")
            export_file(source, target, {d: state.served[d].simulator for d in simulate}, seed=seed, schema=schema, tree=tree,
                        channels_only=channels_only, progress=False, simulate=simulate,
                        chunk_size=settings.max_batch_size)
        except ZdcError as exc:
            raise ZdcError(str(exc).replace(str(source), "uploaded file")) from None

