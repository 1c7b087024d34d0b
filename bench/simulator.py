"""Simulator throughput (samples/s) at batch sizes 1, 64, 1024, 8192, beside the reference Monte
Carlo on the same particles; CPU always, CUDA fp32 and bf16 when a GPU is present. Medians of
several timed runs after a warm-up.

    python bench/simulator.py [--checkpoint PATH] [--repeats 5] [--threads N]
"""

import argparse
import os

import numpy as np
import torch

from harness import median_rate

from zdc_sim import reference
from zdc_sim.models import generator_flops_per_sample
from zdc_sim.simulator import Simulator


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", help="default: the shipped default model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setups = [("cpu fp32", dict(device="cpu"))]
    if torch.cuda.is_available():
        setups += [("cuda fp32", dict(device="cuda")), ("cuda bf16", dict(device="cuda", bf16=True))]
    sims = {name: Simulator.load(args.checkpoint, **kw) for name, kw in setups}
    config = next(iter(sims.values())).generator.config
    print(f"generator {config}: {generator_flops_per_sample(config) / 1e6:.1f} MFLOPs per sample")
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; median of {args.repeats} runs")
    print(f"{'batch':>6} {'reference MC':>14} " + " ".join(f"{name:>14}" for name in sims) + "   (samples/s)")
    rng = np.random.default_rng(0)
    for batch in (1, 64, 1024, 8192):
        feats, pdg = reference.sample_particles(batch, rng)
        calls = max(1, 256 // batch)  # time several calls at small batches: single calls are too short
        ref = median_rate(lambda: [reference.simulate(feats, pdg, rng) for _ in range(calls)], batch * calls, args.repeats, warmup=True)
        rates = [median_rate(lambda s=s: [s.simulate(feats, seed=0) for _ in range(calls)], batch * calls, args.repeats, warmup=True)
                 for s in sims.values()]
        print(f"{batch:>6} {ref:>14,.0f} " + " ".join(f"{r:>14,.0f}" for r in rates))


if __name__ == "__main__":
    main()
