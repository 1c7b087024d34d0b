"""The model as one ONNX graph (standardisation, generator, photon statistics and channel sums
inside, a dynamic batch axis): what the ONNX Runtime engine runs and the Triton repository serves.

Graph inputs: FEATURES float32 [N, 9] (the data card's units), LATENTS float32 [N, latent_dim] and,
for models with photon statistics, PHOTON_NOISE float32 [N, 1936] (standard normals, one per
fibre). Outputs: RESPONSES float32 [N, 44, 44] (photon counts) and CHANNELS float32 [N, 5].
`Simulator.random_inputs(n, seed)` draws LATENTS and PHOTON_NOISE exactly as `simulate` does.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import atomic, checkpoint, features
from ..geometry import GRID, MASKS, N_CHANNELS

OPSET = 18
FEATURES, LATENTS, PHOTON_NOISE = "FEATURES", "LATENTS", "PHOTON_NOISE"
RESPONSES, CHANNELS = "RESPONSES", "CHANNELS"


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


def onnx_bytes(generator, standardizer: features.Standardizer, metadata: dict) -> bytes:
    """A generator (with its standardisation and checkpoint metadata) as an ONNX graph with a
    dynamic batch axis and its metadata. Exports a contiguous copy: the generator is not changed."""
    import onnx

    config = generator.config
    graph = _Graph(copy.deepcopy(generator).cpu().to(memory_format=torch.contiguous_format), standardizer).eval()
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
    model = onnx.load_from_string(buffer.getvalue())
    # The exporter leaves the outputs' fixed axes symbolic ('RESPONSES_dim_1'): name their sizes, so
    # that a C++ caller or Triton reading the graph sees [N, 44, 44] and [N, 5].
    fixed = {RESPONSES: [GRID, GRID], CHANNELS: [N_CHANNELS]}
    for output in model.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim[1:], fixed[output.name]):
            dim.dim_value = size  # replaces the symbolic name (one field of a oneof)
    props = {"version": checkpoint.model_version(metadata), "checksum": metadata.get("checksum", ""),
             "latent_dim": str(config.latent_dim), "photon_noise": str(config.photon_noise).lower(),
             "features": ",".join(features.NAMES), "units": ",".join(features.UNITS), "opset": str(OPSET),
             "feature_ranges": json.dumps(metadata.get("feature_ranges"))}
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_onnx(simulator, out_dir) -> Path:
    """out_dir/model.onnx of a Simulator's model (the folder is created if missing)."""
    path = Path(out_dir) / "model.onnx"
    data = onnx_bytes(simulator.generator, simulator.standardizer, simulator.metadata)
    with atomic.atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path
