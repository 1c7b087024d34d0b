"""Probe: does the training's validation rank runs as the held-out set does?

For each run directory given, reads the validation ratio of the epoch the training kept (stored in
best.safetensors's metadata) and the held-out ratio in its evaluation.json, and
prints both and their Spearman correlation. Only runs scored on the same held-out file count.
A probe for docs/fidelity.md ("Seeds 3 and 4 of `shape_zoom`"):

    python bench/validation_rank.py runs/compare/*-[0-9] runs/zoom/zoom*-[0-9]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr

from zdc_sim import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with best.safetensors and evaluation.json")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        evaluation = json.loads((run / "evaluation.json").read_text())
        _, metadata = checkpoint.load(run / "best.safetensors")
        rows.append((run, metadata["validation"]["ratio_to_floor"], evaluation["ratio_to_floor"], evaluation["data"]))
    held_out = {data for *_, data in rows}
    if len(held_out) != 1:
        raise SystemExit(f"the runs were scored on different held-out sets: {sorted(held_out)}; expected one")
    for run, validation, ratio, _ in rows:
        print(f"{str(run):28s} validation {validation:.2f}  held-out {ratio:.2f}")
    result = spearmanr([r[1] for r in rows], [r[2] for r in rows])
    print(f"{len(rows)} runs on {held_out.pop()}: Spearman {result.statistic:.2f} (p {result.pvalue:.2f})")


if __name__ == "__main__":
    main()
