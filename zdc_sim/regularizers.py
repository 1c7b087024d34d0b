"""Diversity regularizers for the conditional GAN, behind one interface.

Each regularizer sees a `DiversityPair`: generated samples of one batch (two per condition from
independent latents when `needs_pair`), optionally their discriminator embeddings, the real samples
of the batch and the per-condition SDI weights, and returns a scalar that the training loop adds to
the generator loss times lambda (`default_weight` when the config gives none). Formulas follow
the papers as summarised in the project's reference notes on the five methods:

- sdi   selective diversity increase: weight_i * d_z / d_x per condition (the inverse mode-seeking
        ratio scaled by how diverse the real data is for that condition).
- ms    mode seeking (MSGAN): 1 / (mean|x1 - x2| / mean|z1 - z2| + eps) over the batch.
- dp    diversity penalty (dp-GAN): mean of sigmoid(s cos f_i f_j) / sigmoid(s cos z_i z_j) over
        all pairs of the batch, f the discriminator embedding.
- ndiv  normalized diversification: hinge relu(alpha D^z_ij - D^x_ij) on row-normalised pairwise
        distance matrices of the batch.
- iid   IID-GAN: an encoder E, trained alongside, inverts G (E(G(c, z)) ~ z) while E(real) is
        pulled to N(0, I) by an MMD; the generator gets the inversion term, which it lowers by
        keeping distinct latents distinguishable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .geometry import MIN_MEAN_COUNTS, channel_sums

DISTANCE_EPS = 1e-2  # keeps SDI's d_z / d_x finite when two generated samples are identical


@dataclass
class DiversityPair:
    z1: torch.Tensor  # (N, latent)
    z2: torch.Tensor | None  # second latents (None when the method does not need a pair)
    fake1: torch.Tensor  # (N, ...) generated samples, e.g. (N, 1, 44, 44) log(1 + counts)
    fake2: torch.Tensor | None
    weight: torch.Tensor  # (N,) per-condition diversity weight in [0, 1]
    embed1: torch.Tensor | None = None  # (N, E) discriminator embeddings, when the method uses them
    embed2: torch.Tensor | None = None
    condition: torch.Tensor | None = None  # (N, C) the conditions, for methods with their own networks
    real: torch.Tensor | None = None  # (N, ...) real samples of the same conditions


def mean_abs_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference: (N, ...) x 2 -> (N,)."""
    return (a - b).abs().flatten(1).mean(1)


class Regularizer(nn.Module):
    """Base class: `forward(pair) -> scalar`. `needs_pair`: the loop generates two samples per
    condition; `uses_embedding`: it passes discriminator embeddings; `uses_real`: it passes the
    real samples and conditions. Parameters a regularizer owns (IID's encoder) are trained by the
    generator's optimizer."""

    name = "base"
    default_weight = 1.0
    needs_pair = True
    uses_embedding = False
    uses_real = False

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
            raise ConfigError(f"SDI space must be 'image' or 'embedding'; found {space!r}")
        self.space = space
        self.uses_embedding = space == "embedding"

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        x1, x2 = (pair.embed1, pair.embed2) if self.uses_embedding else (pair.fake1, pair.fake2)
        ratio = mean_abs_distance(pair.z1, pair.z2) / (mean_abs_distance(x1, x2) + DISTANCE_EPS)
        return (pair.weight * ratio).mean()


class ModeSeeking(Regularizer):
    """MSGAN: 1 / (ratio + eps), ratio = mean|G(c, z1) - G(c, z2)| / mean|z1 - z2| over the batch."""

    name = "ms"

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = _positive("eps", eps)

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        ratio = mean_abs_distance(pair.fake1, pair.fake2).mean() / mean_abs_distance(pair.z1, pair.z2).mean()
        return 1.0 / (ratio + self.eps)


def _cosine_gram(v: torch.Tensor, scale: float) -> torch.Tensor:
    v = nn.functional.normalize(v.flatten(1).float(), dim=1, eps=1e-8)
    return torch.sigmoid(scale * v @ v.T)


