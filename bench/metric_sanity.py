"""What the evaluation metrics say about simulators whose quality is known, on reference data:
a perfect one (fresh reference Monte Carlo repeats), a collapsed one (every repeat equal to the
particle's mean) and one that spreads every particle alike (25 % log-normal noise).

    python bench/metric_sanity.py [--particles 3000] [--seed 1]
"""

import argparse

import numpy as np
from scipy.stats import chi2

from zdc_sim import geometry, metrics, reference


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    n, k, m = args.particles, 4, 10

    chunks = list(reference.generate(n, k, args.seed))
    feats = np.concatenate([c.features for c in chunks])[::k]
    pdg = np.concatenate([c.pdg for c in chunks])[::k]
    real = geometry.channel_sums(np.concatenate([c.response for c in chunks])).reshape(n, k, 5)
    rng = np.random.default_rng(args.seed + 1000)
    perfect = geometry.channel_sums(reference.simulate(np.repeat(feats, m, 0), np.repeat(pdg, m), rng)).reshape(n, m, 5)
    mean = real.mean(axis=1, keepdims=True)
    simulators = {
        "perfect (fresh reference repeats)": perfect,
        "collapsed (mean of the real repeats)": np.repeat(mean, m, axis=1),
        "spread everywhere (25 % noise)": mean * rng.lognormal(0.0, 0.25, (n, m, 1)),
    }
    print(f"{n} particles x {k} real repeats, {m} generated samples each (seed {args.seed})")
    print(f"{'simulator':<38} {'WS/floor':>9} {'calib.':>7} {'bias had':>9} {'bias EM':>8}")
    for name, gen in simulators.items():
        ws = metrics.ws_against_floor(real, gen)
        sel = metrics.selectivity(real.sum(-1), gen.sum(-1), pdg)
        print(f"{name:<38} {ws.ratio_to_floor:>9.2f} {sel.calibration:>7.3f} "
              f"{sel.spread_bias['hadronic']:>9.3f} {sel.spread_bias['electromagnetic']:>8.3f}")
    # The same perfect simulator without the median-shrinkage correction of relative_spread.
    shrink = lambda kk: np.sqrt(chi2.median(kk - 1) / (kk - 1))
    offset = np.log(shrink(m) / shrink(k))
    sel = metrics.selectivity(real.sum(-1), perfect.sum(-1), pdg)
    print(f"perfect without the K-vs-M correction: bias had {sel.spread_bias['hadronic'] + offset:.3f}, "
          f"EM {sel.spread_bias['electromagnetic'] + offset:.3f}")


if __name__ == "__main__":
    main()
