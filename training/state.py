"""What a resumable run saves and restores: the networks, the moving average, the optimizers, the
latent generator's state and the progress, in one checkpoint (last.safetensors) whose metadata
also says which data and config it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zdc_sim import checkpoint
from zdc_sim.models import Generator, with_post_processing_defaults

from .config import ConfigError, TrainConfig

# A resumed run may change these; every other config value must be what the saved run had.
RESUMABLE_CHANGES = ("epochs", "device", "threads", "plots")


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimisation steps in total
    best_ws: float = float("inf")
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                "best_ws": self.best_ws if np.isfinite(self.best_ws) else None, "history": self.history}

    @classmethod
    def from_dict(cls, values: dict) -> "Progress":
        best = values["best_ws"]
        return cls(values["epoch"], values["batch"], values["step"], best if best is not None else float("inf"),
                   values["history"])


def save(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
         latent_rng: torch.Generator, progress: Progress, metadata: dict) -> None:
    tensors = {"rng.latents": latent_rng.get_state()}
    for name, module in modules.items():
        tensors.update(checkpoint.prefixed(name, module.state_dict()))
    groups = {}
    for name, optimizer in optimizers.items():
        flat, groups[name] = checkpoint.optimizer_tensors(name, optimizer)
        tensors.update(flat)
    checkpoint.save(path, tensors, {**metadata, "progress": progress.to_dict(), "optimizers": groups})


def load(path: Path, config: TrainConfig, fingerprint: str, device: torch.device, modules: dict[str, nn.Module],
         optimizers: dict[str, torch.optim.Optimizer], latent_rng: torch.Generator) -> Progress:
    """Restore a run saved by `save` in place, after checking it was made from the same data
    (fingerprint) and the same config but for RESUMABLE_CHANGES; returns its progress."""
    tensors, meta = checkpoint.load(path, device=device)
    if meta["dataset_fingerprint"] != fingerprint:
        raise ConfigError(f"cannot resume from '{path}': it was trained on dataset {meta['dataset_fingerprint']}, "
                          f"but '{config.data}' is {fingerprint}; expected the same file")
    previous = {k: v for k, v in meta["training"].items() if k not in RESUMABLE_CHANGES}
    current = {k: v for k, v in config.to_dict().items() if k in previous}
    changed = sorted(k for k in previous if previous[k] != current[k])
    if changed:
        raise ConfigError(f"cannot resume from '{path}': config differs in {changed}; expected the same config "
                          f"(only {', '.join(RESUMABLE_CHANGES)} may change)")
    for name, module in modules.items():
        weights = checkpoint.unprefixed(name, tensors)
        module.load_state_dict(with_post_processing_defaults(weights) if isinstance(module, Generator) else weights)
    latent_rng.set_state(tensors["rng.latents"].cpu())
    for name, optimizer in optimizers.items():
        checkpoint.load_optimizer(optimizer, name, tensors, meta["optimizers"][name])
    return Progress.from_dict(meta["progress"])
