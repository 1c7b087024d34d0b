"""The calibration of each epoch's candidate after the adversarial steps, before the best epoch is
chosen: the shape's latent temperature, the total head refitted by a proper scoring rule, one
intensity factor on counts and one more on electromagnetic showers' counts. Each is fitted on
training particles and recorded.

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
from typing import NamedTuple

import numpy as np
import torch

from zdc_sim import features as feature_rules, geometry, metrics, species
from zdc_sim.errors import ConfigError
from zdc_sim.models import Generator, ModelConfig, with_post_processing_defaults
from zdc_sim.simulator import CHUNK_ROWS

from .losses import energy_score

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


@torch.no_grad()
def face_shares(generator: Generator, features: torch.Tensor, samples: int, rng: torch.Generator,
                chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents (P, samples, latent_dim), the share of each one's shower that lands on the face
    (P, samples)). The share depends on the latent through the shape: a shower at the face's edge
    shows more or less of itself as it is narrower or wider, and that fluctuation multiplies the
    total's. The refit must see it, or it gives edge showers a full shower's spread on top of it
    (the first ZP model: deuterons and alphas 1 cm off the face 1.5x too wide)."""
    latents = torch.randn(len(features), samples, generator.config.latent_dim, generator=rng)
    x = features.repeat_interleave(samples, 0)
    z = latents.flatten(0, 1)
    face = []
    for i in range(0, len(x), chunk):
        on_face = generator.mean_counts(z[i : i + chunk], x[i : i + chunk]).sum((1, 2))
        face.append(on_face / torch.exp(_log_total(generator, z[i : i + chunk], x[i : i + chunk])).clamp_min(1e-30))
    return latents, torch.nan_to_num(torch.cat(face)).clamp(0.0, 1.0).view(-1, samples)


