"""Open Inference Protocol v2 (KServe / Triton HTTP), JSON and the binary tensor extension, so that
`tritonclient[http]` works unchanged: model `zdc-zn`, input FEATURES FP32 [-1, 9], optional SEED
INT64 [1]; outputs RESPONSES FP32 [-1, 44, 44] and CHANNELS FP32 [-1, 5]. Request parameters:
`extrapolate: true` simulates particles outside the model's trained feature ranges (else 422);
`row_start: k` gives the rows the random inputs of rows k.. of the seed (a client that splits a
large input into requests gets what one request would have); `timeout` (microseconds, as Triton's)
drops the request unsimulated (504) if it waits longer in the queue."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from zdc_sim import __version__, features
from zdc_sim.geometry import N_CHANNELS

from .encoding import check_json_values, read_body
from .errors import ServiceError, validation_message
from .schemas import InferOutput, InferRequest, check_seed, inline_schema
from .state import Served, ServiceState

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT64": np.dtype("<i8"), "UINT64": np.dtype("<u8"),
          "INT32": np.dtype("<i4")}
INPUTS = [{"name": "FEATURES", "datatype": "FP32", "shape": [-1, features.N_FEATURES]},
          {"name": "SEED", "datatype": "INT64", "shape": [1]}]

def parse_infer(body: bytes, header_length: str | None, max_values: int) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The JSON header and the input tensors (from "data" or from the binary section); 413 for a
    tensor of more than max_values values, checked on its declared shape before its data is read."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ServiceError(400, f"{HEADER_LENGTH} is {header_length!r}; expected the byte length of the "
                                    f"JSON header, at most the body's {len(body)} bytes")
        head, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    else:
        head, binary = body, memoryview(b"")
    check_json_values(head, max_values // features.N_FEATURES)
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        raise ServiceError(422, validation_message(exc, "")) from None
    tensors, offset = {}, 0
    for tensor in request.inputs:
        where = f"input '{tensor.name}'"
        if tensor.datatype not in DTYPES:
            raise ServiceError(422, f"{where}: datatype {tensor.datatype!r}; expected one of {list(DTYPES)}")
        if any(d < 0 for d in tensor.shape):
            raise ServiceError(422, f"{where}: shape {tensor.shape}; expected non-negative dimensions")
        dtype, count = DTYPES[tensor.datatype], math.prod(tensor.shape)  # Python ints: no overflow
        if count > max_values or any(d > max_values for d in tensor.shape):
            raise ServiceError(413, f"{where}: shape {tensor.shape} holds {count} values; expected at most "
                                    f"{max_values} and no dimension above it ({max_values // features.N_FEATURES} "
                                    f"particles of {features.N_FEATURES} features per request)")
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(binary):
                raise ServiceError(422, f"{where}: binary_data_size {size!r}; expected {count * dtype.itemsize} bytes "
                                        f"for shape {tensor.shape} {tensor.datatype}, within the "
                                        f"{len(binary) - offset} bytes left in the body")
            array = np.frombuffer(binary[offset : offset + size], dtype)
            offset += size
        elif tensor.data is not None:
            try:
                array = np.asarray(tensor.data, dtype=dtype).ravel()
            except (TypeError, ValueError, OverflowError):
                raise ServiceError(422, f"{where}: 'data' is not a flat list of {tensor.datatype} numbers") from None
            if array.size != count:
                raise ServiceError(422, f"{where}: 'data' has {array.size} values; expected {count} for shape {tensor.shape}")
        else:
            raise ServiceError(422, f"{where}: neither 'data' nor parameters.binary_data_size; expected one")
        tensors[tensor.name] = array.reshape(tensor.shape)
    return request, tensors


def check_served(state: ServiceState, model: str, version: str | None) -> Served:
    """The served model named `model` (zdc-zn, zdc-zp), or 404 unless it (and `version`, when
    given) is served here."""
    served = state.by_model_name(model)
    if version is not None and version != served.simulator.model_version:
        raise ServiceError(404, f"model '{model}' version '{version}' is not served; expected "
                                f"'{served.simulator.model_version}'")
    return served


def output_tensors(served: Served) -> list[dict]:
    """The output tensors of a served model: its detector's image shape, and the 5 channels."""
    return [{"name": "RESPONSES", "datatype": "FP32", "shape": [-1, *served.simulator.detector.shape]},
            {"name": "CHANNELS", "datatype": "FP32", "shape": [-1, N_CHANNELS]}]


