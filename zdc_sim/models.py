"""Conditional generator and discriminator for one calorimeter's response image (ZN 44 x 44, ZP
56 x 30: the detector is part of the model's config, and every size is read from its definition).

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

from .errors import ConfigError
from .features import INDEX, N_FEATURES, Standardizer
from . import geometry
from .geometry import N_CHANNELS, channel_sums
from .share_map import EdgeTotalMap, TowerShareMap

N_DERIVED = 6
CONDITION_DIM = N_FEATURES + N_DERIVED


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and structure of both networks. `width` is the channel count of the last generator
    stage (the stages before have 2x and 4x); `hidden` is the width of the dense layers.

    Structure (each a lever of the fidelity work; see docs/fidelity.md):
    impact_frame  the shower is drawn in its own frame and translated to the impact point given by
                  a linear map of the condition fitted to real shower centres (frozen), so where a
                  shower lands is exact by construction and the latent only shapes it;
    latent_gate   the latent is gated per particle, z * sigmoid(W c + b), and the log total is
                  mean(c) + scale(c) * h(z, c): a near-deterministic response is one parameter away;
    upsample      'nearest' (x2 nearest neighbour + 3x3 convolution: no checkerboard, which channel 5
                  would read) or 'transposed' (stride-2 transposed convolutions, the first design);
    photon_noise  the network outputs mean photon counts and photon statistics are drawn from them
                  (see `photon_counts`), so the latent no longer has to fake pixel noise;
    halo          (with impact_frame) a share of the shower is a wide round Gaussian drawn on the face
                  itself around the impact point, its share and width from (latent, condition): the
                  44 x 44 canvas reaches only 3.5 cm from the impact point, so without it the far
                  fibres of a shower near a corner stay dark (the real hadronic halo is 0.9-1.5 cm);
    bounded_total (with latent_gate) the total is the particle's energy x a full yield (photons per GeV
                  of a fully contained shower, fitted to the training data, training/prefit.py) x
                  sigmoid(location + scale x h(z, c)): a deposited fraction, bounded by energy
                  conservation and skewed like one, instead of an unbounded log-normal-like total
                  (docs/fidelity.md: 0.74 % of the first design's spectator samples exceeded the
                  particle's energy, and their distribution was too symmetric);
    envelope      (with impact_frame) what the shape logits are added to: 'gaussian' (a fixed 1 cm
                  Gaussian, the first design) or 'fitted' (the log of the mean radial profile of the
                  real training showers around their impact point, training/prefit.py): real hadronic
                  showers put 11 % of their counts beyond 2 cm, which a 1 cm Gaussian makes the network
                  fight for (the first design's showers put 8 % there and 0.6 % beyond 3 cm against 1.5 %);
    shape_zoom    (with impact_frame) each sample's shape is stretched about the impact point by its own
                  factor in x and in y, exp of a head on (latent, condition), bounded to 0.6-1.6 and 1
                  at the start: the lateral width of a shower is one latent draw away. Without it the
                  width varies only through the 1,936 shape logits, and the towers' shares of hadrons
                  hitting 0.3-1.2 cm from a quadrant boundary fluctuate 15-30 % too little
                  (docs/fidelity.md, "Where the refitted ZN's error lives"). It reads the latent
                  without the shape temperature, as the total head does: the temperature tames the
                  logits' fine structure, the zoom is a coarse width that training fits to the data.
    tower_share_map (with impact_frame) each sample's split into the four towers (ZN quadrants, ZP
                  strips) is mapped quantile to quantile onto real showers' splits, by class, impact
                  coordinate and deposited fraction (zdc_sim/share_map.py): a post-processing step
                  fitted after training (`zdc-sim refit-share-map`), the identity until it is fitted.
    edge_total_map (with impact_frame) before it, each sample's deposited fraction is mapped the same
                  way for impacts within 5 cm of the face's x edges or beyond, by class and impact x
                  (zdc_sim/share_map.py, EdgeTotalMap): the ZP's, whose showers the beam-side edge cuts;
                  fitted by `zdc-sim refit-share-map --edge-total-map`.
    """

    detector: str = "zn"
    latent_dim: int = 10
    width: int = 12
    hidden: int = 256
    disc_width: int = 16
    impact_frame: bool = True
    latent_gate: bool = True
    upsample: str = "nearest"
    photon_noise: bool = True
    halo: bool = False
    envelope: str = "fitted"
    bounded_total: bool = False
    shape_zoom: bool = False
    tower_share_map: bool = False
    edge_total_map: bool = False

    def __post_init__(self):
        geometry.detector(self.detector)  # ConfigError for an unknown one
        if self.halo and not self.impact_frame:
            raise ConfigError("halo needs impact_frame (the halo is centred on the impact point)")
        if self.bounded_total and not self.latent_gate:
            raise ConfigError("bounded_total needs latent_gate (its fraction is the location-scale head's)")
        if self.shape_zoom and not self.impact_frame:
            raise ConfigError("shape_zoom needs impact_frame (the shape is stretched about the impact point)")
        if self.tower_share_map and not self.impact_frame:
            raise ConfigError("tower_share_map needs impact_frame (the split is mapped by the impact head's coordinate)")
        if self.edge_total_map and not self.impact_frame:
            raise ConfigError("edge_total_map needs impact_frame (the total is mapped by the impact head's x)")
        if self.upsample not in ("nearest", "transposed"):
            raise ConfigError(f"upsample must be 'nearest' or 'transposed'; found {self.upsample!r}")
        if self.envelope not in ("gaussian", "fitted"):
            raise ConfigError(f"envelope must be 'gaussian' or 'fitted'; found {self.envelope!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """A stored config; keys missing from checkpoints of the first design take its values."""
        return cls(**{**LEGACY, **values})

    @property
    def geometry(self) -> geometry.Detector:
        return geometry.detector(self.detector)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the response image."""
        return self.geometry.shape

    @property
    def coarse(self) -> tuple[int, int]:
        """The generator's first feature map, upsampled twice (x4) to cover the image (ZN 11 x 11
        -> 44 x 44; ZP 8 x 14 -> 32 x 56, of which the middle 30 rows are kept)."""
        return -(-self.shape[0] // 4), -(-self.shape[1] // 4)

    @property
    def noise_dim(self) -> int:
        """Photon-noise inputs per sample (one standard normal per fibre), 0 without photon noise."""
        return self.geometry.n_pixels if self.photon_noise else 0

    @property
    def random_dim(self) -> int:
        """Random inputs per sample the generator takes: the latent, then the photon noise."""
        return self.latent_dim + self.noise_dim


# The structure of the first design: checkpoints written before these options existed (the first
# default model, docs/history.md) lack the keys and are loaded with these values.
LEGACY = {"impact_frame": False, "latent_gate": False, "upsample": "transposed", "photon_noise": False, "halo": False,
          "envelope": "gaussian"}

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


EM_MASS_MEV = 1.0  # photons (0) and electrons (0.511 MeV) lie below, every hadron and muon far above
# Factors fitted after training (training/calibrate.py); 1 means none, as in a checkpoint from before them.
POST_PROCESSING = ("intensity", "em_intensity", "shape_temperature")


def with_post_processing_defaults(weights: dict) -> dict:
    """A generator's weights with the post-processing factors it lacks set to 1 (older checkpoints)."""
    return {**{name: torch.ones(()) for name in POST_PROCESSING}, **weights}


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

    def electromagnetic(self, standardized: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the particle showers electromagnetically (photons and electrons: the only
        species lighter than EM_MASS_MEV, zdc_sim/species.py), from its standardised mass. A massless
        particle of no known species (which shower_class calls hadronic) would count as EM here."""
        i = INDEX["mass"]
        return standardized[:, i].float() * self.feature_std[i] + self.feature_mean[i] < EM_MASS_MEV

    def energy_gev(self, standardized: torch.Tensor) -> torch.Tensor:
        """(N,) the particles' energy in GeV, from their standardised features."""
        i = INDEX["energy"]
        return standardized[:, i].float() * self.feature_std[i] + self.feature_mean[i]

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


ZOOM_MIN, ZOOM_MAX = 0.6, 1.6  # shape_zoom's bounds: no shower shrinks to a point or fills the face
PRIOR_CM = 1.0  # width of the Gaussian envelope added to the shape logits in the shower's frame


def photon_counts(mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Photon counts drawn from mean counts with one standard normal `noise` value per fibre.

    Below one photon: 1 with probability `mean` (Phi(noise) < mean), Poisson's mean and, to within
    mean^2, its variance; from one photon up: round(mean + sqrt(mean) * noise), Poisson's mean and
    variance. Drawn from given normals (not a sampler's own state) so a seed gives the same counts
    whatever the batch, and differentiable in `mean` (straight-through), so training sees exactly
    what the simulator returns.
    """
    if torch.onnx.is_in_onnx_export():  # the exporter has no ndtr; the same Phi to the last bits or so
        phi = 0.5 * (1 + torch.erf(noise * 0.7071067811865476))
    else:
        phi = torch.special.ndtr(noise)
    small = (phi < mean).to(mean.dtype)
    large = torch.round(mean + mean.clamp_min(0).sqrt() * noise).clamp_min(0)
    counts = torch.where(mean < 1, small, large)
    return mean + (counts - mean).detach()


class Generator(nn.Module):
    """(random inputs (N, random_dim), standardised features (N, 9)) -> log(1 + counts) (N, 1, 44, 44).

    The random inputs are the latent (latent_dim) and, with photon noise, one standard normal per
    fibre. The response is factorised as total counts x shape: a head predicts the log of the total
    from (latent, condition), the convolutional stack a shape (a softmax over the fibres, or over a
    44 x 44 canvas in the shower's own frame, translated to the impact point). The total decides the
    channel sums that the fidelity metric compares; as a direct output it is learned far faster
    than a total implied by 1936 pixel intensities. Non-negative by construction.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        w, h, latent = config.width, config.hidden, config.latent_dim
        det = config.geometry
        self.conditioner = Conditioner()
        inputs = latent + CONDITION_DIM
        self.dense = nn.Sequential(mlp([inputs, h, h, 4 * w * config.coarse[0] * config.coarse[1]]), nn.LeakyReLU(0.2))
        if config.upsample == "nearest":
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=2), nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.LeakyReLU(0.2),  # 22
                nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1), nn.LeakyReLU(0.2),  # 44
                nn.Conv2d(w, 1, 3, padding=1),  # shape logits
            )
        else:
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 22 x 22
                nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),  # 44 x 44
                nn.Conv2d(w, 1, 3, padding=1),  # shape logits
            )
        self.total = mlp([inputs, h // 2, h // 2, 1])  # log total counts, or h(z, c) with the gate
        if config.latent_gate:
            self.gate = nn.Linear(CONDITION_DIM, latent)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 1.0)
            self.total_mean = mlp([CONDITION_DIM, h // 2, h // 2, 1])
            self.total_scale = mlp([CONDITION_DIM, h // 2, 1])  # log of the scale
            nn.init.zeros_(self.total_scale[-1].weight)
            nn.init.constant_(self.total_scale[-1].bias, float(np.log(0.1)))
        else:
            # Start collapsed (the total ignores the latent): diversity is then something training
            # must add where the data has it, instead of initial noise it must remove where it has not.
            nn.init.zeros_(self.total[-1].weight)
        if config.impact_frame:
            self.register_buffer("impact_weight", torch.zeros(2, CONDITION_DIM))
            self.register_buffer("impact_bias", torch.zeros(2))
            x = torch.tensor(det.pixel_x_cm, dtype=torch.float32)
            y = torch.tensor(det.pixel_y_cm, dtype=torch.float32)
            r2 = y[:, None] ** 2 + x[None, :] ** 2
            self.register_buffer("prior", (-r2 / (2 * PRIOR_CM**2)).reshape(1, -1))
            self.register_buffer("pixel_index", torch.arange(det.shape[1], dtype=torch.float32))  # columns
            self.register_buffer("row_index", torch.arange(det.shape[0], dtype=torch.float32), persistent=False)
        if config.halo:
            self.halo = mlp([inputs, h // 4, 2])  # logit of the halo's share, log of its width (cm)
            nn.init.zeros_(self.halo[-1].weight)
            with torch.no_grad():  # start as a small (5 %) halo of 1.2 cm
                self.halo[-1].bias.copy_(torch.tensor([-3.0, float(np.log(1.2))]))
            self.register_buffer("pixel_x", torch.tensor(det.pixel_x_cm, dtype=torch.float32))  # columns, left to right
            self.register_buffer("pixel_y", torch.tensor(det.pixel_y_cm, dtype=torch.float32))  # rows, top (high y) to bottom
        if config.shape_zoom:
            self.zoom = mlp([inputs, h // 4, 2])  # log of the stretch in x and in y
            nn.init.zeros_(self.zoom[-1].weight)
            nn.init.zeros_(self.zoom[-1].bias)
        if config.bounded_total:  # photons per GeV of a fully contained shower (training/prefit.py)
            self.register_buffer("full_yield", torch.ones(()))
        self.register_buffer("intensity", torch.ones(()))  # post-processing factor on counts
        # and one more for electromagnetic showers: their totals spread by ~2 %, so a scale error
        # the hadrons' factor leaves them (~1 %) reads as several floors.
        self.register_buffer("em_intensity", torch.ones(()))
        # Post-processing factor on the latent the shape stack reads (the total head reads it as it
        # is): fitted after training (training/calibrate.py), since adversarial training leaves the
        # shapes of one particle more varied than real showers (far towers' spread 1.25x).
        self.register_buffer("shape_temperature", torch.ones(()))
        if config.edge_total_map:
            self.edge_total_map = EdgeTotalMap(det)
        if config.tower_share_map:
            self.share_map = TowerShareMap(det)

    @torch.no_grad()
    def set_total_scale(self, mean_log_total: float) -> None:
        """Start the total head at the training set's mean log total (a wide dynamic range)."""
        head = self.total_mean if self.config.latent_gate else self.total
        head[-1].bias.fill_(float(mean_log_total))

    def impact_point(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2) where the impact head puts each shower's centre, cm from the face centre."""
        condition = self.conditioner(features)
        return (condition @ self.impact_weight.T + self.impact_bias).clamp(-20.0, 20.0)

    def gated_inputs(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(latent, gated per particle when latent_gate is on; condition): what the dense stack and
        the total head read."""
        if self.config.latent_gate:
            z = z * torch.sigmoid(self.gate(condition))
        return torch.cat([z, condition], 1)

    def log_total(self, inputs: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(N, 1) log of the total counts before the face cuts the shape off, intensity included."""
        if self.config.latent_gate:
            scale = torch.exp(self.total_scale(condition).clamp(max=2.0))
            log_total = self.total_mean(condition) + scale * self.total(inputs)
            if self.config.bounded_total:  # log of energy x full yield x the deposited fraction
                energy = self.conditioner.energy_gev(condition[:, :N_FEATURES]).clamp_min(1e-3)
                log_total = torch.log(energy * self.full_yield)[:, None] + F.logsigmoid(log_total)
        else:
            log_total = self.total(inputs)
        # Bounded (e^25 ~ 7e10 photons), so a particle far outside the training range cannot overflow.
        log_total = log_total.clamp(-25.0, 25.0) + torch.log(self.intensity)
        em = self.conditioner.electromagnetic(condition[:, :N_FEATURES])[:, None]
        return log_total + torch.where(em, torch.log(self.em_intensity), torch.zeros_like(self.em_intensity))

    def mean_counts(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mean photon counts (N, 44, 44), before photon statistics."""
        config = self.config
        condition = self.conditioner(features)
        inputs = self.gated_inputs(z, condition)
        shape_inputs = torch.cat([inputs[:, : config.latent_dim] * self.shape_temperature, condition], 1)
        rows, cols = config.shape
        h = self.dense(shape_inputs).view(-1, 4 * config.width, *config.coarse)
        if next(self.upsample.parameters()).is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)  # see Simulator: faster CPU kernels
        canvas = self.upsample(h)
        if config.coarse != (rows // 4, cols // 4) or rows % 4 or cols % 4:  # the ZP: the middle of the x4 canvas
            top, left = (4 * config.coarse[0] - rows) // 2, (4 * config.coarse[1] - cols) // 2
            canvas = canvas[..., top : top + rows, left : left + cols]
        logits = canvas.flatten(1)  # no batch size in the graph: ONNX export keeps it dynamic
        log_total = self.log_total(inputs, condition)
        if not config.impact_frame:
            return torch.exp(log_total + torch.log_softmax(logits, dim=1)).view(-1, rows, cols)
        shape = torch.softmax(logits + self.prior, dim=1).view(-1, 1, rows, cols)
        impact = self.impact_point(features)
        zoom = self._zoom(inputs) if config.shape_zoom else None
        on_face = self._to_face(shape, impact, zoom)
        if config.halo:
            share, width = self._halo_parameters(inputs)
            on_face = (1 - share)[:, :, None] * on_face + share[:, :, None] * self._halo_on_face(impact, width)
        mean = torch.exp(log_total)[:, :, None] * on_face
        if config.edge_total_map or config.tower_share_map:
            standardized = condition[:, :N_FEATURES]
            energy, em = self.conditioner.energy_gev(standardized), self.conditioner.electromagnetic(standardized)
            if config.edge_total_map:
                mean = self.edge_total_map(mean, impact, energy, em)
            if config.tower_share_map:
                mean = self.share_map(mean, impact, energy, em)
        return mean

    def _zoom(self, inputs: torch.Tensor) -> torch.Tensor:
        """(N, 2) each sample's stretch of its shape in x and y, in [ZOOM_MIN, ZOOM_MAX]."""
        return torch.exp(self.zoom(inputs).clamp(np.log(ZOOM_MIN), np.log(ZOOM_MAX)))

    def _halo_parameters(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(share (N, 1) in (0, 1), width (N,) in cm, bounded to 0.3-5 cm)."""
        params = self.halo(inputs)
        return torch.sigmoid(params[:, :1]), torch.exp(params[:, 1]).clamp(0.3, 5.0)

    def _halo_on_face(self, impact: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """A round Gaussian of unit mass around the impact point, as fibre fractions (N, 44, 44):
        density at the fibre centres x fibre area (exact to well under 1 % for widths >= 0.3 cm);
        what falls outside the face is lost, as in the detector."""
        inv = 1.0 / (2 * width[:, None] ** 2)
        gx = torch.exp(-((self.pixel_x[None, :] - impact[:, :1]) ** 2) * inv)  # (N, 44) columns
        gy = torch.exp(-((self.pixel_y[None, :] - impact[:, 1:]) ** 2) * inv)  # (N, 44) rows
        norm = self.config.geometry.pitch_cm**2 / (2 * np.pi * width**2)
        return norm[:, None, None] * gy[:, :, None] * gx[:, None, :]

    def _to_face(self, shape: torch.Tensor, impact: torch.Tensor, zoom: torch.Tensor | None = None) -> torch.Tensor:
        """Translate shapes drawn centred on a 44 x 44 canvas so that their centre lands on the
        impact point (bilinear, mass-preserving inside the face; what leaves the canvas is lost);
        with `zoom` (N, 2), first stretch each about the canvas centre by its factors in x and y
        (the sampled density divided by their product keeps the mass)."""
        det = self.config.geometry
        shift_col = -impact[:, 0] / det.pitch_cm  # x runs along columns
        shift_row = impact[:, 1] / det.pitch_cm  # y runs up, rows down
        cols = self.pixel_index[None, None, :] + shift_col[:, None, None]  # where each fibre reads the canvas
        rows = self.row_index[None, :, None] + shift_row[:, None, None]
        if zoom is not None:  # stretched about the canvas centre
            centre_col, centre_row = (det.shape[1] - 1) / 2, (det.shape[0] - 1) / 2
            cols = (cols - centre_col) / zoom[:, 0, None, None] + centre_col
            rows = (rows - centre_row) / zoom[:, 1, None, None] + centre_row
        cols = cols * (2.0 / (det.shape[1] - 1)) - 1
        rows = rows * (2.0 / (det.shape[0] - 1)) - 1
        grid = torch.stack(torch.broadcast_tensors(cols, rows), -1)
        on_face = F.grid_sample(shape, grid.to(shape.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=True)[:, 0]
        if zoom is not None:
            on_face = on_face / (zoom[:, 0] * zoom[:, 1])[:, None, None]
        return on_face

    def _sample(self, random: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts, mean counts), each (N, 44, 44): photon statistics drawn from the noise part of
        `random` (without photon noise the counts are the mean)."""
        latent = self.config.latent_dim
        mean = self.mean_counts(random[:, :latent], features)
        if not self.config.photon_noise:
            return mean, mean
        return photon_counts(mean, random[:, latent:].reshape(-1, *self.config.shape)), mean

    def counts(self, random: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Photon counts (N, 44, 44): what the Simulator returns."""
        return self._sample(random, features)[0]

    def forward(self, random: torch.Tensor, features: torch.Tensor, with_mean: bool = False):
        """log(1 + counts) (N, 1, 44, 44), what the discriminator sees; with_mean: also
        log(1 + mean counts), the response before photon statistics (what the diversity
        regularizers compare)."""
        counts, mean = self._sample(random, features)
        log_counts = torch.log1p(counts)[:, None]
        return (log_counts, torch.log1p(mean)[:, None]) if with_mean else log_counts


class Discriminator(nn.Module):
    """(log(1 + counts) (N, 1, 44, 44), standardised features (N, 9)) -> (logit (N,), embedding (N, hidden)).

    Besides the image it sees the quantities the fidelity metric compares: the log of the 5 channel
    sums; the log of the total counts per GeV of particle energy, amplified (constant to ~2 % for
    electromagnetic showers, ~30 % spread for hadronic ones: resolved from pixels and a raw log
    energy, an over- or under-spread total would pass for many epochs); and the log ratio of
    channel 5 (odd-parity fibres) to the towers, amplified, where a checkerboard would show.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        w, h = config.disc_width, config.hidden
        self.conditioner = Conditioner()
        self.conv = image_encoder(w, h, stages=3, shape=config.shape)  # ZN 44 -> 22 -> 11 -> 5
        self.head = mlp([h + N_CHANNELS + 2 + CONDITION_DIM, h, 1])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(images)
        log_sums = torch.log1p(channel_sums(torch.expm1(images[:, 0].float()).clamp_min(0)))
        log_total = torch.logsumexp(log_sums, dim=1, keepdim=True)
        energy = self.conditioner.energy_gev(features)
        per_gev = (log_total - torch.log(energy.clamp_min(1e-3))[:, None]).clamp(1.0, 5.0)  # misses sit at 1
        # The share of the odd-parity fibres (channel 5) is 0.50 +- 0.02: amplified, so a checkerboard shows.
        sums = torch.expm1(log_sums)
        parity = torch.log((sums[:, 4:] + 1.0) / (sums[:, :4].sum(1, keepdim=True) + 1.0)).clamp(-1.0, 1.0)
        summary = torch.cat([(log_sums - 7.0) / 2.0, 5.0 * (per_gev - 3.0), 10.0 * parity], 1).to(embedding.dtype)
        logit = self.head(torch.cat([embedding, summary, self.conditioner(features)], 1))
        return logit[:, 0], embedding


class Encoder(nn.Module):
    """(log(1 + counts) (N, 1, 44, 44), standardised features (N, 9)) -> latent (N, latent_dim):
    the inverse of the generator that the IID-GAN regularizer trains alongside it."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        w, h = config.disc_width, config.hidden
        self.conditioner = Conditioner()
        self.conv = image_encoder(w, h, stages=2, shape=config.shape)  # ZN 44 -> 22 -> 11
        self.head = mlp([h + CONDITION_DIM, h, config.latent_dim])

    def forward(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(images), self.conditioner(features)], 1))


def image_encoder(width: int, hidden: int, stages: int, shape: tuple[int, int]) -> nn.Sequential:
    """An image (rows, columns) -> (N, hidden): `stages` stride-2 4 x 4 convolutions of width,
    2 x width, ... channels (each halves both sides, rounding down: ZN 44 -> 22 -> 11 -> 5), then one
    dense layer; what the discriminator and IID's encoder read."""
    layers: list[nn.Module] = []
    channels, (rows, cols) = 1, shape
    for k in range(stages):
        layers += [nn.Conv2d(channels, width * 2**k, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels, rows, cols = width * 2**k, rows // 2, cols // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * rows * cols, hidden), nn.LeakyReLU(0.2))


def generator_flops_per_sample(config: ModelConfig = ModelConfig()) -> int:
    """Multiply-adds x 2 of one generator pass (dense and convolution layers; activations,
    translation and photon statistics ignored)."""
    model = Generator(config)
    macs = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    area = config.coarse[0] * config.coarse[1]
    for module in model.upsample:
        if isinstance(module, nn.Upsample):
            area *= 4
        elif isinstance(module, nn.ConvTranspose2d):
            macs += area * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            area *= 4
        elif isinstance(module, nn.Conv2d):
            macs += area * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
    return 2 * macs
