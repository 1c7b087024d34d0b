"""A monotone map of each generated shower's split into the four towers, fitted after training.

Why: the refitted ZN's excess over the floor on 30,000 held-out particles lives in the split of
each shower into the towers, not in its total (docs/fidelity.md, "Where the refitted ZN's error
lives"): real splits with generated totals read ~1x the floor per tower, the generated split 2-3x.
No global factor fixed it (a shape temperature, a sharpness, a random shift of the centre, a
learned width per sample). This one is fitted to the data instead. The split is described by
binary shares (SPLITS): for the ZN's quadrants the share of the right towers (x > 0) and of the
top towers (y > 0); for the ZP's strips along x the right half's share, then strip 2's within
strips 1-2 and strip 4's within strips 3-4. Each share of each generated sample is mapped,
quantile to quantile, onto the distribution of real showers' shares, conditioned on the shower
class, the impact head's coordinate across that boundary (bins of 0.2 cm) and the sample's
deposited fraction (its towers' counts per GeV, ranked among real showers: low, middle or high
third, so the share stays tied to the total as in real showers). Whole tower regions of the face
(both fibre parities) are then scaled so the towers carry the mapped shares (iterative
proportional fitting; exact in one pass for the strips' nested splits): the towers' total, the
shower's shape inside each region and the photon statistics drawn afterwards are untouched.

Beside it, for a calorimeter whose showers are cut by the face's edge along x (the ZP: a quarter
of its particles hit within 2 cm of the beam-side edge or beyond it), the edge total map does the
same to each sample's deposited fraction (all counts per GeV) for impacts near an x edge: its
distribution there, where containment changes by a factor of two per centimetre, is what the
generator gets wrong (docs/fidelity.md, "The ZP's edge"); inside, where it is right to the
sampling noise, a map would only add the noise of its own fit, so it is the identity there.

Monotone and fitted on training particles only (training/calibrate.py, `zdc-sim refit-share-map`);
it copies no formula of any Monte Carlo. Every operation exports to ONNX (no sort, no search).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import geometry

POSITION_STEP_CM = 0.2  # bins of the impact coordinate
FRACTION_BINS = 3  # thirds of the real showers' deposited fraction
LEVELS = np.linspace(0.0, 1.0, 41)[1:-1]  # quantile levels of each bin's map
RANK_LEVELS = np.linspace(0.0, 1.0, 101)  # quantiles of the deposited fraction, for its rank
MIN_SAMPLES = 200  # showers per bin, real and generated, for a map; fewer: identity
MIN_TOWER_COUNTS = 50.0  # below, a split's group (or a sample) is left as drawn: counting noise, not a shower
EMPTY_SIDE = 1e-3  # counts: a side this empty cannot be scaled up to a share, so its split is left as drawn
MAX_FACTOR = 1e3  # the most a region is scaled by, either way
IPF_STEPS = 10  # proportional-fitting passes; the ZN's 2 x 2 split converges to <1e-4 in a few
LOGIT_CLIP = 1e-4
IDENTITY_KNOTS = (-12.0, 12.0)  # an unfitted bin: equal knots over a span wider than any clipped log odds
IDENTITY_ROW = np.linspace(*IDENTITY_KNOTS, len(LEVELS))  # the knots of an unfitted bin, as the fits write them


EDGE_STEP_CM = 0.5  # bins of the impact x for the edge total map
EDGE_ZONE_CM = 5.0  # the edge total map covers impacts this far inside the face's x edges, and beyond


class Split(NamedTuple):
    """A binary share high / (high + low) of tower indices (0-3), conditioned on the impact's x (0) or y (1)."""

    high: tuple[int, ...]
    low: tuple[int, ...]
    axis: int


# ZN quadrants: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; ZP strips 0-3 left to right.
SPLITS = {
    "quadrants": (Split((1, 3), (0, 2), 0), Split((0, 1), (2, 3), 1)),
    "strips": (Split((2, 3), (0, 1), 0), Split((1,), (0,), 0), Split((3,), (2,), 0)),
}


