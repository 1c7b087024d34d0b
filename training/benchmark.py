"""`zdc-sim bench regularizers`: every diversity regularizer, `none` included, on the synthetic
benchmarks and on reference ZDC data, at its published default weight, with the same architecture,
optimiser, data and step budget per benchmark, over several seeds. Writes results.md (mean and
spread over seeds), results.json (every run) and regularizers.png to the output folder.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zdc_sim import atomic, regularizers

from . import synthetic

METHODS = regularizers.NAMES  # the plain cGAN ("none") and the five regularizers


@dataclass(frozen=True)
class BenchPlan:
    seeds: int = 3
    toy_steps: int = 3000
    zdc_particles: int = 8000  # training particles (x 4 repeats), generated with the reference MC
    zdc_heldout: int = 500
    zdc_model: str = "small"
    zdc_epochs: int = 3
    zdc_batch: int = 128

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls(seeds=1, toy_steps=150, zdc_particles=120, zdc_heldout=40, zdc_model="tiny", zdc_epochs=1, zdc_batch=32)


# (benchmark, metric key, label, how to format) for the markdown table and the plot
COLUMNS = [
    ("ring", "modes", "ring modes (of 8)", "{:.1f}"),
    ("ring", "hq_share", "ring high-quality", "{:.2f}"),
    ("grid", "modes", "grid modes (of 25)", "{:.1f}"),
    ("grid", "hq_share", "grid high-quality", "{:.2f}"),
    ("selective", "multi_mode_coverage", "selective: multi-mode coverage", "{:.2f}"),
    ("selective", "single_mode_spread", "selective: single-mode spread (1 = true)", "{:.2f}"),
    ("selective", "hq_share", "selective high-quality", "{:.2f}"),
    ("zdc", "ratio_to_floor", "ZDC WS / floor", "{:.2f}"),
    ("zdc", "calibration", "ZDC calibration", "{:.3f}"),
    ("zdc", "bias_hadronic", "ZDC spread bias hadronic", "{:+.2f}"),
    ("zdc", "bias_electromagnetic", "ZDC spread bias EM", "{:+.2f}"),
]


def run(out: Path, plan: BenchPlan = BenchPlan(), methods=METHODS, workers: int = 1, progress: bool = True) -> dict:
    """Every (benchmark, method, seed) run, `workers` at a time in separate processes (one torch
    thread each); results.json is rewritten after every run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"plan": plan.__dict__, "runs": []}
    files = _zdc_data(out, plan)
    jobs = [(out, plan, b, m, s, *files) for b in ("zdc", *synthetic.TASKS) for m in methods for s in range(plan.seeds)]
    bar = tqdm(total=len(jobs), desc="regularizers", unit="run", disable=not progress)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for scores in pool.map(_one_run, jobs):
            results["runs"].append(scores)
            atomic.write_text(out / "results.json", json.dumps(results, indent=1))
            bar.update()
    bar.close()
    table = markdown_table(results["runs"], methods, plan)
    atomic.write_text(out / "results.md", table)
    _plot(results["runs"], methods, out / "regularizers.png")
    return results


def _one_run(job) -> dict:
    out, plan, bench, method, seed, train_file, heldout_file = job
    torch.set_num_threads(1)
    started = time.perf_counter()
    if bench == "zdc":
        scores = _zdc_run(out, plan, method, seed, train_file, heldout_file)
    else:
        task = synthetic.make_task(bench)
        scores = synthetic.score(task, synthetic.train_toy(task, method, seed, plan.toy_steps), seed=seed)
    scores.update(bench=bench, method=method, seed=seed, seconds=round(time.perf_counter() - started, 1))
    # A spread bias is NaN when its class has too few showers to measure (metrics.MIN_CLASS_PARTICLES):
    # a small held-out set, not a failed training.
    scores["finite"] = all(math.isfinite(v) for k, v in scores.items() if isinstance(v, float) and not k.startswith("bias_"))
    return scores