def refit_total(generator: Generator, features: torch.Tensor, energy: np.ndarray, pdg: np.ndarray,
                real_totals: np.ndarray, steps: int, seed: int = 0, lr: float = LR, chunk: int = 1024) -> dict:
    """Refit in place. features: standardised (P, 9); energy (P,) GeV; pdg (P,); real_totals (P, R)
    with R >= 1 repeats. Returns the score before and after on the last 10 % of the particles
    (not refitted on), each averaged over the same latents."""
    if not generator.config.latent_gate:
        raise ConfigError("the total refit needs the latent gate's location-scale total head (latent_gate on)")
    g = torch.Generator().manual_seed(seed)
    features = features.float()
    n = len(features)
    latents, face = face_shares(generator, features, SAMPLES, g, chunk)
    totals = torch.from_numpy(np.asarray(real_totals, dtype=np.float64)).float()
    unit = shower_units(torch.from_numpy(np.asarray(energy, dtype=np.float64)).float(), totals.mean(1))
    weight = torch.from_numpy(np.where(species.shower_class(pdg) == species.ELECTROMAGNETIC, EM_WEIGHT, 1.0)).float()
    held = torch.arange(n) >= n - max(1, n // 10)
    fit_index = torch.nonzero(~held)[:, 0]

    def score(index: torch.Tensor, generator_rng: torch.Generator) -> torch.Tensor:
        x = features[index].repeat_interleave(SAMPLES, 0)
        z = latents[index].flatten(0, 1)
        mean = torch.exp(_log_total(generator, z, x)) * face[index].flatten()
        noise = torch.randn(len(x), generator=generator_rng)  # photon statistics of the sum, Gaussian
        generated = (mean + (mean + 1.0).sqrt() * noise).clamp_min(0.0).view(-1, SAMPLES)
        real = totals[index]
        linear = energy_score((generated / unit[index, None])[..., None], (real / unit[index, None])[..., None])
        log = energy_score(torch.log1p(generated)[..., None], torch.log1p(real)[..., None])
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


TEMPERATURE_PARTICLES = 10000  # training particles the shape temperature is chosen on (~2 min on 2 cores)
INTENSITY_FACTORS = np.round(np.arange(0.9, 1.1001, 0.001), 4)  # a 1 % shift of channel 5 alone is ~3x its floor


class CalibrationSet(NamedTuple):
    """Training particles, one row each, that the epoch-end calibration is fitted on."""

    features: torch.Tensor  # standardised (P, 9)
    energy: np.ndarray  # (P,) GeV
    pdg: np.ndarray  # (P,)
    channels: np.ndarray  # (P, R, 5): the real repeats of each


def calibration_set(data, standardizer, particles: int = 50000) -> CalibrationSet:
    """The first `particles` distinct particles of a training Dataset with their real repeats."""
    _, (feats, pdg, channels) = metrics.group_repeats(data.particle_id, data.features, data.pdg, data.channels)
    feats = feats[:particles, 0]
    return CalibrationSet(torch.from_numpy(standardizer.transform(feats)), feats[:, 0], pdg[:particles, 0],
                          channels[:particles])


def calibrated_candidate(average: Generator, calibration: CalibrationSet, shape_temperature: bool,
                         total_refit_steps: int, seed: int) -> tuple[Generator, dict]:
    """A copy of the moving average (on CPU) calibrated on training particles: its shape
    temperature fitted on the first TEMPERATURE_PARTICLES (when `shape_temperature`), then its
    total head refitted for `total_refit_steps` (with the latent gate); and the record of each
    fit. Each epoch's candidate is calibrated before it is validated, so the best epoch is chosen
    on what is shipped."""
    features, energy, pdg, channels = calibration
    candidate = copy.deepcopy(average).cpu()
    fits = {}
    if shape_temperature:
        fits["shape_temperature"] = fit_shape_temperature(
            candidate, features[:TEMPERATURE_PARTICLES], channels[:TEMPERATURE_PARTICLES], seed=seed)
    if total_refit_steps and average.config.latent_gate:
        candidate.requires_grad_(True).train()
        fits["total_refit"] = refit_total(candidate, features, energy, pdg, channels.sum(-1), total_refit_steps,
                                          seed=seed)
    return candidate.requires_grad_(False).eval(), fits


def fit_intensity(simulator, data, seed: int, particles: int | None = None) -> float:
    """The published post-processing: the factor in [0.9, 1.1] on the counts of a trained model
    that minimises the channel WS on the training particles (the first `particles` of them, all
    when None). A 1 % scale error alone moves a perfect simulator from 1.2x to 1.6x the floor of
    3,000 particles, and the WS's minimum is flat: fitted on 20,000 particles the factor missed the
    one that 100,000 give, and that 30,000 held-out ones confirm, by 0.5-1 % (bench/intensity_fit.py)."""
    _, (feats, channels) = metrics.group_repeats(data.particle_id, data.features, data.channels)
    return _best_factor(simulator, feats[:particles, 0], channels[:particles], seed)


def fit_em_intensity(simulator, data, seed: int, particles: int | None = None) -> float:
    """The factor in [0.9, 1.1] on electromagnetic showers' counts, on top of the simulator's own
    intensity, that minimises their channel WS on the training particles (as fit_intensity). The
    hadrons, most of the particles, set the common factor; a run whose EM counts sat 0.9-1.6 % above
    the hadrons' read 4.3x the floor on EM showers (docs/fidelity.md). 1.0 where there are fewer
    than metrics.MIN_CLASS_PARTICLES EM particles (the ZP sees a handful): no factor from noise."""
    _, (feats, pdg, channels) = metrics.group_repeats(data.particle_id, data.features, data.pdg, data.channels)
    feats, pdg, channels = feats[:particles, 0], pdg[:particles, 0], channels[:particles]
    em = species.shower_class(pdg) == species.ELECTROMAGNETIC
    if em.sum() < metrics.MIN_CLASS_PARTICLES:
        return 1.0
    return _best_factor(simulator, feats[em], channels[em], seed)


def _best_factor(simulator, feats: np.ndarray, channels: np.ndarray, seed: int) -> float:
    """The factor of INTENSITY_FACTORS on the simulator's counts of particles `feats` (P, 9), one
    sample per real repeat, that minimises the mean channel WS against their `channels` (P, K, 5).
    Simulated in chunks, keeping the channel sums only: in one call the images and draws took 1.5 GB
    per 20,000 particles x 2 (about 7.5 GB for a training's 100,000, its peak); in chunks 0.44 GB
    whatever the size."""
    rows = np.repeat(feature_rules.validate(feats), channels.shape[1], 0)
    generated = np.concatenate([simulation.channels for _, simulation in
                                simulator.simulate_chunks(rows, seed, CHUNK_ROWS)]).astype(np.float64)
    ws = [metrics.ws_channels(channels.reshape(-1, geometry.N_CHANNELS), f * generated).mean() for f in INTENSITY_FACTORS]
    return float(INTENSITY_FACTORS[int(np.argmin(ws))])


def apply_intensities(generator: Generator, simulator_of, data, seed: int) -> dict:
    """Fit the common intensity factor, then the electromagnetic one on top of it (each on every
    particle of `data`, by fit_intensity and fit_em_intensity), and multiply them into `generator`
    in place; `simulator_of(generator)` builds the Simulator the fits draw from. Returns both."""
    factor = fit_intensity(simulator_of(generator), data, seed=seed)
    generator.intensity.mul_(factor)
    em_factor = fit_em_intensity(simulator_of(generator), data, seed=seed)
    generator.em_intensity.mul_(em_factor)
    return {"factor": factor, "em_factor": em_factor}


INTENSITY_SEED = 12346  # the seed of the generated samples each epoch's factor is fitted on


def refit_checkpoint_intensity(path, data, source: str, out=None, seed: int = INTENSITY_SEED) -> dict:
    """Refit a trained checkpoint's intensity factors, common and electromagnetic, on every particle
    of `data` (its training set, read from the file `source`) and write the checkpoint to `out` (in
    place when None), atomically. The models trained before the factor was fitted on all training
    particles carry a common factor 0.5-1 % off (a model trained since gets ~1.000 here), and those
    trained before the EM factor get one (0.987 for one run whose EM counts sat ~1.3 % high). Returns the record also stored in the metadata as
    `intensity_refit`; the stored `validation` figures are those of the training epoch, before it."""
    from zdc_sim import checkpoint
    from zdc_sim.simulator import Simulator

    simulator = Simulator.load(path, device="cpu")
    generator = simulator.generator
    before, em_before = float(generator.intensity), float(generator.em_intensity)
    factors = apply_intensities(generator, lambda g: Simulator(g, simulator.standardizer, device="cpu"), data, seed)
    record = {**factors, "intensity_before": before, "intensity_after": float(generator.intensity),
              "em_intensity_before": em_before, "em_intensity_after": float(generator.em_intensity),
              "particles": int(len(np.unique(data.particle_id))), "data": str(source),
              "data_fingerprint": checkpoint.file_fingerprint(source), "seed": seed}
    _, metadata = checkpoint.load(path)
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "code_version")}
    metadata.update(intensity_factor=record["intensity_after"], em_intensity_factor=record["em_intensity_after"],
                    intensity_refit=record)
    checkpoint.save(out or path, checkpoint.prefixed("generator", generator.state_dict()), metadata)
    return record


