"""The `zdc-sim` command. Every user error is reported as one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from . import __version__
from .errors import ZdcError


def _data_generate(args) -> None:
    from tqdm import tqdm

    from . import rootio, reference

    def chunks():
        with tqdm(total=args.particles, unit="particle", desc="simulating", disable=args.quiet) as bar:
            for chunk in reference.generate(args.particles, args.repeats, args.seed, reaching=args.reaching):
                yield chunk.parts()
                bar.update(len(chunk.pdg) // args.repeats)

    provenance = {"generator": "zdc_sim.reference", "code_version": __version__, "seed": args.seed,
                  "particles": args.particles, "repeats": args.repeats, "reaching": args.reaching}
    entries = rootio.write_dataset(args.out, chunks(), provenance=provenance)
    which = f" reaching the {args.reaching.upper()}" if args.reaching else ""
    print(f"wrote {entries} entries ({args.particles} particles{which} x {args.repeats} repeats; ZN and ZP "
          f"responses) to {args.out}")


def _schema(args):
    from . import rootio

    return rootio.Schema.from_file(args.branch_map) if args.branch_map else rootio.Schema()


def _data_inspect(args) -> None:
    from .summary import detectors_in, format_summary, summarize

    schema = _schema(args)
    summaries = [summarize(args.path, schema, d) for d in detectors_in(args.path, schema)]
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else {s["detector"]: s for s in summaries}))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))


def _data_convert(args) -> None:
    from . import rootio

    source = _schema(args)
    provenance = {"converted_from": str(args.path), "code_version": __version__}
    from .summary import detectors_in

    parts = (rootio.FEATURES, rootio.PDG, rootio.PARTICLE_ID,
             *(rootio.response_part(d) for d in detectors_in(args.path, source)))
    entries = rootio.write_dataset(args.out, rootio.iterate(args.path, source, parts=parts), provenance=provenance)
    print(f"wrote {entries} entries to {args.out}")


def _train(args) -> None:
    # The training job lives in the `training` package; imported here only, so the library
    # itself never depends on it.
    from training.config import TrainConfig
    from training.loop import train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if args.regularizer_options:
        overrides["regularizer_options"] = dict(_key_value(o) for o in args.regularizer_options)
    config = TrainConfig.build(args.config, **overrides)
    last = Path(config.out) / "last.safetensors"
    if last.exists() and not args.resume:
        raise ZdcError(f"run folder '{config.out}' already holds a training state ({last}); "
                       "expected --resume to continue it, or a new --out")
    if args.resume and not last.exists():
        raise ZdcError(f"--resume: no training state '{last}' to continue; expected a run folder of an earlier run")
    best = train(config, progress_bar=not args.quiet)
    print(f"best checkpoint: {best}")


# Help of the training flags that say more than the field's name; every field of TrainConfig is a flag.
TRAIN_HELP = {
    "data": "training ROOT file", "out": "run folder: best.safetensors, last.safetensors, metrics.jsonl, plots",
    "val_data": "held-out ROOT file (default: a share of --data)", "model": "model size: tiny, small, base, large",
    "model_options": "JSON object of ModelConfig fields over the size's, e.g. '{\"halo\": true}'",
    "regularizer": "sdi, ms, dp, ndiv, iid, or none (the plain conditional GAN)",
    "lam": "weight of the regularizer (default: its published one)",
    "sdi_weighting": "absolute (published), relative or channels spread weights", "sdi_space": "image or embedding",
    "energy_score": "weight of the channel energy score", "energy_score_image": "weight of the pooled-image energy score",
    "ema": "decay of the generator's moving average (0: none)", "device": "auto, cpu, cuda or cuda:N",
    "threads": "torch CPU threads", "checkpoint_every": "save the resumable state every N steps",
    "detector": "the calorimeter to learn: zn or zp", "max_entries": "read at most N entries of --data", "prefit_steps": "optimizer steps of the total heads' pre-fit",
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}; expected true or false")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--lambda for lam; --regularizer-option KEY=VALUE, repeatable,
    for regularizer_options), typed from the field's annotation; unset flags leave the config file's
    value or the field's default."""
    from training.config import TrainConfig

    kinds = {"int": int, "float": float, "str": str, "bool": _parse_bool, "dict": json.loads}
    for f in fields(TrainConfig):
        if f.name == "regularizer_options":
            parser.add_argument("--regularizer-option", dest="regularizer_options", action="append",
                                metavar="KEY=VALUE", help="a hyper-parameter of the regularizer, e.g. alpha=0.9 (repeatable)")
            continue
        flag = "--lambda" if f.name == "lam" else "--" + f.name.replace("_", "-")
        kind = kinds[str(f.type).split(" | ")[0]]
        default = f" (default {f.default!r})" if f.default not in (MISSING, None) else ""
        parser.add_argument(flag, dest=f.name, type=kind, help=TRAIN_HELP.get(f.name, f.name.replace("_", " ")) + default)


