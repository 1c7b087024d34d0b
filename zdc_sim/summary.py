"""Dataset statistics for `zdc-sim data inspect`, computed in one streaming pass (bounded memory:
only 5 channel values and a few scalars per entry are kept)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from . import features as feat
from . import geometry, rootio, metrics, species


def detectors_in(path, schema: rootio.Schema = rootio.Schema()) -> list[str]:
    """The detectors whose response branch the file holds (a pre-ZP file's `response` is the ZN's)."""
    with rootio.open_tree(path, schema) as tree:
        resolved, present = schema.resolved(tree), set(tree.keys())
        return [name for name, part in rootio.RESPONSES.items() if resolved.branch(part) in present]


def summarize(path, schema: rootio.Schema = rootio.Schema(), detector: str = "zn") -> dict:
    """Statistics of `detector`'s responses in a file, and of its particles' features."""
    det = geometry.detector(detector)
    response = rootio.response_part(det)
    ids, pdgs, channels, hits, moments = [], [], [], [], np.zeros((3, feat.N_FEATURES))
    for chunk in rootio.iterate(path, schema, parts=(rootio.FEATURES, rootio.PDG, rootio.PARTICLE_ID, response)):
        ids.append(chunk[rootio.PARTICLE_ID])
        pdgs.append(chunk[rootio.PDG])
        channels.append(geometry.channel_sums(chunk[response]).astype(np.float32))
        hits.append(geometry.reaches(chunk[rootio.FEATURES], det, margin_cm=0.0))
        x = chunk[rootio.FEATURES].astype(np.float64)
        moments += [np.full(feat.N_FEATURES, len(x)), x.sum(0), (x**2).sum(0)]
    particle_id, pdg = np.concatenate(ids), np.concatenate(pdgs)
    channels, hit = np.concatenate(channels), np.concatenate(hits)
    totals = channels.sum(axis=1, dtype=np.float64)
    mean = moments[1] / moments[0]
    std = np.sqrt(np.maximum(moments[2] / moments[0] - mean**2, 0.0))

    out = {
        "file": str(path),
        "detector": det.name,
        "features": {name: {"mean": float(m), "std": float(s)} for name, m, s in zip(feat.NAMES, mean, std)},
        "entries": int(len(particle_id)),
        "particles": int(len(np.unique(particle_id))),
        "channels": {
            name: {"mean": float(channels[:, c].mean()), "std": float(channels[:, c].std()),
                   "min": float(channels[:, c].min()), "max": float(channels[:, c].max())}
            for c, name in enumerate(geometry.CHANNEL_NAMES)
        },
        "hit_fraction": float(hit.mean()),
        "median_total_hit": float(np.median(totals[hit])) if hit.any() else None,
        "median_total_miss": float(np.median(totals[~hit])) if (~hit).any() else None,
    }
    first = np.unique(particle_id, return_index=True)[1]
    out["particles_by_type"] = {species.species_name(p): n for p, n in Counter(pdg[first].tolist()).most_common()}

    spread = {}
    try:
        _, (tot, types, hit_p) = metrics.group_repeats(particle_id, totals, pdg, hit)
    except ValueError:
        out["repeats"] = 1
        out["median_relative_spread"] = {}
        return out
    out["repeats"] = int(tot.shape[1])
    hit_p, types = hit_p[:, 0], types[:, 0]
    rs = metrics.relative_spread(tot)
    codes, counts = np.unique(types, return_counts=True)
    for code in codes[np.argsort(-counts, kind="stable")]:
        sel = (types == code) & hit_p
        if sel.any():
            spread[species.species_name(code)] = {"particles_hit": int(sel.sum()), "median": float(np.median(rs[sel]))}
    classes = species.shower_class(types)
    for cls in (species.HADRONIC, species.ELECTROMAGNETIC):
        sel = (classes == cls) & hit_p
        if sel.any():
            spread[cls] = {"particles_hit": int(sel.sum()), "median": float(np.median(rs[sel]))}
    out["median_relative_spread"] = spread
    if species.HADRONIC in spread and species.ELECTROMAGNETIC in spread:
        out["hadronic_to_em_spread_ratio"] = spread[species.HADRONIC]["median"] / spread[species.ELECTROMAGNETIC]["median"]
    return out


def format_summary(s: dict) -> str:
    lines = [
        f"file              {s['file']}  ({s.get('detector', 'zn').upper()} responses)",
        f"entries           {s['entries']}",
        f"particles         {s['particles']} ({s['repeats']} repeats each)",
        f"hit the {s.get('detector', 'zn').upper()} face  {100 * s['hit_fraction']:.1f} % of entries; median total counts: "
        f"hit {s['median_total_hit']}, miss {s['median_total_miss']}",
        "particles by type " + ", ".join(f"{k} {v}" for k, v in s["particles_by_type"].items()),
        "channel sums      " + "mean / std / min / max",
    ]
    if "features" in s:
        lines.append("features          " + ", ".join(f"{k} {v['mean']:.4g} / {v['std']:.4g}" for k, v in s["features"].items())
                     + "  (mean / std)")
    for name, c in s["channels"].items():
        lines.append(f"  {name}       {c['mean']:.1f} / {c['std']:.1f} / {c['min']:.0f} / {c['max']:.0f}")
    if s["median_relative_spread"]:
        lines.append("median relative spread of total counts, particles that hit the face:")
        for name, v in s["median_relative_spread"].items():
            lines.append(f"  {name:<16}{v['median']:.4f}  ({v['particles_hit']} particles)")
    if "hadronic_to_em_spread_ratio" in s:
        lines.append(f"hadronic / electromagnetic spread ratio {s['hadronic_to_em_spread_ratio']:.1f}")
    return "\n".join(lines)
