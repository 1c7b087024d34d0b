"""The model as one ONNX graph (standardisation, generator, photon statistics and channel sums
inside, a dynamic batch axis): what the ONNX Runtime engine runs and the Triton repository serves.

Graph inputs: FEATURES float32 [N, 9] (the data card's units, either side), LATENTS float32
[N, latent_dim] and, for models with photon statistics, PHOTON_NOISE float32 [N, pixels] (standard
normals, one per fibre: 1,936 for the ZN, 1,680 for the ZP). Outputs: RESPONSES float32
[N, rows, columns] (photon counts; ZN 44 x 44, ZP 30 x 56) and CHANNELS float32 [N, 5]. Inside, as
in the Simulator: C-side particles mirrored to the A side, and particles that do not reach the
detector given an empty response (zdc_sim/geometry.py).
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
from .. import geometry
from ..geometry import N_CHANNELS

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
        self.detector = generator.config.geometry
        self.register_buffer("masks", torch.from_numpy(self.detector.masks_flat.T.astype(np.float32)))
        # (vz, pz) sign flip of a C-side particle: the mirror through z = 0 (geometry.to_a_side).
        flip = torch.zeros(features.N_FEATURES, dtype=torch.float64)
        flip[[features.INDEX["vz"], features.INDEX["pz"]]] = 2.0
        self.register_buffer("flip", flip)

    def forward(self, raw: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor | None = None):
        raw = raw.double()
        c_side = (raw[:, features.INDEX["pz"]] <= 0).double()
        mirrored = raw * (1.0 - c_side[:, None] * self.flip)
        standardized = ((mirrored - self.mean) / self.std).float()
        random = latents if noise is None else torch.cat([latents, noise], 1)
        counts = self.generator.counts(random, standardized) * _reaches(self.detector, raw, mirrored)[:, None, None]
        return counts, counts.flatten(1) @ self.masks


def _reaches(det: geometry.Detector, raw: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """(N,) 1.0 where a particle reaches the detector, else 0.0: geometry.reaches in float64 torch
    ops, so the graph draws the same line as the Simulator."""
    i = features.INDEX
    vx, vy, vz, px, py, pz = (mirrored[:, i[k]] for k in ("vx", "vy", "vz", "px", "py", "pz"))
    face_z_m = torch.where(raw[:, i["pz"]] > 0, torch.full_like(pz, det.face_z_cm["A"]),
                           torch.full_like(pz, -det.face_z_cm["C"])) / 100.0
    p = torch.sqrt(px**2 + py**2 + pz**2).clamp_min(1e-300)
    lever = face_z_m - vz
    moving = pz > 0
    pz_safe = torch.where(moving, pz, torch.ones_like(pz))
    x = 100.0 * (vx + px / pz_safe * lever) + geometry.DEFLECTION_GEV_CM * raw[:, i["charge"]] / p - det.centre_x_cm
    y = 100.0 * (vy + py / pz_safe * lever)
    width, height = det.face_cm
    inside = moving & (x.abs() < width / 2 + det.reach_margin_cm) & (y.abs() < height / 2 + det.reach_margin_cm)
    return inside.to(torch.float32)


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
        example.append(torch.zeros(2, config.noise_dim))
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
    # that a C++ caller or Triton reading the graph sees [N, rows, columns] and [N, 5].
    fixed = {RESPONSES: list(config.shape), CHANNELS: [N_CHANNELS]}
    for output in model.graph.output:
        for dim, size in zip(output.type.tensor_type.shape.dim[1:], fixed[output.name]):
            dim.dim_value = size  # replaces the symbolic name (one field of a oneof)
    props = {"version": checkpoint.model_version(metadata), "checksum": metadata.get("checksum", ""),
             "detector": config.detector, "latent_dim": str(config.latent_dim), "photon_noise": str(config.photon_noise).lower(),
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
