"""Training data in memory: features, log(1 + counts) images, particle ids, and the split into
training and validation particles (by particle, so repeats of one particle never straddle it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from zdc_sim import geometry, rootio
from zdc_sim.geometry import channel_sums
from zdc_sim.metrics import shower_centres


@dataclass
class Dataset:
    features: np.ndarray  # (N, 9) float32, raw units
    pdg: np.ndarray  # (N,) int32
    particle_id: np.ndarray  # (N,) int64
    log_images: torch.Tensor | None  # (N, 1, rows, columns) float32, log(1 + counts); None if not loaded
    channels: np.ndarray  # (N, 5) float64 channel sums of the counts
    centres: np.ndarray  # (N, 2) float32 count-weighted shower centres in cm (NaN when empty)

    def __len__(self) -> int:
        return len(self.pdg)

    def subset(self, mask: np.ndarray) -> "Dataset":
        images = None if self.log_images is None else self.log_images[torch.as_tensor(np.flatnonzero(mask))]
        return Dataset(self.features[mask], self.pdg[mask], self.particle_id[mask], images, self.channels[mask],
                       self.centres[mask])


def load(path, max_entries: int | None = None, schema: rootio.Schema = rootio.Schema(), images: bool = True,
         detector: str = "zn") -> Dataset:
    """Read `detector`'s responses from a ROOT file chunk by chunk (validated by zdc_sim.rootio),
    keeping the particles that reach it (the others are empty by definition and never reach the
    model) and mirroring C-side particles to the A side (zdc_sim.geometry.to_a_side), the frame
    the model works in. `images=False` keeps only the channel sums, for sets that need no pixels."""
    det = geometry.detector(detector)
    response = rootio.response_part(det)
    parts = {k: [] for k in ("features", "pdg", "particle_id", "images", "channels", "centres")}
    seen = 0
    for chunk in rootio.iterate(path, schema, parts=(rootio.FEATURES, rootio.PDG, rootio.PARTICLE_ID, response)):
        if max_entries is not None:
            chunk = {k: v[: max_entries - seen] for k, v in chunk.items()}
        seen += len(chunk[rootio.PDG])
        keep = geometry.reaches(chunk[rootio.FEATURES], det)
        chunk = {k: v[keep] for k, v in chunk.items()}
        counts = chunk[response]
        parts["features"].append(geometry.to_a_side(chunk[rootio.FEATURES]))
        parts["pdg"].append(chunk[rootio.PDG])
        parts["particle_id"].append(chunk[rootio.PARTICLE_ID])
        if images:
            parts["images"].append(torch.from_numpy(np.log1p(counts))[:, None])
        parts["channels"].append(channel_sums(counts))
        parts["centres"].append(shower_centres(counts).astype(np.float32))
        if max_entries is not None and seen >= max_entries:
            break
    if sum(len(p) for p in parts["pdg"]) == 0:
        raise rootio.RootFileError("no entries", file=path, tree=rootio.TREE,
                                   expected=f"at least one entry of a particle that reaches the {det.name.upper()}",
                                   found=f"{seen} entries, none reaching it")
    return Dataset(np.concatenate(parts["features"]), np.concatenate(parts["pdg"]),
                   np.concatenate(parts["particle_id"]), torch.cat(parts["images"]) if images else None,
                   np.concatenate(parts["channels"]), np.concatenate(parts["centres"]))


def split_by_particle(particle_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the entries whose particle is held out for validation (about `fraction`)."""
    ids = np.unique(particle_id)
    n_val = max(1, int(round(fraction * len(ids))))
    held = np.random.default_rng(seed).permutation(ids)[:n_val]
    return np.isin(particle_id, held)
