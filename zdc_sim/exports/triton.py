"""A Triton Inference Server model repository around the ONNX graph (exports/onnx.py): ONNX
Runtime backend, dynamic batching, the graph's tensors with their shapes after the batch axis."""

from __future__ import annotations

from pathlib import Path

from .. import atomic, features
from ..geometry import GRID, N_CHANNELS
from .onnx import CHANNELS, FEATURES, LATENTS, PHOTON_NOISE, RESPONSES, input_names, write_onnx

TRITON_MODEL = "zdc-zn"


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
    version = out_dir / TRITON_MODEL / "1"
    write_onnx(simulator, version)
    atomic.write_text(out_dir / TRITON_MODEL / "config.pbtxt", triton_config(simulator, max_batch_size))
    return out_dir / TRITON_MODEL
