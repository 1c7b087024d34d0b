"""The training configuration: one frozen dataclass, read from a JSON file and/or CLI flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from torch import nn

from zdc_sim import regularizers
from zdc_sim.errors import ZdcError
from zdc_sim.models import SIZES, ModelConfig
from zdc_sim.regularizers import NAMES as REGULARIZERS
from zdc_sim.regularizers import WEIGHT_KINDS


class ConfigError(ZdcError):
    """A training configuration value is missing or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    data: str  # training ROOT file (standard schema)
    out: str  # run folder: checkpoints, metrics.jsonl, plots
    val_data: str | None = None  # held-out ROOT file; default: val_fraction of the particles of `data`
    detector: str = "zn"  # the calorimeter to learn: 'zn' or 'zp' (zdc_sim/geometry.py)
    model: str = "base"  # a size of zdc_sim.models.SIZES
    model_options: dict = field(default_factory=dict)  # ModelConfig fields over the size's, e.g. {"halo": true}
    epochs: int = 30
    batch_size: int = 128  # per process
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    regularizer: str = "sdi"  # sdi, ms, dp, ndiv, iid, or none (the plain conditional GAN)
    lam: float | None = None  # weight of the regularizer in the generator loss; None: its published default
    regularizer_options: dict = field(default_factory=dict)  # the method's own hyper-parameters, e.g. {"alpha": 0.9}
    sdi_weighting: str = "absolute"  # 'absolute' (as published), 'relative' or 'channels' spread per particle
    sdi_space: str = "image"  # where SDI measures d_x: 'image' or discriminator 'embedding'
    r1_gamma: float = 1.0  # zero-centred gradient penalty on real images (0 disables)
    r1_every: int = 4  # apply it every this many discriminator steps (lazy regularisation)
    # Energy score (a proper scoring rule: punishes too much and too little spread alike) of the
    # generated pair against the particle's real response, on the log of the 5 channel sums and on
    # the 4 x 4-pooled log image; weights in the generator loss (0 disables).
    energy_score: float = 5.0
    energy_score_image: float = 0.0
    # The same score on the channel sums in linear scale, divided by each particle's typical shower
    # (energy x the training set's median counts per GeV); weight in the generator loss (0 disables).
    energy_score_linear: float = 0.0
    ema: float = 0.999  # decay of the generator's moving average (validated and shipped); 0: none
    lr_decay: float = 1 / 3  # share of the last steps over which learning rates fall linearly to 5 %
    # At each epoch's end, a copy of the moving average gets its shape temperature fitted (one
    # factor on the latent the shape stack reads, chosen on the towers' WS of training particles),
    # then its total head refitted by the energy score of the total per GeV for total_refit steps
    # (training/calibrate.py; 0 disables), then given its own intensity factors; that copy is
    # validated and, when best, saved.
    shape_temperature: bool = True
    total_refit: int = 2000
    fit_intensity: bool = True  # fit a factor on counts, and one on EM showers', to all training particles, each epoch
    prefit_steps: int = 1500  # optimizer steps starting the location-scale total heads (training/prefit.py)
    seed: int = 0
    val_fraction: float = 0.1
    val_particles: int = 1000  # particles evaluated each epoch
    val_samples: int = 10  # generated samples per particle for selectivity (M)
    checkpoint_every: int = 0  # also save the resumable state every N steps (0: at epoch ends)
    max_entries: int | None = None  # read at most this many entries of `data` (quick runs)
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; default: torch's choice
    plots: bool = True

    def __post_init__(self):
        checks = [
            ("model", self.model in SIZES, f"one of {sorted(SIZES)}"),
            ("regularizer", self.regularizer in REGULARIZERS, f"one of {list(REGULARIZERS)}"),
            ("sdi_weighting", self.sdi_weighting in WEIGHT_KINDS, f"one of {list(WEIGHT_KINDS)}"),
            ("sdi_space", self.sdi_space in ("image", "embedding"), "'image' or 'embedding'"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 2, ">= 2"),
            ("lam", self.lam is None or self.lam >= 0, ">= 0 (or null for the method's default)"),
            ("regularizer_options", isinstance(self.regularizer_options, dict), "a JSON object"),
            ("regularizer_options", "space" not in self.regularizer_options, "no 'space' (SDI's is sdi_space)"),
            ("r1_gamma", self.r1_gamma >= 0, ">= 0"),
            ("r1_every", self.r1_every >= 1, ">= 1"),
            ("energy_score", self.energy_score >= 0, ">= 0"),
            ("energy_score_image", self.energy_score_image >= 0, ">= 0"),
            ("energy_score_linear", self.energy_score_linear >= 0, ">= 0"),
            ("ema", 0 <= self.ema < 1, "in [0, 1)"),
            ("total_refit", self.total_refit >= 0, ">= 0 (steps; 0 disables)"),
            ("lr_decay", 0 <= self.lr_decay <= 1, "in [0, 1]"),
            ("val_fraction", 0 < self.val_fraction < 1 or self.val_data is not None, "in (0, 1)"),
            ("val_samples", self.val_samples >= 2, ">= 2"),
            ("val_particles", self.val_particles >= 3, ">= 3"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0"),
            ("prefit_steps", self.prefit_steps >= 0, ">= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"training config: '{name}' is {getattr(self, name)!r}; expected {expected}")
        try:
            self.model_config
        except ZdcError as exc:  # an unknown detector, a bad option value
            raise ConfigError(f"training config: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"training config: 'model_options' {self.model_options!r}: {exc}") from None
        try:  # the method's own options are checked by building it (a stand-in encoder for IID)
            regularizers.make(self.regularizer, encoder=nn.Identity(), **self.regularizer_kwargs)
        except ValueError as exc:
            raise ConfigError(f"training config: 'regularizer_options': {exc}") from None

    @property
    def model_config(self) -> ModelConfig:
        """The size's network configuration with `model_options` on top."""
        return ModelConfig(**{**SIZES[self.model].to_dict(), "detector": self.detector, **self.model_options})

    @property
    def regularizer_kwargs(self) -> dict:
        """The options `regularizers.make` takes for this config: the method's own, and SDI's space."""
        return {**self.regularizer_options, **({"space": self.sdi_space} if self.regularizer == "sdi" else {})}

    @property
    def weight(self) -> float:
        """lambda: the configured weight, or the method's published default."""
        return regularizers.CLASSES[self.regularizer].default_weight if self.lam is None else self.lam

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def build(cls, file: str | None = None, **overrides) -> "TrainConfig":
        """Values from a JSON file, then the non-None overrides (CLI flags) on top."""
        values: dict = {}
        if file is not None:
            try:
                values = json.loads(Path(file).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"training config file '{file}' cannot be read: {exc}; expected a JSON object") from None
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - known)
            if not isinstance(values, dict) or unknown:
                raise ConfigError(f"training config file '{file}': unknown keys {unknown}; expected keys among {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for required in ("data", "out"):
            if required not in values:
                raise ConfigError(f"training config: '{required}' is missing; give it in the file or as --{required}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"training config: {exc}") from None
