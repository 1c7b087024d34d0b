"""Synthetic benchmarks of the diversity regularizers: small 2D GANs that train in seconds.

- ring: 8 Gaussians on a circle of radius 2 (std 0.02), one condition.
- grid: 25 Gaussians on a 5 x 5 grid with spacing 2 (std 0.05), one condition.
- selective: 8 conditions (one-hot); conditions 0-3 have a single Gaussian, conditions 4-7 four
  Gaussians on a circle of radius 1 around their centre (std 0.05). A selective method covers
  the four modes of the multi-mode conditions and keeps the single-mode ones tight.

Scoring follows the literature (VEEGAN, dp-GAN): a sample is high quality when it lies within
3 standard deviations of the nearest mode of its condition; a mode is captured when it holds at
least 0.8 % of its condition's samples (20 of 2,500).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zdc_sim import regularizers
from zdc_sim.errors import ConfigError
from zdc_sim.models import mlp

from . import gan

CAPTURE_SHARE = 0.008
LATENT = 8
TASKS = ("ring", "grid", "selective")


@dataclass(frozen=True)
class Task:
    name: str
    modes: list  # per condition: an (M_c, 2) array of mode centres
    std: float

    @property
    def n_conditions(self) -> int:
        return len(self.modes)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n real samples: (conditions (n,) int, points (n, 2))."""
        cond = rng.integers(0, self.n_conditions, n)
        points = np.empty((n, 2))
        for c in range(self.n_conditions):
            rows = np.flatnonzero(cond == c)
            points[rows] = self.sample_condition(c, len(rows), rng)
        return cond, points.astype(np.float32)

    def diversity_weights(self) -> np.ndarray:
        """SDI's per-condition weight, measured on real samples as for the ZDC data: the summed
        std of each condition's samples, min-max normalised (all ones with a single condition)."""
        rng = np.random.default_rng(0)
        spread = np.array([self.sample_condition(c, 2000, rng).std(0).sum() for c in range(self.n_conditions)])
        span = spread.max() - spread.min()
        return (spread - spread.min()) / span if span > 0 else np.ones_like(spread)

    def sample_condition(self, c: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n real points (n, 2) of condition c."""
        centres = self.modes[c][rng.integers(0, len(self.modes[c]), n)]
        return centres + rng.normal(0, self.std, (n, 2))


def make_task(name: str) -> Task:
    if name == "ring":
        angles = 2 * np.pi * np.arange(8) / 8
        return Task("ring", [2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)], 0.02)
    if name == "grid":
        axis = np.arange(-4.0, 5.0, 2.0)
        return Task("grid", [np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)], 0.05)
    if name == "selective":
        modes = []
        for c in range(8):
            centre = 4.0 * np.array([math.cos(2 * math.pi * c / 8), math.sin(2 * math.pi * c / 8)])
            if c < 4:
                modes.append(centre[None])
            else:
                a = 2 * np.pi * np.arange(4) / 4 + np.pi / 4
                modes.append(centre + np.stack([np.cos(a), np.sin(a)], 1))
        return Task("selective", modes, 0.05)
    raise ConfigError(f"unknown synthetic task {name!r}; expected one of {list(TASKS)}")


class ToyGenerator(nn.Module):
    def __init__(self, n_conditions: int, hidden: int = 128):
        super().__init__()
        self.net = mlp([LATENT + n_conditions, hidden, hidden, hidden, 2])

    def forward(self, z, c):
        return self.net(torch.cat([z, c], 1))


class ToyDiscriminator(nn.Module):
    """Returns (logit, embedding) like the ZDC discriminator, so dp-GAN sees its features."""

    def __init__(self, n_conditions: int, hidden: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(mlp([2 + n_conditions, hidden, hidden]), nn.LeakyReLU(0.2))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x, c):
        h = self.trunk(torch.cat([x, c], 1))
        return self.head(h)[:, 0], h


class ToyEncoder(nn.Module):
    def __init__(self, n_conditions: int, hidden: int = 128):
        super().__init__()
        self.net = mlp([2 + n_conditions, hidden, hidden, LATENT])

    def forward(self, x, c):
        return self.net(torch.cat([x, c], 1))


def train_toy(task: Task, method: str, seed: int, steps: int, batch: int = 256, lam: float | None = None,
              **options) -> ToyGenerator:
    """Train one small conditional GAN with `method` as diversity regularizer (at its published
    default weight unless `lam` is given); the same architecture, optimiser and steps for all."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    k = task.n_conditions
    g, d = ToyGenerator(k), ToyDiscriminator(k)
    reg = regularizers.make(method, encoder=ToyEncoder(k) if method == "iid" else None, **options)
    weight = reg.default_weight if lam is None else lam
    opt_g = torch.optim.Adam(list(g.parameters()) + list(reg.parameters()), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
    sdi_weights = torch.tensor(task.diversity_weights(), dtype=torch.float32)
    # a linear decay of the learning rates to 0 lets the samples settle onto the modes
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1 - i / steps) for o in (opt_g, opt_d)]
    for _ in range(steps):
        cond, real = task.sample(batch, rng)
        c = F.one_hot(torch.from_numpy(cond), k).float()
        real = torch.from_numpy(real)
        with torch.no_grad():
            fake = g(torch.randn(batch, LATENT), c)
        loss_d = gan.discriminator_loss(d, real, fake, c)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

        d.requires_grad_(False)
        z1 = torch.randn(batch, LATENT)
        z2 = torch.randn(batch, LATENT) if reg.needs_pair else None
        fakes = g(torch.cat([z1, z2]) if reg.needs_pair else z1, torch.cat([c, c]) if reg.needs_pair else c)
        losses = gan.generator_losses(d, reg, fakes, c, z1, z2, sdi_weights[cond], real)
        loss_g = losses.adversarial + weight * losses.regularizer
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        for schedule in schedules:
            schedule.step()
    return g


@torch.no_grad()
def score(task: Task, generator: ToyGenerator, samples_per_condition: int = 2500, seed: int = 0) -> dict:
    """Modes captured, high-quality share, coverage of multi-mode conditions and the spread of
    single-mode conditions relative to the truth (1 is right, > 1 is spurious spread)."""
    torch.manual_seed(seed)
    k = task.n_conditions
    captured, hq, coverage, spread = 0, [], [], []
    for c in range(k):
        cond = F.one_hot(torch.full((samples_per_condition,), c), k).float()
        points = generator(torch.randn(samples_per_condition, LATENT), cond).numpy().astype(np.float64)
        distance = np.linalg.norm(points[:, None, :] - task.modes[c][None], axis=2)
        nearest = distance.argmin(1)
        good = distance.min(1) < 3 * task.std
        hq.append(good.mean())
        per_mode = np.bincount(nearest[good], minlength=len(task.modes[c]))
        got = int((per_mode >= max(1, CAPTURE_SHARE * samples_per_condition)).sum())
        captured += got
        if len(task.modes[c]) > 1:
            coverage.append(got / len(task.modes[c]))
        else:  # RMS distance to the mode over the truth's, sqrt(2) std
            spread.append(float(np.sqrt((distance[:, 0] ** 2).mean()) / (math.sqrt(2) * task.std)))
    result = {"modes": captured, "modes_total": sum(len(m) for m in task.modes), "hq_share": float(np.mean(hq))}
    if task.name == "selective":
        result["multi_mode_coverage"] = float(np.mean(coverage))
        result["single_mode_spread"] = float(np.median(spread))
    return result
