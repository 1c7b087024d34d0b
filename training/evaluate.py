"""The evaluation protocol of zdc_sim.metrics applied to a simulator on a held-out set.

On P particles with K real repeats each: WS of the 5 channels against the real-vs-real floor
(K // 2 generated samples per particle), overall, per channel and per shower class, with a
bootstrap interval over particles; selectivity (M generated samples per particle); and, for
electromagnetic showers that reach the fibres, the error of the per-particle mean total and of the
shower centre. `ceiling=True` (reference data only, needs pdg) also scores fresh reference Monte
Carlo repeats of the same particles, i.e. what a perfect simulator reaches on this very set.
Judge a model on at least 10,000 particles: the floor of 3,000 moves by +-25 % between seeds.
"""

from __future__ import annotations

import warnings

import numpy as np

from zdc_sim import features as feature_rules, geometry, rootio, metrics, reference, species
from zdc_sim.errors import ZdcError
from zdc_sim.simulator import CHUNK_ROWS, Simulator  # CHUNK_ROWS: responses simulated and reduced at a time

from .data import load

DEFAULT_SAMPLES = 10
BOOTSTRAP = 200  # resamples of the particles for the interval of the mean ratio


def evaluate_particles(simulator: Simulator, features: np.ndarray, pdg: np.ndarray, real_channels: np.ndarray,
                       samples: int = DEFAULT_SAMPLES, seed: int = 0, ceiling: bool = False,
                       real_centres: np.ndarray | None = None, bootstrap: int = BOOTSTRAP) -> dict:
    """features (P, 9), pdg (P,), real_channels (P, K, 5), real_centres (P, K, 2) cm or None ->
    report dict."""
    return _evaluate(simulator, features, pdg, real_channels, samples, seed, ceiling, real_centres, bootstrap)[0]


