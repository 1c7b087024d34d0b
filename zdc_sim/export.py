"""ROOT in -> ROOT out batch simulation: read the particle branches of a file in chunks, simulate
them in each detector asked for (ZN and ZP by default), write a TTree of the particles with, per
detector, the simulated responses (`response_zn` float[44][44], `response_zp` float[30][56]), the
5 channel sums (`channels_zn`, `channels_zp` float[5]) and flags. A particle outside the feature
ranges a model was trained on is simulated anyway and flagged (`out_of_domain_zn` / `_zp`; their
count in the provenance): one odd particle never fails a file. A particle that does not reach a
detector gets an empty response there (`reached_zn` / `_zp` false).

Reading, simulating and writing overlap (a reader and a writer thread around the simulating
one, joined by queues of at most two chunks, so memory stays bounded whatever the file size).
The output is written to a partial file beside it (`.NAME.partial`) that is renamed when complete;
ROOT files written by uproot are readable after every basket, so after a kill `resume=True`
copies the complete entries of the partial file and continues from there. Latents come from
`Simulator.draws(n, seed, start)`, so with a seed the output is the same whatever the chunk size
and however often the job was resumed.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import __version__, atomic, checkpoint, features, rootio
from .engines import random_seed
from .errors import ZdcError
from .geometry import N_CHANNELS
from .simulator import Simulation, Simulator

DEFAULT_CHUNK = 8192
# Generated responses are continuous floats with noisy mantissas: zlib:1 saves 3.7 % of the file at
# a tenth of the uncompressed write speed, on the cores the simulation needs (bench/export.py).
EXPORT_COMPRESSION = "none"
OUT_OF_DOMAIN = "out_of_domain"  # per entry: the particle lies outside the model's trained feature ranges
_DONE = object()


def branch(kind: str, detector: str) -> str:
    """An output branch of one detector: 'response_zn', 'channels_zp', 'out_of_domain_zn', 'reached_zp'."""
    return f"{kind}_{detector}"


def detector_seed(seed: int, detector: str) -> int:
    """The seed of one detector's draws in a multi-detector export: the ZN's is the export's seed
    itself (so a ZN export is what one Simulator gives for that seed); the ZP's another, fixed one."""
    return seed if detector == "zn" else (seed + 0x9E3779B97F4A7C15) % 2**63


@dataclass(frozen=True)
class ExportResult:
    input: str
    output: str
    entries: int
    seconds: float
    resumed_from: int = 0
    out_of_domain: int = 0  # entries outside the model's trained feature ranges (flagged, simulated anyway)

    @property
    def particles_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0


def output_branch_types(channels_only: bool, detectors=("zn",)) -> dict[str, np.dtype]:
    types = {name: np.dtype(np.float32) for name in features.NAMES}
    for det in detectors:
        if not channels_only:
            types[branch("response", det)] = rootio.response_type(det)
        types[branch("channels", det)] = np.dtype((np.float32, (N_CHANNELS,)))
        types[branch(OUT_OF_DOMAIN, det)] = np.dtype(np.bool_)
        types[branch("reached", det)] = np.dtype(np.bool_)
    return types


def _simulators(simulator) -> dict[str, Simulator]:
    """{detector: Simulator} from one Simulator or a mapping of them (distinct detectors)."""
    if isinstance(simulator, Simulator):
        return {simulator.detector.name: simulator}
    sims = dict(simulator)
    for name, sim in sims.items():
        if sim.detector.name != name:
            raise ZdcError(f"the simulator given for '{name}' simulates the {sim.detector.name.upper()}; "
                           f"expected a {name.upper()} model")
    if not sims:
        raise ZdcError("no detector to export; expected at least one simulator")
    return sims


