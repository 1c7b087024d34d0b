"""The `zdc-sim` command. Every user error is reported as one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import ZdcError


def _data_generate(args) -> None:
    from tqdm import tqdm

    from . import io, reference

    def chunks():
        with tqdm(total=args.particles, unit="particle", desc="simulating", disable=args.quiet) as bar:
            for chunk in reference.generate(args.particles, args.repeats, args.seed):
                yield {io.FEATURES: chunk.features, io.PDG: chunk.pdg,
                       io.PARTICLE_ID: chunk.particle_id, io.RESPONSE: chunk.response}
                bar.update(len(chunk.pdg) // args.repeats)

    provenance = {"generator": "zdc_sim.reference", "code_version": __version__, "seed": args.seed,
                  "particles": args.particles, "repeats": args.repeats}
    entries = io.write_dataset(args.out, chunks(), provenance=provenance)
    print(f"wrote {entries} entries ({args.particles} particles x {args.repeats} repeats) to {args.out}")


def _schema(args):
    from . import io

    return io.Schema.from_file(args.branch_map) if args.branch_map else io.Schema()


def _data_inspect(args) -> None:
    from .summary import format_summary, summarize

    summary = summarize(args.path, _schema(args))
    print(json.dumps(summary) if args.json else format_summary(summary))


def _data_convert(args) -> None:
    from . import io

    source = _schema(args)
    provenance = {"converted_from": str(args.path), "code_version": __version__}
    entries = io.write_dataset(args.out, io.iterate(args.path, source), provenance=provenance)
    print(f"wrote {entries} entries to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zdc-sim", description="Fast simulation of the ALICE ZN calorimeter.")
    parser.add_argument("--version", action="version", version=f"zdc-sim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate, inspect and convert datasets").add_subparsers(dest="action", required=True)
    gen = data.add_parser("generate", help="simulate a dataset with the reference Monte Carlo")
    gen.add_argument("--particles", type=int, required=True, help="distinct particles")
    gen.add_argument("--repeats", type=int, default=4, help="independent simulations of each particle")
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--out", required=True, help="output ROOT file (written atomically)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(run=_data_generate)

    ins = data.add_parser("inspect", help="print the statistics of a dataset")
    ins.add_argument("path")
    ins.add_argument("--branch-map", help="JSON file: {'tree': ..., 'branches': {column: branch}}")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.set_defaults(run=_data_inspect)

    conv = data.add_parser("convert", help="rewrite a file with other tree or branch names in the standard schema")
    conv.add_argument("path")
    conv.add_argument("--branch-map", required=True, help="JSON file: {'tree': ..., 'branches': {column: branch}}")
    conv.add_argument("--out", required=True)
    conv.set_defaults(run=_data_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ZdcError, ValueError) as exc:
        print(f"zdc-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
