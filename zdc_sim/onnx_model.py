"""The model outside this process: one ONNX graph (standardisation, generator, photon statistics
and channel sums inside, a dynamic batch axis), a Triton model repository around it, and the ONNX
Runtime engine the Simulator can run instead of torch.

Graph inputs: FEATURES float32 [N, 9] (the data card's units), LATENTS float32 [N, latent_dim] and,
for models with photon statistics, PHOTON_NOISE float32 [N, 1936] (standard normals, one per
fibre). Outputs: RESPONSES float32 [N, 44, 44] (photon counts) and CHANNELS float32 [N, 5].
`Simulator.random_inputs(n, seed)` draws LATENTS and PHOTON_NOISE exactly as `simulate` does.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import atomic, features
from .errors import ZdcError
from .geometry import GRID, MASKS, N_CHANNELS

OPSET = 18
FEATURES, LATENTS, PHOTON_NOISE = "FEATURES", "LATENTS", "PHOTON_NOISE"
RESPONSES, CHANNELS = "RESPONSES", "CHANNELS"
TRITON_MODEL = "zdc-zn"


class _Graph(nn.Module):
    """Raw features and random inputs -> (photon counts, channel sums), all in one module."""

    def __init__(self, generator, standardizer: features.Standardizer):
        super().__init__()
        self.generator = generator
        self.register_buffer("mean", torch.tensor(standardizer.mean, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(standardizer.std, dtype=torch.float64))
        self.register_buffer("masks", torch.from_numpy(MASKS.reshape(N_CHANNELS, -1).T.astype(np.float32)))

    def forward(self, raw: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor | None = None):
        standardized = ((raw.double() - self.mean) / self.std).float()
        random = latents if noise is None else torch.cat([latents, noise], 1)
        counts = self.generator.counts(random, standardized)
        return counts, counts.flatten(1) @ self.masks


def random_feeds(random: np.ndarray, latent_dim: int, photon_noise: bool) -> dict[str, np.ndarray]:
    """The graph's random inputs by name from rows of random inputs (latent, then photon noise), as
    `Simulator.latents` draws them."""
    feeds = {LATENTS: np.ascontiguousarray(random[:, :latent_dim], np.float32)}
    if photon_noise:
        feeds[PHOTON_NOISE] = np.ascontiguousarray(random[:, latent_dim:], np.float32)
    return feeds


def input_names(photon_noise: bool) -> list[str]:
    return [FEATURES, LATENTS] + ([PHOTON_NOISE] if photon_noise else [])


def onnx_bytes(simulator) -> bytes:
    """The simulator's model as an ONNX graph with a dynamic batch axis and its metadata."""
    import onnx

    config = simulator.generator.config
    graph = _Graph(simulator.generator, simulator.standardizer).cpu().eval()
    graph.generator.to(memory_format=torch.contiguous_format)
    names = input_names(config.photon_noise)
    example = [torch.zeros(2, features.N_FEATURES), torch.zeros(2, config.latent_dim)]
    if config.photon_noise:
        example.append(torch.zeros(2, GRID * GRID))
    example[0][:, features.INDEX["energy"]] = example[0][:, features.INDEX["pz"]] = 100.0
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # torch's TorchScript-based exporter (deprecated in favour of the dynamo one, which needs
        # onnxscript and traces dynamic batch axes less reliably): one graph for every batch size.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(graph, tuple(example), buffer, input_names=names, output_names=[RESPONSES, CHANNELS],
                          dynamic_axes={name: {0: "N"} for name in names + [RESPONSES, CHANNELS]},
                          opset_version=OPSET, dynamo=False)
    simulator.generator.to(memory_format=torch.channels_last)
    model = onnx.load_from_string(buffer.getvalue())
    # The exporter leaves the outputs' fixed axes symbolic ('RESPONSES_dim_1'): name their sizes, so
    # that a C++ caller or Triton reading the graph sees [N, 44, 44] and [N, 5].
    fixed = {RESPONSES: [GRID, GRID], CHANNELS: [N_CHANNELS]}
    for output in model.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim[1:], fixed[output.name]):
            dim.dim_value = size  # replaces the symbolic name (one field of a oneof)
    metadata = {"version": simulator.model_version, "checksum": simulator.metadata.get("checksum", ""),
                "latent_dim": str(config.latent_dim), "photon_noise": str(config.photon_noise).lower(),
                "features": ",".join(features.NAMES), "units": ",".join(features.UNITS), "opset": str(OPSET),
                "feature_ranges": json.dumps(simulator.metadata.get("feature_ranges"))}
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_onnx(simulator, out_dir) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ZdcError(f"output folder '{out_dir}' does not exist; expected an existing folder")
    path = out_dir / "model.onnx"
    data = onnx_bytes(simulator)
    with atomic.atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def triton_config(simulator, max_batch_size: int = 4096) -> str:
    config = simulator.generator.config
    dims = {FEATURES: [features.N_FEATURES], LATENTS: [config.latent_dim], PHOTON_NOISE: [GRID * GRID],
            RESPONSES: [GRID, GRID], CHANNELS: [N_CHANNELS]}

    def tensor(name):
        return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: {dims[name]} }}'

    inputs = ",\n".join(tensor(n) for n in input_names(config.photon_noise))
    outputs = ",\n".join(tensor(n) for n in (RESPONSES, CHANNELS))
    return (f'name: "{TRITON_MODEL}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: 2000 }}\n"
            f'parameters {{ key: "zdc_sim_version" value: {{ string_value: "{simulator.model_version}" }} }}\n')


def write_triton_repository(simulator, out_dir, max_batch_size: int = 4096) -> Path:
    """out_dir/zdc-zn/1/model.onnx and out_dir/zdc-zn/config.pbtxt (dynamic batching on)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ZdcError(f"output folder '{out_dir}' does not exist; expected an existing folder")
    version = out_dir / TRITON_MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    write_onnx(simulator, version)
    atomic.write_text(out_dir / TRITON_MODEL / "config.pbtxt", triton_config(simulator, max_batch_size))
    return out_dir / TRITON_MODEL


class OnnxRuntimeEngine:
    """Runs the exported graph in ONNX Runtime: raw features and random inputs -> counts."""

    def __init__(self, simulator, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes(simulator), options, providers=["CPUExecutionProvider"])
        self.latent_dim = simulator.generator.config.latent_dim
        self.photon_noise = simulator.generator.config.photon_noise

    def counts(self, raw: np.ndarray, random: np.ndarray) -> np.ndarray:
        feeds = {FEATURES: np.ascontiguousarray(raw, np.float32), **random_feeds(random, self.latent_dim, self.photon_noise)}
        return self.session.run([RESPONSES], feeds)[0]
