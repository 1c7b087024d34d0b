"""Throughput of the reference Monte Carlo (samples/s), median of several runs.

    python bench/reference_mc.py [--repeats 5]
"""

import argparse
import os

import numpy as np

from harness import median_rate

from zdc_sim import reference


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"reference Monte Carlo, {os.cpu_count()} CPU cores, median of {args.repeats} runs")
    print(f"{'batch':>8} {'simulate samples/s':>20} {'generate samples/s':>20}")
    rng = np.random.default_rng(0)
    for batch in (64, 1024, 8192):
        feats, pdg = reference.sample_particles(batch, rng)
        sim = median_rate(lambda: reference.simulate(feats, pdg, rng), batch, args.repeats)
        particles = batch // 4
        gen = median_rate(lambda: list(reference.generate(particles, 4, seed=1)), particles * 4, args.repeats)
        print(f"{batch:>8} {sim:>20,.0f} {gen:>20,.0f}")
    print("simulate: showers for given particles; generate: sampling + 4 repeats each, in fixed chunks")


if __name__ == "__main__":
    main()
