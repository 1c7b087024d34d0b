"""A monotone map of each generated shower's split into the ZN's four towers, fitted after training.

Why: the refitted ZN's excess over the floor on 30,000 held-out particles lives in the split of
each shower into the towers, not in its total (docs/fidelity.md, "Where the refitted ZN's error
lives"): real splits with generated totals read ~1x the floor per tower, the generated split 2-3x.
No global factor fixed it (a shape temperature, a sharpness, a random shift of the centre, a
learned width per sample). This one is fitted to the data instead: the share of the right towers
(x > 0) and of the top towers (y > 0) of each generated sample are mapped, quantile to quantile,
onto the distribution of real showers' shares, conditioned on the shower class, the impact head's
coordinate across that boundary (bins of 0.2 cm) and the sample's deposited fraction (its towers'
counts per GeV, ranked among real showers: low, middle or high third, so the share stays tied to
the total as in real showers). The four quadrants of the face are then scaled so the towers carry
the mapped shares (iterative proportional fitting of the 2 x 2 split): the towers' total, the
shower's shape inside each quadrant and the photon statistics drawn afterwards are untouched.

Monotone and fitted on training particles only (training/calibrate.py, `zdc-sim refit-share-map`);
it copies no formula of any Monte Carlo. Every operation exports to ONNX (no sort, no search).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

POSITION_CM = (-4.0, 4.0, 0.2)  # bins of the impact coordinate: low edge, high edge, width
FRACTION_BINS = 3  # thirds of the real showers' deposited fraction
LEVELS = np.linspace(0.0, 1.0, 41)[1:-1]  # quantile levels of each bin's map
RANK_LEVELS = np.linspace(0.0, 1.0, 101)  # quantiles of the deposited fraction, for its rank
MIN_SAMPLES = 200  # showers per bin, real and generated, for a map; fewer: identity
MIN_TOWER_COUNTS = 50.0  # below, a sample's split is left as drawn (a graze or a miss)
MAX_FACTOR = 1e3  # the most a quadrant is scaled by, either way
IPF_STEPS = 10  # proportional-fitting passes; the 2 x 2 split converges to <1e-4 in a few
LOGIT_CLIP = 1e-4
AXES = ("right", "top")  # towers 2 + 4 (x > 0), towers 1 + 2 (y > 0)
HIGH_SIDE = ((1, 3), (0, 1))  # tower indices (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)


def position_centres() -> np.ndarray:
    lo, hi, step = POSITION_CM
    return np.arange(lo + step / 2, hi, step)


def logit(share):
    """Share in (0, 1) -> log odds, clipped away from 0 and 1 (numpy or torch)."""
    if isinstance(share, torch.Tensor):
        share = share.clamp(LOGIT_CLIP, 1 - LOGIT_CLIP)
        return torch.log(share / (1 - share))
    share = np.clip(share, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(share / (1 - share))


def shares(towers):
    """(..., 4) tower counts -> (right share, top share, towers' total), each (...)."""
    total = towers.sum(-1)
    safe = total.clamp_min(1e-9) if isinstance(total, torch.Tensor) else np.maximum(total, 1e-9)
    return (towers[..., 1] + towers[..., 3]) / safe, (towers[..., 0] + towers[..., 1]) / safe, total


def interpolate(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear map of u (N,) through knots x -> y (N, L) per row, slope 1 beyond the ends;
    the knot is found by counting (ONNX has no searchsorted)."""
    last = x.shape[1] - 1
    k = (u[:, None] > x).sum(1, keepdim=True).clamp(1, last)
    x0, x1, y0, y1 = x.gather(1, k - 1)[:, 0], x.gather(1, k)[:, 0], y.gather(1, k - 1)[:, 0], y.gather(1, k)[:, 0]
    inside = y0 + (u - x0) * (y1 - y0) / (x1 - x0).clamp_min(1e-6)
    return torch.where(u < x[:, 0], u - x[:, 0] + y[:, 0], torch.where(u > x[:, last], u - x[:, last] + y[:, last], inside))


def _bin_weights(coordinate: torch.Tensor, first: float, step: float, count: int):
    """Linear interpolation between bin centres first + i * step: ((lower, upper) index, weights)."""
    if count == 1:
        zero = torch.zeros_like(coordinate, dtype=torch.long)
        return (zero, zero), (torch.full_like(coordinate, 0.5), torch.full_like(coordinate, 0.5))
    position = ((coordinate - first) / step).clamp(0, count - 1)
    lower = position.floor().clamp(max=count - 2)
    weight = position - lower
    lower = lower.long()
    return (lower, lower + 1), (1 - weight, weight)


class TowerShareMap(nn.Module):
    """Buffers: per (class: hadronic, EM; axis: right, top; position bin; fraction bin), one row
    each in that order, the generated and real quantiles of the share's log odds; per class the real log deposited
    fractions' quantiles (for a sample's rank). Unfitted it is the identity (equal knots)."""

    def __init__(self, tower_masks: np.ndarray, quadrants: np.ndarray):
        super().__init__()
        n_pos, levels = len(position_centres()), len(LEVELS)
        # one row per (class, axis, position bin, fraction bin), flat: a 5-d buffer would not survive
        # .to(memory_format=torch.channels_last), which the CPU engine applies to the whole model
        identity = torch.linspace(-12.0, 12.0, levels).expand(2 * 2 * n_pos * FRACTION_BINS, levels).clone()
        self.register_buffer("generated_knots", identity.clone())
        self.register_buffer("real_knots", identity.clone())
        self.register_buffer("log_fraction_knots", torch.linspace(-20.0, 5.0, len(RANK_LEVELS)).expand(2, -1).clone())
        self.register_buffer("tower_masks", torch.tensor(tower_masks.reshape(4, -1), dtype=torch.float32), persistent=False)
        self.register_buffer("quadrant_masks", torch.tensor(quadrants.reshape(4, -1), dtype=torch.float32), persistent=False)
        self.register_buffer("rank_levels", torch.tensor(RANK_LEVELS, dtype=torch.float32), persistent=False)
        high = torch.zeros(2, 4)
        for axis, towers in enumerate(HIGH_SIDE):
            high[axis, list(towers)] = 1.0
        self.register_buffer("high_side", high, persistent=False)  # (axis, tower): 1 on the high side

    def fraction_rank(self, log_fraction: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """(N,) rank in [0, 1] of each sample's log deposited fraction among real showers of its class."""
        knots = self.log_fraction_knots[em.long()]
        return interpolate(log_fraction, knots, self.rank_levels.expand_as(knots)).clamp(0.0, 1.0)

    def target_shares(self, towers: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor):
        """(N, 2) the mapped right and top shares of towers (N, 4)."""
        right, top, total = shares(towers)
        rank = self.fraction_rank(torch.log(total.clamp_min(1.0) / energy.clamp_min(1e-3)), em)
        lo, _, step = POSITION_CM
        n_pos = len(position_centres())
        f_index, f_weight = _bin_weights(rank, 0.5 / FRACTION_BINS, 1.0 / FRACTION_BINS, FRACTION_BINS)
        out = []
        for axis, share in enumerate((right, top)):
            u = logit(share)
            p_index, p_weight = _bin_weights(impact[:, axis], lo + step / 2, step, n_pos)
            mapped = torch.zeros_like(u)
            for pi, pw in zip(p_index, p_weight):
                for fi, fw in zip(f_index, f_weight):
                    flat = (em.long() * 2 + axis) * n_pos * FRACTION_BINS + pi * FRACTION_BINS + fi
                    x, y = self.generated_knots[flat], self.real_knots[flat]
                    mapped = mapped + pw * fw * interpolate(u, x, y)
            out.append(torch.sigmoid(mapped))
        return torch.stack(out, 1)

    def forward(self, mean: torch.Tensor, impact: torch.Tensor, energy: torch.Tensor, em: torch.Tensor) -> torch.Tensor:
        """Mean counts (N, rows, columns) with each quadrant scaled so the towers carry the mapped
        shares; samples whose towers hold under MIN_TOWER_COUNTS are returned as they are."""
        flat = mean.flatten(1)
        towers = flat @ self.tower_masks.T  # (N, 4)
        target = self.target_shares(towers, impact, energy, em)
        total = towers.sum(1).clamp_min(1e-9)
        factors = torch.ones_like(towers)
        for _ in range(IPF_STEPS):
            for axis in range(2):
                is_high = self.high_side[axis]
                scaled = towers * factors
                high_sum = (scaled * is_high).sum(1).clamp_min(1e-6)
                low_sum = (scaled * (1 - is_high)).sum(1).clamp_min(1e-6)
                factor = is_high * (target[:, axis] * total / high_sum)[:, None] + \
                    (1 - is_high) * ((1 - target[:, axis]) * total / low_sum)[:, None]
                # bounded: a side that holds (almost) nothing cannot be scaled up to a share
                factors = (factors * factor).clamp(1.0 / MAX_FACTOR, MAX_FACTOR)
        factors = torch.where((towers.sum(1) >= MIN_TOWER_COUNTS)[:, None], factors, torch.ones_like(factors))
        return (flat * (factors @ self.quadrant_masks)).view_as(mean)


def fit_knots(impact: np.ndarray, energy: np.ndarray, em: np.ndarray, real_towers: np.ndarray,
              generated_towers: np.ndarray) -> dict[str, np.ndarray]:
    """The map's knots from training particles: impact (P, 2), energy (P,) GeV, em (P,) bool,
    real_towers (P, R, 4) counts of R real repeats, generated_towers (P, G, 4) mean counts of G
    generated samples. Returns the three buffers' values (see TowerShareMap)."""
    n_pos = len(position_centres())
    generated = np.tile(np.linspace(-12.0, 12.0, len(LEVELS)), (2, 2, n_pos, FRACTION_BINS, 1))
    real = generated.copy()
    fraction_knots = np.tile(np.linspace(-20.0, 5.0, len(RANK_LEVELS)), (2, 1))
    rows = {}
    for name, towers in (("real", real_towers), ("generated", generated_towers)):
        k = towers.shape[1]
        right, top, total = shares(towers.reshape(-1, 4))
        rows[name] = dict(impact=np.repeat(impact, k, 0), em=np.repeat(em, k), right=right, top=top,
                          log_fraction=np.log(np.maximum(total, 1.0) / np.maximum(np.repeat(energy, k), 1e-3)),
                          keep=total >= MIN_TOWER_COUNTS)
    lo, _, step = POSITION_CM
    for cls in (0, 1):
        r = rows["real"]
        pick = r["keep"] & (r["em"] == bool(cls))
        if pick.sum() < MIN_SAMPLES:
            continue
        fraction_knots[cls] = np.quantile(r["log_fraction"][pick], RANK_LEVELS)
        for name in rows:
            d = rows[name]
            d["rank"] = np.interp(d["log_fraction"], fraction_knots[cls], RANK_LEVELS)
            d["f_bin"] = np.minimum((d["rank"] * FRACTION_BINS).astype(int), FRACTION_BINS - 1)
        for axis, key in enumerate(("right", "top")):
            bins = {name: np.clip(np.round((rows[name]["impact"][:, axis] - lo - step / 2) / step).astype(int), 0, n_pos - 1)
                    for name in rows}
            for p in range(n_pos):
                for f in range(FRACTION_BINS):
                    values = {}
                    for name, d in rows.items():
                        s = d["keep"] & (d["em"] == bool(cls)) & (bins[name] == p) & (d["f_bin"] == f)
                        values[name] = logit(d[key][s])
                    if min(len(v) for v in values.values()) >= MIN_SAMPLES:
                        generated[cls, axis, p, f] = np.quantile(values["generated"], LEVELS)
                        real[cls, axis, p, f] = np.quantile(values["real"], LEVELS)
    return {"generated_knots": generated.reshape(-1, len(LEVELS)), "real_knots": real.reshape(-1, len(LEVELS)),
            "log_fraction_knots": fraction_knots}
