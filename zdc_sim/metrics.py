"""Physics metrics: channel Wasserstein distance against the real-vs-real floor, and selectivity
(does the simulator spread each particle as much as the real showers do, no more and no less).

Protocol (see data/README.md): on a set with K >= 2 real repeats per particle, split the repeats
into halves A and B; floor = WS(A, B); model = WS(A, G) with G holding as many generated samples
per particle as B. Selectivity compares relative spreads (std / mean of the total counts over the
repeats of one particle), which, unlike absolute spread, does not simply track energy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2, spearmanr, wasserstein_distance

from .errors import DataError
from . import geometry
from .geometry import MIN_MEAN_COUNTS, N_CHANNELS
from .species import ELECTROMAGNETIC, HADRONIC, shower_class

SPREAD_FLOOR = 1e-6  # keeps log(generated / real spread) finite for a fully collapsed model
MIN_CLASS_PARTICLES = 20  # a shower class's spread bias needs at least this many showers (the ZP sees few EM ones)


def ws_channels(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of each channel between two sets of channel values (n, 5), (m, 5)."""
    real, generated = np.asarray(real).reshape(-1, N_CHANNELS), np.asarray(generated).reshape(-1, N_CHANNELS)
    return np.array([wasserstein_distance(real[:, c], generated[:, c]) for c in range(N_CHANNELS)])


