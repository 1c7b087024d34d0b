"""Probe: how often a ZN model's spectator showers hold more photons than the particle's energy
can make. Real showers never do: their face total over energy x full yield (the photons per GeV of
a shower the ZN wholly contains) stays well below 1. A model whose total is not bounded by the
energy (bounded_total false) can exceed it.

    python bench/energy_bound.py zn /path/to/older.safetensors --heldout data/heldout30k.root

The full yield is read from the first model with a bounded total (in argument order), so every
model is held to the same yardstick. Real showers: every repeat of the first --entries entries;
generated: --samples per particle.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from training.data import load
from zdc_sim.simulator import Simulator

SPECTATOR_GEV = 2000.0  # neutrons above this are the ~2.5 TeV spectator neutrons
NEUTRON = 2112


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint paths, or zn for the shipped model")
    parser.add_argument("--heldout", default="data/heldout30k.root")
    parser.add_argument("--entries", type=int, default=16000, help="held-out entries read")
    parser.add_argument("--samples", type=int, default=5, help="generated samples per spectator")
    args = parser.parse_args()
    sims = {path: Simulator.load(path) for path in args.checkpoints}
    if any(sim.detector.name != "zn" for sim in sims.values()):
        raise SystemExit("every checkpoint must be a ZN model")
    bounded = [s for s in sims.values() if s.generator.config.bounded_total]
    if not bounded:
        raise SystemExit("one of the models must have a bounded total: its full yield is the yardstick")
    full_yield = float(bounded[0].generator.full_yield)
    data = load(args.heldout, max_entries=args.entries, images=True, detector="zn")
    energy = data.features[:, 0]
    spectator = (data.pdg == NEUTRON) & (energy > SPECTATOR_GEV)
    if not spectator.any():
        raise SystemExit(f"no neutron above {SPECTATOR_GEV:.0f} GeV in {args.heldout}: expected a ZN held-out set")
    real = torch.expm1(data.log_images).flatten(1).sum(1).numpy()[spectator] / (energy[spectator] * full_yield)
    print(f"full yield {full_yield:.2f} photons per GeV; {spectator.sum()} real spectator showers: "
          f"face total / (energy x full yield) at most {real.max():.3f}, above 1 {np.mean(real > 1):.2%}")
    particles = np.unique(data.particle_id[spectator], return_index=True)[1]
    features = data.features[spectator][particles]
    for path, sim in sims.items():
        ratio = np.concatenate([sim.simulate(features, seed=seed).counts.reshape(len(features), -1).sum(1)
                                / (features[:, 0] * full_yield) for seed in range(args.samples)])
        print(f"{path} ({sim.model_version}): {len(ratio)} samples of {len(features)} spectators: above 1 "
              f"{np.mean(ratio > 1):.2%} (at most {ratio.max():.3f}), above the real maximum {np.mean(ratio > real.max()):.2%}")


if __name__ == "__main__":
    main()
