"""Batch export end to end: particles/s beside the in-process Simulator and plain uproot writing,
and the peak memory (RSS) of the export process for 1e5 and 1e6 particles.

    python bench/export.py [--sizes 100000,1000000] [--out bench/out/export] [--device cpu] [--compression none]

Each export runs in its own process (`zdc-sim export ... --seed 1`), so its peak RSS is its own.
Outputs are deleted after measuring (1e6 responses are 7.7 GB).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import uproot

from harness import rate_for

from zdc_sim import export, features, reference, rootio
from zdc_sim.simulator import Simulator

CHUNK = export.DEFAULT_CHUNK

MEASURE = """
import json, resource, sys, time
from zdc_sim.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def particles_file(path: Path, n: int) -> Path:
    if not path.exists():
        types = {name: np.dtype(np.float32) for name in features.NAMES}
        rng = np.random.default_rng(n)
        with rootio.RootWriter(path, types) as writer:
            for start in range(0, n, 100_000):
                feats, _ = reference.sample_particles(min(100_000, n - start), rng)
                writer.write({name: feats[:, i] for i, name in enumerate(features.NAMES)})
    return path


def in_process(device: str, seconds: float = 10.0) -> tuple[float, dict[str, np.ndarray]]:
    """Particles/s of the Simulator on chunks of CHUNK, and the last chunk as the export writes it."""
    sim = Simulator.load(device=device)
    feats, _ = reference.sample_particles(CHUNK, np.random.default_rng(0))
    raw = features.validate(feats)
    rate = rate_for(lambda call: len(sim.simulate_draws(raw, sim.draws(len(raw), 1, call * len(raw))).counts),
                    seconds)
    out = sim.simulate_draws(raw, sim.draws(len(raw), 1))
    chunk = {name: raw[:, i] for i, name in enumerate(features.NAMES)}
    chunk[export.branch("response", "zn")] = out.counts
    chunk[export.branch("channels", "zn")] = out.channels
    chunk[export.branch(export.OUT_OF_DOMAIN, "zn")] = sim.outside_domain(raw)
    chunk[export.branch("reached", "zn")] = out.reached
    return rate, chunk


def plain_uproot(folder: Path, chunk: dict[str, np.ndarray], compression: str, repeats: int = 3) -> tuple[float, float]:
    """Entries/s of uproot writing one simulated chunk `repeats` times (the export's basket size),
    and the file's size as a fraction of the uncompressed bytes."""
    path = folder / "plain.root"
    started = time.perf_counter()
    with uproot.recreate(path, compression=rootio.parse_compression(compression)) as f:
        tree = f.mktree("zdc", {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in chunk.items()})
        for _ in range(repeats):
            tree.extend(chunk)
    rate = repeats * CHUNK / (time.perf_counter() - started)
    size = path.stat().st_size / (repeats * sum(v.nbytes for v in chunk.values()))
    path.unlink()
    return rate, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", default="bench/out/export")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compression", default=export.EXPORT_COMPRESSION, help="as for zdc-sim export")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    ceiling, chunk = in_process(args.device)
    print(f"in-process Simulator (chunks of {CHUNK}): {ceiling:,.0f} particles/s")
    for spec in dict.fromkeys([args.compression, "none", "zlib:1", "lz4:1", "zstd:1"]):
        rate, size = plain_uproot(folder, chunk, spec)
        print(f"plain uproot writing of the export's branches, compression {spec:>6}: {rate:8,.0f} entries/s, "
              f"file {size:.1%} of the uncompressed bytes" + ("  <- used below" if spec == args.compression else ""))
    peaks = {}
    for n in map(int, args.sizes.split(",")):
        source = particles_file(folder / f"particles-{n}.root", n)
        target = folder / f"out-{n}.root"
        run = subprocess.run([sys.executable, "-c", MEASURE, "export", str(source), "--out", str(target), "--seed", "1",
                              "--device", args.device, "--compression", args.compression, "--quiet"], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"export of {n} particles failed:\n{run.stderr}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        size_gb = target.stat().st_size / 1e9
        target.unlink()
        rate = n / result["seconds"]
        peaks[n] = result["peak_rss_mb"]
        print(f"{n:>9,} particles: {result['seconds']:7.1f} s, {rate:,.0f} particles/s = {rate / ceiling:.0%} of "
              f"in-process; output {size_gb:.2f} GB; peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
    if len(peaks) >= 2:
        small, large = min(peaks), max(peaks)
        print(f"peak memory {small:,} -> {large:,} particles: {peaks[small]:,.0f} -> {peaks[large]:,.0f} MB "
              f"({peaks[large] / peaks[small] - 1:+.0%})")


if __name__ == "__main__":
    main()
