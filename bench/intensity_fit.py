"""How many training particles the intensity factor needs: for each checkpoint, the factor on top
of its own that training/calibrate.py's fit_intensity finds on the first N training particles, and
the held-out channel WS / floor with that factor applied (zdc_sim.metrics.ws_against_floor: K // 2
generated samples per particle against the first K // 2 real repeats, the floor the next K // 2).

    python bench/intensity_fit.py zn runs/compare/sdi-1/best.safetensors \
        --train data/train100k_zn.root --heldout data/heldout30k.root --particles 20000 0

--particles 0 means all of them. The training and held-out sets are those of `make compare-regularizers`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from training.calibrate import fit_intensity
from training.data import load
from training.evaluate import load_particles
from zdc_sim import metrics
from zdc_sim.simulator import Simulator

FIT_SEED, HELDOUT_SEED = 5, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint paths, or zn / zp for a shipped model")
    parser.add_argument("--train", default="data/train100k_zn.root")
    parser.add_argument("--heldout", default="data/heldout30k.root")
    parser.add_argument("--particles", type=int, nargs="+", default=[20000, 0], help="0: all training particles")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load(args.train, images=False)
    features, _, real = load_particles(args.heldout)
    samples = real.shape[1] // 2
    print(f"held-out: {len(features)} particles x {real.shape[1]} repeats, {samples} generated samples each")
    for path in args.checkpoints:
        simulator = Simulator.load(path)
        generated = simulator.simulate(np.repeat(features, samples, 0), seed=HELDOUT_SEED, extrapolate=True)
        generated = generated.channels.astype(np.float64).reshape(len(features), samples, -1)
        rows = [("as trained", 1.0)] + [
            (f"fit on {n or 'all'} particles", fit_intensity(simulator, train, seed=FIT_SEED, particles=n or None))
            for n in args.particles]
        for name, factor in rows:
            ws = metrics.ws_against_floor(real, factor * generated)
            ratios = np.array(ws.ws_channels) / np.array(ws.floor_channels)
            print(f"{path}  {name:>24}: factor {factor:.3f}  WS/floor {ws.ratio_to_floor:.2f} (floor {ws.ws_floor:.1f})  "
                  f"channels {' / '.join(f'{r:.2f}' for r in ratios)}", flush=True)


if __name__ == "__main__":
    main()
