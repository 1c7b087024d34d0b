"""Where a model's tower error lives, on a held-out file: each channel's WS by quantile band of its
distribution (and whether the model is above or below there), the per-particle spread of hadrons'
shower centres and of the right towers' share by distance from the quadrant boundary, and the WS
with each generated shower's centre shifted at random (a lever tried in docs/fidelity.md).

    python bench/tower_split.py zn --heldout data/heldout30k.root --shift 0,0 0.05,0 0.1,0.07

Generated samples: K // 2 per particle against real repeats 1 to K // 2, the floor the rest
(zdc_sim.metrics.ws_against_floor), as bench/intensity_fit.py scores.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from training.evaluate import load_particles, simulated_channels_and_centres as simulate
from zdc_sim import metrics, species
from zdc_sim.models import Generator
from zdc_sim.simulator import Simulator

SEED = 0
BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 0.99), (0.99, 1.0))
DISTANCES_CM = (0.0, 0.3, 0.6, 1.2, 2.0, 9.0)
MIN_HADRON_COUNTS = 1000  # channel 5 mean: a shower, not an edge graze


class ShiftedCentre(Generator):
    """The generator with each shower's centre moved by `shift_cm` x a standard normal per axis,
    taken from the photon noise of fibres 0 and 1 (a corner no shower of the set reaches), so the
    traced engine draws it as it draws everything else."""

    shift_cm = torch.zeros(2)

    def _sample(self, random, features):
        latent = self.config.latent_dim
        self._shift = random[:, latent:latent + 2] * self.shift_cm
        return super()._sample(random, features)

    def impact_point(self, features):
        return super().impact_point(features) + self._shift


def bands(real: np.ndarray, generated: np.ndarray) -> None:
    """Each channel's WS (equal-size samples: the mean |difference| of the sorted values) by band."""
    n = min(len(real), len(generated))
    for c in range(real.shape[-1]):
        a, b = np.sort(real[:n, c]), np.sort(generated[:n, c])
        diff, q = b - a, np.arange(n) / n
        parts = [f"{lo:.2f}-{hi:.2f} {np.abs(diff[(q >= lo) & (q < hi)]).sum() / np.abs(diff).sum():4.0%} "
                 f"(gen - real {diff[(q >= lo) & (q < hi)].mean():+7.0f})" for lo, hi in BANDS]
        print(f"  channel {c + 1} WS {np.abs(diff).mean():6.1f}: " + "  ".join(parts))


def spreads(feats, pdg, real, real_centres, generated, generated_centres) -> None:
    """Median per-particle std (ddof 1) of hadrons' centres and right towers' share, real vs generated."""
    keep = ((species.shower_class(pdg) == species.HADRONIC) & (real[..., 4].mean(1) > MIN_HADRON_COUNTS)
            & np.isfinite(real_centres).all((1, 2)) & np.isfinite(generated_centres).all((1, 2)))
    centre = real_centres.mean(1)
    distance = np.minimum(np.abs(centre[:, 0]), np.abs(centre[:, 1]))
    right = lambda ch: (ch[..., 1] + ch[..., 3]) / np.maximum(ch[..., :4].sum(-1), 1)  # towers 2, 4: x > 0
    for lo, hi in zip(DISTANCES_CM[:-1], DISTANCES_CM[1:]):
        s = keep & (distance >= lo) & (distance < hi)
        if s.sum() < 50:
            continue
        figures = [np.median(x[s].std(1, ddof=1)) for x in (real_centres[..., 0], generated_centres[..., 0],
                                                            real_centres[..., 1], generated_centres[..., 1],
                                                            right(real), right(generated))]
        rx, gx, ry, gy, rs, gs = figures
        print(f"  {lo:.1f}-{hi:.1f} cm from the boundary, {s.sum():5d} hadrons: centre x real {rx:.3f} "
              f"generated {gx:.3f} ({gx / rx:.2f}), y {ry:.3f} / {gy:.3f} ({gy / ry:.2f}); right share "
              f"{rs:.4f} / {gs:.4f} ({gs / rs:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint path, or zn for the shipped model")
    parser.add_argument("--heldout", default="data/heldout30k.root")
    parser.add_argument("--particles", type=int, help="the first N held-out particles (default all)")
    parser.add_argument("--shift", nargs="*", default=[], help="centre shifts to score, 'x,y' in cm")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    feats, pdg, real, real_centres = load_particles(args.heldout, args.particles, with_centres=True)
    samples = real.shape[1] // 2
    simulator = Simulator.load(args.checkpoint)
    generated, generated_centres = simulate(simulator, feats, samples, SEED)
    print(f"{args.checkpoint} on {args.heldout}: {len(feats)} particles, {samples} generated samples each")
    print("WS by quantile band of each channel (generated vs real repeats 1-%d):" % samples)
    bands(real[:, :samples].reshape(-1, 5), generated.reshape(-1, 5))
    print("per-particle spread, real repeats vs generated samples:")
    spreads(feats, pdg, real[:, :samples], real_centres[:, :samples], generated, generated_centres)
    for spec in args.shift:
        shifted = copy.deepcopy(simulator.generator)
        shifted.__class__ = ShiftedCentre
        shifted.shift_cm = torch.tensor([float(v) for v in spec.split(",")])
        channels, _ = simulate(Simulator(shifted, simulator.standardizer, metadata=simulator.metadata), feats, samples, SEED)
        ws = metrics.ws_against_floor(real, channels)
        ratios = np.array(ws.ws_channels) / np.array(ws.floor_channels)
        print(f"centre shifted by {spec} cm (sigma x, y): WS / floor {ws.ratio_to_floor:.2f}, channels "
              + " / ".join(f"{r:.2f}" for r in ratios), flush=True)


if __name__ == "__main__":
    main()
