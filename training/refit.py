"""After the adversarial phase: fit the shape's latent temperature, then refit the generator's
total head by a proper scoring rule.

The shape: adversarial training leaves the showers of one particle more varied than real ones (the
towers that do not hold the impact point fluctuate 1.25x too much from one latent to the next, so
their values spread too wide over the data set and the towers read 3-4x the floor). One factor on
the latent the shape stack reads, chosen on training particles, narrows that without retraining.

The channel WS weighs counts in linear scale, where the hadronic total per GeV is left-skewed (the
deposited fraction) and the GAN's total, shaped in log space by the discriminator and the log
energy score, comes out nearly symmetric: channel 5, which reads half of the total, was the worst
channel of every model (5-10x the floor). The energy score of the total per GeV against the
particle's real repeats (CRPS in one dimension) is minimised by the true conditional distribution,
skew included; only the three small total heads move (mean(c), scale(c), h(z, c)), so where the
shower lands and how it looks are untouched. Needs the latent gate's location-scale total.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from zdc_sim import geometry, metrics, species
from zdc_sim.models import Generator

# Electromagnetic totals spread by ~2 % where hadronic ones spread by ~30 %, so in the unweighted
# score they barely count and drift wider; a per-particle weight keeps the score proper.
EM_WEIGHT = 10.0
LOG_WEIGHT = 0.1  # the same score on log totals, added: keeps relative spreads in view
SAMPLES = 8  # generated totals per particle in each step
BATCH = 512  # particles per step
LR = 5e-5


TEMPERATURES = np.round(np.arange(0.3, 1.0001, 0.05), 2)  # candidate shape temperatures


@torch.no_grad()
def fit_shape_temperature(generator: Generator, features: torch.Tensor, real_channels: np.ndarray,
                          seed: int = 0, temperatures=TEMPERATURES, chunk: int = 1024) -> dict:
    """Set generator.shape_temperature to the candidate that minimises the towers' WS on training
    particles, with the shape judged alone: each generated sample's tower fractions times the total
    of one real repeat (so errors of the total head, refitted afterwards, do not steer the shape).
    features: standardised (P, 9); real_channels (P, R, 5). The same random inputs serve every
    candidate. Returns the chosen temperature and the towers' mean WS at each candidate."""
    model = copy.deepcopy(generator).to(memory_format=torch.channels_last)  # faster CPU kernels
    real = np.asarray(real_channels, dtype=np.float64)
    repeats = real.shape[1]
    x = features.float().repeat_interleave(repeats, 0)
    g = torch.Generator().manual_seed(seed)
    random = torch.randn(len(x), generator.config.random_dim, generator=g)
    real = real.reshape(-1, geometry.N_CHANNELS)
    real_totals = real.sum(1, keepdims=True)
    scores = []
    for t in temperatures:
        model.shape_temperature.fill_(float(t))
        counts = torch.cat([model.counts(random[i : i + chunk], x[i : i + chunk]) for i in range(0, len(x), chunk)])
        channels = geometry.channel_sums(counts.double().numpy())
        fractions = channels / np.maximum(channels.sum(1, keepdims=True), 1.0)
        scores.append(float(metrics.ws_channels(real, fractions * real_totals)[:4].mean()))  # the towers
    best = float(temperatures[int(np.argmin(scores))])
    generator.shape_temperature.fill_(best)
    return {"temperature": best, "temperatures": [float(t) for t in temperatures], "tower_ws": scores}


def total_parameters(generator: Generator) -> list[torch.nn.Parameter]:
    """The parameters the refit moves."""
    return [*generator.total.parameters(), *generator.total_mean.parameters(), *generator.total_scale.parameters()]


def _log_total(generator: Generator, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N,) log of the total counts before the shape cuts it at the face's edge."""
    condition = generator.conditioner(features)
    return generator.log_total(generator.gated_inputs(z, condition), condition)[:, 0]