def _zdc_data(out: Path, plan: BenchPlan) -> tuple[Path, Path]:
    """Training and held-out reference files, generated once per output folder (seeds 11 and 12)."""
    from zdc_sim import rootio, reference

    files = []
    for name, particles, seed in (("zdc-train.root", plan.zdc_particles, 11), ("zdc-heldout.root", plan.zdc_heldout, 12)):
        path = out / name
        if not path.exists():
            chunks = (c.parts() for c in reference.generate(particles, 4, seed, reaching="zn"))
            rootio.write_dataset(path, chunks, provenance={"generator": "zdc_sim.reference", "seed": seed,
                                                       "particles": particles, "repeats": 4})
        files.append(path)
    return files[0], files[1]


def _zdc_run(out: Path, plan: BenchPlan, method: str, seed: int, train_file: Path, heldout_file: Path) -> dict:
    from zdc_sim.simulator import Simulator

    from .config import TrainConfig
    from .evaluate import evaluate_file
    from .loop import LOG, train

    run_dir = out / "runs" / f"{method}-{seed}"
    config = TrainConfig(data=str(train_file), out=str(run_dir), model=plan.zdc_model, epochs=plan.zdc_epochs,
                         batch_size=plan.zdc_batch, regularizer=method, seed=seed, val_particles=200, plots=False)
    shutil.rmtree(run_dir, ignore_errors=True)  # a re-run starts afresh, never from an old state
    best = train(config, progress_bar=False)
    losses = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    report = evaluate_file(Simulator.load(best), heldout_file, samples=10, seed=0)
    return {"ratio_to_floor": report["ratio_to_floor"], "calibration": report["calibration"],
            "bias_hadronic": report["spread_bias"]["hadronic"],
            "bias_electromagnetic": report["spread_bias"]["electromagnetic"],
            "final_loss_g": float(losses[-1]["loss_g_adv"]), "final_loss_reg": float(losses[-1]["loss_reg"])}


def summarize(runs: list, methods, bench: str, key: str) -> dict:
    """method -> (mean, std over seeds, n) of one metric."""
    result = {}
    for method in methods:
        values = [r[key] for r in runs if r["bench"] == bench and r["method"] == method and key in r]
        if values:
            result[method] = (float(np.mean(values)), float(np.std(values)), len(values))
    return result


def markdown_table(runs: list, methods, plan: BenchPlan) -> str:
    lines = [f"Diversity regularizers at their published default weights ({plan.seeds} seed(s); mean +- std over "
             f"seeds). Synthetic: {plan.toy_steps} steps. ZDC: {plan.zdc_model} model, {plan.zdc_epochs} epoch(s) on "
             f"{plan.zdc_particles} particles x 4 repeats, scored on {plan.zdc_heldout} held-out particles.", ""]
    lines.append("| metric | " + " | ".join(f"`{m}` (lambda {_default_weight(m):g})" for m in methods) + " |")
    lines.append("|---" * (len(methods) + 1) + "|")
    for bench, key, label, fmt in COLUMNS:
        stats = summarize(runs, methods, bench, key)
        cells = [(fmt.format(stats[m][0]) + " +- " + fmt.format(stats[m][1]).lstrip("+")) if m in stats else "-"
                 for m in methods]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    finite = {m: all(r["finite"] for r in runs if r["method"] == m) for m in methods}
    lines.append("| all runs finite | " + " | ".join("yes" if finite[m] else "NO" for m in methods) + " |")
    seconds = summarize(runs, methods, "zdc", "seconds")
    lines.append("| ZDC seconds per run | " + " | ".join(f"{seconds[m][0]:.0f}" if m in seconds else "-"
                                                          for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _default_weight(method: str) -> float:
    return regularizers.CLASSES[method].default_weight


def _plot(runs: list, methods, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(16, 10))
    for ax, (bench, key, label, _) in zip(axes.flat, COLUMNS):
        stats = summarize(runs, methods, bench, key)
        names = [m for m in methods if m in stats]
        ax.bar(names, [stats[m][0] for m in names], yerr=[stats[m][1] for m in names], capsize=3,
               color=["tab:red" if m == "sdi" else "tab:gray" if m == "none" else "tab:blue" for m in names])
        ax.set_title(label, fontsize=9)
        if key == "single_mode_spread":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