class DiversityPenalty(Regularizer):
    """dp-GAN: mean over the m^2 pairs of the batch of G_f / G_z, G = sigmoid(s * cosine)."""

    name = "dp"
    default_weight = 5.0
    uses_embedding = True

    def __init__(self, scale: float = 5.0):
        super().__init__()
        self.scale = _positive("scale", scale)

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        z = torch.cat([pair.z1, pair.z2])
        f = torch.cat([pair.embed1, pair.embed2])
        return (_cosine_gram(f, self.scale) / _cosine_gram(z, self.scale)).mean()


class NormalizedDiversification(Regularizer):
    """sum_{i != j} relu(alpha D^z_ij - D^x_ij) / (N (N - 1)) over all samples of the batch, each
    distance matrix row-normalised by its (undifferentiated) sum."""

    name = "ndiv"

    def __init__(self, alpha: float = 0.8):
        super().__init__()
        self.alpha = _positive("alpha", alpha)

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        z = torch.cat([pair.z1, pair.z2]).flatten(1).float()
        x = torch.cat([pair.fake1, pair.fake2]).flatten(1).float()
        n = len(z)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
        dz, dx = torch.cdist(z, z), torch.cdist(x, x)
        dz = dz / dz.sum(1, keepdim=True).clamp_min(1e-12)
        dx = dx / dx.sum(1, keepdim=True).detach().clamp_min(1e-12)
        return torch.relu(self.alpha * dz - dx)[off_diagonal].sum() / (n * (n - 1))


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples x and y (biased estimate), a sum of RBF
    kernels: the distance IID-GAN uses to pull E(real) to the Gaussian source."""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)
    k = sum(torch.exp(-d2 / (2 * b * b)) for b in bandwidths)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class IID(Regularizer):
    """IID-GAN with a conditional encoder `encoder(sample, condition) -> latent`:
    mean |E(G(c, z1), c) - z1|^2 + gaussian_weight * MMD(E(real, c), z1)."""

    name = "iid"
    needs_pair = False
    uses_real = True

    def __init__(self, encoder: nn.Module, gaussian_weight: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.gaussian_weight = _positive("gaussian_weight", gaussian_weight)

    def forward(self, pair: DiversityPair) -> torch.Tensor:
        inversion = (self.encoder(pair.fake1, pair.condition) - pair.z1).pow(2).mean()
        inverse_real = self.encoder(pair.real, pair.condition)
        return inversion + self.gaussian_weight * gaussian_mmd(inverse_real, pair.z1)


def _positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"regularizer option '{name}' is {value!r}; expected a number > 0")
    return float(value)


CLASSES = {"none": NoRegularizer, "sdi": SDI, "ms": ModeSeeking, "dp": DiversityPenalty,
           "ndiv": NormalizedDiversification, "iid": IID}
NAMES = tuple(CLASSES)


def make(name: str, encoder: nn.Module | None = None, **options) -> Regularizer:
    """The regularizer called `name` with its own hyper-parameters (`options`, e.g. alpha=0.9 for
    ndiv). IID needs the `encoder` it trains; the others ignore it."""
    if name not in CLASSES:
        raise ConfigError(f"unknown regularizer {name!r}; expected one of {list(NAMES)}")
    cls, given = CLASSES[name], sorted(options)
    if name == "iid":
        if encoder is None:
            raise ConfigError("regularizer 'iid' needs an encoder; expected one built for the data")
        options["encoder"] = encoder
    try:
        return cls(**options)
    except TypeError:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "encoder")]
        raise ConfigError(f"regularizer {name!r} got options {given}; expected only {allowed}") from None


WEIGHT_KINDS = ("absolute", "relative", "channels")


PARTICLE_BLOCK = 8192  # particles whose per-pixel statistics diversity_weights holds at once


def _entry_values(kind: str, log_images: torch.Tensor, image_shape) -> torch.Tensor:
    """(entries, D) float64 values whose spread over a particle's repeats `kind` measures: the
    log(1 + counts) pixels (absolute), the total counts (relative), the 5 channel sums (channels)."""
    x = log_images.double()
    if kind == "relative":
        return torch.expm1(x).sum(1, keepdim=True)
    if kind == "channels":
        return channel_sums(torch.expm1(x.reshape(-1, *image_shape)))
    return x


def _spread(kind: str, x: torch.Tensor, index: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """diversity_weights' raw diversity of a block of particles: x (entries, D) float64, index
    (entries,) each entry's particle within the block, n (particles,) float64 its entry count."""
    total = torch.zeros(len(n), x.shape[1], dtype=torch.float64).index_add_(0, index, x)
    squares = torch.zeros_like(total).index_add_(0, index, x**2)
    mean = total / n[:, None]
    var = (squares - n[:, None] * mean**2).clamp_min(0) / (n[:, None] - 1).clamp_min(1)
    std = var.sqrt()
    if kind == "absolute":
        return std.sum(1)
    if kind == "channels":
        excess = (var - mean).clamp_min(0).sqrt() / mean.clamp_min(1.0)
        return torch.where(mean.sum(1) >= MIN_MEAN_COUNTS, excess.mean(1), torch.zeros_like(excess[:, 0]))
    # relative: nearly empty responses (misses) fluctuate by counting statistics alone: weight 0
    return torch.where(mean[:, 0] >= MIN_MEAN_COUNTS, std[:, 0] / mean[:, 0].clamp_min(1.0), torch.zeros_like(std[:, 0]))


