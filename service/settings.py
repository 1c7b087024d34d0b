"""Service settings: one pydantic model, filled from ZDC_SIM_* environment variables and flags."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from zdc_sim.errors import ZdcError

ENV_PREFIX = "ZDC_SIM_"


class Settings(BaseModel, frozen=True):
    checkpoint: str | None = None  # None: the model shipped with zdc-sim
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    # torch: faster than ONNX Runtime at the batches a loaded server runs (64: 3,081-3,182 vs 2,017-2,052
    # samples/s in two runs on 2 cores, bench/engines.py; served 64 clients 1,350 vs 1,003/s); onnxruntime
    # ~1.7x faster for single particles.
    engine: Literal["torch", "onnxruntime", "auto"] = "torch"
    bf16: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the generator for fixed batch buckets, compiled at warm-up
    model_name: str = "zdc-zn"
    max_batch_size: int = Field(1024, ge=1, le=65536)  # particles per forward pass
    max_queue_delay_ms: float = Field(2.0, ge=0, le=1000)  # how long a batch waits to fill up (with company)
    dynamic_batching: bool = True  # off: every request piece runs alone
    max_particles_per_request: int = Field(65536, ge=1)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_queue_particles: int = Field(262144, ge=1)  # beyond this, 503 with Retry-After
    max_export_bytes: int = Field(256 * 1024 * 1024, ge=1024)  # POST /v1/export uploads
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    shutdown_timeout_s: float = Field(30.0, ge=0)  # drain of requests in flight on SIGTERM
    threads: int | None = Field(None, ge=1)  # torch CPU threads

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        """Environment (ZDC_SIM_MAX_BATCH_SIZE=512, ...) then the non-None overrides (flags)."""
        environ = os.environ if environ is None else environ
        values = {name: environ[ENV_PREFIX + name.upper()] for name in cls.model_fields
                  if ENV_PREFIX + name.upper() in environ}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ZdcError(f"service settings: {problems}") from None