def position_range(detector: geometry.Detector) -> tuple[float, float]:
    """The impact coordinates the bins cover: the face's half-width rounded up to whole cm, both ways
    (ZN -4 to 4 cm, ZP -12 to 12 cm); beyond, the outer bin's map."""
    half = max(np.abs(detector.pixel_x_cm).max(), np.abs(detector.pixel_y_cm).max()) + detector.pitch_cm / 2
    half = float(math.ceil(half - 1e-9))
    return -half, half


def position_centres(detector: geometry.Detector) -> np.ndarray:
    lo, hi = position_range(detector)
    return np.arange(lo + POSITION_STEP_CM / 2, hi, POSITION_STEP_CM)


def logit(share):
    """Share in (0, 1) -> log odds, clipped away from 0 and 1 (numpy or torch)."""
    if isinstance(share, torch.Tensor):
        share = share.clamp(LOGIT_CLIP, 1 - LOGIT_CLIP)
        return torch.log(share / (1 - share))
    share = np.clip(share, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(share / (1 - share))


def log_fraction(total, energy):
    """Log deposited fraction: counts per GeV, the counts floored at 1 and the energy at 1 MeV (numpy or torch)."""
    if isinstance(total, torch.Tensor):
        return torch.log(total.clamp_min(1.0) / energy.clamp_min(1e-3))
    return np.log(np.maximum(total, 1.0) / np.maximum(energy, 1e-3))


def shares(towers, splits):
    """(..., 4) tower counts -> ([each split's share (...)], towers' total (...)), numpy or torch."""
    torch_in = isinstance(towers, torch.Tensor)
    out = []
    for split in splits:
        high, low = towers[..., list(split.high)].sum(-1), towers[..., list(split.low)].sum(-1)
        both = high + low
        out.append(high / (both.clamp_min(1e-9) if torch_in else np.maximum(both, 1e-9)))
    return out, towers.sum(-1)


def interpolate(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map of u (N,) through knots x -> y (N, L) per row, slope 1 beyond the ends;
    the knot is found by counting (ONNX has no searchsorted)."""
    last = x.shape[1] - 1
    k = (u[:, None] > x).sum(1, keepdim=True).clamp(1, last)
    x0, x1, y0, y1 = x.gather(1, k - 1)[:, 0], x.gather(1, k)[:, 0], y.gather(1, k - 1)[:, 0], y.gather(1, k)[:, 0]
    inside = y0 + (u - x0) * (y1 - y0) / (x1 - x0).clamp_min(1e-6)
    return torch.where(u < x[:, 0], u - x[:, 0] + y[:, 0], torch.where(u > x[:, last], u - x[:, last] + y[:, last], inside))


def _nearest_bin(coordinate: np.ndarray, first: float, step: float, count: int) -> np.ndarray:
    """Index of the nearest of the bin centres first + i * step (the fits' binning; numpy)."""
    return np.clip(np.round((coordinate - first) / step).astype(int), 0, count - 1)


def _bin_weights(coordinate: torch.Tensor, first: float, step: float, count: int):
    """Linear interpolation between bin centres first + i * step: ((lower, upper) index, weights)."""
    position = ((coordinate - first) / step).clamp(0, count - 1)
    lower = position.floor().clamp(max=count - 2)
    weight = position - lower
    lower = lower.long()
    return (lower, lower + 1), (1 - weight, weight)


class TowerShareMap(nn.Module):
    """Buffers: per (class: hadronic, EM; split; position bin; fraction bin), one row each in that
    order, the generated and real quantiles of the share's log odds; per class the real log
    deposited fractions' quantiles (for a sample's rank). Unfitted it is the identity (equal knots)."""

    def __init__(self, detector: geometry.Detector):
        super().__init__()
        self.splits = SPLITS[detector.towers]
        self.centres = position_centres(detector)
        rows = 2 * len(self.splits) * len(self.centres) * FRACTION_BINS
        # flat rows: a 5-d buffer would not survive .to(memory_format=torch.channels_last), which
        # the CPU engine applies to the whole model
        identity = torch.tensor(IDENTITY_ROW, dtype=torch.float32).expand(rows, -1).clone()
        self.register_buffer("generated_knots", identity.clone())
        self.register_buffer("real_knots", identity.clone())
        self.register_buffer("log_fraction_knots", torch.linspace(-20.0, 5.0, len(RANK_LEVELS)).expand(2, -1).clone())
        self.register_buffer("tower_masks", torch.tensor(detector.masks_flat[:4], dtype=torch.float32), persistent=False)
        regions = np.stack([detector.tower_index.ravel() == t for t in range(4)])  # both parities: what is scaled
        self.register_buffer("regions", torch.tensor(regions, dtype=torch.float32), persistent=False)
        self.register_buffer("rank_levels", torch.tensor(RANK_LEVELS, dtype=torch.float32), persistent=False)
        sides = torch.zeros(len(self.splits), 2, 4)  # (split, high / low, tower)
        for i, split in enumerate(self.splits):
            sides[i, 0, list(split.high)] = 1.0
            sides[i, 1, list(split.low)] = 1.0
        self.register_buffer("sides", sides, persistent=False)

    def fraction_rank(self, fraction: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """(N,) rank in [0, 1] of each sample's log deposited fraction among real showers of its class."""
        knots = self.log_fraction_knots[em.long()]
        return interpolate(fraction, knots, self.rank_levels.expand_as(knots)).clamp(0.0, 1.0)

    def target_shares(self, towers: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor):
        """(N, splits) the mapped shares of towers (N, 4)."""
        values, total = shares(towers, self.splits)
        rank = self.fraction_rank(log_fraction(total, energy), em)
        n_pos = len(self.centres)
        f_index, f_weight = _bin_weights(rank, 0.5 / FRACTION_BINS, 1.0 / FRACTION_BINS, FRACTION_BINS)
        out = []
        for s, (split, share) in enumerate(zip(self.splits, values)):
            u = logit(share)
            p_index, p_weight = _bin_weights(impact[:, split.axis], float(self.centres[0]), POSITION_STEP_CM, n_pos)
            mapped = torch.zeros_like(u)
            for pi, pw in zip(p_index, p_weight):
                for fi, fw in zip(f_index, f_weight):
                    row = (em.long() * len(self.splits) + s) * n_pos * FRACTION_BINS + pi * FRACTION_BINS + fi
                    mapped = mapped + pw * fw * interpolate(u, self.generated_knots[row], self.real_knots[row])
            out.append(torch.sigmoid(mapped))
        return torch.stack(out, 1)

    def forward(self, mean: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """Mean counts (N, rows, columns) with each tower's region scaled so the towers carry the
        mapped shares; a split whose group holds under MIN_TOWER_COUNTS, or one of whose sides is
        empty, is left as drawn. In fp32 whatever the caller's precision: in bf16 a share near 0 or 1
        has infinite log odds."""
        with torch.autocast(device_type=mean.device.type, enabled=False):
            return self._scaled(mean.float(), impact.float(), energy.float(), em).to(mean.dtype)

    def _scaled(self, mean: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        flat = mean.flatten(1)
        towers = flat @ self.tower_masks.T  # (N, 4)
        drawn, total = shares(towers, self.splits)
        mapped = self.target_shares(towers, impact, energy, em)
        target = []
        for s in range(len(self.splits)):
            high, low = (towers * self.sides[s, 0]).sum(1), (towers * self.sides[s, 1]).sum(1)
            mappable = (high + low >= MIN_TOWER_COUNTS) & (high > EMPTY_SIDE) & (low > EMPTY_SIDE)
            target.append(torch.where(mappable, mapped[:, s], drawn[s]))
        target = torch.stack(target, 1)
        total = total.clamp_min(1e-9)
        factors = torch.ones_like(towers)
        for _ in range(IPF_STEPS):
            for s, split in enumerate(self.splits):
                high, low = self.sides[s, 0], self.sides[s, 1]
                scaled = towers * factors
                high_sum = (scaled * high).sum(1).clamp_min(1e-6)
                low_sum = (scaled * low).sum(1).clamp_min(1e-6)
                # the counts this split shares out: every tower's (the ZN), or its group's as scaled so far
                group = total if len(split.high) + len(split.low) == 4 else high_sum + low_sum
                factor = high * (target[:, s] * group / high_sum)[:, None] + low * ((1 - target[:, s]) * group / low_sum)[:, None]
                factor = factor + (1 - high - low)  # towers outside the split keep theirs
                factors = (factors * factor).clamp(1.0 / MAX_FACTOR, MAX_FACTOR)  # bounded: see MAX_FACTOR
        # where a bound was reached the proportions are as close as it allows; the total is kept
        factors = factors * (total / (towers * factors).sum(1).clamp_min(1e-9))[:, None]
        factors = torch.where((towers.sum(1) >= MIN_TOWER_COUNTS)[:, None], factors, torch.ones_like(factors))
        return (flat * (factors @ self.regions)).view_as(mean)


def edge_centres(detector: geometry.Detector) -> tuple[np.ndarray, float]:
    """(bin centres along x, covering every impact that reaches the detector; the face's half-width)."""
    half = float(np.abs(detector.pixel_x_cm).max() + detector.pitch_cm / 2)
    reach = float(math.ceil(half + detector.reach_margin_cm))
    return np.arange(-reach + EDGE_STEP_CM / 2, reach, EDGE_STEP_CM), half


def edge_bins(detector: geometry.Detector) -> np.ndarray:
    """(bins,) bool: the bins the edge total map may fit, within EDGE_ZONE_CM of an x edge or beyond."""
    centres, half = edge_centres(detector)
    return np.abs(centres) > half - EDGE_ZONE_CM


class EdgeTotalMap(nn.Module):
    """Buffers: per (class: hadronic, EM; x bin), one row each, the generated and real quantiles of
    the log deposited fraction (all counts / energy in GeV). Unfitted, and in the face's interior,
    the identity (equal knots)."""

    def __init__(self, detector: geometry.Detector):
        super().__init__()
        self.centres, _ = edge_centres(detector)
        identity = torch.tensor(IDENTITY_ROW, dtype=torch.float32).expand(2 * len(self.centres), -1).clone()
        self.register_buffer("generated_knots", identity.clone())
        self.register_buffer("real_knots", identity.clone())

    def factors(self, total: torch.Tensor, impact_x: torch.Tensor, energy: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """(N,) what each sample's counts are scaled by; 1 for a sample under MIN_TOWER_COUNTS."""
        fraction = log_fraction(total, energy)
        n = len(self.centres)
        index, weight = _bin_weights(impact_x, float(self.centres[0]), EDGE_STEP_CM, n)
        mapped = torch.zeros_like(fraction)
        for i, w in zip(index, weight):
            row = em.long() * n + i
            mapped = mapped + w * interpolate(fraction, self.generated_knots[row], self.real_knots[row])
        factor = torch.exp(mapped - fraction).clamp(1.0 / MAX_FACTOR, MAX_FACTOR)
        return torch.where(total >= MIN_TOWER_COUNTS, factor, torch.ones_like(factor))

    def forward(self, mean: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """Mean counts (N, ...) each scaled as a whole to its mapped total; in fp32, as the share map."""
        with torch.autocast(device_type=mean.device.type, enabled=False):
            flat = mean.float().flatten(1)
            factor = self.factors(flat.sum(1), impact[:, 0].float(), energy.float(), em)
            return (flat * factor[:, None]).view_as(mean).to(mean.dtype)


def fit_edge_knots(detector: geometry.Detector, impact_x: np.ndarray, energy: np.ndarray, em: np.ndarray,
                   real_totals: np.ndarray, generated_totals: np.ndarray) -> dict[str, np.ndarray]:
    """The edge total map's knots from training particles: impact_x (P,) cm, energy (P,) GeV, em (P,)
    bool, real_totals (P, R) all counts of R real repeats, generated_totals (P, G) of G generated
    mean responses. Bins outside the edge zone, or with under MIN_SAMPLES showers of
    MIN_TOWER_COUNTS counts or more, stay the identity."""
    centres, _ = edge_centres(detector)
    zone = edge_bins(detector)
    generated = np.tile(IDENTITY_ROW, (2, len(centres), 1))
    real = generated.copy()
    values = {}
    for name, totals in (("real", real_totals), ("generated", generated_totals)):
        k = totals.shape[1]
        flat = totals.reshape(-1)
        bins = _nearest_bin(np.repeat(impact_x, k), centres[0], EDGE_STEP_CM, len(centres))
        values[name] = (bins, np.repeat(em, k), log_fraction(flat, np.repeat(energy, k)), flat >= MIN_TOWER_COUNTS)
    for cls in (0, 1):
        for b in np.flatnonzero(zone):
            picked = {name: lf[keep & (e == bool(cls)) & (bins == b)] for name, (bins, e, lf, keep) in values.items()}
            if min(len(v) for v in picked.values()) >= MIN_SAMPLES:
                generated[cls, b] = np.quantile(picked["generated"], LEVELS)
                real[cls, b] = np.quantile(picked["real"], LEVELS)
    return {"generated_knots": generated.reshape(-1, len(LEVELS)), "real_knots": real.reshape(-1, len(LEVELS))}


def fit_knots(detector: geometry.Detector, impact: np.ndarray, energy: np.ndarray, em: np.ndarray,
              real_towers: np.ndarray, generated_towers: np.ndarray) -> dict[str, np.ndarray]:
    """The map's knots from training particles: impact (P, 2), energy (P,) GeV, em (P,) bool,
    real_towers (P, R, 4) counts of R real repeats, generated_towers (P, G, 4) mean counts of G
    generated samples. Returns the three buffers' values (see TowerShareMap)."""
    splits, centres = SPLITS[detector.towers], position_centres(detector)
    n_pos = len(centres)
    generated = np.tile(IDENTITY_ROW, (2, len(splits), n_pos, FRACTION_BINS, 1))
    real = generated.copy()
    fraction_knots = np.tile(np.linspace(-20.0, 5.0, len(RANK_LEVELS)), (2, 1))
    rows = {}
    for name, towers in (("real", real_towers), ("generated", generated_towers)):
        k = towers.shape[1]
        flat = towers.reshape(-1, 4)
        values, total = shares(flat, splits)
        groups = [flat[:, list(split.high + split.low)].sum(1) >= MIN_TOWER_COUNTS for split in splits]
        rows[name] = dict(impact=np.repeat(impact, k, 0), em=np.repeat(em, k), shares=values,
                          log_fraction=log_fraction(total, np.repeat(energy, k)),
                          keep=total >= MIN_TOWER_COUNTS, groups=groups)
    for cls in (0, 1):
        r = rows["real"]
        pick = r["keep"] & (r["em"] == bool(cls))
        if pick.sum() < MIN_SAMPLES:
            continue
        fraction_knots[cls] = np.quantile(r["log_fraction"][pick], RANK_LEVELS)
        for d in rows.values():
            rank = np.interp(d["log_fraction"], fraction_knots[cls], RANK_LEVELS)
            d["f_bin"] = np.minimum((rank * FRACTION_BINS).astype(int), FRACTION_BINS - 1)
        for s, split in enumerate(splits):
            bins = {name: _nearest_bin(d["impact"][:, split.axis], centres[0], POSITION_STEP_CM, n_pos)
                    for name, d in rows.items()}
            for p in range(n_pos):
                for f in range(FRACTION_BINS):
                    values = {}
                    for name, d in rows.items():
                        pick = d["groups"][s] & (d["em"] == bool(cls)) & (bins[name] == p) & (d["f_bin"] == f)
                        values[name] = logit(d["shares"][s][pick])
                    if min(len(v) for v in values.values()) >= MIN_SAMPLES:
                        generated[cls, s, p, f] = np.quantile(values["generated"], LEVELS)
                        real[cls, s, p, f] = np.quantile(values["real"], LEVELS)
    return {"generated_knots": generated.reshape(-1, len(LEVELS)), "real_knots": real.reshape(-1, len(LEVELS)),
            "log_fraction_knots": fraction_knots}