def group_repeats(particle_id: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Group flat entries by particle: returns (ids (P,), [array (P, K, ...) for each array]).

    Particles with fewer than 2 entries are dropped; K is the smallest count among the rest, and
    particles with more entries keep their first K.
    """
    particle_id = np.asarray(particle_id)
    order = np.argsort(particle_id, kind="stable")
    ids, starts, counts = np.unique(particle_id[order], return_index=True, return_counts=True)
    keep = counts >= 2
    if not keep.any():
        raise DataError("expected at least one particle with 2 or more repeated simulations; found none")
    ids, starts, k = ids[keep], starts[keep], int(counts[keep].min())
    rows = order[starts[:, None] + np.arange(k)[None, :]]  # (P, K) entry indices
    return ids, [np.asarray(a)[rows] for a in arrays]


@dataclass(frozen=True)
class WsReport:
    ws_channels: list[float]
    ws_mean: float
    floor_channels: list[float]
    ws_floor: float
    ratio_to_floor: float


def ws_against_floor(real_channels: np.ndarray, generated_channels: np.ndarray) -> WsReport:
    """real_channels (P, K, 5) with K >= 2; generated_channels (P, M, 5) with M >= K // 2.

    A = the first K // 2 repeats, B = the next K // 2; G = the first K // 2 generated samples.
    """
    real_channels, generated_channels = np.asarray(real_channels), np.asarray(generated_channels)
    half = real_channels.shape[1] // 2
    if half < 1 or generated_channels.shape[1] < half or len(generated_channels) != len(real_channels):
        raise DataError(
            f"expected real (P, K>=2, 5) and generated (P, >=K//2, 5); found {real_channels.shape} and "
            f"{generated_channels.shape}"
        )
    a, b, g = real_channels[:, :half], real_channels[:, half : 2 * half], generated_channels[:, :half]
    model, floor = ws_channels(a, g), ws_channels(a, b)
    return WsReport(
        ws_channels=model.tolist(), ws_mean=float(model.mean()), floor_channels=floor.tolist(),
        ws_floor=float(floor.mean()), ratio_to_floor=float(model.mean() / max(floor.mean(), 1e-12)),
    )


def relative_spread(totals: np.ndarray) -> np.ndarray:
    """std / mean of the total counts over the repeats of each particle: (P, K) -> (P,).

    The sample std of K values sits, in median, below the true std by sqrt(median(chi2_{K-1}) /
    (K - 1)) (0.89 for K = 4, 0.96 for K = 10). Dividing that out makes spreads measured with
    different K comparable in median, so a perfect simulator's spread bias is ~0 rather than ~+0.1
    when real data has 4 repeats and generated 10.
    """
    totals = np.asarray(totals, dtype=np.float64)
    k = totals.shape[1]
    median_shrink = np.sqrt(chi2.median(k - 1) / (k - 1))
    return totals.std(axis=1, ddof=1) / np.maximum(totals.mean(axis=1), 1e-12) / median_shrink


@dataclass(frozen=True)
class Selectivity:
    calibration: float  # Spearman correlation of real and generated relative spread
    spread_bias: dict  # class -> median log(generated / real relative spread); 0 is faithful
    n_particles: int
    n_by_class: dict


def selectivity(real_totals: np.ndarray, generated_totals: np.ndarray, pdg: np.ndarray,
                min_mean_counts: float = MIN_MEAN_COUNTS) -> Selectivity:
    """real_totals (P, K) and generated_totals (P, M) of the same particles, pdg (P,).

    Only particles whose real responses are not empty (mean total >= min_mean_counts) count.
    """
    real_totals, generated_totals = np.asarray(real_totals), np.asarray(generated_totals)
    if real_totals.shape[1] < 2 or generated_totals.shape[1] < 2 or len(real_totals) != len(generated_totals):
        raise DataError(
            f"expected real (P, K>=2) and generated (P, M>=2) totals; found {real_totals.shape}, {generated_totals.shape}"
        )
    keep = real_totals.mean(axis=1) >= min_mean_counts
    real_rs, gen_rs = relative_spread(real_totals[keep]), relative_spread(generated_totals[keep])
    classes = shower_class(np.asarray(pdg)[keep])
    log_ratio = np.log(np.maximum(gen_rs, SPREAD_FLOOR) / np.maximum(real_rs, SPREAD_FLOOR))
    bias, counts = {}, {}
    for cls in (HADRONIC, ELECTROMAGNETIC):
        sel = classes == cls
        counts[cls] = int(sel.sum())
        # a median of a handful of noisy spreads says nothing: too few particles, no figure
        bias[cls] = float(np.median(log_ratio[sel])) if sel.sum() >= MIN_CLASS_PARTICLES else float("nan")
    if keep.sum() >= 3 and np.ptp(gen_rs) > 0 and np.ptp(real_rs) > 0:
        calibration = float(spearmanr(real_rs, gen_rs).statistic)
    else:
        calibration = 0.0  # a constant spread carries no ranking at all
    return Selectivity(calibration, bias, int(keep.sum()), counts)


def shower_centres(counts: np.ndarray) -> np.ndarray:
    """Count-weighted centre (x, y) in cm from the face centre of responses (..., rows, columns)
    of either detector; x runs along the columns, y up the rows (row 0 at the top). NaN for empty
    responses."""
    counts = np.asarray(counts, dtype=np.float64)
    det = geometry.for_shape(counts.shape[-2:])
    total = counts.sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (counts.sum(-2) * det.pixel_x_cm).sum(-1) / total
        y = (counts.sum(-1) * det.pixel_y_cm).sum(-1) / total
    return np.stack([x, y], -1)


def bootstrap_ratio(real_channels: np.ndarray, generated_channels: np.ndarray, resamples: int = 200,
                    seed: int = 0, level: float = 0.9) -> tuple[float, float]:
    """Interval (level, e.g. 90 %) of the mean WS / floor ratio from resampling the particles with
    replacement: how much the figure would move on another set of this size.

    Resampling duplicates particles, which makes both empirical distributions lumpier and raises
    the floor (by ~50 % on 1,500 particles), so the resampled ratios sit below the estimate; the
    interval takes their spread around their median, in log ratio, and applies it to the estimate
    (a basic bootstrap on the log scale)."""
    rng = np.random.default_rng(seed)
    n = len(real_channels)
    estimate = ws_against_floor(real_channels, generated_channels).ratio_to_floor
    logs = np.log([ws_against_floor(real_channels[i], generated_channels[i]).ratio_to_floor
                   for i in (rng.integers(0, n, n) for _ in range(resamples))])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(logs, [tail, 100 - tail]) - np.median(logs)
    return float(estimate * np.exp(low)), float(estimate * np.exp(high))


def systematic_ws(real_channels: np.ndarray, generated_channels: np.ndarray) -> dict:
    """The part of the model's WS that does not shrink with the set's size: per channel
    sqrt(max(WS^2 - floor^2, 0)), in photons and as a share of the channel's spread (the standard
    deviation of its real values), and their means over the channels. The floor is sampling noise,
    which falls as the set grows; a systematic error does not (docs/fidelity.md)."""
    ws = ws_against_floor(real_channels, generated_channels)
    model, floor = np.array(ws.ws_channels), np.array(ws.floor_channels)
    photons = np.sqrt(np.maximum(model**2 - floor**2, 0.0))
    half = np.asarray(real_channels).shape[1] // 2
    spread = np.asarray(real_channels)[:, :half].reshape(-1, N_CHANNELS).std(0)
    share = photons / np.maximum(spread, 1e-12)
    return {"photons": photons.tolist(), "share": share.tolist(), "mean_photons": float(photons.mean()),
            "mean_share": float(share.mean())}


def _resampled(n: int, resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n, n) for _ in range(resamples))


def _basic_interval(estimate: float, resampled: list[float], level: float, floor: float | None = None):
    """A basic bootstrap interval: the spread of the resampled values around their median, applied
    to the estimate (resampling duplicates particles, which shifts the values themselves)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail]) - np.median(resampled)
    low, high = estimate + low, estimate + high
    return (max(low, floor), max(high, floor)) if floor is not None else (float(low), float(high))


