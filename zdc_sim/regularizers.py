"""Diversity regularizers for the conditional GAN, behind one interface.

Each regularizer sees a `DiversityPair`: two generated samples per condition from independent
latents (and, optionally, their discriminator embeddings and the per-condition SDI weights) and
returns a scalar that the training loop adds to the generator loss times lambda.

SDI (selective diversity increase, see data/README.md and the SDI paper): weight_i * d_z / d_x,
the inverse of a mode-seeking ratio, scaled by a per-particle weight measured on the training set,
so that minimising it raises diversity only for particles whose real showers are diverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .metrics import MIN_MEAN_COUNTS

DISTANCE_EPS = 1e-2  # keeps d_z / d_x finite when two generated samples are identical


@dataclass
class DiversityPair:
    z1: torch.Tensor  # (N, latent)
    z2: torch.Tensor
    fake1: torch.Tensor  # (N, 1, 44, 44) log(1 + counts)
    fake2: torch.Tensor
    weight: torch.Tensor  # (N,) per-condition diversity weight in [0, 1]
    embed1: torch.Tensor | None = None  # (N, E) discriminator embeddings, when the method uses them
    embed2: torch.Tensor | None = None


def mean_abs_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference: (N, ...) x 2 -> (N,)."""
    return (a - b).abs().flatten(1).mean(1)


class Regularizer(nn.Module):
    """Base class: `forward(pair) -> scalar`. `needs_pair` tells the loop to generate two samples
    per condition; `uses_embedding` tells it to compute discriminator embeddings of both."""

    name = "base"
    needs_pair = True
    uses_embedding = False

    def forward(self, pair: DiversityPair) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class NoRegularizer(Regularizer):
    """The plain conditional GAN (lambda has no effect)."""

    name = "none"
    needs_pair = False

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        return pair.fake1.new_zeros(())


class SDI(Regularizer):
    """mean_i( w_i * d_z(z1_i, z2_i) / d_x(x1_i, x2_i) ), with x the image or the D embedding."""

    name = "sdi"

    def __init__(self, space: str = "image"):
        super().__init__()
        if space not in ("image", "embedding"):
            raise ValueError(f"SDI space must be 'image' or 'embedding'; found {space!r}")
        self.space = space
        self.uses_embedding = space == "embedding"

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        x1, x2 = (pair.embed1, pair.embed2) if self.uses_embedding else (pair.fake1, pair.fake2)
        ratio = mean_abs_distance(pair.z1, pair.z2) / (mean_abs_distance(x1, x2) + DISTANCE_EPS)
        return (pair.weight * ratio).mean()


def make(name: str, *, space: str = "image") -> Regularizer:
    """The regularizer called `name` ('none' or 'sdi')."""
    if name == "none":
        return NoRegularizer()
    if name == "sdi":
        return SDI(space)
    raise ValueError(f"unknown regularizer {name!r}; expected one of {NAMES}")


NAMES = ("none", "sdi")
WEIGHT_KINDS = ("absolute", "relative")


def diversity_weights(particle_id: np.ndarray, log_images: np.ndarray, kind: str = "absolute",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle SDI weights from the training set: returns (ids (P,), weights (P,) in [0, 1]).

    absolute (as published): sum over pixels of the std of the particle's repeated log(1 + counts)
        images; it mostly tracks energy and whether the particle hits the face.
    relative: std / mean of the particle's total counts over its repeats, which measures how much
        its showers fluctuate whatever its energy.
        Particles whose mean total is below metrics.MIN_MEAN_COUNTS (misses) get 0.
    Both are min-max normalised over the training set. Particles seen once get weight 0: their
    diversity cannot be measured.
    """
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown diversity weight {kind!r}; expected one of {WEIGHT_KINDS}")
    ids, inverse, counts = np.unique(np.asarray(particle_id), return_inverse=True, return_counts=True)
    index = torch.as_tensor(inverse, dtype=torch.long)
    n = torch.as_tensor(counts, dtype=torch.float64)
    x = torch.as_tensor(np.asarray(log_images).reshape(len(inverse), -1))
    if kind == "relative":
        x = torch.expm1(x.double()).sum(1, keepdim=True)
    total = torch.zeros(len(ids), x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), 8192):  # bounded float64 temporaries
        chunk = x[start : start + 8192].double()
        total.index_add_(0, index[start : start + 8192], chunk)
        squares.index_add_(0, index[start : start + 8192], chunk**2)
    mean = total / n[:, None]
    var = (squares - n[:, None] * mean**2).clamp_min(0) / (n[:, None] - 1).clamp_min(1)
    std = var.sqrt()
    if kind == "absolute":
        raw = std.sum(1)
    else:  # nearly empty responses (misses) fluctuate by counting statistics alone: weight 0
        raw = torch.where(mean[:, 0] >= MIN_MEAN_COUNTS, std[:, 0] / mean[:, 0].clamp_min(1.0), torch.zeros_like(std[:, 0]))
    raw = torch.where(n > 1, raw, torch.zeros_like(raw))
    span = raw.max() - raw.min()
    weights = (raw - raw.min()) / span if span > 0 else torch.zeros_like(raw)
    return ids, weights.numpy()
