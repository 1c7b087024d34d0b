"""GPU throughput of the shipped model: Simulator samples/s at batch sizes up to 65536, fp32 vs bf16,
eager vs compiled (end to end: draws, standardisation, host <-> device copies), the generator alone
on device-resident inputs, served particles/s over loopback (binary), FLOPs per sample and the
fraction of the GPU's peak that this reaches. Prints a markdown table; --results appends it to a file.

    python bench/gpu.py [--device cuda] [--sizes 1024,8192,65536] [--results bench/RESULTS.md]

Runs on CPU too (--device cpu --sizes 256 --no-serve) as a check of the code path, not for figures.
"""

import argparse
import asyncio
from pathlib import Path

import numpy as np
import torch

import serving
from harness import rate_for

from zdc_sim import atomic, features, reference
from zdc_sim.models import generator_flops_per_sample
from zdc_sim.simulator import Simulator


# Dense peak FLOP/s from the vendors' data sheets (SXM parts; bf16 on tensor cores, fp32 without).
PEAKS = {"H100": {"bf16": 989e12, "fp32": 67e12}, "H200": {"bf16": 989e12, "fp32": 67e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12}}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_to_end(sim: Simulator, batch: int, seconds: float) -> float:
    feats, _ = reference.sample_particles(batch, np.random.default_rng(0))
    raw = features.validate(feats)
    z = sim.draws(batch, 1)
    return rate_for(lambda call: len(sim.simulate_draws(raw, z).counts), seconds)


@torch.inference_mode()
def generator_only(sim: Simulator, batch: int, seconds: float) -> float:
    device = sim.device
    feats, _ = reference.sample_particles(batch, np.random.default_rng(0))
    x = torch.from_numpy(sim.standardizer.transform(features.validate(feats))).to(device)
    z = torch.randn(batch, sim.random_dim, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=sim.bf16):
        return rate_for(lambda call: len(sim.engine.forward(z, x)), seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="1024,8192,65536")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-serve", dest="serve", action="store_false")
    parser.add_argument("--results", help="append the table to this markdown file")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    flops = generator_flops_per_sample()
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    lines = [f"### {name}, torch {torch.__version__}", "",
             f"Generator: {flops / 1e6:.1f} MFLOPs per sample. Peak used for the fraction: "
             f"{'bf16 %.0f / fp32 %.1f TFLOP/s' % (peak['bf16'] / 1e12, peak['fp32'] / 1e12) if peak else 'unknown'}.", "",
             "| precision | mode | batch | end to end samples/s | generator only samples/s | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    for bf16 in ([False, True] if device.type == "cuda" else [False]):
        for compiled in ([False, True] if args.compile else [False]):
            for batch in sizes:
                sim = Simulator.load(device=device, bf16=bf16, batch_size=batch, compile=compiled)
                if compiled:
                    sim.engine.buckets = [batch]  # one bucket: only this size is compiled
                    sim.warmup()
                e2e = end_to_end(sim, batch, args.seconds)
                gen = generator_only(sim, batch, args.seconds)
                tflops = gen * flops / 1e12
                fraction = f"{tflops * 1e12 / peak['bf16' if bf16 else 'fp32']:.1%}" if peak else "-"
                line = (f"| {'bf16' if bf16 else 'fp32'} | {'compiled' if compiled else 'eager'} | {batch:,} | "
                        f"{e2e:,.0f} | {gen:,.0f} | {tflops:.2f} | {fraction} |")
                lines.append(line)
                print(line, flush=True)
                del sim
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.serve:
        served = serving.server(True, args.device, extra=["--bf16"] if device.type == "cuda" else [],
                                      max_batch=max(sizes))
        with served.running(timeout_s=300) as srv:
            url = srv.url
            lines += ["", "| served (binary, loopback) | clients | particles/request | particles/s | p50 ms | p99 ms |",
                      "|---|---|---|---|---|---|"]
            for clients, particles in ((8, 1024), (64, 1024), (8, 8192)):
                r = asyncio.run(serving.drive(url, clients, particles, True, args.seconds * 2))
                line = (f"| dynamic batching, {'bf16' if device.type == 'cuda' else 'fp32'} | {clients} | {particles:,} | {r['particles_s']:,.0f} | "
                        f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
                lines.append(line)
                print(line, flush=True)
    if args.results:  # appended as a whole: the old results, then this run's, renamed into place
        results = Path(args.results)
        previous = results.read_text() if results.exists() else ""
        atomic.write_text(results, previous + "\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
