"""Conditional generator and discriminator for the 44 x 44 ZN response.

Both take the 9 standardised particle features. A fixed `Conditioner` in front of each adds the
quantities a particle's response actually depends on and that a small MLP finds hard to compute
from raw features: log energy, the direction tangents px/pz and py/pz (with their products with the
vertex z, so that the impact point on any downstream plane is linear in the inputs), and
charge / |p| (magnetic deflection). The generator maps a latent vector and the condition to
log(1 + counts) (non-negative); the discriminator also returns its image embedding, which the
diversity regularizers may use as the space in which they measure distances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import INDEX, N_FEATURES, Standardizer
from .geometry import GRID, N_CHANNELS, channel_sums

N_DERIVED = 6
CONDITION_DIM = N_FEATURES + N_DERIVED
COARSE = GRID // 4  # the generator's first feature map is 11 x 11, upsampled twice to 44 x 44


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of both networks. `width` is the channel count of the last generator stage (the
    stages before have 2x and 4x); `hidden` is the width of the dense layers."""

    latent_dim: int = 10
    width: int = 16
    hidden: int = 256
    disc_width: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


SIZES = {
    "tiny": ModelConfig(width=4, hidden=32, disc_width=4),  # tests
    "small": ModelConfig(width=8, hidden=128, disc_width=8),
    "base": ModelConfig(),
    "large": ModelConfig(width=32, hidden=512, disc_width=32),
}


def _derived(raw: torch.Tensor) -> torch.Tensor:
    energy, vz = raw[:, INDEX["energy"]], raw[:, INDEX["vz"]]
    px, py, pz = raw[:, INDEX["px"]], raw[:, INDEX["py"]], raw[:, INDEX["pz"]]
    pz_safe = torch.where(pz.abs() < 1e-3, torch.full_like(pz, 1e-3), pz)
    tx, ty = px / pz_safe, py / pz_safe
    p = torch.sqrt(px**2 + py**2 + pz**2).clamp_min(1e-3)
    return torch.stack([torch.log(energy.clamp_min(1e-3)), tx, ty, tx * vz, ty * vz, raw[:, INDEX["charge"]] / p], 1)


class Conditioner(nn.Module):
    """Standardised features (N, 9) -> condition (N, 15): the features plus standardised derived
    quantities. Its statistics are buffers, saved with the weights."""

    def __init__(self):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(N_FEATURES))
        self.register_buffer("feature_std", torch.ones(N_FEATURES))
        self.register_buffer("derived_mean", torch.zeros(N_DERIVED))
        self.register_buffer("derived_std", torch.ones(N_DERIVED))

    @torch.no_grad()
    def fit(self, standardizer: Standardizer, raw_features: np.ndarray) -> None:
        self.feature_mean.copy_(torch.tensor(standardizer.mean))
        self.feature_std.copy_(torch.tensor(standardizer.std))
        derived = _derived(torch.as_tensor(np.asarray(raw_features), dtype=torch.float64))
        std = derived.std(0)
        self.derived_mean.copy_(derived.mean(0))
        self.derived_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, standardized: torch.Tensor) -> torch.Tensor:
        raw = standardized.double() * self.feature_std.double() + self.feature_mean.double()
        derived = (_derived(raw) - self.derived_mean.double()) / self.derived_std.double()
        # Far outliers (a particle going backwards, a vertex metres away) must not saturate the MLP.
        return torch.cat([standardized, derived.to(standardized.dtype).clamp(-10, 10)], 1)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """(latent (N, latent_dim), standardised features (N, 9)) -> log(1 + counts) (N, 1, 44, 44).

    The response is factorised as total counts x shape: a small head predicts the log of the total
    from (latent, condition), the convolutional stack a shape (a softmax over the 1936 fibres). The
    total decides the channel sums that the fidelity metric compares, and its fluctuation from one
    latent to the next is the per-particle diversity SDI is about; as a direct output it is learned
    far faster than a total implied by 1936 pixel intensities. Non-negative by construction.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        w, h = config.width, config.hidden
        self.conditioner = Conditioner()
        inputs = config.latent_dim + CONDITION_DIM
        self.dense = nn.Sequential(mlp([inputs, h, h, 4 * w * COARSE * COARSE]), nn.LeakyReLU(0.2))
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 22 x 22
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 44 x 44
            nn.Conv2d(w, 1, 3, padding=1),  # shape logits
        )
        self.total = mlp([inputs, h // 2, h // 2, 1])  # log total counts
        # Start collapsed (the total ignores the latent): diversity is then something training must
        # add where the data has it, instead of random initial noise it must remove where it has not.
        nn.init.zeros_(self.total[-1].weight)

    @torch.no_grad()
    def set_total_scale(self, mean_log_total: float) -> None:
        """Start the total head at the training set's mean log total (a wide dynamic range)."""
        self.total[-1].bias.fill_(float(mean_log_total))

    def forward(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([z, self.conditioner(features)], 1)
        h = self.dense(inputs).view(-1, 4 * self.config.width, COARSE, COARSE)
        if self.upsample[0].weight.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)  # see Simulator: faster CPU kernels
        log_shape = torch.log_softmax(self.upsample(h).reshape(len(h), -1), dim=1)
        log_counts = self.total(inputs) + log_shape
        return F.softplus(log_counts).view(-1, 1, GRID, GRID)  # log(1 + exp(log counts))