SHARE_MAP_SEED = 12347  # the seed of the generated samples the tower share map is fitted on
SHARE_MAP_SAMPLES = 2  # generated samples per training particle


@torch.no_grad()
def refit_checkpoint_share_map(path, data, source: str, out=None, seed: int = SHARE_MAP_SEED,
                               samples: int = SHARE_MAP_SAMPLES, edge_total_map: bool | None = None) -> dict:
    """Fit a checkpoint's tower share map (zdc_sim/share_map.py) on every particle of `data`, its
    training set read from the file `source`: the real repeats' tower splits against `samples` generated mean
    responses per particle of the model without a map (a map already there is refitted from
    scratch). With `edge_total_map` (None: as the checkpoint has it) the edge total map is fitted
    first on the same responses, and the share map on their mapped totals, the order the model
    applies them in. Writes the checkpoint, its config with the maps on, to `out` (in place when
    None), atomically; returns the record also stored in the metadata as `share_map_refit`."""
    from dataclasses import replace

    from zdc_sim import checkpoint
    from zdc_sim.share_map import fit_edge_knots, fit_knots

    tensors, metadata = checkpoint.load(path)
    config = ModelConfig.from_dict(metadata["model"])
    edge = config.edge_total_map if edge_total_map is None else edge_total_map
    maps = ("share_map.", "edge_total_map.")
    weights = {k: v for k, v in checkpoint.unprefixed("generator", tensors).items() if not k.startswith(maps)}
    plain = Generator(replace(config, tower_share_map=False, edge_total_map=False))
    plain.load_state_dict(with_post_processing_defaults(weights))
    mapped = Generator(replace(config, tower_share_map=True, edge_total_map=edge))
    missing, unexpected = mapped.load_state_dict(with_post_processing_defaults(weights), strict=False)
    if unexpected or any(not key.startswith(maps) for key in missing):
        raise ConfigError(f"checkpoint '{path}' does not match its own config (missing {missing}, unexpected {unexpected})")
    _, (feats, real) = metrics.group_repeats(data.particle_id, data.features, data.channels)
    feats = feats[:, 0]
    standardizer = feature_rules.Standardizer.from_dict(metadata["standardizer"])
    x = torch.tensor(standardizer.transform(geometry.to_a_side(feats)), dtype=torch.float32)
    rows = x.repeat_interleave(samples, 0)
    g = torch.Generator().manual_seed(seed)
    channels = []
    for start in range(0, len(rows), CHUNK_ROWS // 16):
        batch = rows[start : start + CHUNK_ROWS // 16]
        z = torch.randn(len(batch), config.latent_dim, generator=g)
        channels.append(geometry.channel_sums(plain.mean_counts(z, batch)))
    channels = torch.cat(channels).double().numpy().reshape(len(feats), samples, 5)
    impact, energy = plain.impact_point(x).numpy(), feats[:, feature_rules.INDEX["energy"]]
    em = plain.conditioner.electromagnetic(x).numpy()
    towers = channels[..., :4]
    record = {"particles": int(len(feats)), "samples": samples, "seed": seed, "data": str(source),
              "data_fingerprint": checkpoint.file_fingerprint(source)}
    if edge:
        edge_knots = fit_edge_knots(config.geometry, impact[:, 0], energy, em, real.sum(-1), channels.sum(-1))
        for name, value in edge_knots.items():
            getattr(mapped.edge_total_map, name).copy_(torch.as_tensor(value))
        # the share map is fitted on what it will see: the totals as mapped
        factors = mapped.edge_total_map.factors(
            torch.as_tensor(channels.sum(-1).ravel(), dtype=torch.float32),
            torch.as_tensor(np.repeat(impact[:, 0], samples), dtype=torch.float32),
            torch.as_tensor(np.repeat(energy, samples), dtype=torch.float32),
            torch.as_tensor(np.repeat(em, samples)))
        towers = towers * factors.double().numpy().reshape(len(feats), samples, 1)
        record["edge_bins_fitted"] = _bins_fitted(edge_knots)
    knots = fit_knots(config.geometry, impact, energy, em, real[..., :4], towers)
    for name, value in knots.items():
        getattr(mapped.share_map, name).copy_(torch.as_tensor(value))
    record["bins_fitted"] = _bins_fitted(knots)
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "code_version")}
    metadata.update(model=mapped.config.to_dict(), share_map_refit=record)
    checkpoint.save(out or path, checkpoint.prefixed("generator", mapped.state_dict()), metadata)
    return record


def _bins_fitted(knots: dict) -> int:
    """Rows of a map whose real knots differ from the identity's (equal knots)."""
    from zdc_sim.share_map import IDENTITY_ROW

    return int((knots["real_knots"] != IDENTITY_ROW).any(-1).sum())
