"""What the routes share: settings and, once loaded, the simulator, batcher and metrics; the one
answer to "is the model ready", the bytes of request bodies held, and the one path from
validated particles to a simulation."""

from __future__ import annotations

import asyncio

import numpy as np

from zdc_sim.simulator import Simulation, Simulator

from .batcher import ClientGone, DynamicBatcher
from .errors import ServiceError
from .metrics import Metrics
from .settings import Settings

NOT_READY = "the model is not loaded yet; retry once /health/ready answers 200"


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.simulator: Simulator | None = None
        self.batcher: DynamicBatcher | None = None
        self.metrics: Metrics | None = None
        self.ready = False
        self.buffered_bytes = 0  # request bodies held in memory now, all requests together

    def hold_body_bytes(self, scope: dict, n: int) -> None:
        """Count n more bytes of a request body held in memory, or 503 when all requests together
        would hold more than max_buffered_bytes; what a request held is let go when it ends
        (`release_body_bytes`, called by the outermost middleware)."""
        limit = self.settings.max_buffered_bytes
        if self.buffered_bytes + n > limit:
            raise ServiceError(503, f"the server holds {self.buffered_bytes} bytes of request bodies; this one "
                                    f"would exceed the limit of {limit} (max_buffered_bytes); retry later",
                               {"Retry-After": "1", "Connection": "close"})
        self.buffered_bytes += n
        scope["zdc.held_bytes"] = scope.get("zdc.held_bytes", 0) + n

    def release_body_bytes(self, scope: dict) -> None:
        self.buffered_bytes -= scope.pop("zdc.held_bytes", 0)

    @property
    def version(self) -> str:
        return self.simulator.model_version if self.simulator else "unloaded"

    @property
    def ready_status(self) -> int:
        """The HTTP status of every readiness route: 200 once loaded and warmed up, else 503."""
        return 200 if self.ready else 503

    def require_ready(self) -> None:
        if not self.ready:
            raise ServiceError(503, NOT_READY, {"Retry-After": "1"})

    async def simulate(self, raw: np.ndarray, seed: int | None, extrapolate: bool = False,
                       source: str = "particles", row_start: int = 0, *, disconnected=None,
                       timeout_s: float | None = None) -> Simulation:
        """Validated features through the batcher: 413 / 422 for too many or no particles, 422
        (DomainError) for particles outside the trained feature ranges unless `extrapolate`; a
        full queue raises QueueFull (503). `row_start`: the request holds rows row_start.. of a
        larger seeded input (a client that split it), so it gets those rows' random inputs.
        `disconnected`: an async function that returns when the client has gone (the ASGI receive
        once the body is read), whose request is then dropped from the queue (ClientGone);
        `timeout_s`: the client's own deadline (DeadlineExceeded, 504)."""
        self.require_ready()
        n, limit = len(raw), self.settings.max_particles_per_request
        if n > limit:
            raise ServiceError(413, f"request has {n} particles; expected at most {limit} per request")
        if n == 0:
            raise ServiceError(422, "request has 0 particles; expected at least 1")
        if not extrapolate:
            self.simulator.check_domain(raw, source=source)
        work = self.batcher.simulate(raw, seed=seed, row_start=row_start, timeout_s=timeout_s)
        if disconnected is None:
            return await work
        simulation, gone = asyncio.ensure_future(work), asyncio.ensure_future(_gone(disconnected))
        try:
            await asyncio.wait({simulation, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not simulation.done():  # the client left first: its queued pieces are dropped unsimulated
            simulation.cancel()
            raise ClientGone("the client disconnected before its simulation")
        return simulation.result()


async def _gone(receive) -> None:
    """Returns once the ASGI server says the client disconnected (called after the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