def diversity_weights(particle_id: np.ndarray, log_images: np.ndarray, kind: str = "absolute",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle SDI weights from the training set: returns (ids (P,), weights (P,) in [0, 1]).

    absolute (as published): sum over pixels of the std of the particle's repeated log(1 + counts)
        images; it mostly tracks energy and whether the particle hits the face.
    relative: std / mean of the particle's total counts over its repeats, which measures how much
        its showers fluctuate whatever its energy.
        Particles whose mean total is below geometry.MIN_MEAN_COUNTS (misses) get 0.
    channels: the spread of the 5 channel sums beyond photon statistics, sqrt(max(var - mean, 0)) /
        mean, averaged over the channels: the diversity the fidelity metric sees, without the
        Poisson pixel noise that dominates the absolute weight of a small shower. Misses get 0.
    All are min-max normalised over the training set. Particles seen once get weight 0: their
    diversity cannot be measured.
    """
    if kind not in WEIGHT_KINDS:
        raise ConfigError(f"unknown diversity weight {kind!r}; expected one of {WEIGHT_KINDS}")
    ids, inverse, counts = np.unique(np.asarray(particle_id), return_inverse=True, return_counts=True)
    index = torch.as_tensor(inverse, dtype=torch.long)
    n = torch.as_tensor(counts, dtype=torch.float64)
    image_shape = np.shape(log_images)[-2:]
    x = torch.as_tensor(np.asarray(log_images).reshape(len(inverse), -1))
    # Per-pixel float64 statistics of all particles at once took 7.5 GB for 100,000 particles x 2
    # (a training's peak): a block of particles at a time, their entries gathered, keeps it small.
    order = torch.argsort(index, stable=True)
    first_entry = np.concatenate([[0], np.cumsum(counts)])
    raw = torch.empty(len(ids), dtype=torch.float64)
    for a in range(0, len(ids), PARTICLE_BLOCK):
        b = min(a + PARTICLE_BLOCK, len(ids))
        rows = order[first_entry[a] : first_entry[b]]
        raw[a:b] = _spread(kind, _entry_values(kind, x[rows], image_shape), index[rows] - a, n[a:b])
    raw = torch.where(n > 1, raw, torch.zeros_like(raw))
    span = raw.max() - raw.min()
    weights = (raw - raw.min()) / span if span > 0 else torch.zeros_like(raw)
    return ids, weights.numpy()
