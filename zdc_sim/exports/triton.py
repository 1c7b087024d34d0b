"""A Triton Inference Server model repository around the ONNX graph (exports/onnx.py): ONNX
Runtime backend, dynamic batching, the graph's tensors with their shapes after the batch axis."""

from __future__ import annotations

from pathlib import Path

from .. import atomic, features
from ..geometry import N_CHANNELS
from .onnx import CHANNELS, FEATURES, LATENTS, PHOTON_NOISE, RESPONSES, input_names, write_onnx

def model_name(detector: str) -> str:
    """The served name of a detector's model: 'zdc-zn' or 'zdc-zp' (Triton and the zdc-sim service)."""
    return f"zdc-{detector}"


TRITON_MODEL = model_name("zn")


def triton_config(simulator, max_batch_size: int = 4096) -> str:
    config = simulator.generator.config
    dims = {FEATURES: [features.N_FEATURES], LATENTS: [config.latent_dim], PHOTON_NOISE: [config.noise_dim],
            RESPONSES: list(config.shape), CHANNELS: [N_CHANNELS]}

    def tensor(name):
        return f'  {{ name: "{name}" data_type: TYPE_FP32 dims: {dims[name]} }}'

    inputs = ",\n".join(tensor(n) for n in input_names(config.photon_noise))
    outputs = ",\n".join(tensor(n) for n in (RESPONSES, CHANNELS))
    return (f'name: "{model_name(config.detector)}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: 2000 }}\n"
            f'parameters {{ key: "zdc_sim_version" value: {{ string_value: "{simulator.model_version}" }} }}\n')


def write_triton_repository(simulator, out_dir, max_batch_size: int = 4096) -> Path:
    """out_dir/zdc-zn/1/model.onnx and out_dir/zdc-zn/config.pbtxt (zdc-zp for a ZP model; dynamic
    batching on). Call once per detector to serve both from one repository."""
    name = model_name(simulator.generator.config.detector)
    out_dir = Path(out_dir)
    write_onnx(simulator, out_dir / name / "1")
    atomic.write_text(out_dir / name / "config.pbtxt", triton_config(simulator, max_batch_size))
    return out_dir / name
