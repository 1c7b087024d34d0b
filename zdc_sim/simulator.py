"""The one object everything that simulates goes through: load a trained generator, simulate
responses for particles, on CPU or CUDA, in batches.

    sim = Simulator.load()                       # the shipped ZN model; Simulator.load("zp") the ZP's
    out = sim.simulate(features, seed=1)         # features (N, 9) in the units of zdc_sim.features
    out.counts, out.channels                     # (N, rows, columns) photon counts, (N, 5) PMT channel sums
    out.reached                                  # (N,) which particles reach the detector at all

A particle flying to the C side (pz <= 0) is simulated by the C-side calorimeter, the A side's
mirror image through z = 0: the model sees its mirror image, and the response is returned in the
global x-y frame, where the two are the same image. A particle that does not reach the detector
(zdc_sim.geometry.reaches: the bend of the separator dipole, the face and a margin) gets an empty
response without running the model, as in the reference Monte Carlo.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, features, geometry
from .engines import make_engine, seeded_normals
from .errors import ZdcError
from .exports.onnx import random_feeds
from .geometry import channel_sums
from .models import Generator, ModelConfig, with_post_processing_defaults

DEFAULT_BATCH = 4096  # rows per forward pass on CUDA
# On CPU smaller passes keep the 44 x 44 activations in cache (faster than one large pass: docs/benchmarks.md).
CPU_BATCH = 128
WARMUP_PARTICLE = np.array([[2500.0, 0, 0, 0, 0, 0, 2500.0, 939.6, 0]], np.float32)  # a 2.5 TeV neutron


CHUNK_ROWS = 16_384  # rows of simulate_chunks: ~130 MB of ZN images (30,000 x 10 at once took ~10 GB)
SHIPPED = {"zn": "model.safetensors", "zp": "zp.safetensors"}  # in zdc_sim/default_model/


def default_model_path(detector: str = "zn") -> Path:
    """The model shipped inside the package for `detector` (see zdc_sim/default_model/README.md)."""
    name = SHIPPED[geometry.detector(detector).name]
    return Path(str(resources.files("zdc_sim") / "default_model" / name))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZdcError(f"device '{device}' was requested but no CUDA device is available; expected 'cpu' or 'auto'")
    return device


@dataclass(frozen=True)
class Simulation:
    counts: np.ndarray  # (N, rows, columns) float32 photon counts (ZN 44 x 44, ZP 30 x 56)
    channels: np.ndarray  # (N, 5) float32 channel sums (towers 1-4, common)
    reached: np.ndarray | None = None  # (N,) bool: the particle reaches the detector (else all zeros)


class Simulator:
    """A trained generator with its feature standardisation. Use `Simulator.load(path)`."""

    def __init__(self, generator: Generator, standardizer: features.Standardizer, *, device=None,
                 bf16: bool = False, batch_size: int | None = None, compile: bool = False,
                 metadata: dict | None = None, engine: str = "torch"):
        self.device = pick_device("cpu" if engine == "onnxruntime" and device in (None, "auto") else device)
        if engine == "auto":  # ONNX Runtime where it can run (CPU, fp32): faster for single particles
            engine = "onnxruntime" if self.device.type == "cpu" and not (bf16 or compile) else "torch"
        if batch_size is None:  # rows per forward pass
            batch_size = DEFAULT_BATCH if self.device.type == "cuda" else CPU_BATCH
        if batch_size < 1:
            raise ZdcError(f"batch_size must be >= 1; found {batch_size}")
        self.standardizer = standardizer
        self.bf16, self.batch_size = bf16, batch_size
        self.metadata = metadata or {}
        self.detector = generator.config.geometry
        ranges = self.metadata.get("feature_ranges")
        self.domain = features.Domain.from_dict(ranges) if ranges else None  # None: checkpoints before ranges
        self.engine = make_engine(engine, generator, standardizer, self.device, batch_size=batch_size, bf16=bf16,
                                  compile=compile, metadata=self.metadata)
        # The model the engine runs: for torch its own copy, so changes made through
        # simulator.generator reach it and the generator passed in is left as it was.
        self.generator = self.engine.model

    def warmup(self) -> None:
        """Run every batch bucket once (compiles them when compiled), so no request pays for it."""
        for n in self.engine.buckets or [1, self.batch_size]:
            self.simulate_draws(np.repeat(WARMUP_PARTICLE, n, 0), self.draws(n, 0))

    @classmethod
    def load(cls, path=None, *, device=None, bf16: bool = False, batch_size: int | None = None,
             compile: bool = False, engine: str = "torch") -> "Simulator":
        """Load a checkpoint written by `zdc-sim train` (best or last), or a shipped model: `path`
        None or 'zn' for the ZN's, 'zp' for the ZP's (the checkpoint names its detector).
        `engine`: 'torch' (CPU or CUDA), 'onnxruntime' (CPU; the exported graph, zdc_sim/engines.py)
        or 'auto' (ONNX Runtime on CPU in fp32, else torch): ONNX Runtime is faster for single
        particles, torch for batches (docs/benchmarks.md)."""
        if path is None or str(path).lower() in geometry.DETECTORS:
            path = default_model_path(path or "zn")
        path = Path(path)
        tensors, meta = checkpoint.load(path)
        meta = {**meta, "checksum": checkpoint.file_fingerprint(path), "path": str(path)}
        try:
            generator = Generator(ModelConfig.from_dict(meta["model"]))
            generator.load_state_dict(with_post_processing_defaults(checkpoint.unprefixed("generator", tensors)))
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

        The random draws are made up front on the CPU from `seed` (see `draws`), so a seed gives the same
        responses whatever the batch size, and the first k rows of N particles get the same
        responses as those k particles alone (up to float rounding of batched kernels).
        """
        raw = features.validate(particle_features)
        if not extrapolate:
            self.check_domain(raw)
        return self.simulate_draws(raw, self.draws(len(raw), seed))

    def reaches(self, raw_features: np.ndarray) -> np.ndarray:
        """(N,) True for the particles that reach this model's detector, on either side."""
        return geometry.reaches(raw_features, self.detector)

    def outside_domain(self, raw_features: np.ndarray) -> np.ndarray:
        """(N,) True for rows outside the trained feature ranges (all False without recorded ranges):
        only particles that reach the detector count, as the A side sees them."""
        if self.domain is None:
            return np.zeros(len(raw_features), bool)
        return self.domain.outside(geometry.to_a_side(raw_features)) & self.reaches(raw_features)

    def check_domain(self, raw_features: np.ndarray, source: str = "features") -> None:
        """DomainError for the first row that reaches the detector and lies outside the trained
        feature ranges; a C-side particle is named as the A side sees it (vz and pz negated)."""
        if self.domain is not None:
            self.domain.check(geometry.to_a_side(raw_features), source=source, only=self.reaches(raw_features))

    def draws(self, n: int, seed: int | None = None, start: int = 0) -> np.ndarray:
        """The random draws of rows start .. start + n - 1 for `seed` (random if None): (n,
        random_dim) float32 standard normals, each row the latent (latent_dim) then one photon
        normal per fibre. Seeded by blocks of rows (zdc_sim/engines.py), so an export that resumes
        at entry k, or reads in chunks of any size, gets the same draws as one pass."""
        return seeded_normals(n, self.random_dim, seed, start)

    def random_inputs(self, n: int, seed: int | None = None, start: int = 0) -> dict[str, np.ndarray]:
        """Every random input of the exported graph for rows start .. start + n - 1, by input name
        (LATENTS, and PHOTON_NOISE with photon statistics), drawn exactly as `simulate` draws them:
        the same seed gives the same responses from torch, ONNX Runtime and a remote server."""
        return random_feeds(self.draws(n, seed, start), self.latent_dim, self.generator.config.photon_noise)

    def simulate_chunks(self, raw_features: np.ndarray, seed: int, chunk_rows: int = CHUNK_ROWS):
        """Yield (start, Simulation) for each `chunk_rows` rows of already validated features, each
        chunk with its own rows' draws: the responses of one `simulate` call without holding all of
        their images (a caller keeps only what it reduces them to)."""
        for start in range(0, len(raw_features), chunk_rows):
            chunk = raw_features[start:start + chunk_rows]
            yield start, self.simulate_draws(chunk, self.draws(len(chunk), seed, start))

    @torch.inference_mode()
    def simulate_draws(self, raw_features: np.ndarray, draws: np.ndarray) -> Simulation:
        """Simulate already validated features with given draws: lets callers (the service's
        dynamic batcher, export) run many seeded requests in one pass with the same results.
        Row k always uses draws[k], so which other rows reach the detector changes nothing."""
        reached = self.reaches(raw_features)
        counts = np.zeros((len(raw_features), *self.detector.shape), np.float32)
        rows = np.flatnonzero(reached)
        if len(rows):
            mirrored = geometry.to_a_side(raw_features[rows])
            picked = draws[rows]
            out = np.empty((len(rows), *self.detector.shape), np.float32)
            for start in range(0, len(rows), self.batch_size):
                stop = start + self.batch_size
                out[start:stop] = self.engine.counts(mirrored[start:stop], picked[start:stop])
            counts[rows] = out
        return Simulation(counts, channel_sums(counts).astype(np.float32), reached)

    @property
    def model_version(self) -> str:
        """The first 12 hex digits of the checkpoint's sha256: names the exact weights served."""
        return checkpoint.model_version(self.metadata)
