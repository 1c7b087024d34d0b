"""The generator's heads that the data can set directly are set from it before GAN training, so
that training refines them instead of discovering them: the conditioner's standardisation, the
total's scale, the impact head (least squares on real shower centres), the shape envelope (the
real showers' mean radial profile) and the location-scale total heads (their likelihood on real
totals and on the differences between repeats of one particle)."""

from __future__ import annotations

import numpy as np
import torch

from zdc_sim import geometry
from zdc_sim.errors import DataError
from zdc_sim.features import Standardizer
from zdc_sim.models import Generator

from .config import ConfigError, TrainConfig
from .data import Dataset

# Showers centred this close (|x|, |y|) to the face centre are not cut by its edge: about one
# hadronic halo width (ZN 1 cm, ZP 2 cm in brass) inside the face.
INSIDE_CM = {"zn": (2.5, 2.5), "zp": (9.2, 4.0)}


def _inside(generator: Generator, points: torch.Tensor) -> torch.Tensor:
    """(N,) True for points (N, 2) cm well inside the face of the generator's detector."""
    return (points.abs() < torch.tensor(INSIDE_CM[generator.config.detector], dtype=points.dtype)).all(1)


def prefit(generator: Generator, standardizer: Standardizer, features: torch.Tensor, data: Dataset,
           config: TrainConfig) -> float | None:
    """Every start the model's structure has, in order; features: the standardised (N, 9) of
    `data`. Returns the impact head's median residual in cm (None without an impact frame)."""
    model = generator.config
    generator.conditioner.fit(standardizer, data.features)
    if model.bounded_total:  # the total head starts at the mean logit of the deposited fraction
        full_yield = fit_full_yield(generator, data)
        fraction = np.clip(data.channels.sum(1) / (np.maximum(data.features[:, 0], 1e-3) * full_yield), 1e-4, 1 - 1e-4)
        generator.set_total_scale(float(np.mean(np.log(fraction / (1 - fraction)))))
    else:
        generator.set_total_scale(np.log1p(data.channels.sum(1)).mean())
    residual = None
    if model.impact_frame:
        residual = fit_impact(generator, features, data)
        if model.envelope == "fitted":
            fit_envelope(generator, features, data, config.seed)
    if model.latent_gate:
        fit_total_heads(generator, features, data, config.seed, steps=config.prefit_steps)
    return residual


@torch.no_grad()
def solve_impact_head(generator: Generator, features: torch.Tensor, centres_cm: torch.Tensor,
                      ridge: float = 1e-6) -> float:
    """Least-squares fit of the impact head, a linear map condition -> (x, y) on the face in cm,
    to real shower centres; returns the median distance of the fit from them (cm). A tiny ridge
    (relative to the number of showers; the condition is standardised) keeps the solution
    small and the same from run to run: energy and pz are nearly collinear, and a plain
    least-squares solve answered with cancelling weights in the thousands whose last digits
    depended on memory alignment."""
    condition = generator.conditioner(features.float()).double()
    design = torch.cat([condition, torch.ones(len(condition), 1, dtype=torch.float64)], 1)
    gram = design.T @ design + ridge * len(design) * torch.eye(design.shape[1], dtype=torch.float64)
    solution = torch.linalg.solve(gram, design.T @ centres_cm.double())  # (C + 1, 2)
    generator.impact_weight.copy_(solution[:-1].T)
    generator.impact_bias.copy_(solution[-1])
    return float((design @ solution - centres_cm.double()).norm(dim=1).median())


