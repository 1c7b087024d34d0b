"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = tuple(2**i for i in range(17))


class Metrics:
    def __init__(self, model: str, version: str):
        self.registry = CollectorRegistry()
        r, labels = self.registry, {"model": model, "version": version}
        self._labels = labels
        self.requests = Counter("zdc_requests", "HTTP requests by route and status code", ["route", "code"], registry=r)
        self.failures = Counter("zdc_request_failures", "HTTP requests answered 4xx or 5xx", ["route", "code"], registry=r)
        self.latency = Histogram("zdc_request_duration_seconds", "time from request to response", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("zdc_queue_duration_seconds", "time a request piece waited for its batch",
                               ["model", "version"], buckets=LATENCY_BUCKETS, registry=r).labels(**labels)
        self.compute = Histogram("zdc_compute_duration_seconds", "time of one forward pass",
                                 ["model", "version"], buckets=LATENCY_BUCKETS, registry=r).labels(**labels)
        self.batch = Histogram("zdc_batch_size", "particles per forward pass", ["model", "version"],
                               buckets=BATCH_BUCKETS, registry=r).labels(**labels)
        self.particles = Counter("zdc_particles_simulated", "particles simulated", ["model", "version"],
                                 registry=r).labels(**labels)
        self.dropped = Counter("zdc_particles_dropped", "queued particles dropped unsimulated: their client had gone "
                               "(cancelled) or their deadline had passed", ["model", "version", "reason"], registry=r)
        self.queue_capacity = Gauge("zdc_queue_capacity_particles", "particles the queue admits (max_queue_seconds "
                                    "of the throughput measured at start)", ["model", "version"], registry=r).labels(**labels)
        self.buffered = Gauge("zdc_buffered_request_bytes", "request body bytes held in memory", registry=r)
        self.pending = Gauge("zdc_pending_particles", "particles queued or being simulated", ["model", "version"],
                             registry=r).labels(**labels)

    def observe_batch(self, batch: int, compute_s: float, queue_s: list[float]) -> None:
        self.batch.observe(batch)
        self.compute.observe(compute_s)
        self.particles.inc(batch)
        for q in queue_s:
            self.queue.observe(q)

    def observe_dropped(self, reason: str, particles: int) -> None:
        self.dropped.labels(self._labels["model"], self._labels["version"], reason).inc(particles)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        if code >= 400:
            self.failures.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)
