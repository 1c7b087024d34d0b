"""What the routes share: settings and, once loaded, one simulator and batcher per served
detector (ZN, and ZP when a ZP model is served) and the metrics; the one answer to "are the models
ready", the bytes of request bodies held, and the one path from validated particles to a simulation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from zdc_sim.simulator import Simulation, Simulator

from .batcher import ClientGone, DynamicBatcher
from .errors import ServiceError
from .metrics import Metrics
from .settings import Settings

NOT_READY = "the model is not loaded yet; retry once /health/ready answers 200"
DEFAULT_DETECTOR = "zn"


@dataclass
class Served:
    """One served model: its detector, its OIP name, its simulator and batcher."""

    detector: str
    name: str
    simulator: Simulator
    batcher: DynamicBatcher | None = None


class ServiceState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.served: dict[str, Served] = {}  # by detector, the ZN first
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

    def model_name(self, detector: str) -> str:
        return self.settings.model_name if detector == DEFAULT_DETECTOR else f"zdc-{detector}"

    @property
    def default(self) -> Served | None:
        return self.served.get(DEFAULT_DETECTOR) or next(iter(self.served.values()), None)

    @property
    def simulator(self) -> Simulator | None:
        """The default (ZN) model's simulator."""
        return self.default.simulator if self.default else None

    @property
    def batcher(self) -> DynamicBatcher | None:
        return self.default.batcher if self.default else None

    @property
    def version(self) -> str:
        return self.simulator.model_version if self.simulator else "unloaded"

    def detector(self, name: str | None, source: str = "query 'detector'") -> Served:
        """The served model of detector `name` (default the ZN), or 422 naming the served ones."""
        name = (name or DEFAULT_DETECTOR).lower()
        if name not in self.served:
            raise ServiceError(422, f"{source}: {name!r} is not served; expected one of {sorted(self.served)}")
        return self.served[name]

    def by_model_name(self, model: str) -> Served:
        """The served model of OIP name `model`, or 404 naming the served ones."""
        for served in self.served.values():
            if served.name == model:
                return served
        raise ServiceError(404, f"model '{model}' is not served; expected one of {[s.name for s in self.served.values()]}")

    @property
    def ready_status(self) -> int:
        """The HTTP status of every readiness route: 200 once loaded and warmed up, else 503."""
        return 200 if self.ready else 503

    def require_ready(self) -> None:
        if not self.ready:
            raise ServiceError(503, NOT_READY, {"Retry-After": "1"})

    async def simulate(self, raw: np.ndarray, seed: int | None, extrapolate: bool = False,
                       source: str = "particles", row_start: int = 0, *, disconnected=None,
                       timeout_s: float | None = None, detector: str | None = None) -> Simulation:
        """Validated features through the batcher: 413 / 422 for too many or no particles, 422
        (DomainError) for particles outside the trained feature ranges unless `extrapolate`; a
        full queue raises QueueFull (503). `row_start`: the request holds rows row_start.. of a
        larger seeded input (a client that split it), so it gets those rows' random inputs.
        `disconnected`: an async function that returns when the client has gone (the ASGI receive
        once the body is read), whose request is then dropped from the queue (ClientGone);
        `timeout_s`: the client's own deadline (DeadlineExceeded, 504). `detector`: which served
        model (default the ZN)."""
        self.require_ready()
        served = self.detector(detector)
        n, limit = len(raw), self.settings.max_particles_per_request
        if n > limit:
            raise ServiceError(413, f"request has {n} particles; expected at most {limit} per request")
        if n == 0:
            raise ServiceError(422, "request has 0 particles; expected at least 1")
        if not extrapolate:
            served.simulator.check_domain(raw, source=source)
        work = served.batcher.simulate(raw, seed=seed, row_start=row_start, timeout_s=timeout_s)
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