async def infer_response(state: ServiceState, request: Request, model: str, version: str | None = None) -> Response:
    """POST /v2/models/{model}[/versions/{version}]/infer: JSON or binary tensors in and out."""
    settings = state.settings
    state.require_ready()
    served = check_served(state, model, version)
    body = await read_body(request, settings.max_request_bytes, state, decode=True)
    infer_request, tensors = parse_infer(body, request.headers.get(HEADER_LENGTH.lower()),
                                         settings.max_particles_per_request * features.N_FEATURES)
    unknown = sorted(set(tensors) - {"FEATURES", "SEED"})
    if unknown or "FEATURES" not in tensors:
        raise ServiceError(422, f"inputs {sorted(tensors)}; expected FEATURES (FP32 [-1, 9]) and optionally SEED "
                                f"(INT64 [1])")
    feats = tensors["FEATURES"]
    if feats.dtype != DTYPES["FP32"]:  # parse_infer gave each tensor its declared datatype
        raise ServiceError(422, "input 'FEATURES': datatype must be FP32")
    seed = None
    if "SEED" in tensors:
        s = tensors["SEED"]
        if s.size != 1 or s.dtype.kind not in "iu":
            raise ServiceError(422, f"input 'SEED': {s.tolist()} ({s.dtype}); expected one INT64 value >= 0")
        seed = check_seed(int(s.ravel()[0]), "input 'SEED'")
    parameters = infer_request.parameters or {}
    extrapolate, row_start = parameters.get("extrapolate", False), parameters.get("row_start", 0)
    if not isinstance(extrapolate, bool):
        raise ServiceError(422, f"parameter 'extrapolate': {extrapolate!r}; expected true or false")
    if not isinstance(row_start, int) or isinstance(row_start, bool) or row_start < 0:
        raise ServiceError(422, f"parameter 'row_start': {row_start!r}; expected an integer >= 0")
    timeout_us = parameters.get("timeout")  # Triton's request parameter, in microseconds
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0):
        raise ServiceError(422, f"parameter 'timeout': {timeout_us!r}; expected microseconds, an integer > 0")
    raw = features.validate(feats, source="input 'FEATURES'")
    sim = await state.simulate(raw, seed, extrapolate, "input 'FEATURES'", row_start, disconnected=request.receive,
                               timeout_s=None if timeout_us is None else timeout_us / 1e6, detector=served.detector)

    produced = {"RESPONSES": sim.counts, "CHANNELS": sim.channels}
    wanted = infer_request.outputs or [InferOutput(name=n) for n in produced]
    default_binary = bool(parameters.get("binary_data_output", False))
    outputs, chunks = [], []
    for out in wanted:
        if out.name not in produced:
            raise ServiceError(422, f"output '{out.name}'; expected RESPONSES or CHANNELS")
        array = np.ascontiguousarray(produced[out.name], "<f4")
        entry: dict[str, Any] = {"name": out.name, "datatype": "FP32", "shape": list(array.shape)}
        if (out.parameters or {}).get("binary_data", default_binary):
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    answer = {"model_name": served.name, "model_version": served.simulator.model_version, "outputs": outputs}
    if infer_request.id is not None:
        answer["id"] = infer_request.id
    if not chunks:
        return JSONResponse(answer)
    head = json.dumps(answer).encode()
    return Response(head + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})


def add_routes(app: FastAPI, state: ServiceState) -> None:
    """Register the /v2 routes on the app itself (see native.add_routes)."""
    tags = ["Open Inference Protocol v2"]

    def add(path: str, endpoint, **kwargs):
        app.add_api_route("/v2" + path, endpoint, tags=tags, **kwargs)

    settings = state.settings

    @app.get("/v2", summary="server metadata", tags=tags)
    async def server():
        return {"name": "zdc-sim", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]}

    @app.get("/v2/health/live", tags=tags)
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=tags)
    async def ready():
        return Response(status_code=state.ready_status)

    @app.post("/v2/repository/index", summary="the served models (Triton's repository extension)", tags=tags)
    async def repository_index():
        return [{"name": served.name, "version": served.simulator.model_version,
                 "state": "READY" if state.ready else "LOADING"} for served in state.served.values()]

    def metadata(model: str, version: str | None = None):
        state.require_ready()
        served = check_served(state, model, version)
        return {"name": served.name, "versions": [served.simulator.model_version], "platform": "pytorch",
                "inputs": INPUTS, "outputs": output_tensors(served),
                "parameters": {"detector": served.detector}}

    def model_ready(model: str, version: str | None = None):
        if state.ready:
            check_served(state, model, version)
        return Response(status_code=state.ready_status)

    def config(model: str, version: str | None = None):
        state.require_ready()
        served = check_served(state, model, version)
        return {"name": served.name, "platform": "pytorch", "max_batch_size": 0,
                "input": [{"name": i["name"], "data_type": "TYPE_" + i["datatype"], "dims": i["shape"]} for i in INPUTS],
                "output": [{"name": o["name"], "data_type": "TYPE_FP32", "dims": o["shape"]} for o in output_tensors(served)],
                "dynamic_batching": {"max_queue_delay_microseconds": int(settings.max_queue_delay_ms * 1000),
                                     "preferred_batch_size": [settings.max_batch_size]}}

    async def infer(model: str, request: Request):
        return await infer_response(state, request, model)

    async def infer_version(model: str, version: str, request: Request):
        return await infer_response(state, request, model, version)

    infer.fast_lane = infer_version.fast_lane = True  # answered ahead of FastAPI's routing (service/fastlane.py)

    add("/models/{model}", metadata, methods=["GET"], summary="model metadata")
    add("/models/{model}/versions/{version}", metadata, methods=["GET"], summary="model metadata")
    add("/models/{model}/ready", model_ready, methods=["GET"], summary="200 when the model can serve")
    add("/models/{model}/versions/{version}/ready", model_ready, methods=["GET"])
    add("/models/{model}/config", config, methods=["GET"], summary="Triton-style model config")
    add("/models/{model}/versions/{version}/config", config, methods=["GET"])
    infer_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(InferRequest)}}}}
    add("/models/{model}/infer", infer, methods=["POST"], summary="inference", openapi_extra=infer_doc)
    add("/models/{model}/versions/{version}/infer", infer_version, methods=["POST"], openapi_extra=infer_doc)
