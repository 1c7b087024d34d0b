"""Reading and writing throughput of zdc_sim.rootio against plain uproot on the same data.

    python bench/rootio.py [--particles 5000] [--repeats 3]

zdc_sim.rootio adds validation (finite, physical features, response shape), atomic rename and basket
buffering on top of uproot; this shows what that costs. MB/s counts uncompressed branch bytes.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import uproot

from harness import median_seconds

from zdc_sim import reference, rootio


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--particles", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    args = parser.parse_args()

    chunks = list(reference.generate(args.particles, 4, seed=1))
    parts = [c.parts() for c in chunks]
    branch_chunks = [rootio.flatten_parts(p) for p in parts]
    entries = sum(len(c.pdg) for c in chunks)
    megabytes = sum(v.nbytes for c in branch_chunks for v in c.values()) / 1e6
    types = rootio.dataset_branch_types()

    with tempfile.TemporaryDirectory() as tmp:
        ours, plain = Path(tmp) / "ours.root", Path(tmp) / "plain.root"

        def write_ours():
            rootio.write_dataset(ours, parts)

        def write_plain():
            # Plain uproot with the same basket size as zdc_sim.rootio (one extend of all entries
            # buffered to WRITE_BASKET_ENTRIES), no validation, no atomic rename.
            with uproot.recreate(plain) as f:
                tree = f.mktree("zdc", types)
                merged = {k: np.concatenate([c[k] for c in branch_chunks]) for k in types}
                for start in range(0, entries, rootio.WRITE_BASKET_ENTRIES):
                    tree.extend({k: v[start : start + rootio.WRITE_BASKET_ENTRIES] for k, v in merged.items()})

        def read_ours():
            for _ in rootio.iterate(ours):
                pass

        def read_plain():
            with uproot.open(plain) as f:
                for _ in f["zdc"].iterate(list(types), step_size=rootio.READ_STEP_ENTRIES, library="np"):
                    pass

        rows = [("write", "zdc_sim.rootio", write_ours), ("write", "plain uproot", write_plain),
                ("read", "zdc_sim.rootio", read_ours), ("read", "plain uproot", read_plain)]
        results = {}
        write_ours()
        print(f"{entries} entries, {megabytes:.0f} MB uncompressed, {ours.stat().st_size / 1e6:.0f} MB written "
              f"({rootio.DATASET_COMPRESSION}); median of {args.repeats} runs")
        print(f"{'op':<6} {'library':<14} {'entries/s':>12} {'MB/s':>8}")
        for op, name, fn in rows:
            fn()  # warm-up (imports, page cache)
            seconds = median_seconds(fn, args.repeats)
            results[(op, name)] = seconds
            print(f"{op:<6} {name:<14} {entries / seconds:>12,.0f} {megabytes / seconds:>8.1f}")
        for op in ("write", "read"):
            ratio = results[(op, "plain uproot")] / results[(op, "zdc_sim.rootio")]
            print(f"{op}: zdc_sim.rootio runs at {100 * ratio:.0f} % of plain uproot's speed")
        print(f"file size: {ours.stat().st_size / 1e6:.1f} MB (zdc_sim.rootio), {plain.stat().st_size / 1e6:.1f} MB (plain)")


if __name__ == "__main__":
    main()
