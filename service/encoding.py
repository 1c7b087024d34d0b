"""Bytes in and out: request bodies (bounded, and drained before a 413 so that clients which send
the whole body before reading the answer get it), .npy and JSON particles, binary tensors."""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from zdc_sim import features
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import Simulation

from .errors import ServiceError
from .schemas import SimulateRequest

NPY = "application/x-npy"
OCTET = "application/octet-stream"
DRAIN_FACTOR = 4  # an oversized body up to this many times the limit is read (and dropped) before the 413


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it exceeds `limit` bytes. A server that answers before the
    body has arrived and closes makes urllib, requests and tritonclient (which send everything
    first) see a reset connection instead of the 413; so the rest of a body up to DRAIN_FACTOR x
    the limit is read and dropped first. Larger declared bodies are refused at once."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    if declared is not None and declared > DRAIN_FACTOR * limit:
        raise ServiceError(413, f"request body is {declared} bytes; expected at most {limit}", {"Connection": "close"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        found = f"{declared} bytes" if declared is not None else f"over {limit} bytes"
        raise ServiceError(413, f"request body is {found}; expected at most {limit}", {"Connection": "close"})
    return b"".join(chunks)


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
    Python's literal evaluator (~0.1 ms, a third of a single-particle request's own work), and a
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