def _evaluate(simulator, features, pdg, real_channels, samples, seed, ceiling, real_centres, bootstrap):
    """(report, generated channels (P, M, 5)): evaluate_particles, keeping what it simulated."""
    n_particles, k = real_channels.shape[:2]
    samples = max(samples, k // 2)
    generated, generated_centres = simulated_channels_and_centres(simulator, features, samples, seed)
    report = _scores(real_channels, generated, pdg, real_centres, generated_centres, bootstrap)
    report.update(particles=int(n_particles), repeats=int(k), samples=int(samples))
    if ceiling:
        fresh_channels, fresh_centres = _reference_channels_and_centres(features, pdg, samples, seed, simulator.detector)
        perfect = _scores(real_channels, fresh_channels, pdg, real_centres, fresh_centres, bootstrap)
        report["ceiling"] = perfect
        report.update(calibration_ceiling=perfect["calibration"], ceiling_ratio_to_floor=perfect["ratio_to_floor"],
                      ceiling_spread_bias=perfect["spread_bias"])
    return report, generated


def simulated_channels_and_centres(simulator: Simulator, features: np.ndarray, samples: int, seed: int):
    """Channels (P, M, 5) and centres (P, M, 2) of `samples` responses per particle, simulated
    CHUNK_ROWS at a time and reduced at once, so only the reductions are kept
    (Simulator.simulate_chunks: the responses of one `simulate` call)."""
    rows = np.repeat(feature_rules.validate(features), samples, axis=0)
    channels = np.empty((len(rows), geometry.N_CHANNELS))
    centres = np.empty((len(rows), 2))
    for start, simulation in simulator.simulate_chunks(rows, seed, CHUNK_ROWS):
        channels[start:start + len(simulation.counts)] = geometry.channel_sums(simulation.counts)
        centres[start:start + len(simulation.counts)] = metrics.shower_centres(simulation.counts)
    return channels.reshape(len(features), samples, -1), centres.reshape(len(features), samples, 2)


def _reference_channels_and_centres(features: np.ndarray, pdg: np.ndarray, samples: int, seed: int, detector):
    """Channels (P, M, 5) and centres (P, M, 2) of `samples` fresh reference Monte Carlo repeats per
    particle, simulated CHUNK_ROWS at a time (all at once, 30,000 x 10 held 17.6 GB), one random
    stream for the whole set."""
    rng = np.random.default_rng([seed, 1])
    rows, row_pdg = np.repeat(features, samples, 0), np.repeat(pdg, samples)
    channels = np.empty((len(rows), geometry.N_CHANNELS))
    centres = np.empty((len(rows), 2))
    for start in range(0, len(rows), CHUNK_ROWS):
        counts = reference.simulate(rows[start:start + CHUNK_ROWS], row_pdg[start:start + CHUNK_ROWS], rng, detector)
        channels[start:start + len(counts)] = geometry.channel_sums(counts)
        centres[start:start + len(counts)] = metrics.shower_centres(counts)
    return channels.reshape(len(features), samples, -1), centres.reshape(len(features), samples, 2)


def _channels_and_centres(counts: np.ndarray, n_particles: int, samples: int):
    channels = geometry.channel_sums(counts).reshape(n_particles, samples, geometry.N_CHANNELS)
    return channels.astype(np.float64), metrics.shower_centres(counts).reshape(n_particles, samples, 2)


def _channel_ratios(ws: metrics.WsReport) -> list[float]:
    return (np.array(ws.ws_channels) / np.maximum(ws.floor_channels, 1e-12)).tolist()


def _scales(real_channels: np.ndarray, generated_channels: np.ndarray) -> list[float]:
    """Mean generated / mean real counts per channel: a class's scale error (EM showers spread by
    ~2 %, so 1 % off reads as several floors; the common intensity factor is set by the hadrons,
    hence the EM one, training/calibrate.py)."""
    real = real_channels.reshape(-1, geometry.N_CHANNELS).mean(0)
    return (generated_channels.reshape(-1, geometry.N_CHANNELS).mean(0) / np.maximum(real, 1e-12)).tolist()


def _scores(real_channels, generated_channels, pdg, real_centres=None, generated_centres=None, bootstrap=0) -> dict:
    ws = metrics.ws_against_floor(real_channels, generated_channels)
    sel = metrics.selectivity(real_channels.sum(-1), generated_channels.sum(-1), pdg)
    report = {"ws_mean": ws.ws_mean, "ws_channels": ws.ws_channels, "ws_floor": ws.ws_floor,
              "floor_channels": ws.floor_channels, "ratio_to_floor": ws.ratio_to_floor,
              "ratio_channels": _channel_ratios(ws),
              "systematic": metrics.systematic_ws(real_channels, generated_channels),
              "calibration": sel.calibration, "spread_bias": sel.spread_bias,
              "selectivity_particles": sel.n_particles, "selectivity_by_class": sel.n_by_class, "by_class": {}}
    if bootstrap:
        report["ratio_interval"] = list(metrics.bootstrap_ratio(real_channels, generated_channels, bootstrap))
        report["systematic"]["mean_photons_interval"] = list(metrics.bootstrap_systematic(real_channels, generated_channels,
                                                                                           bootstrap))
    classes = species.shower_class(pdg)
    for cls in (species.HADRONIC, species.ELECTROMAGNETIC):
        sel_cls = classes == cls
        by = metrics.ws_against_floor(real_channels[sel_cls], generated_channels[sel_cls]) if sel_cls.sum() >= 2 else None
        if by is not None and by.ws_floor >= 1.0:  # a class that leaves (next to) nothing has no floor to compare with
            report["by_class"][cls] = {"particles": int(sel_cls.sum()), "ratio_to_floor": by.ratio_to_floor,
                                       "ratio_channels": _channel_ratios(by),
                                       "scale_channels": _scales(real_channels[sel_cls], generated_channels[sel_cls])}
    # Electromagnetic showers that reach the fibres: mean total and centre per particle.
    real_totals, generated_totals = real_channels.sum(-1).mean(1), generated_channels.sum(-1).mean(1)
    em = (classes == species.ELECTROMAGNETIC) & (real_totals >= geometry.MIN_MEAN_COUNTS)
    report["em_particles"] = int(em.sum())
    if em.sum() >= metrics.MIN_CLASS_PARTICLES:  # the ZP sees a handful of EM showers: no figure from them
        report["em_total_error"] = float(np.median(np.abs(generated_totals[em] / real_totals[em] - 1)))
        if real_centres is not None and generated_centres is not None:
            with warnings.catch_warnings():  # an empty response has no centre: NaN, skipped
                warnings.simplefilter("ignore", RuntimeWarning)
                shift = np.linalg.norm(np.nanmean(generated_centres[em], 1) - np.nanmean(real_centres[em], 1), axis=1)
            if np.isfinite(shift).any():
                report["em_centre_error_cm"] = float(np.nanmedian(shift))
    return report


def load_particles(path, max_particles: int | None = None, schema: rootio.Schema = rootio.Schema(),
                   with_centres: bool = False, detector: str = "zn"):
    """(features (P, 9), pdg (P,), channels (P, K, 5)[, centres (P, K, 2)]) of `detector` in a
    file, the particles that reach it only, read in chunks (images are not kept)."""
    data = load(path, schema=schema, images=False, detector=detector)
    _, (feats, pdg, channels, centres) = metrics.group_repeats(data.particle_id, data.features, data.pdg,
                                                               data.channels, data.centres)
    if max_particles is not None:
        feats, pdg, channels, centres = (a[:max_particles] for a in (feats, pdg, channels, centres))
    out = (feats[:, 0], pdg[:, 0], channels)
    return out + (centres,) if with_centres else out


def evaluate_file(simulator: Simulator, path, max_particles: int | None = None, samples: int = DEFAULT_SAMPLES,
                  seed: int = 0, ceiling: bool = False, schema: rootio.Schema = rootio.Schema(),
                  bootstrap: int = BOOTSTRAP, plots=None, compare: Simulator | None = None) -> dict:
    """Evaluate on a file; `plots`: a folder for the figures a physicist looks at (see plots.py);
    `compare`: a second model of the same detector, scored on the same particles and compared with
    a paired bootstrap (report["comparison"])."""
    feats, pdg, channels, centres = load_particles(path, max_particles, schema, with_centres=True,
                                                   detector=simulator.detector.name)
    report, generated = _evaluate(simulator, feats, pdg, channels, samples, seed, ceiling, centres, bootstrap)
    if compare is not None:
        if compare.detector != simulator.detector:
            raise ZdcError(f"the model to compare with simulates the {compare.detector.name.upper()}; expected a "
                           f"{simulator.detector.name.upper()} model")
        other, other_generated = _evaluate(compare, feats, pdg, channels, samples, seed, False, centres, 0)
        report["comparison"] = {"ratio_to_floor": other["ratio_to_floor"], "ratio_channels": other["ratio_channels"],
                                "systematic": other["systematic"],
                                **metrics.paired_bootstrap(channels, generated, other_generated, max(bootstrap, 1))}
    report["data"] = str(path)
    report["detector"] = simulator.detector.name
    if plots is not None:
        from .plots import write_evaluation_plots

        report["plots"] = [str(p) for p in write_evaluation_plots(plots, simulator, pdg, channels, generated, seed,
                                                                   _example_particles(path, schema, simulator.detector))]
    return report


def _ratios(r: dict) -> str:
    return " / ".join(f"{x:.2f}" for x in r["ratio_channels"])


def format_report(report: dict) -> str:
    ceiling = report.get("ceiling")
    lines = [f"{report.get('detector', 'zn').upper()}: {report['particles']} particles x {report['repeats']} real repeats, "
             f"{report['samples']} generated samples each"]
    systematic = report.get("systematic")
    for c, (name, model, floor) in enumerate(zip(geometry.CHANNEL_NAMES, report["ws_channels"],
                                                 report["floor_channels"])):
        perfect = f"   perfect {ceiling['ratio_channels'][c]:.2f}x" if ceiling else ""
        sys_part = (f"   systematic {systematic['photons'][c]:8.1f} ({100 * systematic['share'][c]:.2f} % of spread)"
                    if systematic else "")
        lines.append(f"  WS {name:<10} {model:12.1f}   floor {floor:10.1f}   {model / max(floor, 1e-12):6.2f}x{perfect}{sys_part}")
    interval = ""
    if "ratio_interval" in report:
        interval = " (90 % bootstrap {:.2f}-{:.2f})".format(*report["ratio_interval"])
    lines.append(f"  WS mean            {report['ws_mean']:12.1f}   floor {report['ws_floor']:10.1f}   "
                 f"model / floor {report['ratio_to_floor']:.2f}{interval}")
    if systematic:
        interval = ""
        if "mean_photons_interval" in systematic:
            interval = " (90 % bootstrap {:.1f}-{:.1f})".format(*systematic["mean_photons_interval"])
        perfect = f"; perfect simulator {ceiling['systematic']['mean_photons']:.1f}" if ceiling else ""
        lines.append(f"  systematic WS      {systematic['mean_photons']:12.1f} photons{interval}, "
                     f"{100 * systematic['mean_share']:.2f} % of the channels' spread{perfect}")
    if ceiling:
        lines.append(f"  perfect simulator  {ceiling['ratio_to_floor']:.2f}x the floor on this set")
    for cls, r in report["by_class"].items():
        perfect = f" (perfect {ceiling['by_class'][cls]['ratio_to_floor']:.2f}x)" if ceiling else ""
        lines.append(f"  {cls:<16} {r['particles']:6d} particles: {r['ratio_to_floor']:.2f}x{perfect}, "
                     f"channels {_ratios(r)}; mean generated / real " + " / ".join(f"{x:.3f}" for x in r["scale_channels"]))
    perfect = f"   (ceiling {report['calibration_ceiling']:.3f})" if ceiling else ""
    lines.append(f"  calibration        {report['calibration']:12.3f}{perfect}")
    for cls, bias in report["spread_bias"].items():
        perfect = f"   (perfect {ceiling['spread_bias'][cls]:+.3f})" if ceiling else ""
        count = report.get("selectivity_by_class", {}).get(cls)
        if bias != bias:  # NaN: too few showers of the class
            lines.append(f"  spread bias {cls:<16} not measured ({count} showers; at least "
                         f"{metrics.MIN_CLASS_PARTICLES} needed)")
        else:
            lines.append(f"  spread bias {cls:<16} {bias:+.3f}{perfect}" + (f"   ({count} showers)" if count is not None else ""))
    if "em_total_error" in report:
        lines.append(f"  EM mean total error (median |gen/real - 1|, {report['em_particles']} particles) "
                     f"{100 * report['em_total_error']:.2f} %"
                     + (f"   (perfect {100 * ceiling['em_total_error']:.2f} %)" if ceiling else ""))
    if "comparison" in report:
        c = report["comparison"]
        lines.append(f"  compared model     {c['ratio_to_floor']:.2f}x the floor, systematic "
                     f"{c['systematic']['mean_photons']:.1f} photons; this minus that (paired, 90 %): ratio "
                     f"{c['ratio_difference']:+.2f} ({c['ratio_interval'][0]:+.2f} to {c['ratio_interval'][1]:+.2f}), "
                     f"systematic {c['systematic_difference']:+.1f} ({c['systematic_interval'][0]:+.1f} to "
                     f"{c['systematic_interval'][1]:+.1f}) photons")
    if "em_centre_error_cm" in report:
        lines.append(f"  EM centre error (median)  {report['em_centre_error_cm']:.3f} cm"
                     + (f"   (perfect {ceiling['em_centre_error_cm']:.3f} cm)" if ceiling else ""))
    return "\n".join(lines)


def _example_particles(path, schema: rootio.Schema, detector, per_class: int = 2) -> dict:
    """Real images of the first particles of each shower class in the file's first chunk that
    reach the fibres of `detector`, for the mean-response plot."""
    response = rootio.response_part(detector)
    chunk = next(rootio.iterate(path, schema, parts=(rootio.FEATURES, rootio.PDG, rootio.PARTICLE_ID, response)))
    ids, (feats, pdg, counts) = metrics.group_repeats(chunk[rootio.PARTICLE_ID], chunk[rootio.FEATURES], chunk[rootio.PDG],
                                                      chunk[response])
    classes = species.shower_class(pdg[:, 0])
    hit = counts.sum((2, 3)).mean(1) >= 10 * geometry.MIN_MEAN_COUNTS
    chosen = [i for cls in (species.HADRONIC, species.ELECTROMAGNETIC)
              for i in np.flatnonzero((classes == cls) & hit)[:per_class]]
    return {"features": feats[chosen, 0], "images": counts[chosen],
            "labels": [f"{species.species_name(pdg[i, 0])} {feats[i, 0, 0]:.0f} GeV" for i in chosen]}
