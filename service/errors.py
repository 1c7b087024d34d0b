"""Every error a client can cause, answered as {"error": message} with a 4xx (a full queue: 503
with Retry-After; a request past its own deadline: 504), never a 500: the exception type and its
handlers."""

from __future__ import annotations

import math

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from zdc_sim.errors import ZdcError

from .batcher import ClientGone, DeadlineExceeded, QueueFull


class ServiceError(Exception):
    """An error answered as {"error": message} with this HTTP status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def validation_message(exc: ValidationError | RequestValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"field '{prefix}{where}': {error['msg']}")
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def error_response(exc: Exception) -> JSONResponse | None:
    """The answer to an error the client caused (None for any other exception: a 500)."""
    if isinstance(exc, ServiceError):
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)
    if isinstance(exc, QueueFull):
        return JSONResponse({"error": str(exc)}, 503, headers={"Retry-After": str(math.ceil(exc.retry_after_s))})
    if isinstance(exc, DeadlineExceeded):
        return JSONResponse({"error": str(exc)}, 504)
    if isinstance(exc, ClientGone):  # nobody reads it; 499 (nginx's "client closed request") labels the metrics
        return JSONResponse({"error": str(exc)}, 499)
    if isinstance(exc, ZdcError):
        return JSONResponse({"error": str(exc)}, 422)
    return None


def install_handlers(app: FastAPI) -> None:
    async def _client_error(request, exc):
        return error_response(exc)

    for kind in (ServiceError, QueueFull, DeadlineExceeded, ClientGone, ZdcError):
        app.add_exception_handler(kind, _client_error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, exc.status_code,
                            headers=getattr(exc, "headers", None))
