"""What the routes share: settings and, once loaded, the simulator, batcher and metrics; the one
answer to "is the model ready", and the one path from validated particles to a simulation."""

from __future__ import annotations

import numpy as np

from zdc_sim.simulator import Simulation, Simulator

from .batcher import DynamicBatcher
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
                       source: str = "particles", row_start: int = 0) -> Simulation:
        """Validated features through the batcher: 413 / 422 for too many or no particles, 422
        (DomainError) for particles outside the trained feature ranges unless `extrapolate`; a
        full queue raises QueueFull (503). `row_start`: the request holds rows row_start.. of a
        larger seeded input (a client that split it), so it gets those rows' random inputs."""
        self.require_ready()
        n, limit = len(raw), self.settings.max_particles_per_request
        if n > limit:
            raise ServiceError(413, f"request has {n} particles; expected at most {limit} per request")
        if n == 0:
            raise ServiceError(422, "request has 0 particles; expected at least 1")
        if not extrapolate:
            self.simulator.check_domain(raw, source=source)
        return await self.batcher.simulate(raw, seed=seed, row_start=row_start)
