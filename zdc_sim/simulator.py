"""The one object everything that simulates goes through: load a trained generator, simulate
responses for particles, on CPU or CUDA, in batches.

    sim = Simulator.load()                       # the default model shipped with the package
    out = sim.simulate(features, seed=1)         # features (N, 9) in the units of zdc_sim.features
    out.counts, out.channels                     # (N, 44, 44) photon counts, (N, 5) PMT channel sums
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, features
from .errors import ZdcError
from .geometry import SHAPE, channel_sums
from .models import Generator, ModelConfig
from .onnx_model import OnnxRuntimeEngine, random_feeds

DEFAULT_BATCH = 4096  # rows per forward pass on CUDA
# On CPU smaller passes keep the 44 x 44 activations in cache: 2,643 samples/s for 1,024 particles in
# passes of 128 against 1,773 in one pass (the default model, 2 cores).
CPU_BATCH = 128
LATENT_BLOCK = 64  # rows per independently seeded block of random inputs
ENGINES = ("torch", "onnxruntime")


def default_model_path() -> Path:
    """The default model shipped inside the package (see zdc_sim/default_model/README.md)."""
    return Path(str(resources.files("zdc_sim") / "default_model" / "model.safetensors"))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZdcError(f"device '{device}' was requested but no CUDA device is available; expected 'cpu' or 'auto'")
    return device


def seeded_normals(n: int, width: int, seed: int | None = None, start: int = 0) -> np.ndarray:
    """Rows start .. start + n - 1 of the (n, width) float32 standard normals of `seed` (random if
    None): blocks of LATENT_BLOCK rows, each drawn from a numpy generator seeded (seed, block), so
    any row range is found without drawing what comes before it. A generator fills rows in order:
    drawing the first k rows of a block gives exactly those rows of the whole block, so one
    particle costs one row, not a block."""
    if n <= 0:
        return np.empty((0, width), np.float32)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    parts = []
    for block in range(start // LATENT_BLOCK, (start + n - 1) // LATENT_BLOCK + 1):
        first = block * LATENT_BLOCK
        lo, hi = max(start, first) - first, min(start + n, first + LATENT_BLOCK) - first
        parts.append(np.random.default_rng([int(seed), block]).standard_normal((hi, width), np.float32)[lo:])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def bucket_sizes(batch_size: int) -> list[int]:
    """Powers of two from 1 up to batch_size, and batch_size itself."""
    sizes = [1 << i for i in range(batch_size.bit_length()) if 1 << i < batch_size]
    return sizes + [batch_size]


@dataclass(frozen=True)
class Simulation:
    counts: np.ndarray  # (N, 44, 44) float32 photon counts
    channels: np.ndarray  # (N, 5) float32 channel sums (towers 1-4, common)


class Simulator:
    """A trained generator with its feature standardisation. Use `Simulator.load(path)`."""

    def __init__(self, generator: Generator, standardizer: features.Standardizer, *, device=None,
                 bf16: bool = False, batch_size: int | None = None, compile: bool = False,
                 metadata: dict | None = None, engine: str = "torch"):
        if engine not in ENGINES + ("auto",):
            raise ZdcError(f"engine '{engine}' is not known; expected one of {list(ENGINES)} or 'auto'")
        self.device = pick_device("cpu" if engine == "onnxruntime" and device in (None, "auto") else device)
        if engine == "auto":  # ONNX Runtime where it can run (CPU, fp32): ~1.7x faster for single particles
            engine = "onnxruntime" if self.device.type == "cpu" and not (bf16 or compile) else "torch"
        if engine == "onnxruntime" and (self.device.type != "cpu" or bf16 or compile):
            raise ZdcError(f"engine 'onnxruntime' runs on CPU in fp32; found device '{self.device}', bf16={bf16}, "
                           f"compile={compile} (use engine 'torch' for those)")
        if bf16 and self.device.type != "cuda":
            raise ZdcError(f"bf16 inference needs a CUDA device; found '{self.device}'")
        if batch_size is None:  # rows per forward pass
            batch_size = DEFAULT_BATCH if self.device.type == "cuda" else CPU_BATCH
        if batch_size < 1:
            raise ZdcError(f"batch_size must be >= 1; found {batch_size}")
        # channels-last convolutions run about 1.8x faster on CPU (oneDNN) for this generator.
        self.generator = generator.to(self.device).to(memory_format=torch.channels_last).eval()
        self.standardizer = standardizer
        self.bf16, self.batch_size = bf16, batch_size
        self.metadata = metadata or {}
        ranges = self.metadata.get("feature_ranges")
        self.domain = features.Domain.from_dict(ranges) if ranges else None  # None: checkpoints before ranges
        # Compiled graphs are specialised to a shape: batches are padded up to a few fixed buckets
        # (powers of two up to batch_size), so a server compiles each bucket once, at warm-up.
        self.buckets = bucket_sizes(batch_size) if compile else None
        if compile:
            self._forward = torch.compile(self.generator.counts, dynamic=False)
        elif self.device.type == "cpu" and engine == "torch":
            self._forward = self._traced_counts()
        else:
            self._forward = self.generator.counts
        self._pinned = self.device.type == "cuda"  # page-locked host buffers: asynchronous copies
        self.engine = engine
        self._onnx = None
        if engine == "onnxruntime":
            self._onnx = OnnxRuntimeEngine(self, threads=torch.get_num_threads())

    def _traced_counts(self):
        """The generator's `counts` traced into one TorchScript call: the same kernels and
        bit-identical counts, but the GIL is released once for the whole forward pass instead of
        around each of its ~100 operators. Beside a busy Python thread (a server's event loop
        parsing requests) an eager pass of 64 particles waits for the GIL at every operator:
        19 ms alone, 1.7 s beside one; traced 14 ms and 37 ms (2 cores)."""
        example = (torch.zeros(2, self.random_dim), torch.zeros(2, features.N_FEATURES))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            traced = torch.jit.trace_module(self.generator, {"counts": example}, check_trace=False)
        return traced.counts

    def warmup(self) -> None:
        """Run every batch bucket once (compiles them when compiled), so no request pays for it."""
        raw = np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, 939.6, 0]], np.float32)  # a 2.5 TeV neutron
        for n in self.buckets or [1, self.batch_size]:
            self.simulate_latents(np.repeat(raw, n, 0), self.latents(n, 0))

    @classmethod
    def load(cls, path=None, *, device=None, bf16: bool = False, batch_size: int | None = None,
             compile: bool = False, engine: str = "torch") -> "Simulator":
        """Load a checkpoint written by `zdc-sim train` (best or last), or the default model.
        `engine`: 'torch' (CPU or CUDA), 'onnxruntime' (CPU; the exported graph, see onnx_model) or
        'auto' (ONNX Runtime on CPU in fp32, else torch). On 2 CPU cores ONNX Runtime simulates one
        particle ~1.7x faster, torch batches of 64 or more ~1.5x faster (bench/engines.py)."""
        path = default_model_path() if path is None else Path(path)
        tensors, meta = checkpoint.load(path)
        meta = {**meta, "checksum": checkpoint.file_fingerprint(path), "path": str(path)}
        try:
            generator = Generator(ModelConfig.from_dict(meta["model"]))
            weights = checkpoint.unprefixed("generator", tensors)
            weights.setdefault("intensity", torch.ones(()))  # checkpoints from before post-processing
            weights.setdefault("shape_temperature", torch.ones(()))  # and from before the shape's
            generator.load_state_dict(weights)
            standardizer = features.Standardizer.from_dict(meta["standardizer"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise checkpoint.CheckpointError(
                f"checkpoint '{path}' does not hold a generator this version can load ({type(exc).__name__}: "
                f"{str(exc)[:300]}); expected the 'model', 'standardizer' metadata and 'generator.*' tensors"
            ) from None
        return cls(generator, standardizer, device=device, bf16=bf16, batch_size=batch_size, compile=compile,
                   metadata=meta, engine=engine)

    @property
    def latent_dim(self) -> int:
        return self.generator.config.latent_dim

    @property
    def random_dim(self) -> int:
        """Random inputs per particle: the latent, then one photon-noise value per fibre."""
        return self.generator.config.random_dim

    @torch.inference_mode()
    def simulate(self, particle_features, seed: int | None = None, *, extrapolate: bool = False) -> Simulation:
        """Simulate one response per row of `particle_features` (N, 9).

        Rows outside the feature ranges the model was trained on raise DomainError naming the row,
        feature, value and range, unless `extrapolate` asks for the model's guess there.

        Latents are drawn up front on the CPU from `seed` (see `latents`), so a seed gives the same
        responses whatever the batch size, and the first k rows of N particles get the same
        responses as those k particles alone (up to float rounding of batched kernels).
        """
        raw = features.validate(particle_features)
        if not extrapolate:
            self.check_domain(raw)
        return self.simulate_latents(raw, self.latents(len(raw), seed))

    def outside_domain(self, raw_features: np.ndarray) -> np.ndarray:
        """(N,) True for rows outside the trained feature ranges (all False without recorded ranges)."""
        if self.domain is None:
            return np.zeros(len(raw_features), bool)
        return self.domain.outside(raw_features)

    def check_domain(self, raw_features: np.ndarray, source: str = "features") -> None:
        """DomainError for the first row outside the trained feature ranges."""
        if self.domain is not None:
            self.domain.check(raw_features, source=source)

    def latents(self, n: int, seed: int | None = None, start: int = 0) -> np.ndarray:
        """The (n, random_dim) float32 random inputs (latent, then photon noise) of rows start ..
        start + n - 1 for `seed` (random if None): standard normals in blocks of LATENT_BLOCK rows
        drawn from numpy generators seeded (seed, block),
        so any row range is found without drawing what comes before it: an export that resumes at
        entry k, or reads in chunks of any size, gets the same latents as one pass."""
        return seeded_normals(n, self.random_dim, seed, start)

    def random_inputs(self, n: int, seed: int | None = None, start: int = 0) -> dict[str, np.ndarray]:
        """Every random input of the exported graph for rows start .. start + n - 1, by input name
        (LATENTS, and PHOTON_NOISE with photon statistics), drawn exactly as `simulate` draws them:
        the same seed gives the same responses from torch, ONNX Runtime and a remote server."""
        return random_feeds(self.latents(n, seed, start), self.latent_dim, self.generator.config.photon_noise)

    @torch.inference_mode()
    def simulate_latents(self, raw_features: np.ndarray, latents: np.ndarray) -> Simulation:
        """Simulate already validated features with given latents: lets callers (the service's
        dynamic batcher, export) run many seeded requests in one pass with the same results."""
        counts = np.empty((len(raw_features), *SHAPE), np.float32)
        if self._onnx is None:
            z = torch.from_numpy(np.ascontiguousarray(latents, np.float32))
            x = torch.from_numpy(self.standardizer.transform(raw_features))
        for start in range(0, len(raw_features), self.batch_size):
            stop = start + self.batch_size
            counts[start:stop] = (self._onnx.counts(raw_features[start:stop], latents[start:stop]) if self._onnx
                                  else self._counts(z[start:stop], x[start:stop]).cpu().numpy())
        return Simulation(counts, channel_sums(counts).astype(np.float32))

    @property
    def model_version(self) -> str:
        """The first 12 hex digits of the checkpoint's sha256: names the exact weights served."""
        return self.metadata.get("checksum", "sha256:unknown").split(":")[1][:12]

    def _counts(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = len(z)
        if self.buckets is not None:  # pad to the bucket's fixed shape; the padding rows are dropped
            size = next(b for b in self.buckets if b >= n)
            z, x = (torch.cat([t, t.new_zeros(size - n, t.shape[1])]) if size > n else t for t in (z, x))
        if self._pinned:
            z, x = z.pin_memory(), x.pin_memory()
        z, x = z.to(self.device, non_blocking=True), x.to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            counts = self._forward(z, x)[:n].float()
        if self._pinned:  # copy back into page-locked memory without blocking, then wait once
            host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            host.copy_(counts, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return host
        return counts
