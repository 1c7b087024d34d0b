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
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import Simulator, default_model_path

from . import native, oip
from .batcher import DynamicBatcher
from .errors import install_handlers
from .fastlane import FastLane
from .guard import Guard
from .metrics import Metrics
from .settings import Settings
from .state import Served, ServiceState


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


def load_models(settings: Settings) -> dict[str, Simulator]:
    """{detector: Simulator}: the ZN model of `checkpoint`, and the ZP model of `zp_checkpoint`
    (None: the shipped one when the package has it; 'none': no ZP)."""
    options = dict(device=settings.device, bf16=settings.bf16, batch_size=settings.max_batch_size,
                   compile=settings.compile, engine=settings.engine)
    sims = {"zn": Simulator.load(settings.checkpoint, **options)}
    zp = settings.zp_checkpoint
    if zp is None and default_model_path("zp").is_file():
        zp = "zp"
    if zp is not None and zp.lower() != "none":
        sims["zp"] = Simulator.load(zp, **options)
    for name, sim in sims.items():
        if sim.detector.name != name:
            raise ZdcError(f"the {name.upper()} checkpoint simulates the {sim.detector.name.upper()}; expected a "
                           f"{name.upper()} model (checkpoint for the ZN, zp_checkpoint for the ZP)")
    return sims


def create_app(settings: Settings | None = None, simulator: Simulator | None = None,
               simulators: dict[str, Simulator] | None = None) -> FastAPI:
    """The service. `simulator` (or `simulators`, {detector: Simulator}) skips loading (tests pass
    small ones); otherwise the checkpoints of `settings` (default: the shipped ZN model, and the
    shipped ZP model when the package has one) are loaded on startup, then warmed up; only then is
    the app ready."""
    settings = settings or Settings.from_env()
    token = settings.token()  # an unreadable token file is named now, not at the first request
    settings.check_exposure()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        sims = dict(simulators or ({simulator.detector.name: simulator} if simulator else {}))
        if not sims:
            sims = await asyncio.to_thread(load_models, settings)
        for name, sim in sims.items():
            await asyncio.to_thread(sim.warmup)  # every batch bucket once (compiles them with compile=True)
            state.served[name] = Served(name, state.model_name(name), sim)
        state.metrics = Metrics(settings.model_name, state.version)
        for served in state.served.values():
            batcher = DynamicBatcher(served.simulator, settings.max_batch_size, settings.max_queue_delay_ms,
                                     settings.max_queue_particles, settings.dynamic_batching,
                                     observe=state.metrics.observe_batch, observe_dropped=state.metrics.observe_dropped,
                                     max_queue_seconds=settings.max_queue_seconds)
            await asyncio.to_thread(batcher.calibrate)  # the queue's bound in particles, from this machine's speed
            batcher.start()
            served.batcher = batcher
        batchers = [s.batcher for s in state.served.values()]
        state.metrics.pending.set_function(lambda: sum(b.pending for b in batchers))
        state.metrics.queue_capacity.set(state.batcher.capacity)
        state.metrics.buffered.set_function(lambda: state.buffered_bytes)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            for batcher in batchers:  # each finishes what is queued, within the drain's deadline
                await batcher.stop(settings.shutdown_timeout_s)

    app = FastAPI(title="zdc-sim", version=__version__, lifespan=lifespan,
                  description="Fast simulation of the ALICE ZDC's neutron (ZN) and proton (ZP) calorimeters: "
                              "particles in, responses (ZN 44 x 44, ZP 30 x 56) and PMT channels out.")
    app.state.zdc = state
    install_handlers(app)
    native.add_routes(app, state)
    oip.add_routes(app, state)
    app.add_middleware(FastLane, routes=app.router.routes)  # read when the stack is built: every route is in
    app.add_middleware(Guard, settings=settings, token=token)  # before the routes: nothing runs for a refused request
    app.add_middleware(_Observe, state=state)  # outermost: counts every answer, the fast lane's and refusals too
    return app
