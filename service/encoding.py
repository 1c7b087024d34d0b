"""Bytes in and out: request bodies (bounded, and drained before a 413 so that clients which send
the whole body before reading the answer get it), .npy and JSON particles, binary tensors."""

from __future__ import annotations

import asyncio
import io
import math
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect
from fastapi.responses import Response

from zdc_sim import features
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import Simulation

from .batcher import ClientGone
from .errors import ServiceError
from .schemas import SimulateRequest
from .state import ServiceState

NPY = "application/x-npy"
OCTET = "application/octet-stream"
DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read (and dropped) before the 413
JSON_OTHER_VALUES = 64  # values a JSON request holds besides its particles' (seed, output, OIP outputs, ...)


def _decoder(encoding: str | None):
    """A streaming decoder for a Content-Encoding (None for an uncompressed body)."""
    if encoding in (None, "", "identity"):
        return None
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ServiceError(415, f"Content-Encoding '{encoding}'; expected gzip, deflate or none")


async def read_body(request: Request, limit: int, state: ServiceState, *, decode: bool = False) -> bytes:
    """The request body (decompressed when `decode` and the client says it is compressed), held
    in memory: 503 when all requests together would hold more than max_buffered_bytes; else as
    `receive_body`."""
    chunks: list[bytes] = []

    def keep(chunk: bytes) -> None:
        state.hold_body_bytes(request.scope, len(chunk))
        chunks.append(chunk)

    await receive_body(request, limit, state.settings.body_timeout_s, keep, decode=decode)
    return b"".join(chunks)


async def save_body(request: Request, path: Path, limit: int, timeout_s: float) -> None:
    """The request body written to `path` as it arrives (an upload is never held in memory whole)."""
    with open(path, "wb") as file:
        await receive_body(request, limit, timeout_s, file.write)


async def receive_body(request: Request, limit: int, timeout_s: float, keep, *, decode: bool = False) -> None:
    """Hand the body's chunks to `keep` (decompressed when `decode` and the client says it is
    compressed), or: 413 once it, or what it decompresses to, exceeds `limit` bytes (a decoder
    never produces more than limit + 1 bytes, so a small compressed body cannot expand in memory);
    408 when it has not arrived within `timeout_s`. A server that answers before the body has
    arrived and closes makes urllib, requests and tritonclient (which send everything first) see
    a reset connection instead of the 413; so the rest of a body up to DRAIN_FACTOR x the limit
    is read and dropped first. Larger declared bodies are refused at once."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    if declared is not None and declared > DRAIN_FACTOR * limit:
        raise ServiceError(413, f"request body is {declared} bytes; expected at most {limit}", {"Connection": "close"})
    encoding = request.headers.get("content-encoding") if decode else None
    decoder = _decoder(encoding.strip().lower() if encoding else None)
    size, kept, too_large = 0, 0, None
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if too_large is None:
                    if size > limit:
                        found = f"{declared} bytes" if declared is not None else f"over {limit} bytes"
                        too_large = f"request body is {found}; expected at most {limit}"
                    elif decoder is not None:
                        try:
                            chunk = decoder.decompress(chunk, limit + 1 - kept)
                        except zlib.error as exc:
                            raise ServiceError(400, f"body: Content-Encoding {encoding} but it does not decompress "
                                                    f"({exc}); expected a {encoding} stream") from None
                        if decoder.unconsumed_tail or kept + len(chunk) > limit:
                            too_large = (f"request body of {declared or size} bytes {encoding} decompresses to more "
                                         f"than {limit} bytes; expected at most {limit} bytes decompressed")
                if too_large is None:
                    keep(chunk)
                    kept += len(chunk)
                elif size > DRAIN_FACTOR * limit:
                    break
    except ClientDisconnect:
        raise ClientGone(f"the client disconnected after sending {size} bytes of its body") from None
    except TimeoutError:
        raise ServiceError(408, f"request body not received within {timeout_s:g} s ({size} bytes arrived"
                                f"{f' of {declared}' if declared is not None else ''}); expected the whole body in "
                                f"time (setting body_timeout_s)", {"Connection": "close"}) from None
    if too_large:
        raise ServiceError(413, too_large, {"Connection": "close"})
    if decoder is not None and not decoder.eof:
        raise ServiceError(400, f"body: Content-Encoding {encoding} but the stream ends early; expected a whole "
                                f"{encoding} stream")


def check_json_values(body: bytes, max_particles: int) -> None:
    """413 before a JSON body is parsed when it holds more values than max_particles rows of the 9
    features and a few other fields can: parsing makes a Python object of every value (a 60 MiB
    body took 2.3 GB and seconds), while counting its commas takes milliseconds."""
    values, allowed = body.count(b",") + 1, max_particles * features.N_FEATURES + JSON_OTHER_VALUES
    if values > allowed:
        raise ServiceError(413, f"request body holds about {values} JSON values; expected at most {allowed} "
                                f"({max_particles} particles of {features.N_FEATURES} features and the other fields)")


def request_features(req: SimulateRequest) -> np.ndarray:
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


@lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an .npy header. numpy parses the header's dict with
    Python's literal evaluator (a large share of a single-particle request's own work), and a
    client sends the same header again and again: parsed once per distinct header."""
    fp = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(fp)


def _npy_array(body: bytes) -> np.ndarray:
    """np.load(allow_pickle=False) of an .npy in memory, without copying the data."""
    if not body.startswith(b"\x93NUMPY"):
        raise ValueError("it does not start with the .npy magic string")
    width = 2 if body[6:7] == b"\x01" else 4  # header-length field: 2 bytes in version 1, else 4
    end = 8 + width + int.from_bytes(body[8 : 8 + width], "little")
    if len(body) < end:
        raise ValueError(f"the header needs {end} bytes, the body has {len(body)}")
    shape, fortran, dtype = _npy_header(bytes(body[:end]))
    if dtype.hasobject:
        raise ValueError("object arrays need pickle, which is not accepted")
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        raise ValueError(f"shape {shape} of {dtype} needs {count * dtype.itemsize} data bytes, found {len(body) - end}")
    return np.frombuffer(body, dtype, count, end).reshape(shape, order="F" if fortran else "C")


def npy_features(body: bytes) -> np.ndarray:
    try:
        array = _npy_array(body)
    except Exception as exc:  # numpy raises several kinds for a malformed .npy
        raise ZdcError(f"body: not a readable .npy array ({type(exc).__name__}: {exc}); "
                       f"expected np.save of an (N, 9) float array") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ZdcError(f"body: .npy of dtype {getattr(array, 'dtype', type(array))}; expected float32 or float64")
    return features.validate(array, source="body")


def binary_response(sim: Simulation, output: str, accept: str, headers: dict) -> Response:
    """The tensors as raw little-endian float32 (OCTET) or back-to-back .npy (NPY); their names,
    dtype and shapes in the X-Tensors header."""
    tensors = {"responses": sim.counts, "channels": sim.channels}
    names = ["responses", "channels"] if output == "both" else [output]
    headers = {**headers, "X-Tensors": ";".join(
        f"{n}:float32:{','.join(map(str, tensors[n].shape))}" for n in names)}
    if accept == NPY:
        buffer = io.BytesIO()
        for n in names:
            np.save(buffer, tensors[n])
        return Response(buffer.getvalue(), media_type=NPY, headers=headers)
    body = b"".join(np.ascontiguousarray(tensors[n], "<f4").tobytes() for n in names)
    return Response(body, media_type=OCTET, headers=headers)
