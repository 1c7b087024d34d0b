"""How a Simulator runs its model, and the seeded random inputs it runs it on.

An engine is one small object with one method, `counts(raw_features, random) -> (n, 44, 44)`
photon counts for a pass of at most the simulator's batch size, built by `make_engine`, which
never changes the generator it is given: the torch engine runs a copy of it (channels-last, traced
or compiled), the ONNX Runtime engine the graph exported from it.

Random inputs are standard normals in blocks of LATENT_BLOCK rows, each block drawn from a numpy
generator seeded (seed, block): any row range is found without drawing what comes before it, so
an export that resumes at entry k, a request split into pieces, or a remote server all get the
same inputs for the same rows of a seed.
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch

from . import features
from .errors import ZdcError
from .exports.onnx import FEATURES, RESPONSES, onnx_bytes, random_feeds
from .features import Standardizer
from .models import Generator

ENGINES = ("torch", "onnxruntime")
LATENT_BLOCK = 64  # rows per independently seeded block of random inputs


def random_seed() -> int:
    """A fresh seed in 0 .. 2^63 - 1 (what every route and file records when none is given)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def seeded_normals(n: int, width: int, seed: int | None = None, start: int = 0) -> np.ndarray:
    """Rows start .. start + n - 1 of the (n, width) float32 standard normals of `seed` (random if
    None). A generator fills rows in order: drawing the first k rows of a block gives exactly those
    rows of the whole block, so one particle costs one row, not a block."""
    if n <= 0:
        return np.empty((0, width), np.float32)
    if seed is None:
        seed = random_seed()
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


class TorchEngine:
    """The generator in torch on CPU or CUDA. On CPU it runs traced (TorchScript): the same
    kernels and counts bit for bit, but one call that releases the GIL for the whole forward pass
    instead of around each of its ~100 operators, so a server's event loop and its simulations
    really overlap (docs/benchmarks.md). With `compile`, torch.compile for fixed batch buckets
    (powers of two up to batch_size; batches are padded up to the next one, so a server compiles
    each bucket once, at warm-up); bf16 autocast on CUDA."""

    name = "torch"

    def __init__(self, generator: Generator, standardizer: Standardizer, device: torch.device, *,
                 batch_size: int, bf16: bool = False, compile: bool = False):
        # channels-last convolutions run faster on CPU (oneDNN) for this generator: on a copy, so the
        # caller's model (a training run's) keeps its layout and the float rounding of its steps.
        self.model = copy.deepcopy(generator).to(device).to(memory_format=torch.channels_last).eval()
        self.standardizer, self.device, self.bf16 = standardizer, device, bf16
        self.buckets = bucket_sizes(batch_size) if compile else None
        if compile:
            self.forward = torch.compile(self.model.counts, dynamic=False)
        elif device.type == "cpu":
            self.forward = self._traced()
        else:
            self.forward = self.model.counts
        self._pinned = device.type == "cuda"  # page-locked host buffers: asynchronous copies

    def _traced(self):
        example = (torch.zeros(2, self.model.config.random_dim), torch.zeros(2, features.N_FEATURES))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            traced = torch.jit.trace_module(self.model, {"counts": example}, check_trace=False)
        return traced.counts

    @torch.inference_mode()
    def counts(self, raw_features: np.ndarray, random: np.ndarray) -> np.ndarray:
        n = len(random)
        z = torch.from_numpy(np.ascontiguousarray(random, np.float32))
        x = torch.from_numpy(self.standardizer.transform(raw_features))
        if self.buckets is not None:  # pad to the bucket's fixed shape; the padding rows are dropped
            size = next(b for b in self.buckets if b >= n)
            z, x = (torch.cat([t, t.new_zeros(size - n, t.shape[1])]) if size > n else t for t in (z, x))
        if self._pinned:
            z, x = z.pin_memory(), x.pin_memory()
        z, x = z.to(self.device, non_blocking=True), x.to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            counts = self.forward(z, x)[:n].float()
        if self._pinned:  # copy back into page-locked memory without blocking, then wait once
            host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            host.copy_(counts, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            return host.numpy()
        return counts.cpu().numpy()


class OnnxRuntimeEngine:
    """The exported graph (exports/onnx.py) in ONNX Runtime on CPU: raw features and random inputs
    -> counts. Faster than torch for single particles, slower for large batches (docs/benchmarks.md)."""

    name = "onnxruntime"
    buckets = None  # any batch size runs as it is

    def __init__(self, generator: Generator, standardizer: Standardizer, metadata: dict, threads: int | None = None):
        import onnxruntime as ort

        self.model = generator  # what the graph was exported from (unchanged; later changes do not reach it)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes(generator, standardizer, metadata), options,
                                            providers=["CPUExecutionProvider"])
        self.latent_dim, self.photon_noise = generator.config.latent_dim, generator.config.photon_noise

    def counts(self, raw_features: np.ndarray, random: np.ndarray) -> np.ndarray:
        feeds = {FEATURES: np.ascontiguousarray(raw_features, np.float32),
                 **random_feeds(random, self.latent_dim, self.photon_noise)}
        return self.session.run([RESPONSES], feeds)[0]


def make_engine(kind: str, generator: Generator, standardizer: Standardizer, device: torch.device, *,
                batch_size: int, bf16: bool = False, compile: bool = False, metadata: dict | None = None):
    """The engine `kind` ('torch' or 'onnxruntime') for a generator; ZdcError for a combination
    that cannot run (ONNX Runtime runs on CPU in fp32, bf16 needs CUDA)."""
    if kind not in ENGINES:
        raise ZdcError(f"engine '{kind}' is not known; expected one of {list(ENGINES)} or 'auto'")
    if kind == "onnxruntime" and (device.type != "cpu" or bf16 or compile):
        raise ZdcError(f"engine 'onnxruntime' runs on CPU in fp32; found device '{device}', bf16={bf16}, "
                       f"compile={compile} (use engine 'torch' for those)")
    if bf16 and device.type != "cuda":
        raise ZdcError(f"bf16 inference needs a CUDA device; found '{device}'")
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(generator, standardizer, metadata or {}, threads=torch.get_num_threads())
    return TorchEngine(generator, standardizer, device, batch_size=batch_size, bf16=bf16, compile=compile)