@torch.no_grad()
def set_envelope(generator: Generator, features: torch.Tensor, counts: torch.Tensor,
                 bin_cm: float | None = None) -> torch.Tensor:
    """Set the envelope the shape logits are added to: the log of the mean share per fibre of
    real showers at distance r from the impact head's point, in bins of `bin_cm`, read at each
    canvas pixel's distance from the canvas centre (max 0, bins no shower reached take the
    last reached one's value; bins of half a fibre pitch by default). features: standardised (N, 9);
    counts: real responses (N, rows, columns) of showers the fitted impact head puts well inside
    the face. Returns the profile (bins,)."""
    det = generator.config.geometry
    bin_cm = det.pitch_cm / 2 if bin_cm is None else bin_cm
    impact = generator.impact_point(features.float()).double()  # (N, 2) cm
    x, y = torch.from_numpy(det.pixel_x_cm), torch.from_numpy(det.pixel_y_cm)
    dx = x[None, None, :] - impact[:, 0, None, None]  # columns run along x
    dy = y[None, :, None] - impact[:, 1, None, None]  # rows run down in y
    bins = (torch.sqrt(dx**2 + dy**2) / bin_cm).long()
    share = counts.double() / counts.double().sum((1, 2), keepdim=True).clamp_min(1.0)
    n_bins = int(bins.max()) + 1
    mass = torch.bincount(bins.flatten(), share.flatten(), minlength=n_bins)
    fibres = torch.bincount(bins.flatten(), minlength=n_bins).double()
    profile = mass / fibres.clamp_min(1.0)
    reached = torch.nonzero(profile > 0).flatten()
    if len(reached) == 0:
        raise DataError("expected showers with counts to fit the envelope; all responses are empty")
    floor = profile[reached].min()  # bins past the showers' reach keep the last reached value
    profile = torch.where(profile > 0, profile, floor)
    canvas_r = torch.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    index = (canvas_r / bin_cm).long().clamp(max=n_bins - 1)
    log_profile = torch.log(profile[index])
    generator.prior.copy_((log_profile - log_profile.max()).reshape(1, -1).float())
    return profile


def fit_impact(generator: Generator, features: torch.Tensor, data: Dataset) -> float:
    """Fit the generator's impact head to the centres of real showers well inside the face, where
    truncation does not pull them inwards: a first fit on showers whose centre is inside, a second
    on those the first fit puts inside. Returns the median residual in cm."""
    total, centres = torch.from_numpy(data.channels.sum(1)), torch.from_numpy(data.centres).double()
    shower = (total >= geometry.MIN_MEAN_COUNTS) & torch.isfinite(centres).all(1)
    use = shower & _inside(generator, centres)
    if use.sum() < 20:
        raise ConfigError(f"only {int(use.sum())} training responses are showers inside the face; expected at "
                          "least 20 to fit the impact head (or train with impact_frame off)")
    solve_impact_head(generator, features[use], centres[use])
    with torch.no_grad():
        predicted = generator.impact_point(features.float())
    use = shower & _inside(generator, predicted)
    return solve_impact_head(generator, features[use], centres[use])


def fit_envelope(generator: Generator, features: torch.Tensor, data: Dataset, seed: int,
                 showers: int = 10000) -> None:
    """Fit the shape envelope (`set_envelope`) on up to `showers` real showers that the fitted
    impact head puts inside the face (the mean share per fibre at a distance is unbiased where the
    face cuts a shower off: only the fibres that exist are counted)."""
    if data.log_images is None:
        raise ConfigError("the shape envelope is fitted on real images; the training set was read without them")
    with torch.no_grad():
        predicted = generator.impact_point(features.float())
    total = torch.from_numpy(data.channels.sum(1))
    use = np.flatnonzero(((total >= geometry.MIN_MEAN_COUNTS) & _inside(generator, predicted)).numpy())
    if len(use) < 20:
        raise ConfigError(f"only {len(use)} training responses are showers inside the face; expected at least 20 "
                          "to fit the shape envelope (or train with \"envelope\": \"gaussian\")")
    use = np.random.default_rng(seed).permutation(use)[:showers]
    set_envelope(generator, features[use], torch.expm1(data.log_images[torch.from_numpy(use), 0]))


FULL_YIELD_QUANTILE, FULL_YIELD_MARGIN = 0.999, 1.05


