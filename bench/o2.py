"""ALICE O2's calls to the O2 export replayed (docs/o2.md): latency per particle and fidelity of each
photon-statistics option beside the Simulator's own.

    python bench/o2.py --data HELDOUT.root [--zn zn] [--zp PATH] [--score zn|zp] [--particles 10000]
                       [--calls 2000] [--batch 256] [--seed 0] [--options hashed,mean,random] [--json OUT]

Latency: as O2 runs them, one Ort::Session per model on CPU with one intra-op thread, one particle
per Run: per particle the features in O2's units, scaled in float with each model's scales file,
10 fresh N(0, 1) noise values per model call, inputs bound by position, then calculateChannels
(expm1 per pixel, float sums, lround). Prints the median time of the Run calls (ZN, ZP when a ZP
model is given or shipped, both together, and the classifier) over --calls particles of the held-out
set, with the default photon statistics.

Fidelity: on the held-out particles of --score's detector (K real repeats each), K // 2 O2 calls per particle for every
photon option, channel sums formed as O2 forms them, scored with zdc_sim.metrics.ws_against_floor
(the evaluation's ratio to the real-vs-real floor, overall and per channel) beside the Simulator's
own ratio on the same particles with the same latents (the O2 calls' noise values), so that the
differences are the export's alone; and the Simulator's with other latents: how much the ratio
moves by chance alone.
The fidelity calls run --batch particles per Run (the same graph: its batch axis is dynamic);
--batch 1 replays O2 exactly, call by call (slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.evaluate import load_particles
from zdc_sim import features, geometry, metrics
from zdc_sim.exports import o2
from zdc_sim.simulator import Simulator, default_model_path


def o2_session(path: Path) -> ort.InferenceSession:
    """A session as O2 makes it: CPU, SetIntraOpNumThreads(1), nothing else changed."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class O2Model:
    """One exported model, its scales file parsed as O2 parses it, and O2's call."""

    def __init__(self, model: Path, scales: Path, detector: str | None):
        self.session, self.detector = o2_session(model), detector
        self.mean, self.scale = o2.parse_scales(scales.read_text())
        self.names = [i.name for i in self.session.get_inputs()]  # bound by position

    def feeds(self, o2_features: np.ndarray, noise: np.ndarray | None) -> dict:
        scaled = o2.o2_scale_features(o2_features, self.mean, self.scale)
        return dict(zip(self.names, [scaled] if noise is None else [noise, scaled]))

    def run(self, feeds: dict) -> np.ndarray:
        return self.session.run(None, feeds)[0]


def export(sim: Simulator, folder: Path, option: str) -> O2Model:
    out = folder / option
    model, scales = o2.write_o2_export(sim, out, photon_statistics=option)
    return O2Model(model, scales, sim.detector.name)


def latency(models: dict[str, O2Model], classifier: O2Model, particles: np.ndarray, rng) -> dict:
    """Median seconds per particle of each model's Run (and of all together), one particle a call."""
    times: dict[str, list[float]] = {name: [] for name in [*models, "classifier"]}
    o2_features = o2.to_o2_units(particles).astype(np.float32)
    for row in o2_features:
        one = row[None]
        feeds = classifier.feeds(one, None)
        start = time.perf_counter()
        classifier.run(feeds)
        times["classifier"].append(time.perf_counter() - start)
        for name, model in models.items():
            feeds = model.feeds(one, rng.standard_normal((1, o2.NOISE_DIM)).astype(np.float32))
            start = time.perf_counter()
            out = model.run(feeds)
            times[name].append(time.perf_counter() - start)
            o2.o2_channels(out, model.detector)
    result = {name: statistics.median(t) for name, t in times.items()}
    result["models"] = statistics.median(np.sum([times[name] for name in models], 0))
    return result


def o2_generated(model: O2Model, particles: np.ndarray, noise: np.ndarray, batch: int) -> np.ndarray:
    """(P, samples, 5) channel sums of O2 calls, formed as O2 forms them: particle p's sample s gets
    the noise row p * samples + s."""
    samples = len(noise) // len(particles)
    o2_features = o2.to_o2_units(np.repeat(particles, samples, 0)).astype(np.float32)
    out = np.empty((len(o2_features), geometry.N_CHANNELS), np.float64)
    for start in range(0, len(o2_features), batch):
        feeds = model.feeds(o2_features[start : start + batch], noise[start : start + batch])
        out[start : start + batch] = o2.o2_channels(model.run(feeds), model.detector)
    return out.reshape(len(particles), samples, geometry.N_CHANNELS)


