"""Dynamic batching: requests wait at most `max_queue_delay_ms` (while they keep company) to be
coalesced into one forward pass of up to `max_batch_size` particles; larger requests are split
into pieces. Forward passes run one at a time in a worker thread, so the event loop keeps
accepting and parsing requests meanwhile. Each piece carries its own draws, or the seed and
first row to draw them from in the worker thread (off the event loop, the bottleneck of a server
flooded with single particles), so a seeded request gets the same draws however it was batched.

The queue is bounded in time, so that an admitted request is answered within about
`max_queue_seconds`: `calibrate` measures this machine's throughput and turns the bound into
particles; a request that would overflow them, or that arrives while the oldest queued piece has
waited longer than the bound, is refused at once (QueueFull, with the expected wait). A piece
whose caller has gone (cancelled) or whose deadline has passed is dropped before it is simulated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from zdc_sim.engines import random_seed
from zdc_sim.simulator import WARMUP_PARTICLE, Simulation, Simulator


class QueueFull(Exception):
    """The queue holds as much work as the time bound allows: the client should retry after
    `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientGone(Exception):
    """The client closed its connection while its request waited; nobody reads an answer."""


class DeadlineExceeded(Exception):
    """A request's own deadline passed while it waited in the queue; it was not simulated."""


@dataclass
class _Piece:
    features: np.ndarray
    draws: np.ndarray | None  # None: drawn in the worker from (seed, start)
    seed: int
    start: int
    future: asyncio.Future
    deadline: float | None = None  # time.perf_counter() after which the caller no longer wants it
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, simulator: Simulator, max_batch_size: int, max_queue_delay_ms: float,
                 max_queue_particles: int, enabled: bool = True, observe=None, observe_dropped=None,
                 max_queue_seconds: float | None = None):
        self.simulator = simulator
        self.max_batch = max_batch_size
        self.delay = max_queue_delay_ms / 1000
        self.max_particles = max_queue_particles
        self.capacity = max_queue_particles  # particles; calibrate() derives it from max_queue_seconds
        self.max_wait = max_queue_seconds  # None: bounded in particles only
        self.rate: float | None = None  # particles/s of a full batch, measured by calibrate()
        self.enabled = enabled
        self.observe = observe or (lambda **kw: None)  # metrics hook: batch, queue_s, compute_s
        self.observe_dropped = observe_dropped or (lambda reason, particles: None)
        self.pending = 0  # particles queued or being simulated
        self.lag = 0.0  # how long the first piece of the latest batch had waited
        self._queue: asyncio.Queue[_Piece] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="simulate")
        self._worker: asyncio.Task | None = None
        self._held_back: _Piece | None = None  # the piece that did not fit the last batch: first of the next
        self._batches_shared = collections.deque(maxlen=4)  # whether each of the last batches held several requests

    def calibrate(self, repeats: int = 3) -> None:
        """Measure the particles/s of full batches on this machine (blocking: call it in a thread
        at warm-up) and bound the queue to max_queue_seconds of them."""
        raw = np.repeat(WARMUP_PARTICLE, self.max_batch, 0)
        draws = self.simulator.draws(self.max_batch, 0)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.simulator.simulate_draws(raw, draws)
            times.append(time.perf_counter() - started)
        self.rate = self.max_batch / sorted(times)[len(times) // 2]
        if self.max_wait is not None:
            self.capacity = min(self.max_particles, max(self.max_batch, int(self.rate * self.max_wait)))

    def expected_wait_s(self) -> float:
        """Seconds the queued work takes at the measured rate (1 before calibration)."""
        return self.pending / self.rate if self.rate else 1.0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout_s: float | None = None) -> None:
        """Finish every piece already queued (for at most timeout_s), then stop."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        while self.pending and (deadline is None or time.perf_counter() < deadline):
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    async def simulate(self, raw_features: np.ndarray, draws: np.ndarray | None = None, *,
                       seed: int | None = None, row_start: int = 0, timeout_s: float | None = None) -> Simulation:
        """Simulate validated features with the given draws, or else with the draws of rows
        row_start.. of `seed` (random when None), `Simulator.draws`'s. `timeout_s`: the caller's
        own deadline; pieces still queued when it passes are dropped (DeadlineExceeded)."""
        n = len(raw_features)
        self._admit(n)
        self.pending += n
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        if seed is None:
            seed = random_seed()  # one seed for all pieces of the request
        loop = asyncio.get_running_loop()
        pieces = [_Piece(raw_features[i : i + self.max_batch], None if draws is None else draws[i : i + self.max_batch],
                         seed, row_start + i, loop.create_future(), deadline) for i in range(0, n, self.max_batch)]
        for piece in pieces:
            self._queue.put_nowait(piece)
        try:
            if len(pieces) == 1:
                return await pieces[0].future
            results = await asyncio.gather(*(p.future for p in pieces))
        finally:
            self.pending -= n
        return Simulation(np.concatenate([r.counts for r in results]), np.concatenate([r.channels for r in results]))

    def _admit(self, n: int) -> None:
        """QueueFull unless n more particles fit the bound: in particles, and in time while the
        latest batch's oldest piece had waited longer than max_queue_seconds."""
        retry = max(1, math.ceil(self.expected_wait_s()))
        if self.pending + n > self.capacity:
            bound = f" ({self.max_wait:g} s of work at {self.rate:,.0f} particles/s)" if self.max_wait and self.rate else ""
            raise QueueFull(f"Exceeds maximum queue size: {self.pending} particles queued, request of {n}, "
                            f"limit {self.capacity}{bound}; retry after {retry} s", retry)
        if self.max_wait is not None and self.pending and self.lag > self.max_wait:
            raise QueueFull(f"Exceeds maximum queue time: queued requests wait {self.lag:.1f} s, limit "
                            f"{self.max_wait:g} s; retry after {retry} s", retry)

    def _take(self, piece: _Piece) -> bool:
        """Whether a queued piece is still wanted; a cancelled one or one past its deadline is
        dropped (and counted) here, before it costs a forward pass."""
        if piece.future.done():
            self.observe_dropped("cancelled", len(piece.features))
            return False
        if piece.deadline is not None and time.perf_counter() > piece.deadline:
            piece.future.set_exception(DeadlineExceeded(
                f"request waited {time.perf_counter() - piece.enqueued:.3f} s in the queue, past its deadline; "
                f"not simulated"))
            self.observe_dropped("deadline", len(piece.features))
            return False
        return True

    async def _next_piece(self, deadline: float | None) -> _Piece | None:
        """The next wanted queued piece, waited for until `deadline` (time.perf_counter(); None:
        for ever). Dropped pieces do not extend the wait."""
        while True:
            wait_s = None if deadline is None else deadline - time.perf_counter()
            if wait_s is None:
                piece = await self._queue.get()
            elif wait_s <= 0:
                try:
                    piece = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    return None
            else:
                try:
                    piece = await asyncio.wait_for(self._queue.get(), wait_s)
                except asyncio.TimeoutError:
                    return None
            if self._take(piece):
                return piece

    async def _next_batch(self) -> list[_Piece]:
        """The pieces of the next forward pass: the first queued and, up to max_batch rows, those
        queued behind it or arriving within the queue delay. The delay is waited only while
        requests keep company (one of the last 4 batches held several): a lone client's request
        would wait it for nothing."""
        first = self._held_back if self._held_back is not None and self._take(self._held_back) else None
        self._held_back = None
        first = first or await self._next_piece(None)
        batch, rows = [first], len(first.features)
        self.lag = time.perf_counter() - first.enqueued
        if not self.enabled:
            return batch
        deadline = time.perf_counter() + (self.delay if any(self._batches_shared) else 0.0)
        while rows < self.max_batch:
            piece = await self._next_piece(deadline)
            if piece is None:
                break
            if rows + len(piece.features) > self.max_batch:
                self._held_back = piece
                break
            batch.append(piece)
            rows += len(piece.features)
        self._batches_shared.append(len(batch) > 1)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self._simulate, batch)
            except Exception as exc:  # a failure of the model must reach the callers, not kill the worker
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            done = time.perf_counter()
            self.observe(batch=len(out.counts), compute_s=done - started,
                         queue_s=[started - p.enqueued for p in batch])
            start = 0
            for p in batch:
                stop = start + len(p.features)
                if not p.future.done():
                    p.future.set_result(Simulation(out.counts[start:stop], out.channels[start:stop]))
                start = stop

    def _simulate(self, batch: list[_Piece]) -> Simulation:
        """One forward pass over the batch's pieces (in the worker thread)."""
        draws = [p.draws if p.draws is not None else self.simulator.draws(len(p.features), p.seed, p.start)
                   for p in batch]
        if len(batch) == 1:
            return self.simulator.simulate_draws(batch[0].features, draws[0])
        return self.simulator.simulate_draws(np.concatenate([p.features for p in batch]), np.concatenate(draws))
