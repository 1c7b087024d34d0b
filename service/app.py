"""The FastAPI app: `create_app(settings)` loads the model, starts the batcher and mounts the
native routes (`service.native`) and the Open Inference Protocol v2 (`service.oip`), the
simulate routes also ahead of FastAPI's routing (`service.fastlane`). Every answer
carries the model name and version (X-Model-Name, X-Model-Version headers)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders

from zdc_sim import __version__
from zdc_sim.simulator import Simulator

from . import native, oip
from .batcher import DynamicBatcher
from .errors import install_handlers
from .fastlane import FastLane
from .guard import Guard
from .metrics import Metrics
from .settings import Settings
from .state import ServiceState


class _Observe:
    """Pure ASGI middleware (cheaper per request than BaseHTTPMiddleware): adds the model name and
    version headers to every answer, records requests, failures and latency by route, and lets go
    of the request body bytes a request held."""

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
            state.release_body_bytes(scope)
            if state.metrics is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state.metrics.observe_request(route, status, time.perf_counter() - started)


def create_app(settings: Settings | None = None, simulator: Simulator | None = None) -> FastAPI:
    """The service. `simulator` skips loading (tests pass a small one); otherwise the checkpoint of
    `settings` (default: the shipped model) is loaded on startup, then warmed up; only then is the
    app ready."""
    settings = settings or Settings.from_env()
    token = settings.token()  # an unreadable token file is named now, not at the first request
    settings.check_exposure()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        sim = simulator or await asyncio.to_thread(
            Simulator.load, settings.checkpoint, device=settings.device, bf16=settings.bf16,
            batch_size=settings.max_batch_size, compile=settings.compile, engine=settings.engine)
        await asyncio.to_thread(sim.warmup)  # every batch bucket once (compiles them with compile=True)
        state.simulator = sim
        state.metrics = Metrics(settings.model_name, sim.model_version)
        batcher = DynamicBatcher(sim, settings.max_batch_size, settings.max_queue_delay_ms,
                                 settings.max_queue_particles, settings.dynamic_batching,
                                 observe=state.metrics.observe_batch, observe_dropped=state.metrics.observe_dropped,
                                 max_queue_seconds=settings.max_queue_seconds)
        await asyncio.to_thread(batcher.calibrate)  # the queue's bound in particles, from this machine's speed
        batcher.start()
        state.metrics.pending.set_function(lambda: batcher.pending)
        state.metrics.queue_capacity.set(batcher.capacity)
        state.metrics.buffered.set_function(lambda: state.buffered_bytes)
        state.batcher, state.ready = batcher, True
        try:
            yield
        finally:
            state.ready = False
            await batcher.stop(settings.shutdown_timeout_s)  # finishes what is queued, within the drain's deadline

    app = FastAPI(title="zdc-sim", version=__version__, lifespan=lifespan,
                  description="Fast simulation of the ALICE ZN calorimeter: particles in, 44 x 44 responses out.")
    app.state.zdc = state
    install_handlers(app)
    native.add_routes(app, state)
    oip.add_routes(app, state)
    app.add_middleware(FastLane, routes=app.router.routes)  # read when the stack is built: every route is in
    app.add_middleware(Guard, settings=settings, token=token)  # before the routes: nothing runs for a refused request
    app.add_middleware(_Observe, state=state)  # outermost: counts every answer, the fast lane's and refusals too
    return app