def simulated(sim: Simulator, particles: np.ndarray, noise: np.ndarray, seed: int) -> np.ndarray:
    """(P, samples, 5) channel sums of the Simulator with the latents `noise` (the O2 calls') and
    its own photon normals of `seed`."""
    samples = len(noise) // len(particles)
    draws = sim.draws(len(noise), seed)
    draws[:, : o2.NOISE_DIM] = noise
    out = sim.simulate_draws(features.validate(np.repeat(particles, samples, 0)), draws).channels
    return out.reshape(len(particles), samples, geometry.N_CHANNELS).astype(np.float64)


def score(real: np.ndarray, generated: np.ndarray, pdg: np.ndarray) -> dict:
    ws = metrics.ws_against_floor(real, generated)
    channels = (np.array(ws.ws_channels) / np.maximum(ws.floor_channels, 1e-12)).tolist()
    sel = metrics.selectivity(real.sum(-1), generated.sum(-1), pdg)
    return {"ratio_to_floor": ws.ratio_to_floor, "ratio_channels": channels, "spread_bias": sel.spread_bias}


def hash_quality(det: geometry.Detector, rows: int = 5000, pairs: int = 200) -> dict:
    """Statistics of the 'hashed' photon normals of `rows` noise draws: their moments, the largest
    |correlation| between `pairs` fibres' normals, with the noise values and of their squares, and
    the variance of each channel's sum of normals per fibre (1 for independent normals)."""
    noise = np.random.default_rng(7).standard_normal((rows, o2.NOISE_DIM)).astype(np.float32)
    normals = o2.hashed_normals(noise, det.n_pixels).astype(np.float64)
    picked = normals[:, np.random.default_rng(8).choice(det.n_pixels, pairs, replace=False)]
    corr = np.corrcoef(picked.T)[np.triu_indices(pairs, 1)]
    with_noise = np.corrcoef(np.concatenate([noise, normals], 1).T)[: o2.NOISE_DIM, o2.NOISE_DIM :]
    squares = np.corrcoef(np.concatenate([noise**2, normals**2], 1).T)[: o2.NOISE_DIM, o2.NOISE_DIM :]
    masks = det.masks.reshape(geometry.N_CHANNELS, -1)
    variance = [float((normals[:, m].sum(1)).var() / m.sum()) for m in masks]
    z = (normals - normals.mean()) / normals.std()
    return {"rows": rows, "pixels": det.n_pixels, "mean": float(normals.mean()), "std": float(normals.std()),
            "kurtosis": float((z**4).mean() - 3), "fibres": float(np.abs(corr).max()), "pairs": len(corr),
            "chance": float(np.sqrt(2 * np.log(len(corr)) / rows)), "latent": float(np.abs(with_noise).max()),
            "squares": float(np.abs(squares).max()), "channel_variance": " / ".join(f"{v:.3f}" for v in variance)}


