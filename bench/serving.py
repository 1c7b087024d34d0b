"""Served throughput and latency over loopback, beside the in-process Simulator as the ceiling.

Starts `zdc-sim serve` (the shipped model) with dynamic batching on, then off, and drives it with
1, 8 and 64 concurrent clients (asyncio + aiohttp, keep-alive), for 1-particle and 1024-particle
requests, JSON and binary (.npy in, raw float32 out), each for --seconds. Prints one table:
particles/s, requests/s, latency p50 / p99, and the ratio to the in-process figure.
In-process batch 1 vs batch <most clients> bounds what dynamic batching can give single-particle
requests: coalescing N requests can at most turn N batch-1 passes into one batch-N pass.

    python bench/serving.py [--seconds 5] [--device cpu]
"""

import argparse
import asyncio
import io
import json
import os
import time

import numpy as np

from harness import Server, closed_loop, rate_for

from zdc_sim import reference
from zdc_sim.simulator import Simulator


def in_process(device: str, batch: int, seconds: float) -> float:
    sim = Simulator.load(device=device)
    feats, _ = reference.sample_particles(batch, np.random.default_rng(0))
    return rate_for(lambda call: len(sim.simulate(feats, seed=call).counts), seconds)


def server(batching: bool, device: str, extra=(), max_batch: int = 1024) -> Server:
    return Server("--device", device, "--max-batch-size", str(max_batch), *extra,
                  *([] if batching else ["--no-batching"]))


def request_kwargs(particles: int, binary: bool) -> dict:
    feats, _ = reference.sample_particles(particles, np.random.default_rng(1))
    if binary:
        buffer = io.BytesIO()
        np.save(buffer, feats.astype(np.float32))
        return {"content": buffer.getvalue(), "params": {"seed": "1"},
                "headers": {"Content-Type": "application/x-npy", "Accept": "application/octet-stream"}}
    return {"content": json.dumps({"particles": feats.tolist(), "seed": 1}),
            "headers": {"Content-Type": "application/json"}}


async def drive(url: str, clients: int, particles: int, binary: bool, seconds: float, bare: bool = False) -> dict:
    """`clients` concurrent keep-alive connections, each sending requests back to back.
    `bare`: GET /v2/health/live instead, the server's rate for a request that does nothing."""
    import aiohttp

    kwargs = request_kwargs(particles, binary)
    body, headers, params = kwargs["content"], kwargs["headers"], kwargs.get("params")
    method, path = ("GET", "/v2/health/live") if bare else ("POST", "/v1/simulate")
    if bare:
        body, headers, params = None, {}, None
    latencies: list[float] = []
    errors = 0

    async def one(session):
        nonlocal errors
        t = time.perf_counter()
        try:
            async with session.request(method, path, data=body, headers=headers, params=params) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - t)
        else:
            errors += 1

    elapsed = await closed_loop(url, clients, seconds, one)
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"requests_s": len(latencies) / elapsed, "particles_s": len(latencies) * particles / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", default="1,8,64")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; device {args.device}; {args.seconds:.0f} s per row")
    top = max(map(int, args.clients.split(",")))
    ceiling = {b: in_process(args.device, b, args.seconds) for b in sorted({1, top, 1024})}
    print("in-process Simulator: " + ", ".join(f"{rate:,.0f} particles/s at batch {b}" for b, rate in ceiling.items()))
    rows = []
    for batching in (True, False):
        with server(batching, args.device).running(timeout_s=120) as srv:
            url = srv.url
            for particles in (1, 1024):
                for binary in (True, False):
                    for clients in map(int, args.clients.split(",")):
                        if particles > 1 and not binary and clients > 8:
                            continue  # 40 MB JSON answers: 64 of them in flight only measure timeouts
                        r = asyncio.run(drive(url, clients, particles, binary, args.seconds))
                        r.update(batching=batching, particles=particles, binary=binary, clients=clients)
                        rows.append(r)
                        print(f"batching {'on ' if batching else 'off'} | {particles:5d} particles/request | "
                              f"{'binary' if binary else 'JSON  '} | {clients:3d} clients | "
                              f"{r['particles_s']:9,.0f} particles/s | {r['requests_s']:7,.1f} req/s | "
                              f"p50 {r['p50_ms']:8.1f} ms | p99 {r['p99_ms']:8.1f} ms | "
                              f"{r['particles_s'] / ceiling[1024]:5.0%} of in-process batch 1024 | errors {r['errors']}",
                              flush=True)

    def pick(batching, particles, binary, clients):
        return next(r for r in rows if (r["batching"], r["particles"], r["binary"], r["clients"]) ==
                    (batching, particles, binary, clients))

    best_binary = max(pick(True, 1024, True, c)["particles_s"] for c in map(int, args.clients.split(",")))
    on, off = pick(True, 1, True, top)["particles_s"], pick(False, 1, True, top)["particles_s"]
    print(f"binary 1024-particle requests, best over client counts: {best_binary:,.0f} particles/s = "
          f"{best_binary / ceiling[1024]:.0%} of in-process ({ceiling[1024]:,.0f})")
    print(f"single-particle binary requests at {top} clients: batching on {on:,.0f} vs off {off:,.0f} particles/s "
          f"= {on / off:.2f}x (in-process bound: batch {top} / batch 1 = {ceiling[top] / ceiling[1]:.2f}x)")


if __name__ == "__main__":
    main()
