"""What every benchmark needs, written once: rates as the median of timed runs, rates over a
fixed time, and (from service.process, which the tests use too) a zdc-sim server started in a
subprocess and waited for until ready.

Scripts run as `python bench/NAME.py` import it as `harness`; tests as `bench.harness`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Awaitable, Callable

from service.process import ServerProcess as Server  # noqa: F401  (the benchmarks' `from harness import Server`)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """Median wall time of `repeats` calls of fn (GPU work included: CUDA is synchronised)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_rate(fn: Callable[[], object], items: int, repeats: int, warmup: bool = False) -> float:
    """Items per second of one call of fn that handles `items`, median of `repeats` runs."""
    return items / median_seconds(fn, repeats, warmup)


def rate_for(fn: Callable[[int], int], seconds: float) -> float:
    """Items per second of calling fn(i) (which returns how many items it handled) again and
    again for `seconds` (at least once), after one warm-up call."""
    fn(0)
    _sync()
    n, calls, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds or calls == 0:
        n += fn(calls)
        calls += 1
    _sync()
    return n / (time.perf_counter() - started)


async def closed_loop(url: str, clients: int, seconds: float, request: Callable[[object], Awaitable[None]],
                      timeout_s: float = 300.0) -> float:
    """`clients` concurrent keep-alive connections (aiohttp: httpx's pool itself became the
    bottleneck above ~16 concurrent requests on 2 cores), each awaiting `request(session)` back to
    back for `seconds`; returns the seconds it took."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        stop = time.perf_counter() + seconds

        async def client():
            while time.perf_counter() < stop:
                await request(session)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - started