def shower_units(energy: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """(N,) counts of each particle's (or entry's) typical shower: its energy x the median counts
    per GeV of the showers among `totals` (N,), so that totals of all particles share one scale."""
    energy = energy.clamp_min(1e-3)
    showers = totals >= geometry.MIN_MEAN_COUNTS
    per_gev = float(torch.median(totals[showers] / energy[showers])) if showers.any() else 1.0
    return energy * per_gev


def energy_score_1d(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Energy score (CRPS) per particle of K >= 2 generated values (N, K) against R real ones (N, R):
    mean |g - y| - 1/2 mean over distinct pairs |g - g'|."""
    k = generated.shape[1]
    to_real = (generated[:, :, None] - real[:, None, :]).abs().mean((1, 2))
    spread = (generated[:, :, None] - generated[:, None, :]).abs().sum((1, 2)) / (k * (k - 1))
    return to_real - 0.5 * spread


def refit_total(generator: Generator, features: torch.Tensor, energy: np.ndarray, pdg: np.ndarray,
                real_totals: np.ndarray, steps: int, seed: int = 0, lr: float = LR, chunk: int = 1024) -> dict:
    """Refit in place. features: standardised (P, 9); energy (P,) GeV; pdg (P,); real_totals (P, R)
    with R >= 1 repeats. Returns the score before and after on the last 10 % of the particles
    (not refitted on), each averaged over the same latents."""
    if not generator.config.latent_gate:
        raise ValueError("the total refit needs the latent gate's location-scale total head (latent_gate on)")
    g = torch.Generator().manual_seed(seed)
    features = features.float()
    n = len(features)
    with torch.no_grad():  # share of each particle's shower that lands on the face (one latent; barely moves)
        face = []
        for i in range(0, n, chunk):
            x = features[i : i + chunk]
            z = torch.randn(len(x), generator.config.latent_dim, generator=g)
            face.append(generator.mean_counts(z, x).sum((1, 2)) / torch.exp(_log_total(generator, z, x)).clamp_min(1e-30))
        face = torch.nan_to_num(torch.cat(face)).clamp(0.0, 1.0)
    totals = torch.from_numpy(np.asarray(real_totals, dtype=np.float64)).float()
    unit = shower_units(torch.from_numpy(np.asarray(energy, dtype=np.float64)).float(), totals.mean(1))
    weight = torch.from_numpy(np.where(species.shower_class(pdg) == species.ELECTROMAGNETIC, EM_WEIGHT, 1.0)).float()
    held = torch.arange(n) >= n - max(1, n // 10)
    fit_index = torch.nonzero(~held)[:, 0]

    def score(index: torch.Tensor, generator_rng: torch.Generator) -> torch.Tensor:
        x = features[index].repeat_interleave(SAMPLES, 0)
        z = torch.randn(len(x), generator.config.latent_dim, generator=generator_rng)
        mean = torch.exp(_log_total(generator, z, x)) * face[index].repeat_interleave(SAMPLES)
        noise = torch.randn(len(x), generator=generator_rng)  # photon statistics of the sum, Gaussian
        generated = (mean + (mean + 1.0).sqrt() * noise).clamp_min(0.0).view(-1, SAMPLES)
        real = totals[index]
        linear = energy_score_1d(generated / unit[index, None], real / unit[index, None])
        log = energy_score_1d(torch.log1p(generated), torch.log1p(real))
        return (weight[index] * (linear + LOG_WEIGHT * log)).mean()

    def held_out_score() -> float:
        with torch.no_grad():
            return float(score(torch.nonzero(held)[:, 0], torch.Generator().manual_seed(seed + 1)))

    before = held_out_score()
    opt = torch.optim.Adam(total_parameters(generator), lr=lr)
    for _ in range(steps):
        index = fit_index[torch.randint(len(fit_index), (BATCH,), generator=g)]
        loss = score(index, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    generator.zero_grad(set_to_none=True)
    return {"steps": steps, "particles": int(len(fit_index)), "score_before": before, "score_after": held_out_score()}