def partial_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def _threaded(iterable, size: int = 2):
    """Iterate `iterable` in a background thread, at most `size` items ahead; re-raises its errors."""
    items: queue.Queue = queue.Queue(size)

    def produce():
        try:
            for item in iterable:
                items.put(item)
            items.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            items.put(exc)

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item = items.get()
        if item is _DONE:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def export_file(input_path, output_path, simulator, *, seed: int | None = None,
                chunk_size: int = DEFAULT_CHUNK, schema: rootio.Schema = rootio.Schema(), tree: str = rootio.TREE,
                channels_only: bool = False, resume: bool = False, progress: bool = True,
                compression: str = EXPORT_COMPRESSION,
                simulate: dict[str, Callable[[np.ndarray, np.ndarray], Simulation]] | None = None) -> ExportResult:
    """Simulate every particle of `input_path` into `output_path`. `simulator`: one Simulator, or
    {detector: Simulator} to simulate several (the ZN and the ZP). `seed` None draws one at random
    (recorded in the provenance; each detector draws from `detector_seed(seed, name)`).
    `compression` is an `rootio.parse_compression` spec. `simulate`: {detector: function(raw
    features, draws) -> Simulation} replacing the simulators' own passes (the service routes them
    through its batchers)."""
    simulators = _simulators(simulator)
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    rootio.parse_compression(compression)  # a bad spec fails before any file is touched
    if chunk_size < 1:
        raise ZdcError(f"chunk size is {chunk_size}; expected >= 1")
    if seed is None:
        seed = random_seed()  # random, but recorded in the provenance
    total = rootio.num_entries(input_path, schema)
    provenance = {"detectors": list(simulators),
                  "model_versions": {d: s.model_version for d, s in simulators.items()},
                  "model_checksums": {d: s.metadata.get("checksum") for d, s in simulators.items()}, "seed": int(seed),
                  "code_version": __version__, "input": str(input_path),
                  "input_checksum": checkpoint.file_fingerprint(input_path), "entries": total,
                  "channels_only": channels_only}
    partial = partial_path(output_path)
    manifest = partial.with_name(partial.name + ".json")
    done = _resumable_entries(partial, manifest, provenance, tree) if resume else 0
    simulate = simulate or {d: s.simulate_draws for d, s in simulators.items()}
    types = output_branch_types(channels_only, list(simulators))

    def chunks():
        for part in rootio.iterate(input_path, schema, parts=(rootio.FEATURES,), step_size=chunk_size, entry_start=done):
            yield part[rootio.FEATURES]

    carried = rootio.read_partial(partial, tree, done) if done else None
    atomic.write_text(manifest, json.dumps(provenance, sort_keys=True))
    bar = tqdm(total=total, initial=done, unit="particle", unit_scale=True, desc=input_path.name, disable=not progress)
    objects = {"provenance": json.dumps(provenance, sort_keys=True)}
    try:
        # one basket per chunk (at most io's usual size): a kill loses at most the chunk in flight
        with rootio.RootWriter(output_path, types, tree=tree, objects=objects, partial=partial, compression=compression,
                           basket_entries=min(chunk_size, rootio.WRITE_BASKET_ENTRIES)) as writer:
            outside = 0
            if carried is not None:
                writer.write(carried)
                outside = sum(int(carried[branch(OUT_OF_DOMAIN, d)].sum()) for d in simulators)
            outputs: queue.Queue = queue.Queue(2)
            writer_thread = _Writer(writer, outputs)
            writer_thread.start()
            start = done
            try:
                for raw in _threaded(chunks()):
                    row = {name: raw[:, i] for i, name in enumerate(features.NAMES)}
                    for det, sim_det in simulators.items():
                        sim = simulate[det](raw, sim_det.draws(len(raw), detector_seed(seed, det), start))
                        if not channels_only:
                            row[branch("response", det)] = sim.counts
                        row[branch("channels", det)] = sim.channels
                        row[branch(OUT_OF_DOMAIN, det)] = sim_det.outside_domain(raw)
                        row[branch("reached", det)] = sim_det.reaches(raw)
                        outside += int(row[branch(OUT_OF_DOMAIN, det)].sum())
                    outputs.put(row)
                    writer_thread.check()
                    start += len(raw)
                    bar.update(len(raw))
            finally:
                outputs.put(_DONE)
                writer_thread.join()
                bar.close()
            writer_thread.check()
            # Known only now; not part of the manifest a resume compares.
            writer.objects["provenance"] = json.dumps({**provenance, OUT_OF_DOMAIN: outside}, sort_keys=True)
    except KeyboardInterrupt:
        raise  # the partial file and its manifest stay for --resume
    except BaseException:
        manifest.unlink(missing_ok=True)  # RootWriter removed the partial file: nothing is left
        raise
    manifest.unlink(missing_ok=True)
    return ExportResult(str(input_path), str(output_path), total, time.perf_counter() - started, done, outside)


class _Writer(threading.Thread):
    """Writes chunks from a queue so that compression and disk writes overlap the simulation."""

    def __init__(self, writer: rootio.RootWriter, items: queue.Queue):
        super().__init__(daemon=True)
        self.writer, self.items, self.error = writer, items, None

    def run(self):
        while (item := self.items.get()) is not _DONE:
            if self.error is None:
                try:
                    self.writer.write(item)
                except BaseException as exc:
                    self.error = exc

    def check(self):
        if self.error is not None:
            raise self.error


