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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from zdc_sim import checkpoint, geometry, metrics, regularizers
from zdc_sim.features import Domain, Standardizer
from zdc_sim.models import Discriminator, Encoder, Generator
from zdc_sim.simulator import Simulator, pick_device

from . import data as training_data
from . import gan, refit
from .config import ConfigError, TrainConfig
from .evaluate import evaluate_particles
from .losses import energy_score_loss

BEST, LAST, LOG = "best.safetensors", "last.safetensors", "metrics.jsonl"
VALIDATION_SEED = 12345  # latents of validation: the same every epoch so epochs compare fairly
TEMPERATURE_PARTICLES = 10000  # training particles the shape temperature is chosen on (~2 min on 2 cores)
INSIDE_CM = 2.5  # showers centred this close to the face centre are not cut by its edge


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    step: int = 0  # optimisation steps in total
    best_ws: float = float("inf")
    history: list = field(default_factory=list)


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
        full = training_data.load(config.data, config.max_entries)
        if config.val_data is not None:
            self.train_set, val = full, training_data.load(config.val_data)
        else:
            held = training_data.split_by_particle(full.particle_id, config.val_fraction, config.seed)
            self.train_set, val = full.subset(~held), full.subset(held)
        self.validation = _validation_arrays(val, config.val_particles)
        self.steps_per_epoch = len(self.train_set) // world // config.batch_size
        self.standardizer = Standardizer.fit(self.train_set.features)
        self.x_train = torch.from_numpy(self.standardizer.transform(self.train_set.features))
        ids, weights = regularizers.diversity_weights(self.train_set.particle_id, self.train_set.log_images,
                                                      config.sdi_weighting)
        self.weights = torch.from_numpy(weights[np.searchsorted(ids, self.train_set.particle_id)]).float()

        model_config = config.model_config
        self.generator, self.discriminator = Generator(model_config), Discriminator(model_config)
        self.generator.conditioner.fit(self.standardizer, self.train_set.features)
        self.discriminator.conditioner.load_state_dict(self.generator.conditioner.state_dict())
        self.generator.set_total_scale(np.log1p(self.train_set.channels.sum(1)).mean())
        self.impact_residual_cm = None
        if model_config.impact_frame:
            self.impact_residual_cm = _fit_impact(self.generator, self.x_train, self.train_set)
            if model_config.envelope == "fitted":
                _fit_envelope(self.generator, self.x_train, self.train_set, config.seed)
        if model_config.latent_gate:
            _fit_total_heads(self.generator, self.x_train, self.train_set, config.seed)
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
        self.units = refit.shower_units(torch.from_numpy(self.train_set.features[:, 0]).float(),
                                        torch.from_numpy(self.train_set.channels.sum(1)).float())
        self.latent_rng = torch.Generator().manual_seed(config.seed * 1000 + rank)
        self.fingerprint = checkpoint.file_fingerprint(config.data)
        self.state = Progress()
        if (self.out / LAST).exists():
            self._load_state(self.out / LAST)
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
        while self.state.epoch < config.epochs:
            epoch = self.state.epoch
            order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
            order = order[self.rank :: self.world]
            sums, first = np.zeros(4), self.state.batch
            bar = tqdm(range(first, n_batches), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not self.progress_bar, unit="step", leave=False)
            started = time.perf_counter()
            for b in bar:
                losses = self._step(order[b * config.batch_size : (b + 1) * config.batch_size])
                sums += losses
                self.state.batch, self.state.step = b + 1, self.state.step + 1
                bar.set_postfix(d=f"{losses[0]:.3f}", g=f"{losses[1]:.3f}", reg=f"{losses[2]:.3f}",
                                score=f"{losses[3]:.3f}")
                if config.checkpoint_every and self.state.step % config.checkpoint_every == 0 and b + 1 < n_batches:
                    self._save_state()
            self._end_epoch(sums / max(1, n_batches - first), time.perf_counter() - started)
        if self.rank == 0 and config.fit_intensity:
            self._fit_intensity()
        if self.rank == 0 and config.plots:
            from .plots import write_plots

            write_plots(self.out, Simulator.load(self.out / BEST, device=self.device), self.validation, self.state.history)
        return self.out / BEST

    def _step(self, index: torch.Tensor) -> np.ndarray:
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
        r1 = config.r1_gamma * config.r1_every if self.state.step % config.r1_every == 0 else 0.0
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
                                           config.energy_score_linear, self.units[index].to(device))
            loss_g = loss_g + loss_score
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if self.world > 1:  # DDP averages the generator's gradients; the regularizer's own too
            for p in reg.parameters():
                dist.all_reduce(p.grad)
                p.grad /= self.world
        self.opt_g.step()
        self._update_average()
        return np.array([loss_d.item(), loss_adv.item(), loss_reg.item(), loss_score.item()])

    def _set_learning_rates(self) -> None:
        """Constant, then linear decay to 5 % over the last `lr_decay` share of all steps."""
        config = self.config
        total = config.epochs * self.steps_per_epoch
        decay_from = (1 - config.lr_decay) * total
        factor = 1.0
        if config.lr_decay > 0 and self.state.step >= decay_from:
            factor = max(0.05, 1 - (self.state.step - decay_from) / max(1.0, total - decay_from))
        for opt, lr in ((self.opt_g, config.lr_g), (self.opt_d, config.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

    @torch.no_grad()
    def _update_average(self) -> None:
        if self.average is self.generator:
            return
        decay = min(self.config.ema, (1 + self.state.step) / (10 + self.state.step))  # short memory at first
        for avg, p in zip(self.average.parameters(), self.generator.parameters()):
            avg.lerp_(p, 1 - decay)
        for avg, b in zip(self.average.buffers(), self.generator.buffers()):
            avg.copy_(b)

    def _end_epoch(self, mean_losses: np.ndarray, seconds: float) -> None:
        self.state.epoch += 1
        self.state.batch = 0
        if self.rank == 0:
            candidate, fits = self._post_processed()
            report = self.validate(copy.deepcopy(candidate))
            record = {"epoch": self.state.epoch, "step": self.state.step, "seconds": round(seconds, 2),
                      "loss_d": float(mean_losses[0]), "loss_g_adv": float(mean_losses[1]),
                      "loss_reg": float(mean_losses[2]), "loss_score": float(mean_losses[3]), "val": report}
            if fits:
                record.update(fits, val_before_refit=self.validate())
            self.state.history.append(record)
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            if report["ws_mean"] < self.state.best_ws:
                self.state.best_ws = report["ws_mean"]
                extra = {**fits, "validation_before_refit": record["val_before_refit"]} if fits else {}
                checkpoint.save(self.out / BEST, checkpoint.prefixed("generator", candidate.state_dict()),
                                self._metadata(validation=report, epoch=self.state.epoch, **extra))
            if self.progress_bar:
                tqdm.write(f"epoch {self.state.epoch}: loss_d {mean_losses[0]:.3f} loss_g {mean_losses[1]:.3f} "
                           f"reg {mean_losses[2]:.3f} | val WS {report['ws_mean']:.1f} "
                           f"({report['ratio_to_floor']:.2f}x floor) calibration {report['calibration']:.3f} "
                           f"bias had {report['spread_bias']['hadronic']:+.2f} "
                           f"EM {report['spread_bias']['electromagnetic']:+.2f}")
        self._save_state()
        if self.world > 1:
            self._check_replicas()

    def validate(self, generator: Generator | None = None) -> dict:
        """The evaluation protocol on the validation particles, for the moving average (default)."""
        if generator is None:
            # A copy: the Simulator changes the memory layout of its generator, which would change
            # the float rounding of the training steps that follow (and break exact resumption).
            generator = copy.deepcopy(self.average)
        v = self.validation
        return evaluate_particles(Simulator(generator, self.standardizer, device=self.device), v["features"],
                                  v["pdg"], v["channels"], self.config.val_samples, VALIDATION_SEED,
                                  real_centres=v["centres"], bootstrap=0)

    def _post_processed(self, particles: int = 50000) -> tuple[Generator, dict]:
        """A copy of the moving average post-processed on training particles (training/refit.py):
        its shape temperature fitted on the first TEMPERATURE_PARTICLES (shape_temperature), then its
        total head refitted by the energy score of the total per GeV on up to `particles`
        (total_refit steps); and the record of each fit. With both off: the average itself and {}.
        Each epoch's candidate is post-processed before it is validated, so the best epoch is
        chosen on what is shipped."""
        config = self.config
        refit_total = bool(config.total_refit) and self.average.config.latent_gate
        if not (refit_total or config.shape_temperature):
            return self.average, {}
        if not hasattr(self, "_refit_data"):
            _, (feats, pdg, channels) = metrics.group_repeats(self.train_set.particle_id, self.train_set.features,
                                                              self.train_set.pdg, self.train_set.channels)
            feats = feats[:particles, 0]
            self._refit_data = (torch.from_numpy(self.standardizer.transform(feats)), feats[:, 0], pdg[:particles, 0],
                                channels[:particles])
        features, energy, pdg, channels = self._refit_data
        candidate = copy.deepcopy(self.average).cpu()
        seed = config.seed * 1000 + self.state.epoch
        fits = {}
        if config.shape_temperature:
            fits["shape_temperature"] = refit.fit_shape_temperature(
                candidate, features[:TEMPERATURE_PARTICLES], channels[:TEMPERATURE_PARTICLES], seed=seed)
        if refit_total:
            candidate.requires_grad_(True).train()
            fits["total_refit"] = refit.refit_total(candidate, features, energy, pdg, channels.sum(-1),
                                                    config.total_refit, seed=seed)
        return candidate.requires_grad_(False).eval().to(self.device), fits

    def _fit_intensity(self, particles: int = 20000) -> None:
        """The published post-processing: one factor in [0.9, 1.1] on the counts of the best
        generator, chosen to minimise the channel WS on training particles (a 1 % scale error alone
        moves a perfect simulator from 1.2x to 1.6x the floor of 3,000 particles). Done once; the best checkpoint is
        rewritten with the factor and re-validated."""
        simulator = Simulator.load(self.out / BEST, device=self.device)
        meta = {k: v for k, v in simulator.metadata.items() if k not in ("checksum", "path")}
        if "intensity_factor" in meta:
            return
        _, (feats, channels) = metrics.group_repeats(self.train_set.particle_id, self.train_set.features,
                                                     self.train_set.channels)
        feats, channels = feats[:particles, 0], channels[:particles]
        k = channels.shape[1]
        generated = simulator.simulate(np.repeat(feats, k, 0), seed=VALIDATION_SEED + 1, extrapolate=True).channels.astype(np.float64)
        factors = np.round(np.arange(0.9, 1.1001, 0.001), 4)  # a 1 % shift of channel 5 alone is ~3x its floor
        ws = [metrics.ws_channels(channels.reshape(-1, geometry.N_CHANNELS), f * generated).mean() for f in factors]
        factor = float(factors[int(np.argmin(ws))])
        generator = simulator.generator
        generator.intensity.mul_(factor)
        report = self.validate(generator)
        checkpoint.save(self.out / BEST, checkpoint.prefixed("generator", generator.state_dict()),
                        {**meta, "intensity_factor": factor, "validation_before_intensity": meta.get("validation"),
                         "validation": report})
        if self.progress_bar:
            tqdm.write(f"intensity factor {factor:.4f}: val WS {report['ws_mean']:.1f} "
                       f"({report['ratio_to_floor']:.2f}x floor)")

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

    def _save_state(self) -> None:
        if self.rank != 0:
            return
        tensors = {**checkpoint.prefixed("generator", self.generator.state_dict()),
                   **checkpoint.prefixed("discriminator", self.discriminator.state_dict()),
                   **checkpoint.prefixed("regularizer", self.regularizer.state_dict()),
                   **(checkpoint.prefixed("average", self.average.state_dict()) if self.average is not self.generator else {}),
                   "rng.latents": self.latent_rng.get_state()}
        optimizers = {}
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            state = opt.state_dict()
            for index, values in state["state"].items():
                for key, value in values.items():
                    tensors[f"{name}.{index}.{key}"] = value
            optimizers[name] = state["param_groups"]
        progress = {"epoch": self.state.epoch, "batch": self.state.batch, "step": self.state.step,
                    "best_ws": self.state.best_ws if np.isfinite(self.state.best_ws) else None,
                    "history": self.state.history}
        checkpoint.save(self.out / LAST, tensors, self._metadata(progress=progress, optimizers=optimizers))

    def _load_state(self, path: Path) -> None:
        tensors, meta = checkpoint.load(path, device=self.device)
        if meta["dataset_fingerprint"] != self.fingerprint:
            raise ConfigError(f"cannot resume from '{path}': it was trained on dataset {meta['dataset_fingerprint']}, "
                              f"but '{self.config.data}' is {self.fingerprint}; expected the same file")
        previous = {k: v for k, v in meta["training"].items() if k not in ("epochs", "device", "threads", "plots")}
        current = {k: v for k, v in self.config.to_dict().items() if k in previous}
        changed = sorted(k for k in previous if previous[k] != current[k])
        if changed:
            raise ConfigError(f"cannot resume from '{path}': config differs in {changed}; expected the same config "
                              "(only epochs, device, threads and plots may change)")
        self.generator.load_state_dict(checkpoint.unprefixed("generator", tensors))
        self.discriminator.load_state_dict(checkpoint.unprefixed("discriminator", tensors))
        self.regularizer.load_state_dict(checkpoint.unprefixed("regularizer", tensors))
        if self.average is not self.generator:
            self.average.load_state_dict(checkpoint.unprefixed("average", tensors))
        self.latent_rng.set_state(tensors["rng.latents"].cpu())
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            state: dict = {}
            for key, value in tensors.items():
                if key.startswith(name + "."):
                    _, index, field_name = key.split(".", 2)
                    state.setdefault(int(index), {})[field_name] = value
            opt.load_state_dict({"state": state, "param_groups": meta["optimizers"][name]})
        progress = meta["progress"]
        self.state = Progress(progress["epoch"], progress["batch"], progress["step"],
                              progress["best_ws"] if progress["best_ws"] is not None else float("inf"),
                              progress["history"])


def _fit_impact(generator: Generator, features: torch.Tensor, data: training_data.Dataset) -> float:
    """Fit the generator's impact head to the centres of real showers well inside the face, where
    truncation does not pull them inwards: a first fit on showers whose centre is inside, a second
    on those the first fit puts inside. Returns the median residual in cm."""
    total, centres = torch.from_numpy(data.channels.sum(1)), torch.from_numpy(data.centres).double()
    shower = (total >= geometry.MIN_MEAN_COUNTS) & torch.isfinite(centres).all(1)
    use = shower & (centres.abs() < INSIDE_CM).all(1)
    if use.sum() < 20:
        raise ConfigError(f"only {int(use.sum())} training responses are showers inside the face; expected at "
                          "least 20 to fit the impact head (or train with impact_frame off)")
    generator.fit_impact(features[use], centres[use])
    with torch.no_grad():
        predicted = generator.impact_point(features.float())
    use = shower & (predicted.abs() < INSIDE_CM).all(1)
    return generator.fit_impact(features[use], centres[use])


def _fit_envelope(generator: Generator, features: torch.Tensor, data: training_data.Dataset, seed: int,
                  showers: int = 10000) -> None:
    """Fit the shape envelope (Generator.fit_envelope) on up to `showers` real showers that the
    fitted impact head puts inside the face (the mean share per fibre at a distance is unbiased
    where the face cuts a shower off: only the fibres that exist are counted)."""
    if data.log_images is None:
        raise ConfigError("the shape envelope is fitted on real images; the training set was read without them")
    with torch.no_grad():
        predicted = generator.impact_point(features.float())
    total = torch.from_numpy(data.channels.sum(1))
    use = np.flatnonzero(((total >= geometry.MIN_MEAN_COUNTS) & (predicted.abs() < INSIDE_CM).all(1)).numpy())
    if len(use) < 20:
        raise ConfigError(f"only {len(use)} training responses are showers inside the face; expected at least 20 "
                          "to fit the shape envelope (or train with \"envelope\": \"gaussian\")")
    use = np.random.default_rng(seed).permutation(use)[:showers]
    generator.fit_envelope(features[use], torch.expm1(data.log_images[torch.from_numpy(use), 0]))


def _fit_total_heads(generator: Generator, features: torch.Tensor, data: training_data.Dataset, seed: int,
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
        inside = (generator.impact_point(features.float()).abs() < INSIDE_CM).all(1) if generator.config.impact_frame \
            else torch.ones(len(totals), dtype=torch.bool)
    log_totals = torch.log1p(totals)
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
                len(rows[:8]), rows.shape[1], *geometry.SHAPE)}