def bootstrap_systematic(real_channels: np.ndarray, generated_channels: np.ndarray, resamples: int = 200,
                         seed: int = 0, level: float = 0.9) -> tuple[float, float]:
    """Interval of the mean systematic WS (photons) from resampling the particles."""
    estimate = systematic_ws(real_channels, generated_channels)["mean_photons"]
    values = [systematic_ws(real_channels[i], generated_channels[i])["mean_photons"]
              for i in _resampled(len(real_channels), resamples, seed)]
    low, high = _basic_interval(estimate, values, level, floor=0.0)
    return float(low), float(high)


def paired_bootstrap(real_channels: np.ndarray, generated_a: np.ndarray, generated_b: np.ndarray,
                     resamples: int = 200, seed: int = 0, level: float = 0.9) -> dict:
    """Two models on the same set, compared on the same resampled particles: the difference of
    their mean WS / floor ratios (a minus b) and of their mean systematic WS, with intervals. The
    difference of the WS is resampled and divided by the whole set's floor: the floor's noise, the
    largest part of each model's own interval, then leaves the difference, which makes it far
    tighter than two separate intervals."""
    floor = max(ws_against_floor(real_channels, generated_a).ws_floor, 1e-12)

    def both(rows):
        ra, rb = ws_against_floor(real_channels[rows], generated_a[rows]), ws_against_floor(real_channels[rows], generated_b[rows])
        sa, sb = systematic_ws(real_channels[rows], generated_a[rows]), systematic_ws(real_channels[rows], generated_b[rows])
        return (ra.ws_mean - rb.ws_mean) / floor, sa["mean_photons"] - sb["mean_photons"]

    ratio, systematic = both(slice(None))
    resampled = [both(rows) for rows in _resampled(len(real_channels), resamples, seed)]
    return {"ratio_difference": ratio, "ratio_interval": list(_basic_interval(ratio, [r for r, _ in resampled], level)),
            "systematic_difference": systematic,
            "systematic_interval": list(_basic_interval(systematic, [s for _, s in resampled], level))}