def _key_value(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        return key, float(value)
    except ValueError:
        raise ZdcError(f"--regularizer-option {text!r}; expected KEY=NUMBER, e.g. alpha=0.9") from None


def _evaluate(args) -> None:
    from training.evaluate import evaluate_file, format_report

    from .simulator import Simulator

    simulator = Simulator.load(args.checkpoint, device=args.device)
    compare = Simulator.load(args.compare, device=args.device) if args.compare else None
    report = evaluate_file(simulator, args.data, max_particles=args.max_particles, samples=args.samples,
                           seed=args.seed, ceiling=args.ceiling, schema=_schema(args), bootstrap=args.bootstrap,
                           plots=args.plots, compare=compare)
    report["checkpoint"] = str(args.checkpoint) if args.checkpoint else "default model"
    if compare is not None:
        report["comparison"]["checkpoint"] = str(args.compare)
    print(format_report(report))
    if args.json:
        print(json.dumps(report))


def _refit_intensity(args) -> None:
    from training.calibrate import refit_checkpoint_intensity
    from training.data import load

    from . import checkpoint

    detector = checkpoint.load(args.checkpoint)[1]["model"]["detector"]
    data = load(args.data, images=False, detector=detector)
    record = refit_checkpoint_intensity(args.checkpoint, data, args.data, out=args.out)
    print(f"intensity factor x {record['factor']:.3f} (now {record['intensity_after']:.4f}), electromagnetic "
          f"x {record['em_factor']:.3f} on top (now {record['em_intensity_after']:.4f}), fitted on "
          f"{record['particles']} particles of {args.data}; wrote {args.out or args.checkpoint}")


def _refit_share_map(args) -> None:
    from training.calibrate import refit_checkpoint_share_map
    from training.data import load

    from . import checkpoint, geometry
    from .simulator import default_model_path

    shipped = args.checkpoint.lower() in geometry.DETECTORS
    if shipped and not args.out:
        raise ZdcError(f"--checkpoint {args.checkpoint} names an installed shipped model; expected --out, so the "
                       "package's own file is not rewritten")
    path = default_model_path(args.checkpoint) if shipped else args.checkpoint
    detector = checkpoint.load(path)[1]["model"]["detector"]
    data = load(args.data, images=False, detector=detector)
    record = refit_checkpoint_share_map(path, data, args.data, out=args.out, edge_total_map=args.edge_total_map or None)
    edge = f", edge total map {record['edge_bins_fitted']} bins of class x position" if "edge_bins_fitted" in record else ""
    print(f"tower share map fitted on {record['particles']} particles x {record['samples']} samples of {args.data} "
          f"({record['bins_fitted']} bins of class x split x position x fraction{edge}); wrote {args.out or path}")


def _bench_regularizers(args) -> None:
    from training.benchmark import METHODS, BenchPlan, run

    plan = BenchPlan.quick() if args.quick else BenchPlan()
    if args.seeds is not None:
        if args.seeds < 1:
            raise ZdcError(f"--seeds is {args.seeds}; expected >= 1")
        plan = BenchPlan(**{**plan.__dict__, "seeds": args.seeds})
    methods = args.methods.split(",") if args.methods else METHODS
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ZdcError(f"--methods: unknown {unknown}; expected names among {list(METHODS)}")
    run(Path(args.out), plan, methods, workers=args.workers, progress=not args.quiet)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.md, results.json and regularizers.png")


def _export(args) -> None:
    import dataclasses

    from . import export

    schema = _schema(args)
    if args.tree:
        schema = dataclasses.replace(schema, tree=args.tree)
    options = dict(seed=args.seed, chunk_size=args.chunk_size, schema=schema, tree=schema.tree,
                   channels_only=args.channels_only, resume=args.resume,
                   compression=args.compression or export.EXPORT_COMPRESSION)
    out = Path(args.out)
    checkpoints = _export_checkpoints(args)
    if len(args.inputs) == 1 and not out.is_dir():
        simulators = export.load_simulators(checkpoints, device=args.device, engine=args.engine)
        result = export.export_file(args.inputs[0], out, simulators, progress=not args.quiet, **options)
        print(f"wrote {result.entries} entries to {result.output} in {result.seconds:.1f} s "
              f"({result.particles_per_second:,.0f} particles/s)" +
              (f"; resumed after entry {result.resumed_from}" if result.resumed_from else "") +
              (f"; {result.out_of_domain} particles outside the model's trained feature ranges (simulated, flagged "
               f"in the branches '{export.OUT_OF_DOMAIN}_<detector>')" if result.out_of_domain else ""))
        return
    rows = export.export_many(args.inputs, out, checkpoints=checkpoints, device=args.device, engine=args.engine,
                              scheduler=args.scheduler, workers=args.workers, **options)
    print(export.format_summary(rows))
    if not all(r["ok"] for r in rows):
        raise ZdcError(f"{sum(not r['ok'] for r in rows)} of {len(rows)} inputs failed (see the summary above)")


def _detectors(text: str) -> list[str]:
    from . import geometry

    names = [geometry.detector(name.strip()).name for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise ZdcError(f"--detectors {text!r}; expected distinct names among zn, zp, e.g. zn,zp")
    return names


def _export_checkpoints(args) -> list[str]:
    """One model source per detector of --detectors: the shipped one, or a --checkpoint for it."""
    from . import checkpoint

    sources = {name: name for name in _detectors(args.detectors)}
    for path in args.checkpoint or []:
        detector = checkpoint.load(path)[1].get("model", {}).get("detector", "zn")
        if detector not in sources:
            raise ZdcError(f"--checkpoint {path} simulates the {detector.upper()}, which --detectors "
                           f"{args.detectors} leaves out; expected a model of one of {sorted(sources)}")
        sources[detector] = path
    return list(sources.values())


def _serve(args) -> None:
    from service import Settings, serve

    settings = Settings.from_env(checkpoint=args.checkpoint, device=args.device, host=args.host, port=args.port,
                                 max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                                 max_particles_per_request=args.max_particles, threads=args.threads,
                                 dynamic_batching=False if args.no_batching else None, bf16=args.bf16 or None,
                                 compile=args.compile or None, engine=args.engine, zp_checkpoint=args.zp_checkpoint)
    serve(settings, log_level=args.log_level)


def _model_export(args) -> None:
    from .exports import onnx, triton
    from .simulator import Simulator

    simulator = Simulator.load(args.checkpoint or args.detector, device="cpu")
    if args.checkpoint and args.detector not in (None, simulator.detector.name):
        raise ZdcError(f"--detector {args.detector}: the checkpoint {args.checkpoint} simulates the "
                       f"{simulator.detector.name.upper()}; expected a {args.detector.upper()} model (or no --detector)")
    if args.format == "o2":
        from .exports.o2 import export_o2

        for path in export_o2(simulator, args.out):
            print(f"wrote {path}")
        return
    if args.format == "onnx":
        path = onnx.write_onnx(simulator, args.out)
        print(f"wrote {path} (model version {simulator.model_version}; inputs "
              f"{', '.join(onnx.input_names(simulator.generator.config.photon_noise))}; outputs RESPONSES, CHANNELS; "
              f"{simulator.detector.name.upper()})")
        return
    repository = triton.write_triton_repository(simulator, args.out, args.max_batch_size)
    print(f"wrote the Triton model repository {repository.parent} (model '{repository.name}', "
          f"version {simulator.model_version}); start it with\n"
          f"  docker run --gpus all -p 8000:8000 -v {Path(args.out).resolve()}:/models "
          f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Options several commands share, defined once (argparse parents)."""
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bar")
    branch_map = argparse.ArgumentParser(add_help=False)
    branch_map.add_argument("--branch-map", help="JSON file: {'tree': ..., 'branches': {column: branch}}")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--checkpoint", help="checkpoint file, or zn / zp for a shipped model (default: the shipped "
                       "ZN model); the checkpoint says which detector it simulates")
    model.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return {"quiet": quiet, "branch_map": branch_map, "model": model}


def build_parser() -> argparse.ArgumentParser:
    shared = _parents()
    parser = argparse.ArgumentParser(prog="zdc-sim", description="Fast simulation of the ALICE ZDC calorimeters (ZN, ZP).")
    parser.add_argument("--version", action="version", version=f"zdc-sim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate, inspect and convert datasets").add_subparsers(dest="action", required=True)
    gen = data.add_parser("generate", help="simulate a dataset with the reference Monte Carlo", parents=[shared["quiet"]])
    gen.add_argument("--particles", type=int, required=True, help="distinct particles")
    gen.add_argument("--repeats", type=int, default=4, help="independent simulations of each particle")
    gen.add_argument("--seed", type=int, required=True)
    gen.add_argument("--out", required=True, help="output ROOT file (written atomically)")
    gen.add_argument("--reaching", choices=["zn", "zp"], help="keep only particles that reach this detector "
                     "(both detectors' responses are written either way)")
    gen.set_defaults(run=_data_generate)

    ins = data.add_parser("inspect", help="print the statistics of a dataset", parents=[shared["branch_map"]])
    ins.add_argument("path")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.set_defaults(run=_data_inspect)

    conv = data.add_parser("convert", help="rewrite a file with other tree or branch names in the standard schema")
    conv.add_argument("path")
    conv.add_argument("--branch-map", required=True, help="JSON file: {'tree': ..., 'branches': {column: branch}}")
    conv.add_argument("--out", required=True)
    conv.set_defaults(run=_data_convert)

    tr = commands.add_parser("train", help="train a generator on a ROOT dataset (torchrun for several processes)",
                             parents=[shared["quiet"]])
    tr.add_argument("--config", help="JSON file of training.config.TrainConfig fields; flags override it")
    _add_train_flags(tr)
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last state")
    tr.set_defaults(run=_train)

    ev = commands.add_parser("evaluate", help="score a model on a dataset with the metrics protocol",
                             parents=[shared["model"], shared["branch_map"]])
    ev.add_argument("--data", required=True, help="ROOT file with K >= 2 repeats per particle")
    ev.add_argument("--samples", type=int, default=10, help="generated samples per particle (M)")
    ev.add_argument("--max-particles", dest="max_particles", type=int, help="evaluate the first N particles only")
    ev.add_argument("--seed", type=int, default=0, help="seed of the generated samples")
    ev.add_argument("--ceiling", action="store_true",
                    help="also score fresh reference Monte Carlo repeats (reference data only)")
    ev.add_argument("--bootstrap", type=int, default=200,
                    help="resamples of the particles for the interval of the mean ratio (0: none)")
    ev.add_argument("--plots", metavar="DIR", help="also draw channel histograms per class, spreads, mean responses")
    ev.add_argument("--compare", metavar="CHECKPOINT", help="a second model of the same detector: scored on the "
                    "same particles, the difference with a paired bootstrap")
    ev.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    ev.set_defaults(run=_evaluate)

    ri = commands.add_parser("refit-intensity", help="refit a trained checkpoint's intensity factors (common and "
                             "electromagnetic) on every particle of its training file (training/calibrate.py)")
    ri.add_argument("--checkpoint", required=True, help="checkpoint written by zdc-sim train")
    ri.add_argument("--data", required=True, help="the ROOT file it was trained on")
    ri.add_argument("--out", help="where to write the refitted checkpoint (default: in place)")
    ri.set_defaults(run=_refit_intensity)

    rs = commands.add_parser("refit-share-map", help="fit a checkpoint's tower share map (zdc_sim/share_map.py) "
                             "on every particle of its training file")
    rs.add_argument("--checkpoint", required=True, help="checkpoint written by zdc-sim train or refit-intensity, "
                    "or zn / zp for a shipped model")
    rs.add_argument("--data", required=True, help="the ROOT file it was trained on")
    rs.add_argument("--out", help="where to write the checkpoint with the map (default: in place)")
    rs.add_argument("--edge-total-map", action="store_true", help="also fit the edge total map (the ZP's: showers "
                    "cut by the face's x edges); without it, a checkpoint that has one keeps it")
    rs.set_defaults(run=_refit_share_map)

    ex = commands.add_parser("export", help="simulate the particles of ROOT files into ROOT files of responses",
                             parents=[shared["branch_map"], shared["quiet"]])
    ex.add_argument("inputs", nargs="+", metavar="INPUT", help="ROOT files with the 9 particle feature branches")
    ex.add_argument("--detectors", default="zn,zp", help="comma-separated detectors to simulate (default zn,zp: "
                    "branches response_zn, channels_zn, ... and response_zp, channels_zp, ...)")
    ex.add_argument("--checkpoint", action="append", help="a checkpoint replacing the shipped model of the detector "
                    "it simulates (repeatable: one per detector)")
    ex.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ex.add_argument("--out", required=True, help="output file (one input) or folder (<stem>.zdcsim.root per input)")
    ex.add_argument("--seed", type=int, help="same seed, same output (default: random, recorded in the provenance)")
    ex.add_argument("--engine", default="torch", choices=["torch", "onnxruntime", "auto"],
                    help="torch (CPU or CUDA), onnxruntime (CPU) or auto (onnxruntime on CPU)")
    ex.add_argument("--chunk-size", dest="chunk_size", type=int, default=8192, help="particles per chunk")
    ex.add_argument("--tree", help="tree of the input (default 'zdc' or the branch map's); the output uses the same name")
    ex.add_argument("--channels-only", dest="channels_only", action="store_true", help="no response branch")
    ex.add_argument("--resume", action="store_true", help="continue an interrupted export from its last complete chunk")
    ex.add_argument("--compression",
                    help="none (default: simulated responses barely compress) or zlib|lzma|lz4|zstd:LEVEL, e.g. zstd:1")
    ex.add_argument("--scheduler", help="Dask scheduler address (several inputs; default: a local cluster)")
    ex.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster")
    ex.set_defaults(run=_export)

    srv = commands.add_parser("serve", help="serve a model over HTTP (native API and Open Inference Protocol v2)")
    srv.add_argument("--host", help="default 127.0.0.1 (ZDC_SIM_HOST); 0.0.0.0 to listen on all interfaces")
    srv.add_argument("--port", type=int, help="default 8000 (ZDC_SIM_PORT)")
    srv.add_argument("--checkpoint", help="ZN checkpoint file (default: the shipped ZN model; ZDC_SIM_CHECKPOINT)")
    srv.add_argument("--zp-checkpoint", dest="zp_checkpoint", help="ZP checkpoint file (default: the shipped ZP "
                     "model; 'none' serves the ZN only; ZDC_SIM_ZP_CHECKPOINT)")
    srv.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N (ZDC_SIM_DEVICE)")
    srv.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA (ZDC_SIM_BF16)")
    srv.add_argument("--engine", choices=["torch", "onnxruntime", "auto"],
                     help="default torch (faster at served batch sizes); onnxruntime: CPU, faster for single "
                          "particles; auto: onnxruntime on CPU in fp32 (ZDC_SIM_ENGINE)")
    srv.add_argument("--compile", action="store_true", help="torch.compile fixed batch buckets at warm-up (ZDC_SIM_COMPILE)")
    srv.add_argument("--max-batch-size", dest="max_batch_size", type=int, help="particles per forward pass")
    srv.add_argument("--max-queue-delay-ms", dest="max_queue_delay_ms", type=float, help="batching wait")
    srv.add_argument("--max-particles", dest="max_particles", type=int, help="particles per request (413 above)")
    srv.add_argument("--no-batching", dest="no_batching", action="store_true", help="disable dynamic batching")
    srv.add_argument("--threads", type=int, help="torch CPU threads")
    srv.add_argument("--log-level", dest="log_level", default="info")
    srv.set_defaults(run=_serve)

    model = commands.add_parser("model", help="the model outside this process").add_subparsers(dest="action", required=True)
    mex = model.add_parser("export", help="write a model as one ONNX file, a Triton model repository, or the "
                           "files ALICE O2's ZDC fast simulation loads")
    mex.add_argument("checkpoint", nargs="?", help="checkpoint file (default: the shipped model of --detector)")
    mex.add_argument("--detector", choices=["zn", "zp"], help="the shipped model to export (default zn)")
    mex.add_argument("--format", choices=["onnx", "triton", "o2"], default="onnx")
    mex.add_argument("--out", required=True, help="output folder (created if missing)")
    mex.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=4096, help="Triton's max_batch_size")
    mex.set_defaults(run=_model_export)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(dest="action", required=True)
    regs = bench.add_parser("regularizers", help="compare the diversity regularizers on synthetic and ZDC data")
    regs.add_argument("--quick", action="store_true", help="a minute-long smoke run (1 seed, tiny budgets)")
    regs.add_argument("--out", default="bench/out/regularizers", help="output folder")
    regs.add_argument("--seeds", type=int, help="seeds per method and benchmark (default 3, quick 1)")
    regs.add_argument("--methods", help="comma-separated subset of none,sdi,ms,dp,ndiv,iid")
    regs.add_argument("--workers", type=int, default=1, help="runs in parallel (one CPU thread each)")
    regs.add_argument("--quiet", action="store_true")
    regs.set_defaults(run=_bench_regularizers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ZdcError as exc:  # what a user can cause; anything else is a bug and shows its traceback
        print(f"zdc-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
