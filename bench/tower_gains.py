"""Probe: how much of a trained model's channel WS is a per-channel scale error, by shower class.

Fits one gain per channel and class (hadronic, electromagnetic) on training particles, the real
mean of the channel over the generated mean, as a PMT gain calibration would; then scores the
held-out set with and without the gains, on the same generated samples, with a paired bootstrap.
A probe for docs/fidelity.md, not part of the recipe: the gains act on the channel sums here, not
inside the model.

    python bench/tower_gains.py --checkpoint runs/zoom/zoom-1/refit.safetensors \
        --train data/train100k_zn.root --heldout data/heldout30k.root
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from training.evaluate import load_particles, simulated_channels_and_centres
from zdc_sim import metrics, species
from zdc_sim.simulator import Simulator


def fit_gains(simulator: Simulator, path: str, particles: int, seed: int) -> np.ndarray:
    """(2, 5) gains, row 0 hadronic, row 1 electromagnetic: real / generated mean per channel."""
    features, pdg, real = load_particles(path, max_particles=particles)
    generated, _ = simulated_channels_and_centres(simulator, features, 1, seed)
    em = species.shower_class(pdg) == species.ELECTROMAGNETIC
    return np.stack([real[c].mean((0, 1)) / generated[c].mean((0, 1)) for c in (~em, em)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--particles", type=int, default=50_000, help="training particles the gains are fitted on")
    parser.add_argument("--samples", type=int, default=2, help="generated samples per held-out particle")
    args = parser.parse_args()
    simulator = Simulator.load(args.checkpoint, device="cpu")
    gains = fit_gains(simulator, args.train, args.particles, seed=7)
    features, pdg, real = load_particles(args.heldout)
    generated, _ = simulated_channels_and_centres(simulator, features, args.samples, seed=11)
    em = species.shower_class(pdg) == species.ELECTROMAGNETIC
    gained = generated * np.where(em[:, None, None], gains[1], gains[0])
    report = {"gains_hadronic": gains[0].round(4).tolist(), "gains_electromagnetic": gains[1].round(4).tolist()}
    for name, g in (("as_trained", generated), ("with_gains", gained)):
        ws = metrics.ws_against_floor(real, g)
        report[name] = {"ratio": round(ws.ratio_to_floor, 3),
                        "channels": [round(w / f, 2) for w, f in zip(ws.ws_channels, ws.floor_channels)],
                        "interval": [round(v, 2) for v in metrics.bootstrap_ratio(real, g)],
                        "systematic_photons": round(metrics.systematic_ws(real, g)["mean_photons"], 1)}
    paired = metrics.paired_bootstrap(real, gained, generated)
    report["gains_minus_as_trained"] = {k: np.round(v, 3).tolist() for k, v in paired.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
