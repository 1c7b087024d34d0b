"""The GAN training loop: single process, or data-parallel under torchrun (DDP, gloo on CPU,
nccl on CUDA).

Each step: one discriminator step (non-saturating loss, lazy R1 penalty on real images), then one
generator step (adversarial loss + lambda * regularizer on two samples per condition). After each
epoch rank 0 validates with the metrics protocol, logs a JSON line, keeps the best generator (by
validation mean WS) and writes the resumable state. Everything random comes from generators
seeded by (seed, epoch) or saved in the state, so a resumed run on CPU ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from zdc_sim import checkpoint, regularizers
from zdc_sim.features import Domain, Standardizer
from zdc_sim.models import Discriminator, Encoder, Generator
from zdc_sim.simulator import Simulator, pick_device

from . import calibrate, gan, state
from . import data as training_data
from .config import ConfigError, TrainConfig
from .evaluate import evaluate_particles
from .losses import energy_score_loss
from .prefit import prefit

BEST, LAST, LOG = "best.safetensors", "last.safetensors", "metrics.jsonl"
VALIDATION_SEED = 12345  # latents of validation: the same every epoch so epochs compare fairly


class StepLosses(NamedTuple):
    """The losses of one training step (or their means over an epoch)."""

    discriminator: float
    adversarial: float
    regularizer: float
    score: float  # the energy score terms


@contextmanager
def _distributed(device_kind: str):
    """Initialise the process group when run under torchrun; yields (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world
    finally:
        dist.destroy_process_group()


def _device_for(config: TrainConfig) -> torch.device:
    device = pick_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def train(config: TrainConfig, progress_bar: bool = True) -> Path:
    """Run (or resume, if the run folder holds a resumable state) training; returns the best
    checkpoint's path."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device_for(config)
    with _distributed(device.type) as (rank, world):
        return _Run(config, device, rank, world, progress_bar).fit()


class _Run:
    def __init__(self, config: TrainConfig, device: torch.device, rank: int, world: int, progress_bar: bool):
        self.config, self.device, self.rank, self.world = config, device, rank, world
        self.out = Path(config.out)
        self.progress_bar = progress_bar and rank == 0
        torch.manual_seed(config.seed)
        self.train_set, val = _datasets(config)
        self.validation = _validation_arrays(val, config.val_particles)
        self.steps_per_epoch = len(self.train_set) // world // config.batch_size
        self.standardizer = Standardizer.fit(self.train_set.features)
        self.x_train = torch.from_numpy(self.standardizer.transform(self.train_set.features))
        self.weights = _diversity_weights(self.train_set, config.sdi_weighting)

        model_config = config.model_config
        self.generator, self.discriminator = Generator(model_config), Discriminator(model_config)
        self.impact_residual_cm = prefit(self.generator, self.standardizer, self.x_train, self.train_set, config)
        self.discriminator.conditioner.load_state_dict(self.generator.conditioner.state_dict())
        self.generator.to(device)
        self.discriminator.to(device)
        self.regularizer = self._make_regularizer(model_config).to(device)
        betas = (config.beta1, config.beta2)
        g_params = list(self.generator.parameters()) + list(self.regularizer.parameters())
        self.opt_g = torch.optim.Adam(g_params, lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr_d, betas=betas)
        # The moving average of the generator is what is validated and shipped (with ema 0: itself).
        self.average = copy.deepcopy(self.generator).requires_grad_(False) if config.ema > 0 else self.generator
        self.real_channels = torch.from_numpy(np.log1p(self.train_set.channels)).float()
        self.typical_showers = calibrate.shower_units(torch.from_numpy(self.train_set.features[:, 0]).float(),
                                                      torch.from_numpy(self.train_set.channels.sum(1)).float())
        self.latent_rng = torch.Generator().manual_seed(config.seed * 1000 + rank)
        self.fingerprint = checkpoint.file_fingerprint(config.data)
        self.calibration = None  # the training particles of the epoch-end calibration, read when first needed
        self.progress = state.Progress()
        if (self.out / LAST).exists():
            self.progress = state.load(self.out / LAST, config, self.fingerprint, device, self._saved_modules(),
                                    self._optimizers(), self.latent_rng)
        if world > 1:
            ddp_args = {"device_ids": [device.index]} if device.type == "cuda" else {}
            self.g_step_model = DistributedDataParallel(self.generator, **ddp_args)
            self.d_step_model = DistributedDataParallel(self.discriminator, **ddp_args)
        else:
            self.g_step_model, self.d_step_model = self.generator, self.discriminator

    def _make_regularizer(self, model_config) -> regularizers.Regularizer:
        config = self.config
        encoder = None
        if config.regularizer == "iid":
            encoder = Encoder(model_config)
            encoder.conditioner.load_state_dict(self.generator.conditioner.state_dict())
        return regularizers.make(config.regularizer, encoder=encoder, **config.regularizer_kwargs)

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> Path:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        n_batches = self.steps_per_epoch
        if n_batches == 0:
            raise ConfigError(f"training set has {len(self.train_set)} entries, fewer than one batch of "
                              f"{config.batch_size} per process x {self.world} processes; expected more data")
        while self.progress.epoch < config.epochs:
            epoch = self.progress.epoch
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
            order = order[self.rank :: self.world]
            sums, first = np.zeros(len(StepLosses._fields)), self.progress.batch
            bar = tqdm(range(first, n_batches), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not self.progress_bar, unit="step", leave=False)
            started = time.perf_counter()
            for b in bar:
                losses = self._step(order[b * config.batch_size : (b + 1) * config.batch_size])
                sums += losses
                self.progress.batch, self.progress.step = b + 1, self.progress.step + 1
                bar.set_postfix(d=f"{losses.discriminator:.3f}", g=f"{losses.adversarial:.3f}",
                                reg=f"{losses.regularizer:.3f}", score=f"{losses.score:.3f}")
                if config.checkpoint_every and self.progress.step % config.checkpoint_every == 0 and b + 1 < n_batches:
                    self._save_state()
            self._end_epoch(StepLosses(*(sums / max(1, n_batches - first))), time.perf_counter() - started)
        if self.rank == 0 and config.plots:
            from .plots import write_plots

            write_plots(self.out, Simulator.load(self.out / BEST, device=self.device), self.validation, self.progress.history)
        return self.out / BEST

    def _step(self, index: torch.Tensor) -> StepLosses:
        config, device = self.config, self.device
        real = self.train_set.log_images[index].to(device)
        x = self.x_train[index].to(device)
        batch = len(index)
        random_dim, latent = self.generator.config.random_dim, self.generator.config.latent_dim
        self._set_learning_rates()

        # Discriminator (R1 every r1_every steps, weighted up to match).
        self.discriminator.requires_grad_(True)
        z = torch.randn(batch, random_dim, generator=self.latent_rng).to(device)
        with torch.no_grad():
            fake = self.generator(z, x)
        r1 = config.r1_gamma * config.r1_every if self.progress.step % config.r1_every == 0 else 0.0
        loss_d = gan.discriminator_loss(self.d_step_model, real, fake, x, r1, self.discriminator)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # Generator: two samples per condition when the regularizer or the energy score compares them.
        self.discriminator.requires_grad_(False)
        reg = self.regularizer
        scored = config.energy_score > 0 or config.energy_score_image > 0 or config.energy_score_linear > 0
        pair = reg.needs_pair or scored
        z1 = torch.randn(batch, random_dim, generator=self.latent_rng).to(device)
        z2 = torch.randn(batch, random_dim, generator=self.latent_rng).to(device) if pair else None
        zz, xx = (torch.cat([z1, z2]), torch.cat([x, x])) if pair else (z1, x)
        fakes, means = self.g_step_model(zz, xx, with_mean=True)
        # Regularizers compare responses before photon statistics (pixel noise is not diversity),
        # and latents without the photon noise; IID's encoder inverts what it sees of real data.
        losses = gan.generator_losses(self.discriminator, reg, fakes, x, z1[:, :latent],
                                      None if z2 is None else z2[:, :latent], self.weights[index].to(device), real,
                                      compared=means)
        loss_adv, loss_reg = losses.adversarial, losses.regularizer
        loss_g = loss_adv + config.weight * loss_reg
        loss_score = fakes.new_zeros(())
        if scored:
            loss_score = energy_score_loss(fakes, real, self.real_channels[index].to(device),
                                           config.energy_score, config.energy_score_image,
                                           config.energy_score_linear, self.typical_showers[index].to(device))
            loss_g = loss_g + loss_score
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if self.world > 1:  # DDP averages the generator's gradients; the regularizer's own too
            for p in reg.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world
        self.opt_g.step()
        self._update_average()
        return StepLosses(loss_d.item(), loss_adv.item(), loss_reg.item(), loss_score.item())

    def _set_learning_rates(self) -> None:
        """Constant, then linear decay to 5 % over the last `lr_decay` share of all steps."""
        config = self.config
        total = config.epochs * self.steps_per_epoch
        decay_from = (1 - config.lr_decay) * total
        factor = 1.0
        if config.lr_decay > 0 and self.progress.step >= decay_from:
            factor = max(0.05, 1 - (self.progress.step - decay_from) / max(1.0, total - decay_from))
        for opt, lr in ((self.opt_g, config.lr_g), (self.opt_d, config.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

    @torch.no_grad()
    def _update_average(self) -> None:
        if self.average is self.generator:
            return
        decay = min(self.config.ema, (1 + self.progress.step) / (10 + self.progress.step))  # short memory at first
        for avg, p in zip(self.average.parameters(), self.generator.parameters()):
            avg.lerp_(p, 1 - decay)
        for avg, b in zip(self.average.buffers(), self.generator.buffers()):
            avg.copy_(b)

    def _end_epoch(self, mean_losses: StepLosses, seconds: float) -> None:
        self.progress.epoch += 1
        self.progress.batch = 0
        if self.rank == 0:
            candidate, fits = self._calibrated()
            record = {"epoch": self.progress.epoch, "step": self.progress.step, "seconds": round(seconds, 2),
                      "loss_d": float(mean_losses.discriminator), "loss_g_adv": float(mean_losses.adversarial),
                      "loss_reg": float(mean_losses.regularizer), "loss_score": float(mean_losses.score)}
            extra = {}
            if self.config.fit_intensity:
                candidate, factors, before = self._with_intensity(candidate)
                fitted = {"intensity_factor": factors["factor"], "em_intensity_factor": factors["em_factor"]}
                record.update(fitted, val_before_intensity=before)
                extra.update(fitted, validation_before_intensity=before)
            report = record["val"] = self.validate(candidate)
            if fits:
                record.update(fits, val_before_refit=self.validate())
                extra.update(fits, validation_before_refit=record["val_before_refit"])
            self.progress.history.append(record)
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            if report["ws_mean"] < self.progress.best_ws:
                self.progress.best_ws = report["ws_mean"]
                checkpoint.save(self.out / BEST, checkpoint.prefixed("generator", candidate.state_dict()),
                                self._metadata(validation=report, epoch=self.progress.epoch, **extra))
            if self.progress_bar:
                tqdm.write(f"epoch {self.progress.epoch}: loss_d {mean_losses.discriminator:.3f} "
                           f"loss_g {mean_losses.adversarial:.3f} reg {mean_losses.regularizer:.3f} | val WS {report['ws_mean']:.1f} "
                           f"({report['ratio_to_floor']:.2f}x floor, intensity {record.get('intensity_factor', 1.0):.3f}, "
                           f"EM {record.get('em_intensity_factor', 1.0):.3f}) "
                           f"calibration {report['calibration']:.3f} "
                           f"bias had {report['spread_bias']['hadronic']:+.2f} "
                           f"EM {report['spread_bias']['electromagnetic']:+.2f}")
        self._save_state()
        if self.world > 1:
            self._check_replicas()

    def validate(self, generator: Generator | None = None) -> dict:
        """The evaluation protocol on the validation particles, for the moving average (default)."""
        v = self.validation
        simulator = Simulator(self.average if generator is None else generator, self.standardizer, device=self.device)
        return evaluate_particles(simulator, v["features"],
                                  v["pdg"], v["channels"], self.config.val_samples, VALIDATION_SEED,
                                  real_centres=v["centres"], bootstrap=0)

    def _calibrated(self) -> tuple[Generator, dict]:
        """This epoch's candidate: the moving average calibrated on training particles
        (training/calibrate.py), and the record of each fit; with calibration off, the average
        itself and {}."""
        config = self.config
        if not ((config.total_refit and self.average.config.latent_gate) or config.shape_temperature):
            return self.average, {}
        if self.calibration is None:
            self.calibration = calibrate.calibration_set(self.train_set, self.standardizer)
        candidate, fits = calibrate.calibrated_candidate(self.average, self.calibration, config.shape_temperature,
                                                         config.total_refit, seed=config.seed * 1000 + self.progress.epoch)
        return candidate.to(self.device), fits

    def _with_intensity(self, candidate: Generator) -> tuple[Generator, dict, dict]:
        """This epoch's candidate times its own intensity factors, common and electromagnetic
        (training/calibrate.py), fitted before the best epoch is chosen: a 1 % scale error alone
        moved one run's second epoch from 1.77x to 2.57x the floor, so candidates are compared with
        their scale set. Returns the scaled copy, the factors and the validation before them."""
        before = self.validate(candidate)
        if candidate is self.average:
            candidate = copy.deepcopy(candidate)
        factors = calibrate.apply_intensities(candidate, lambda g: Simulator(g, self.standardizer, device=self.device),
                                              self.train_set, seed=calibrate.INTENSITY_SEED)
        return candidate, factors, before

    def _check_replicas(self) -> None:
        """DDP keeps replicas identical; verify it, since a silent divergence would waste a run."""
        total = torch.stack([p.detach().double().sum() for p in self.generator.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(self.world)]
        dist.all_gather(gathered, total.to(self.device))
        values = torch.cat(gathered)
        if not torch.allclose(values, values[0].expand_as(values)):
            raise RuntimeError(f"DDP replicas diverged: generator parameter sums {values.tolist()}")

    # --- state -----------------------------------------------------------------------------
    def _metadata(self, **extra) -> dict:
        return {"model": self.generator.config.to_dict(), "model_size": self.config.model,
                "impact_residual_cm": self.impact_residual_cm,
                "training": self.config.to_dict(), "standardizer": self.standardizer.to_dict(),
                "feature_ranges": Domain.fit(self.train_set.features).to_dict(),
                "dataset_fingerprint": self.fingerprint, "world_size": self.world,
                "torch_version": torch.__version__, **extra}

    def _saved_modules(self) -> dict:
        modules = {"generator": self.generator, "discriminator": self.discriminator, "regularizer": self.regularizer}
        if self.average is not self.generator:
            modules["average"] = self.average
        return modules

    def _optimizers(self) -> dict:
        return {"opt_g": self.opt_g, "opt_d": self.opt_d}

    def _save_state(self) -> None:
        if self.rank == 0:
            state.save(self.out / LAST, self._saved_modules(), self._optimizers(), self.latent_rng, self.progress,
                       self._metadata())


def _datasets(config: TrainConfig) -> tuple[training_data.Dataset, training_data.Dataset]:
    """(training, validation): the validation file, or else val_fraction of the training file's particles."""
    full = training_data.load(config.data, config.max_entries, detector=config.detector)
    if config.val_data is not None:
        return full, training_data.load(config.val_data, detector=config.detector)
    held = training_data.split_by_particle(full.particle_id, config.val_fraction, config.seed)
    return full.subset(~held), full.subset(held)


def _diversity_weights(data: training_data.Dataset, weighting: str) -> torch.Tensor:
    """(N,) SDI's weight of each entry: its particle's diversity among the real repeats."""
    ids, weights = regularizers.diversity_weights(data.particle_id, data.log_images, weighting)
    return torch.from_numpy(weights[np.searchsorted(ids, data.particle_id)]).float()


def _validation_arrays(val: training_data.Dataset, max_particles: int) -> dict:
    """Group the validation entries by particle: features (P, 9), pdg (P,), channels (P, K, 5),
    and a few particles' real images for the plots."""
    from zdc_sim.metrics import group_repeats

    index = np.arange(len(val))
    _, (feats, pdg, channels, centres, rows) = group_repeats(val.particle_id, val.features, val.pdg, val.channels,
                                                             val.centres, index)
    feats, pdg, channels, centres, rows = (a[:max_particles] for a in (feats, pdg, channels, centres, rows))
    return {"features": feats[:, 0], "pdg": pdg[:, 0], "channels": channels, "centres": centres,
            "images": torch.expm1(val.log_images[torch.as_tensor(rows[:8].ravel())]).numpy().reshape(
                len(rows[:8]), rows.shape[1], *val.log_images.shape[-2:])}
