"""Checkpoints without pickle: one safetensors file whose header carries the JSON metadata
(model and training config, feature standardisation, metrics, dataset fingerprint, code version).

Loading cannot run code. Writing goes through `atomic.atomic_output`, so a crash leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_output
from .errors import ZdcError

FORMAT = "zdc-sim-checkpoint/1"
_METADATA_KEY = "zdc_sim"


class CheckpointError(ZdcError):
    """A checkpoint is missing, unreadable, or not one this version of zdc-sim wrote."""


def save(path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write tensors and JSON-serialisable metadata atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "code_version": __version__, **metadata}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_output(path) as tmp:
        save_file(contiguous, tmp, metadata={_METADATA_KEY: json.dumps(header)})


def load(path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint; CheckpointError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; expected a .safetensors file written by zdc-sim")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get(_METADATA_KEY)
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{path}' is not a readable safetensors file ({exc}); "
                              "expected a checkpoint written by zdc-sim") from None
    if header is None:
        raise CheckpointError(f"checkpoint '{path}' has no zdc-sim metadata; expected a file written by zdc-sim")
    metadata = json.loads(header)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {metadata.get('format')!r}; expected {FORMAT!r}")
    return tensors, metadata


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def model_version(metadata: dict) -> str:
    """The first 12 hex digits of a checkpoint's sha256 (its metadata's checksum): names the exact weights."""
    return metadata.get("checksum", "sha256:unknown").split(":")[1][:12]


def file_fingerprint(path) -> str:
    """sha256 of a file's bytes: names the exact dataset a model was trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """An optimizer's state as flat tensors named prefix.<param index>.<field> (what safetensors
    holds) and its param_groups (JSON, for the metadata); `load_optimizer` reverses it."""
    state = optimizer.state_dict()
    tensors = {f"{prefix}.{index}.{key}": value for index, values in state["state"].items()
               for key, value in values.items()}
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor],
                   param_groups: list) -> None:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, field_name = key.split(".", 2)
            state.setdefault(int(index), {})[field_name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