class Discriminator(nn.Module):
    """(log(1 + counts) (N, 1, 44, 44), standardised features (N, 9)) -> (logit (N,), embedding (N, hidden)).

    Besides the image it sees the quantities the fidelity metric compares: the log of the 5 channel
    sums, and the log of the total counts per GeV of particle energy, amplified. The latter is
    constant to ~2 % for electromagnetic showers and varies by ~30 % for hadronic ones; a
    discriminator that had to resolve it from pixels and a raw log energy would let an over- or
    under-spread total pass for many epochs.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        w, h = config.disc_width, config.hidden
        self.conditioner = Conditioner()
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 22
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 11
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 5
            nn.Flatten(), nn.Linear(4 * w * 5 * 5, h), nn.LeakyReLU(0.2),
        )
        self.head = mlp([h + N_CHANNELS + 1 + CONDITION_DIM, h, 1])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(images)
        log_sums = torch.log1p(channel_sums(torch.expm1(images[:, 0].float()).clamp_min(0)))
        log_total = torch.logsumexp(log_sums, dim=1, keepdim=True)
        energy = standardized_energy_gev(features, self.conditioner)
        per_gev = (log_total - torch.log(energy.clamp_min(1e-3))[:, None]).clamp(1.0, 5.0)  # misses sit at 1
        summary = torch.cat([(log_sums - 7.0) / 2.0, 5.0 * (per_gev - 3.0)], 1).to(embedding.dtype)
        logit = self.head(torch.cat([embedding, summary, self.conditioner(features)], 1))
        return logit[:, 0], embedding


class Encoder(nn.Module):
    """(log(1 + counts) (N, 1, 44, 44), standardised features (N, 9)) -> latent (N, latent_dim):
    the inverse of the generator that the IID-GAN regularizer trains alongside it."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        w, h = config.disc_width, config.hidden
        self.conditioner = Conditioner()
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 22
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 11
            nn.Flatten(), nn.Linear(2 * w * 11 * 11, h), nn.LeakyReLU(0.2),
        )
        self.head = mlp([h + CONDITION_DIM, h, config.latent_dim])

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(images), self.conditioner(features)], 1))


def standardized_energy_gev(features: torch.Tensor, conditioner: Conditioner) -> torch.Tensor:
    """The energy column of standardised features, back in GeV."""
    i = INDEX["energy"]
    return features[:, i].float() * conditioner.feature_std[i] + conditioner.feature_mean[i]


def generator_flops_per_sample(config: ModelConfig = ModelConfig()) -> int:
    """Multiply-adds x 2 of one generator pass (dense and convolution layers; activations ignored)."""
    model = Generator(config)
    macs = 0
    size = COARSE
    macs += sum(m.in_features * m.out_features for m in model.total.modules() if isinstance(m, nn.Linear))
    for module in list(model.dense.modules()) + list(model.upsample.modules()):
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        elif isinstance(module, nn.ConvTranspose2d):
            macs += size * size * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            size *= 2
        elif isinstance(module, nn.Conv2d):
            macs += size * size * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
    return 2 * macs