def _resumable_entries(partial: Path, manifest: Path, provenance: dict, tree: str) -> int:
    """Complete entries of an earlier, interrupted export of the same input, model and seed."""
    if not partial.exists() or not manifest.exists():
        return 0
    try:
        previous = json.loads(manifest.read_text())
        if previous != provenance:
            changed = sorted(k for k in provenance if previous.get(k) != provenance[k])
            raise ZdcError(f"--resume: the partial export '{partial}' was made with other {changed}; expected the "
                           f"same input, model, seed and options (or start afresh without --resume)")
        return rootio.partial_entries(partial, tree)
    except (OSError, ValueError, KeyError) as exc:
        raise ZdcError(f"--resume: the partial export '{partial}' cannot be read ({exc}); "
                       f"expected the file an interrupted export left, or start afresh without --resume") from None


def output_name(input_path: Path, out_dir: Path) -> Path:
    return out_dir / f"{input_path.stem}.zdcsim.root"


def load_simulators(checkpoints, device: str = "cpu", engine: str = "torch") -> dict[str, Simulator]:
    """{detector: Simulator} from a list of checkpoint paths or detector names ('zn', 'zp': the
    shipped models); each checkpoint says its detector."""
    sims = {}
    for source in checkpoints:
        sim = Simulator.load(source, device=device, engine=engine)
        if sim.detector.name in sims:
            raise ZdcError(f"two models for the {sim.detector.name.upper()} ({source}); expected one per detector")
        sims[sim.detector.name] = sim
    return sims


def _export_task(input_path: str, output_path: str, checkpoints: tuple, device: str, engine: str,
                 options: dict) -> dict:
    """One input on a Dask worker (the simulators are loaded once per worker process)."""
    key = (tuple(checkpoints), device, engine)
    simulators = _WORKER_SIMULATORS.get(key)
    if simulators is None:
        simulators = _WORKER_SIMULATORS[key] = load_simulators(checkpoints, device=device, engine=engine)
    try:
        result = export_file(input_path, output_path, simulators, progress=False, **options)
        return {**asdict(result), "ok": True, "error": None}
    except ZdcError as exc:
        return {**asdict(ExportResult(input_path, output_path, 0, 0.0)), "ok": False, "error": str(exc)}


_WORKER_SIMULATORS: dict = {}


def export_many(inputs: list[str], out_dir, *, checkpoints=("zn", "zp"), device: str = "cpu", engine: str = "torch",
                scheduler: str | None = None, workers: int = 2, processes: bool = True, **options) -> list[dict]:
    """Each input to `out_dir/<stem>.zdcsim.root`, in parallel on Dask distributed: a local cluster
    of `workers` processes (threads of this process with processes=False), or the cluster at
    `scheduler`. `checkpoints`: paths or detector names, one model per detector (default: the
    shipped ZN and ZP). Returns one summary row per input; a failed input does not stop the others."""
    from dask.distributed import Client, LocalCluster

    rootio.parse_compression(options.get("compression", EXPORT_COMPRESSION))  # fails here, not once per input
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [str(output_name(Path(p), out_dir)) for p in inputs]
    if len(set(outputs)) != len(outputs):
        raise ZdcError("several inputs share a file name; expected distinct names (outputs are <stem>.zdcsim.root)")
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None)
    try:
        with Client(scheduler or cluster) as client:
            futures = client.map(_export_task, inputs, outputs, checkpoints=tuple(checkpoints), device=device, engine=engine,
                                 options=options, pure=False)
            return client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'input':<40} {'entries':>10} {'seconds':>8} {'particles/s':>12}  status"]
    for r in rows:
        rate = r["entries"] / r["seconds"] if r["seconds"] else 0.0
        status = "ok" if r["ok"] else f"FAILED: {r['error']}"
        if r.get("out_of_domain"):
            status += f" ({r['out_of_domain']} outside the trained feature ranges, flagged)"
        lines.append(f"{Path(r['input']).name:<40} {r['entries']:>10} {r['seconds']:>8.1f} {rate:>12,.0f}  {status}")
    failed = sum(not r["ok"] for r in rows)
    lines.append(f"{len(rows) - failed} of {len(rows)} inputs exported" + (f"; {failed} failed" if failed else ""))
    return "\n".join(lines)

