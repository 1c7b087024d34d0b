"""The regularizer comparison's table (docs/regularizers.md) from its runs' records: each run folder
holds best.safetensors (whose metadata names the regularizer, its weight and seed), metrics.jsonl
(the seconds of each epoch), refit.safetensors (the scored model: best.safetensors with its
intensity factors refitted on every training particle; absent, best.safetensors is the scored
one) and evaluation.json (the last line of `zdc-sim evaluate --json` on the common held-out set,
compared with a reference run by `--compare`). `make compare-regularizers` writes these and calls
this script; runs not finished yet are listed as missing, not skipped. With `--mapped` it reads
mapped.safetensors and evaluation_mapped.json instead: the same runs with their tower share map
fitted (`make compare-regularizers-mapped`).

    python bench/regularizer_table.py [--mapped] runs/compare/sdi-1 runs/compare/none-1 ...
"""

import argparse
import json
from pathlib import Path

from training.config import TrainConfig
from zdc_sim import checkpoint


def _run(folder: Path, mapped: bool = False) -> dict | None:
    evaluation = folder / ("evaluation_mapped.json" if mapped else "evaluation.json")
    if not evaluation.is_file():
        return None
    report = json.loads(evaluation.read_text().strip().splitlines()[-1])
    scored = folder / ("mapped.safetensors" if mapped else "refit.safetensors")
    _, metadata = checkpoint.load(scored if scored.is_file() else folder / "best.safetensors")
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report.update(training=metadata["training"], best_epoch=metadata.get("epoch"),
                  intensity=(metadata.get("intensity_factor", 1.0), metadata.get("em_intensity_factor", 1.0)),
                  minutes=sum(e["seconds"] for e in epochs) / 60, epochs_run=len(epochs))
    return report


def _n(value, fmt="{:.2f}") -> str:
    """A figure, or "n/a" where the evaluation could not measure it (too few showers of a class)."""
    return "n/a" if value is None or value != value else fmt.format(value)


def _f(values, fmt="{:.2f}") -> str:
    return " / ".join(_n(v, fmt) for v in values)


def _reference(checkpoint_name: str) -> str:
    """A run folder's name for its best.safetensors; 'shipped zn' for a shipped model's name."""
    path = Path(checkpoint_name)
    return path.parent.name if path.suffix == ".safetensors" else f"shipped {checkpoint_name}"


def row(name: str, r: dict, ceiling: float | None) -> str:
    weight = TrainConfig(**r["training"]).weight
    c = r.get("comparison")
    paired = (f"{_reference(c['checkpoint'])}: {c['ratio_difference']:+.2f} ({c['ratio_interval'][0]:+.2f} to "
              f"{c['ratio_interval'][1]:+.2f})" if c else "")
    return (f"| {name} | {weight:g} | {r['best_epoch']}/{r['epochs_run']} | {_f(r['intensity'], '{:.3f}')} "
            f"| {r['minutes']:.0f} "
            f"| {_scores(r, ceiling, paired, bold=True)} |")


def _scores(r: dict, ceiling: float | None, paired: str = "", bold: bool = False) -> str:
    """The cells from the ratio on: the same for a run and for the perfect simulator."""
    classes = [r["by_class"].get(c, {}).get("ratio_to_floor") for c in ("hadronic", "electromagnetic")]
    ratio = f"**{r['ratio_to_floor']:.2f}**" if bold else f"{r['ratio_to_floor']:.2f}"
    lo, hi = r.get("ratio_interval", (float("nan"),) * 2)
    calibration = f"{r['calibration']:.3f}" + (f" ({100 * r['calibration'] / ceiling:.0f} %)" if ceiling else "")
    total_error = _n(100 * r["em_total_error"], "{:.1f} %") if "em_total_error" in r else "n/a"
    return (f"{ratio} ({lo:.2f}-{hi:.2f}) | {paired} | {_f(r['ratio_channels'])} | {_f(classes)} "
            f"| {r['systematic']['mean_photons']:.0f} | {calibration} "
            f"| {_f([r['spread_bias']['hadronic'], r['spread_bias']['electromagnetic']], '{:+.2f}')} | {total_error}")


def table(folders: list[Path], mapped: bool = False) -> str:
    runs = {f.name: _run(f, mapped) for f in folders}
    done = {name: r for name, r in runs.items() if r is not None}
    ceiling_report = next((r for r in done.values() if "ceiling" in r), None)
    ceiling = ceiling_report["calibration_ceiling"] if ceiling_report else None
    lines = ["| run (regularizer-seed) | lambda | best epoch | intensity (all / EM) | minutes of training steps "
             "| WS / floor (90 %) "
             "| minus the run named (paired, 90 %) | channels 1-5 | hadronic / EM "
             "| systematic WS (photons) | calibration (of ceiling) | spread bias hadronic / EM | EM total error |",
             "|" + "---|" * 13]
    for name, r in runs.items():
        lines.append(row(name, r, ceiling) if r else f"| {name} | not run yet |" + " |" * 11)
    if ceiling_report:
        lines.append(f"| perfect simulator | | | | | {_scores(ceiling_report['ceiling'], None)} |")
    first = next(iter(done.values()), None)
    if first:
        lines.insert(0, f"{first['particles']:,} held-out particles x {first['repeats']} repeats ({first['data']})\n")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--mapped", action="store_true", help="score the runs with their tower share map")
    args = parser.parse_args()
    print(table(args.runs, args.mapped))


if __name__ == "__main__":
    main()
