"""The zdc-sim simulation service: FastAPI app factory, native and Open Inference Protocol v2 routes."""

from .app import create_app
from .server import serve
from .settings import Settings

__all__ = ["Settings", "create_app", "serve"]