def fidelity(sim: Simulator, models: dict[str, O2Model], data: Path, n_particles: int, batch: int, seed: int) -> dict:
    """The ratios to the floor of the Simulator and of each O2 model, all fed the same latents (the
    O2 calls' noise), so that their differences are the export's alone; and of the Simulator with
    other latents (a second seed): the ratio's change by chance, for scale. Scored on all the
    particles and on those inside the model's trained feature ranges (the Simulator refuses the
    others unless asked to extrapolate; O2 cannot ask)."""
    feats, pdg, real = load_particles(data, n_particles, detector=sim.detector.name)
    samples = real.shape[1] // 2
    noise, other = (np.random.default_rng([seed, k]).standard_normal((len(feats) * samples, o2.NOISE_DIM))
                    .astype(np.float32) for k in (1, 2))
    generated = {"simulator": simulated(sim, feats, noise, seed),
                 "simulator, other latents": simulated(sim, feats, other, seed + 1)}
    seconds = {}
    for option, model in models.items():
        started = time.perf_counter()
        generated[f"O2 {option}"] = o2_generated(model, feats, noise, batch)
        seconds[f"O2 {option}"] = time.perf_counter() - started
    inside = ~sim.outside_domain(features.validate(feats))
    result = {"particles": int(len(feats)), "inside_domain": int(inside.sum()), "repeats": int(real.shape[1]),
              "samples": samples, "seconds": seconds}
    for subset, keep in (("all", np.ones(len(feats), bool)), ("inside the trained ranges", inside)):
        rows = {name: score(real[keep], channels[keep], pdg[keep]) for name, channels in generated.items()}
        reference = rows["simulator"]
        for row in rows.values():
            row["difference"] = row["ratio_to_floor"] - reference["ratio_to_floor"]
            row["channel_differences"] = np.subtract(row["ratio_channels"], reference["ratio_channels"]).tolist()
            row["within_0.1"] = bool(abs(row["difference"]) <= 0.1 and np.all(np.abs(row["channel_differences"]) <= 0.1))
        result[subset] = rows
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="held-out set (zdc-sim data generate ... --reaching zn or zp)")
    parser.add_argument("--zn", default="zn", help="ZN checkpoint (default: the shipped one)")
    parser.add_argument("--zp", help="ZP checkpoint (default: the shipped one, if any)")
    parser.add_argument("--score", default="zn", choices=("zn", "zp"), help="the model whose O2 path is scored on --data")
    parser.add_argument("--particles", type=int, default=10_000, help="held-out particles scored")
    parser.add_argument("--calls", type=int, default=2_000, help="particles replayed one by one for the latency")
    parser.add_argument("--batch", type=int, default=256, help="particles per Run in the fidelity calls (1: as O2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default=",".join(o2.PHOTON_STATISTICS), help="photon statistics to score")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    zn = Simulator.load(args.zn, device="cpu")
    zp_path = args.zp or (default_model_path("zp") if default_model_path("zp").exists() else None)
    zp = Simulator.load(zp_path, device="cpu") if zp_path else None
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        options = args.options.split(",")
        zn_models = {option: export(zn, folder / "zn", option) for option in options}
        classifier = O2Model(*o2.write_o2_classifier(folder / "classifier"), None)
        default = o2.DEFAULT_PHOTON_STATISTICS
        timed = {"zn": zn_models.get(default) or export(zn, folder / "zn", default)}
        if zp is not None:
            timed["zp"] = export(zp, folder / "zp", default)
        feats, _, _ = load_particles(args.data, args.calls, detector="zn")
        for model in [*timed.values(), *zn_models.values()]:  # warm up: the first Run allocates
            model.run(model.feeds(o2.to_o2_units(feats[:1]).astype(np.float32), np.zeros((1, 10), np.float32)))
        lat = latency(timed, classifier, feats, rng)
        others = {f"zn {option}": model for option, model in zn_models.items() if option != default}
        if others:
            lat.update({name: seconds for name, seconds in latency(others, classifier, feats, rng).items()
                        if name in others})
        print(f"latency, one particle per Run, 1 thread, median of {len(feats)} particles (zn, zp: {default} photon "
              f"statistics; models: zn + zp):")
        for name, seconds in lat.items():
            print(f"  {name:<11} {1e3 * seconds:7.3f} ms")
        quality = hash_quality(geometry.ZN)
        print("hashed photon normals from 10 noise values ({rows} rows x {pixels} fibres): mean {mean:+.4f}, std "
              "{std:.4f}, excess kurtosis {kurtosis:+.3f}; largest |correlation| between fibres {fibres:.4f} ({pairs} "
              "pairs; chance alone ~{chance:.4f}), with the noise values {latent:.4f}, of squares {squares:.4f}; "
              "variance of channel sums / fibres {channel_variance}".format(**quality))
        if args.score == "zn":
            scored, scored_models = zn, zn_models
        elif zp is None:
            raise SystemExit("--score zp: no ZP model (--zp PATH, or a shipped one)")
        else:
            scored, scored_models = zp, {option: export(zp, folder / "zp_scored", option) for option in options}
        fid = fidelity(scored, scored_models, Path(args.data), args.particles, args.batch, args.seed)
    print(f"fidelity on {fid['particles']} held-out {args.score.upper()} particles x {fid['repeats']} real repeats, {fid['samples']} "
          f"samples each (WS ratio to the real-vs-real floor; O2 calls {args.batch} particles per Run; simulator and O2 "
          f"rows fed the same latents):")
    for subset in ("all", "inside the trained ranges"):
        print(f"  {subset} ({fid['particles'] if subset == 'all' else fid['inside_domain']} particles)")
        print(f"    {'':<24} {'overall':>8}  {'channels 1-5':<34} {'vs simulator':>12}  {'worst channel':>13}  "
              "within 0.1   spread bias hadronic / EM")
        for name, row in fid[subset].items():
            channels = " ".join(f"{r:6.2f}" for r in row["ratio_channels"])
            worst = max(row["channel_differences"], key=abs)
            bias = " / ".join(f"{b:+.3f}" for b in row["spread_bias"].values())
            print(f"    {name:<24} {row['ratio_to_floor']:8.3f}  {channels:<34} {row['difference']:+12.3f}  "
                  f"{worst:+13.3f}  {'yes' if row['within_0.1'] else 'NO':<10}   {bias}")
    if args.json:
        Path(args.json).write_text(json.dumps({"latency_s": lat, "fidelity": fid, "hash_quality": quality, "args": vars(args)},
                                              indent=1))


if __name__ == "__main__":
    main()
