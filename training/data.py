"""Training data in memory: features, log(1 + counts) images, particle ids, and the split into
training and validation particles (by particle, so repeats of one particle never straddle it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from zdc_sim import rootio
from zdc_sim.geometry import channel_sums
from zdc_sim.metrics import shower_centres


@dataclass
class Dataset:
    features: np.ndarray  # (N, 9) float32, raw units
    pdg: np.ndarray  # (N,) int32
    particle_id: np.ndarray  # (N,) int64
    log_images: torch.Tensor | None  # (N, 1, 44, 44) float32, log(1 + counts); None if not loaded
    channels: np.ndarray  # (N, 5) float64 channel sums of the counts
    centres: np.ndarray  # (N, 2) float32 count-weighted shower centres in cm (NaN when empty)

    def __len__(self) -> int:
        return len(self.pdg)

    def subset(self, mask: np.ndarray) -> "Dataset":
        images = None if self.log_images is None else self.log_images[torch.as_tensor(np.flatnonzero(mask))]
        return Dataset(self.features[mask], self.pdg[mask], self.particle_id[mask], images, self.channels[mask],
                       self.centres[mask])


def load(path, max_entries: int | None = None, schema: rootio.Schema = rootio.Schema(), images: bool = True) -> Dataset:
    """Read a ROOT file chunk by chunk (validated by zdc_sim.rootio). `images=False` keeps only the
    channel sums of the responses, for evaluation sets that need no pixels."""
    parts = {k: [] for k in ("features", "pdg", "particle_id", "images", "channels", "centres")}
    seen = 0
    for chunk in rootio.iterate(path, schema):
        if max_entries is not None:
            chunk = {k: v[: max_entries - seen] for k, v in chunk.items()}
        counts = chunk[rootio.RESPONSE]
        parts["features"].append(chunk[rootio.FEATURES])
        parts["pdg"].append(chunk[rootio.PDG])
        parts["particle_id"].append(chunk[rootio.PARTICLE_ID])
        if images:
            parts["images"].append(torch.from_numpy(np.log1p(counts))[:, None])
        parts["channels"].append(channel_sums(counts))
        parts["centres"].append(shower_centres(counts).astype(np.float32))
        seen += len(counts)
        if max_entries is not None and seen >= max_entries:
            break
    if seen == 0:
        raise rootio.RootFileError("no entries", file=path, tree=rootio.TREE, expected="at least one entry", found="0")
    return Dataset(np.concatenate(parts["features"]), np.concatenate(parts["pdg"]),
                   np.concatenate(parts["particle_id"]), torch.cat(parts["images"]) if images else None,
                   np.concatenate(parts["channels"]), np.concatenate(parts["centres"]))


def split_by_particle(particle_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the entries whose particle is held out for validation (about `fraction`)."""
    ids = np.unique(particle_id)
    n_val = max(1, int(round(fraction * len(ids))))
    held = np.random.default_rng(seed).permutation(ids)[:n_val]
    return np.isin(particle_id, held)
