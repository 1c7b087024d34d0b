"""`zdc-sim serve` in a subprocess, waited for until ready and stopped with SIGTERM: what the
benchmarks and the service tests run against (a real uvicorn server, not an in-process app)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`zdc-sim serve` in a subprocess; `url` once ready, `returncode` after it stopped."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.env = env or {}  # ZDC_SIM_* settings on top of this process's environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--log-level", "warning", *args]
        self.returncode: int | None = None
        self.pid: int | None = None

    @contextmanager
    def running(self, timeout_s: float = 60.0) -> Iterator["ServerProcess"]:
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
