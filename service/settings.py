"""Service settings: one pydantic model, filled from ZDC_SIM_* environment variables and flags."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from zdc_sim.errors import ZdcError

ENV_PREFIX = "ZDC_SIM_"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseModel, frozen=True):
    checkpoint: str | None = None  # the ZN model; None: the one shipped with zdc-sim
    zp_checkpoint: str | None = None  # the ZP model; None: the shipped one when the package has it; "none": ZN only
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    # torch: faster than ONNX Runtime at the batches a loaded server runs; onnxruntime for single
    # particles (docs/benchmarks.md)
    engine: Literal["torch", "onnxruntime", "auto"] = "torch"
    bf16: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the generator for fixed batch buckets, compiled at warm-up
    model_name: str = "zdc-zn"  # the ZN model's name (OIP, headers, metrics); the ZP model is "zdc-zp"
    max_batch_size: int = Field(1024, ge=1, le=65536)  # particles per forward pass
    max_queue_delay_ms: float = Field(2.0, ge=0, le=1000)  # how long a batch waits to fill up (with company)
    dynamic_batching: bool = True  # off: every request piece runs alone
    max_particles_per_request: int = Field(65536, ge=1)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # a body, after decompression
    # The queue is bounded in time: at warm-up this machine's throughput turns it into particles
    # (at most max_queue_particles); beyond it, or once the oldest queued request has waited this
    # long, 503 with Retry-After.
    max_queue_seconds: float = Field(2.0, gt=0)
    max_queue_particles: int = Field(262144, ge=1)
    max_export_bytes: int = Field(256 * 1024 * 1024, ge=1024)  # POST /v1/export uploads
    max_export_particles: int = Field(65536, ge=1)  # POST /v1/export: particles per upload (~7.8 kB each out)
    max_buffered_bytes: int = Field(256 * 1024 * 1024, ge=1024)  # request bodies held at once, all requests
    body_timeout_s: float = Field(60.0, gt=0)  # to receive a whole body (slow senders get 408)
    header_timeout_s: float = Field(10.0, gt=0)  # to receive a request's headers, else the connection is closed
    max_connections: int = Field(1024, ge=1)  # open connections and requests; beyond, 503
    keep_alive_s: float = Field(5.0, gt=0)  # an idle kept-alive connection is closed after this
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Every route but health needs "Authorization: Bearer <token>" when a token is set (or read from a file).
    api_token: SecretStr | None = None
    api_token_file: str | None = None
    # Listening beyond loopback without a token is refused unless the network in front authenticates.
    network_authenticates: bool = False
    # Host header names accepted besides loopback ones; on a loopback bind only loopback names are
    # accepted unless listed here, elsewhere any name unless some are listed.
    allowed_hosts: tuple[str, ...] = ()
    shutdown_timeout_s: float = Field(30.0, ge=0)  # drain of requests in flight on SIGTERM
    threads: int | None = Field(None, ge=1)  # torch CPU threads
    # glibc's allocator: arenas (0: glibc's default) and how often free memory is handed back (0: never);
    # a flat memory curve under load (docs/service.md)
    malloc_arenas: int = Field(2, ge=0)
    malloc_trim_s: float = Field(10.0, ge=0)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return tuple(h.strip().lower() for h in value.split(",") if h.strip()) if isinstance(value, str) else value

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

    def token(self) -> str | None:
        """The bearer token, from api_token or api_token_file (one line; surrounding blanks dropped)."""
        if self.api_token is not None and self.api_token_file is not None:
            raise ZdcError("service settings: both api_token and api_token_file are set; expected one")
        if self.api_token_file is not None:
            try:
                token = Path(self.api_token_file).read_text().strip()
            except OSError as exc:
                raise ZdcError(f"service settings: api_token_file '{self.api_token_file}' cannot be read "
                               f"({exc.strerror}); expected a file holding the token") from None
            if not token:
                raise ZdcError(f"service settings: api_token_file '{self.api_token_file}' is empty; expected the token")
            return token
        return self.api_token.get_secret_value() if self.api_token is not None else None

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback with no token unless the network in front authenticates."""
        if not is_loopback(self.host) and self.token() is None and not self.network_authenticates:
            raise ZdcError(f"service settings: host '{self.host}' accepts other machines but no api_token is set; "
                           f"expected ZDC_SIM_API_TOKEN or ZDC_SIM_API_TOKEN_FILE, or ZDC_SIM_NETWORK_AUTHENTICATES=true "
                           f"when a proxy in front of the server authenticates (docs/deployment.md)")

    def accepted_hosts(self) -> frozenset[str] | None:
        """Host header names accepted (besides loopback addresses on a loopback bind); None: any."""
        if is_loopback(self.host):
            return frozenset(LOOPBACK_NAMES) | frozenset(self.allowed_hosts)
        return frozenset(self.allowed_hosts) or None
