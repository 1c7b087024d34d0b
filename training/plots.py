"""PNG plots of a training run: channel histograms real vs generated, real and generated responses
of a few particles (several repeats each), per-particle relative spread real vs generated, and the
learning curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zdc_sim import geometry, metrics, reference  # noqa: E402
from zdc_sim.simulator import Simulator  # noqa: E402

SEED = 2024


def write_plots(out: Path, simulator: Simulator, validation: dict, history: list) -> list[Path]:
    """Write the plots into `out`; returns their paths."""
    feats, pdg, real = validation["features"], validation["pdg"], validation["channels"]
    samples = 10
    generated = simulator.simulate(np.repeat(feats, samples, 0), seed=SEED).channels.reshape(len(feats), samples, -1)
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
    keep = totals_r.mean(1) >= metrics.MIN_MEAN_COUNTS
    rs_r = metrics.relative_spread(totals_r[keep])
    rs_g = metrics.relative_spread(totals_g[keep])
    em = np.isin(pdg[keep], reference.EM_PDG)
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
    fake = simulator.simulate(np.repeat(feats[:n_particles], repeats, 0), seed=SEED).counts
    fake = fake.reshape(n_particles, repeats, 44, 44)
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
