"""Score training runs on the same held-out reference set and print a markdown table: mean WS,
floor, model / floor, calibration against the ceiling (a perfect simulator's), spread bias per class.

    python bench/compare_runs.py --data data/heldout.root runs/sdi runs/none runs/sdi-relative
"""

import argparse
import json
from pathlib import Path

from training.evaluate import evaluate_particles, load_particles
from zdc_sim import atomic
from zdc_sim.simulator import Simulator


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders (their best.safetensors) or checkpoint files")
    parser.add_argument("--data", required=True, help="held-out reference file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the reports to this JSON file")
    args = parser.parse_args()
    feats, pdg, channels = load_particles(args.data)
    reports, ceiling = {}, None
    for run in args.runs:
        path = Path(run) / "best.safetensors" if Path(run).is_dir() else Path(run)
        sim = Simulator.load(path)
        report = evaluate_particles(sim, feats, pdg, channels, seed=args.seed, ceiling=ceiling is None)
        ceiling = report.get("calibration_ceiling", ceiling)
        t = sim.metadata["training"]
        report.update(run=str(run), regularizer=t["regularizer"], sdi_weighting=t.get("sdi_weighting", t.get("sdi_weight")), lam=t["lam"],
                      epoch=sim.metadata.get("epoch"), epochs=t["epochs"])
        reports[str(run)] = report
    print(f"{len(feats)} held-out particles x {channels.shape[1]} repeats ({args.data}); "
          f"calibration ceiling {ceiling:.3f}")
    print("| run | regularizer | best epoch | mean WS | floor | WS / floor | calibration (of ceiling) "
          "| bias hadronic | bias EM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports.values():
        name = r["regularizer"] + (f" ({r['sdi_weighting']}, lambda {r['lam']})" if r["regularizer"] != "none" else "")
        print(f"| {r['run']} | {name} | {r['epoch']}/{r['epochs']} | {r['ws_mean']:.0f} | {r['ws_floor']:.0f} "
              f"| {r['ratio_to_floor']:.2f} | {r['calibration']:.3f} ({100 * r['calibration'] / ceiling:.0f} %) "
              f"| {r['spread_bias']['hadronic']:+.2f} | {r['spread_bias']['electromagnetic']:+.2f} |")
    if args.json:
        atomic.write_text(args.json, json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
