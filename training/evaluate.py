"""The evaluation protocol of zdc_sim.metrics applied to a simulator on a held-out set.

On P particles with K real repeats each: WS of the 5 channels against the real-vs-real floor
(K // 2 generated samples per particle) and selectivity (M generated samples per particle).
`ceiling=True` (reference data only, needs pdg) also scores fresh reference Monte Carlo repeats of
the same particles, i.e. what a perfect simulator reaches on this very set.
"""

from __future__ import annotations

import numpy as np

from zdc_sim import geometry, io, metrics, reference
from zdc_sim.simulator import Simulator

from .data import load

DEFAULT_SAMPLES = 10


def evaluate_particles(simulator: Simulator, features: np.ndarray, pdg: np.ndarray, real_channels: np.ndarray,
                       samples: int = DEFAULT_SAMPLES, seed: int = 0, ceiling: bool = False) -> dict:
    """features (P, 9), pdg (P,), real_channels (P, K, 5) -> report dict."""
    n_particles, k = real_channels.shape[:2]
    samples = max(samples, k // 2)
    generated = simulator.simulate(np.repeat(features, samples, axis=0), seed=seed).channels
    generated = generated.reshape(n_particles, samples, geometry.N_CHANNELS).astype(np.float64)
    report = _scores(real_channels, generated, pdg)
    report.update(particles=int(n_particles), repeats=int(k), samples=int(samples))
    if ceiling:
        rng = np.random.default_rng([seed, 1])
        fresh = reference.simulate(np.repeat(features, samples, 0), np.repeat(pdg, samples), rng)
        perfect = _scores(real_channels, geometry.channel_sums(fresh).reshape(n_particles, samples, -1), pdg)
        report.update(calibration_ceiling=perfect["calibration"], ceiling_ratio_to_floor=perfect["ratio_to_floor"],
                      ceiling_spread_bias=perfect["spread_bias"])
    return report


def _scores(real_channels, generated_channels, pdg) -> dict:
    ws = metrics.ws_against_floor(real_channels, generated_channels)
    sel = metrics.selectivity(real_channels.sum(-1), generated_channels.sum(-1), pdg)
    return {"ws_mean": ws.ws_mean, "ws_channels": ws.ws_channels, "ws_floor": ws.ws_floor,
            "floor_channels": ws.floor_channels, "ratio_to_floor": ws.ratio_to_floor,
            "calibration": sel.calibration, "spread_bias": sel.spread_bias,
            "selectivity_particles": sel.n_particles}


def load_particles(path, max_particles: int | None = None, schema: io.Schema = io.Schema()):
    """(features (P, 9), pdg (P,), channels (P, K, 5)) of a file, read in chunks (images are not kept)."""
    data = load(path, schema=schema, images=False)
    _, (feats, pdg, channels) = metrics.group_repeats(data.particle_id, data.features, data.pdg, data.channels)
    if max_particles is not None:
        feats, pdg, channels = feats[:max_particles], pdg[:max_particles], channels[:max_particles]
    return feats[:, 0], pdg[:, 0], channels


def evaluate_file(simulator: Simulator, path, max_particles: int | None = None, samples: int = DEFAULT_SAMPLES,
                  seed: int = 0, ceiling: bool = False, schema: io.Schema = io.Schema()) -> dict:
    feats, pdg, channels = load_particles(path, max_particles, schema)
    report = evaluate_particles(simulator, feats, pdg, channels, samples, seed, ceiling)
    report["data"] = str(path)
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['particles']} particles x {report['repeats']} real repeats, "
             f"{report['samples']} generated samples each"]
    for name, model, floor in zip(geometry.CHANNEL_NAMES, report["ws_channels"], report["floor_channels"]):
        lines.append(f"  WS {name:<10} {model:12.1f}   floor {floor:10.1f}")
    lines.append(f"  WS mean            {report['ws_mean']:12.1f}   floor {report['ws_floor']:10.1f}   "
                 f"model / floor {report['ratio_to_floor']:.2f}")
    ceiling = f"   (ceiling {report['calibration_ceiling']:.3f})" if "calibration_ceiling" in report else ""
    lines.append(f"  calibration        {report['calibration']:12.3f}{ceiling}")
    for cls, bias in report["spread_bias"].items():
        lines.append(f"  spread bias {cls:<16} {bias:+.3f}")
    return "\n".join(lines)
