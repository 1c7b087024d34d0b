"""What every benchmark needs, written once: rates as the median of timed runs, rates over a
fixed time, and a zdc-sim server started in a subprocess and waited for until ready (also the
service tests' fixture).

Scripts run as `python bench/NAME.py` import it as `harness`; tests as `bench.harness`.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import httpx


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`zdc-sim serve` in a subprocess; `url` once ready, `returncode` after it stopped."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.env = env or {}  # ZDC_SIM_* settings on top of this process's environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--log-level", "warning", *args]
        self.returncode: int | None = None
        self.pid: int | None = None

    @contextmanager
    def running(self, timeout_s: float = 60.0) -> Iterator["Server"]:
        proc = subprocess.Popen([sys.executable, "-m", "zdc_sim", "serve", *self.args], env={**os.environ, **self.env})
        self.pid = proc.pid
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if httpx.get(self.url + "/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server {' '.join(self.args)} did not become ready (exit status {proc.poll()})")
                time.sleep(0.1)
            yield self
        finally:
            proc.terminate()
            try:
                self.returncode = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.returncode = proc.wait()