@torch.no_grad()
def fit_full_yield(generator: Generator, data: Dataset) -> float:
    """The photons per GeV of a fully contained shower, the bound of the total (bounded_total): the
    0.999 quantile of total / energy over the training showers, 5 % above it so that the most
    contained real showers are not at the very edge of the sigmoid. Returns it."""
    totals = data.channels.sum(1)
    energy = np.maximum(data.features[:, 0].astype(np.float64), 1e-3)
    showers = totals >= geometry.MIN_MEAN_COUNTS
    if showers.sum() < 20:
        raise ConfigError(f"only {int(showers.sum())} training responses are showers; expected at least 20 to "
                          "fit the full yield of the bounded total")
    value = FULL_YIELD_MARGIN * float(np.quantile(totals[showers] / energy[showers], FULL_YIELD_QUANTILE))
    generator.full_yield.fill_(value)
    return value


def fit_total_heads(generator: Generator, features: torch.Tensor, data: Dataset, seed: int,
                    steps: int = 1500, batch: int = 4096) -> None:
    """Start the location-scale total head where the data is: mean(c) by least squares on the log
    totals, scale(c) by the likelihood of the differences between repeats of one particle (their
    variance is twice the shower's own plus photon statistics, 1 / counts, which the simulator
    adds itself), and h(z, c) rescaled to zero mean and unit spread over latents. Showers inside
    the face only: truncation at the edge is the shape's business. GAN training refines all three."""
    g = torch.Generator().manual_seed(seed)
    totals = torch.from_numpy(data.channels.sum(1)).float()
    with torch.no_grad():
        condition = generator.conditioner(features.float())
        inside = _inside(generator, generator.impact_point(features.float())) if generator.config.impact_frame \
            else torch.ones(len(totals), dtype=torch.bool)
    log_totals = torch.log1p(totals)
    if generator.config.bounded_total:  # the head's target is the logit of the deposited fraction
        energy = generator.conditioner.energy_gev(features.float()).clamp_min(1e-3)
        fraction = (totals / (energy * generator.full_yield)).clamp(1e-4, 1 - 1e-4)
        log_totals = torch.log(fraction) - torch.log1p(-fraction)
    use = torch.nonzero(inside & (totals >= geometry.MIN_MEAN_COUNTS))[:, 0]
    order = np.argsort(data.particle_id, kind="stable")
    same = data.particle_id[order][1:] == data.particle_id[order][:-1]
    first, second = torch.from_numpy(order[:-1][same]), torch.from_numpy(order[1:][same])
    keep = inside[first] & (totals[first] >= geometry.MIN_MEAN_COUNTS) & (totals[second] >= geometry.MIN_MEAN_COUNTS)
    first, second = first[keep], second[keep]
    if len(use) < 2 or len(first) < 2:
        return
    difference = log_totals[first] - log_totals[second]
    photon_variance = 2.0 / (totals[first] + totals[second])
    if generator.config.bounded_total:  # d logit(f) = d log(total) / (1 - f)
        photon_variance = photon_variance / (1 - fraction[first]).pow(2)
    heads = list(generator.total_mean.parameters()) + list(generator.total_scale.parameters())
    opt = torch.optim.Adam(heads, lr=2e-3)
    for _ in range(steps):
        i = use[torch.randint(len(use), (batch,), generator=g)]
        j = torch.randint(len(first), (batch,), generator=g)
        loss_mean = (generator.total_mean(condition[i])[:, 0] - log_totals[i]).pow(2).mean()
        variance = torch.exp(2 * generator.total_scale(condition[first[j]])[:, 0]) + photon_variance[j]
        loss_scale = (0.5 * torch.log(variance) + difference[j].pow(2) / (4 * variance)).mean()
        opt.zero_grad(set_to_none=True)
        (loss_mean + loss_scale).backward()
        opt.step()
    with torch.no_grad():
        z = torch.randn(len(use), generator.config.latent_dim, generator=g)
        h = generator.total(generator.gated_inputs(z, condition[use]))[:, 0]
        last = generator.total[-1]
        last.weight.div_(h.std().clamp_min(1e-6))
        last.bias.sub_(h.mean()).div_(h.std().clamp_min(1e-6))
