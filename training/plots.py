"""PNG plots of a training run: channel histograms real vs generated, real and generated responses
of a few particles (several repeats each), per-particle relative spread real vs generated, and the
learning curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zdc_sim import features as feature_rules, geometry, metrics, species  # noqa: E402
from zdc_sim.simulator import Simulator  # noqa: E402

SEED = 2024


def write_plots(out: Path, simulator: Simulator, validation: dict, history: list) -> list[Path]:
    """Write the plots into `out`; returns their paths."""
    feats, pdg, real = validation["features"], validation["pdg"], validation["channels"]
    samples = 10
    rows = np.repeat(feature_rules.validate(feats), samples, 0)
    generated = np.concatenate([simulation.channels  # in chunks: 100,000 images at once took 4.5 GB
                                for _, simulation in simulator.simulate_chunks(rows, SEED)]).reshape(len(feats), samples, -1)
    paths = [_channels(out, real, generated), _spread(out, real, generated, pdg),
             _responses(out, simulator, feats, validation["images"])]
    if history:
        paths.append(_curve(out, history))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _channels(out, real, generated):
    fig, axes = plt.subplots(1, geometry.N_CHANNELS, figsize=(18, 3.4))
    for c, ax in enumerate(axes):
        r, g = real[..., c].ravel(), generated[..., c].ravel()
        bins = np.linspace(0, max(np.percentile(r, 99.5), 1.0), 50)
        ax.hist(r, bins, histtype="step", density=True, label="real", lw=1.5)
        ax.hist(g, bins, histtype="step", density=True, label="generated", lw=1.5)
        ax.set_title(geometry.CHANNEL_NAMES[c])
        ax.set_yscale("log")
        ax.set_xlabel("counts")
    axes[0].legend()
    return _save(fig, out / "channels.png")


def _spread(out, real, generated, pdg):
    totals_r, totals_g = real.sum(-1), generated.sum(-1)
    keep = totals_r.mean(1) >= geometry.MIN_MEAN_COUNTS
    rs_r = metrics.relative_spread(totals_r[keep])
    rs_g = metrics.relative_spread(totals_g[keep])
    em = np.isin(pdg[keep], species.EM_PDG)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(rs_r[~em], rs_g[~em], s=4, alpha=0.5, label="hadronic")
    ax.scatter(rs_r[em], rs_g[em], s=4, alpha=0.5, label="electromagnetic")
    lim = [1e-3, 2]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="real relative spread",
           ylabel="generated relative spread", title="per-particle diversity")
    ax.legend()
    return _save(fig, out / "diversity.png")


def _responses(out, simulator, feats, real_images, n_particles=4, repeats=3):
    n_particles = min(n_particles, len(real_images))
    repeats = min(repeats, real_images.shape[1])
    fake = simulator.simulate(np.repeat(feats[:n_particles], repeats, 0), seed=SEED, extrapolate=True).counts
    fake = fake.reshape(n_particles, repeats, *simulator.detector.shape)
    fig, axes = plt.subplots(n_particles, 2 * repeats, figsize=(2.2 * 2 * repeats, 2.2 * n_particles), squeeze=False)
    for p in range(n_particles):
        for r in range(repeats):
            for col, image, label in ((r, real_images[p, r], "real"), (repeats + r, fake[p, r], "generated")):
                ax = axes[p, col]
                ax.imshow(np.log1p(image), cmap="viridis", vmin=0)
                ax.set_xticks([])
                ax.set_yticks([])
                if p == 0:
                    ax.set_title(f"{label} {r + 1}", fontsize=9)
    return _save(fig, out / "responses.png")


def _curve(out, history):
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["val"]["ratio_to_floor"] for h in history], "o-")
    ax1.set(xlabel="epoch", ylabel="validation WS / floor", yscale="log")
    ax2.plot(epochs, [h["val"]["calibration"] for h in history], "o-", label="calibration")
    ax2.plot(epochs, [h["val"]["spread_bias"]["hadronic"] for h in history], "s-", label="bias hadronic")
    ax2.plot(epochs, [h["val"]["spread_bias"]["electromagnetic"] for h in history], "^-", label="bias EM")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set(xlabel="epoch")
    ax2.legend()
    return _save(fig, out / "learning_curve.png")


def write_evaluation_plots(out, simulator: Simulator, pdg, real, generated, seed: int,
                           real_images=None) -> list[Path]:
    """What a physicist looks at after `zdc-sim evaluate --plots DIR`: channel histograms real vs
    generated (P, M, 5) per shower class, relative spread real vs generated per particle, and mean
    responses real vs generated of a few particles (when their real images are given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [_channels_by_class(out, real, generated, pdg), _spread(out, real, generated, pdg)]
    if real_images is not None:
        paths.append(_mean_responses(out, simulator, real_images, seed))
    return paths


def _channels_by_class(out, real, generated, pdg):
    classes = species.shower_class(pdg)
    names = (species.HADRONIC, species.ELECTROMAGNETIC)
    fig, axes = plt.subplots(len(names), geometry.N_CHANNELS, figsize=(18, 6.4), squeeze=False)
    for row, cls in enumerate(names):
        sel = classes == cls
        for c, ax in enumerate(axes[row]):
            r, g = real[sel][..., c].ravel(), generated[sel][..., c].ravel()
            if len(r) == 0:
                continue
            bins = np.linspace(0, max(np.percentile(r, 99.5), 1.0), 50)
            ax.hist(r, bins, histtype="step", density=True, label="real", lw=1.5)
            ax.hist(g, bins, histtype="step", density=True, label="generated", lw=1.5)
            ax.set_title(f"{cls} {geometry.CHANNEL_NAMES[c]}", fontsize=9)
            ax.set_yscale("log")
            ax.set_xlabel("counts")
    axes[0, 0].legend()
    return _save(fig, out / "channels_by_class.png")


def _mean_responses(out, simulator, particles: dict, seed, samples: int = 20):
    """particles: {'features' (n, 9), 'images' (n, K, 44, 44), 'labels' [n]}."""
    feats, images = particles["features"], particles["images"]
    n = len(feats)
    fake = simulator.simulate(np.repeat(feats, samples, 0), seed=seed, extrapolate=True).counts.reshape(n, samples, *simulator.detector.shape).mean(1)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for p in range(n):
        real_mean = images[p].mean(0)
        top = max(np.log1p(real_mean).max(), 1e-3)
        for col, (image, title) in enumerate(((np.log1p(real_mean), "real mean"), (np.log1p(fake[p]), "generated mean"),
                                              (np.log1p(fake[p]) - np.log1p(real_mean), "generated - real"))):
            ax = axes[p, col]
            diff = col == 2
            ax.imshow(image, cmap="RdBu_r" if diff else "viridis", vmin=-top / 4 if diff else 0,
                      vmax=top / 4 if diff else top)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{particles['labels'][p]}: {title}" if col == 0 else title, fontsize=8)
    return _save(fig, out / "mean_responses.png")
