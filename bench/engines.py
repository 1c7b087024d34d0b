"""The two inference engines on CPU, and single particles in process and served, in one run.

Prints, for the torch and ONNX Runtime engines of the Simulator: samples/s at batch 1, 64 and
1,024 (median of --repeats timed runs) and the median time of `simulate` for one particle; then
starts `zdc-sim serve` with the engine faster at batch 64 in this run and measures single-particle binary
requests (.npy in, raw float32 out) from 1 and 64 clients, p50 / p99, against the bound that
coalescing allows: the lower of the in-process batch-64 rate and the server's bare HTTP rate
(GET /v2/health/live from 64 clients). Also checks that the exported ONNX graph of the model
gives the Simulator's channel sums.

    python bench/engines.py [--checkpoint PATH] [--seconds 5] [--repeats 5] [--results bench/RESULTS.md]
"""

import argparse
import asyncio
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import serving
from harness import median_rate, median_seconds

from zdc_sim import atomic, reference
from zdc_sim.exports.onnx import onnx_bytes
from zdc_sim.simulator import Simulator



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--seconds", type=float, default=5.0, help="per served row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", help="append the table to this markdown file")
    args = parser.parse_args()
    lines = [f"engines: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
             f"onnxruntime {ort.__version__}; median of {args.repeats} runs", "",
             "| engine | batch 1 | batch 64 | batch 1,024 (samples/s) | one particle, median ms |", "|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    batches = {n: reference.sample_particles(n, rng)[0] for n in (1, 64, 1024)}
    rates = {}
    for engine in ("torch", "onnxruntime"):
        sim = Simulator.load(args.checkpoint, device="cpu", engine=engine)
        row = {}
        for n, x in batches.items():
            calls = max(1, 256 // n)
            row[n] = median_rate(lambda: [sim.simulate(x, seed=1) for _ in range(calls)], n * calls, args.repeats,
                                 warmup=True)
        one = batches[1]
        latency = median_seconds(lambda: sim.simulate(one, seed=1), 300, warmup=True)
        rates[engine] = row
        lines.append(f"| {engine} | {row[1]:,.0f} | {row[64]:,.0f} | {row[1024]:,.0f} | {latency * 1e3:.3f} |")
        print(lines[-1], flush=True)
    torch_sim = Simulator.load(args.checkpoint, device="cpu")
    session = ort.InferenceSession(onnx_bytes(torch_sim.generator, torch_sim.standardizer, torch_sim.metadata), providers=["CPUExecutionProvider"])
    x = batches[1024]
    exported = session.run(["CHANNELS"], {"FEATURES": x, **torch_sim.random_inputs(len(x), 3)})[0]
    want = torch_sim.simulate(x, seed=3).channels
    worst = float((np.abs(exported - want) / np.maximum(want, 1)).max())
    lines += ["", f"exported ONNX graph vs torch Simulator, 1,024 particles: largest channel difference {worst:.2e} "
                  f"relative, {np.mean(np.abs(exported - want) > 1e-4 * np.maximum(want, 1)):.4%} of channel values "
                  f"beyond 1e-4 (fibres whose count rounds the other way)"]
    print(lines[-1], flush=True)

    engine = max(rates, key=lambda e: rates[e][64])  # the engine faster at the batches a loaded server runs
    served = serving.server(True, "cpu", extra=["--engine", engine,
                                                      *(["--checkpoint", args.checkpoint] if args.checkpoint else [])])
    with served.running(timeout_s=300) as srv:
        bare = asyncio.run(serving.drive(srv.url, 64, 1, True, args.seconds, bare=True))
        rows = {c: asyncio.run(serving.drive(srv.url, c, 1, True, args.seconds)) for c in (1, 64)}
    bound = min(rates[engine][64], bare["requests_s"])
    lines += ["", "| served, single-particle binary requests | particles/s | p50 ms | p99 ms | of the bound |",
              "|---|---|---|---|---|"]
    for clients, r in rows.items():
        lines.append(f"| {clients} client{'s' if clients > 1 else ''} | {r['particles_s']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['particles_s'] / bound:.2f} |")
    lines.append(f"\nbound = min(in-process batch 64 with {engine}: {rates[engine][64]:,.0f}/s, bare HTTP at 64 "
                 f"clients: {bare['requests_s']:,.0f} requests/s) = {bound:,.0f}/s")
    print("\n".join(lines[-5:]), flush=True)
    if args.results:
        results = Path(args.results)
        previous = results.read_text() if results.exists() else ""
        stamp = time.strftime("%Y-%m-%d")
        atomic.write_text(results, previous + f"## bench/engines.py, {stamp}\n\n" + "\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
