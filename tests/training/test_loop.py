import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import loop
from training.config import ConfigError, TrainConfig
from zdc_sim import checkpoint, cli, rootio
from zdc_sim.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]


def _config(data, out, **changes):
    """A tiny run: 2 epochs of ~14 steps, 20 pre-fit steps (1,500 by default), 10 refit steps."""
    values = dict(data=str(data), out=str(out), model="tiny", epochs=2, batch_size=16, val_particles=5,
                  val_samples=4, seed=3, threads=1, plots=False, total_refit=10, prefit_steps=20)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(tiny_file, tmp_path_factory):
    """One tiny run with the default recipe (SDI, energy score, average, calibration, plots), shared
    by the tests that only read what it wrote."""
    out = tmp_path_factory.mktemp("trained") / "run"
    return loop.train(_config(tiny_file, out, plots=True), progress_bar=False).parent


def _weights(path):
    tensors, _ = checkpoint.load(path)
    return tensors


def test_training_writes_checkpoints_log_and_plots(trained_run, tiny_file):
    out = trained_run
    best = out / "best.safetensors"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"loss_d", "loss_g_adv", "loss_reg", "seconds", "step"} <= set(r)
        assert {"ws_mean", "ws_floor", "ratio_to_floor", "calibration", "spread_bias"} <= set(r["val"])
        assert r["loss_reg"] > 0  # SDI is on by default
    for name in ("channels.png", "diversity.png", "responses.png", "learning_curve.png"):
        assert (out / name).stat().st_size > 1000
    sim = Simulator.load(best)
    meta = sim.metadata
    assert meta["training"]["regularizer"] == "sdi" and meta["standardizer"]["names"][0] == "energy"
    # The best epoch is chosen on the validation of the refitted candidate with its own intensity
    # factor, which is what is shipped.
    best_record = min(records, key=lambda r: r["val"]["ws_mean"])
    assert meta["dataset_fingerprint"].startswith("sha256:") and meta["validation"] == best_record["val"]
    assert meta["epoch"] == best_record["epoch"] and meta["intensity_factor"] == best_record["intensity_factor"]
    assert all(0.9 <= r["intensity_factor"] <= 1.1 and "ws_mean" in r["val_before_intensity"] for r in records)
    assert meta["validation_before_intensity"] == best_record["val_before_intensity"]
    assert all(r["total_refit"]["steps"] == 10 and "ws_mean" in r["val_before_refit"] for r in records)
    # The shape temperature is fitted before the refit, on the grid, and shipped with the best epoch.
    assert all(r["shape_temperature"]["temperature"] in r["shape_temperature"]["temperatures"] for r in records)
    assert float(_weights(best)["generator.shape_temperature"]) == pytest.approx(meta["shape_temperature"]["temperature"])
    assert meta["total_refit"]["steps"] == 10 and meta["validation_before_refit"]["ws_mean"] != meta[
        "validation_before_intensity"]["ws_mean"]
    assert sim.simulate(sim_features(tiny_file), seed=0).counts.shape[1:] == (44, 44)


def sim_features(path):
    return next(rootio.iterate(path))["features"][:8]


def test_fidelity_options_ship_the_average_with_its_intensity_factor(tiny_file, tmp_path):
    out = tmp_path / "run"
    loop.train(_config(tiny_file, out, epochs=1, ema=0.9, total_refit=0), progress_bar=False)
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["loss_score"] > 0  # the energy score is on by default
    last, meta_last = checkpoint.load(out / "last.safetensors")
    best, meta = checkpoint.load(out / "best.safetensors")
    factor = meta["intensity_factor"]
    assert 0.9 <= factor <= 1.1 and meta["impact_residual_cm"] < 1.0
    # The shipped weights are the moving average, not the last step's generator, times the factor.
    for key, value in best.items():
        name = key.split(".", 1)[1]
        expected = last["average." + name] * {"intensity": factor, "em_intensity": meta["em_intensity_factor"]}.get(name, 1)
        if name == "shape_temperature":  # fitted on the copy that is validated and shipped
            expected = torch.tensor(meta["shape_temperature"]["temperature"])
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
    assert any(not torch.equal(last["average." + k.split(".", 1)[1]], last[k])
               for k in last if k.startswith("generator.") and "weight" in k)
    # Learning rates fall over the last third (to 5 % at the very end), not before.
    total = meta_last["progress"]["step"]  # one epoch: the last step's rate was set at step total - 1
    decay_from = (1 - 1 / 3) * total
    expected = 2e-4 * max(0.05, 1 - (total - 1 - decay_from) / (total - decay_from))
    assert meta_last["optimizers"]["opt_g"][0]["lr"] == pytest.approx(expected) and expected < 2e-4 / 2
    assert record["intensity_factor"] == factor and record["val"] == meta["validation"]


def test_intensity_factor_alone_scales_a_copy_not_the_moving_average(tiny_file, tmp_path):
    out = tmp_path / "intensity"
    loop.train(_config(tiny_file, out, epochs=1, total_refit=0, shape_temperature=False), progress_bar=False)
    last, _ = checkpoint.load(out / "last.safetensors")
    best, meta = checkpoint.load(out / "best.safetensors")
    assert float(last["average.intensity"]) == 1.0 and 0.9 <= meta["intensity_factor"] <= 1.1
    assert float(best["generator.intensity"]) == pytest.approx(meta["intensity_factor"])


def test_total_refit_moves_only_the_total_heads_of_the_shipped_average(tiny_file, tmp_path):
    out = tmp_path / "refit"
    loop.train(_config(tiny_file, out, epochs=1, total_refit=30, fit_intensity=False, shape_temperature=False),
               progress_bar=False)
    last, _ = checkpoint.load(out / "last.safetensors")
    best, meta = checkpoint.load(out / "best.safetensors")
    assert meta["total_refit"]["steps"] == 30 and "validation_before_refit" in meta
    moved = {key for key, value in best.items() if not torch.equal(value, last["average." + key.split(".", 1)[1]])}
    assert moved and all(k.split(".")[1] in ("total", "total_mean", "total_scale") for k in moved), moved


def test_energy_score_and_average_can_be_switched_off(tiny_file, tmp_path):
    out = tmp_path / "off"
    loop.train(_config(tiny_file, out, epochs=1, energy_score=0, energy_score_image=0, ema=0, lr_decay=0,
                       fit_intensity=False, regularizer="none", total_refit=0, shape_temperature=False),
               progress_bar=False)
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["loss_score"] == 0.0 and record["loss_reg"] == 0.0
    assert not {"shape_temperature", "total_refit", "val_before_refit"} & set(record)
    assert float(_weights(out / "best.safetensors")["generator.shape_temperature"]) == 1.0
    last, meta_last = checkpoint.load(out / "last.safetensors")
    assert not any(k.startswith("average.") for k in last)
    assert meta_last["optimizers"]["opt_g"][0]["lr"] == 2e-4
    assert "intensity_factor" not in checkpoint.load(out / "best.safetensors")[1]


@pytest.mark.slow
def test_plain_gan_has_no_regularizer_term(tiny_file, tmp_path):
    loop.train(_config(tiny_file, tmp_path / "plain", regularizer="none", epochs=1), progress_bar=False)
    record = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text())
    assert record["loss_reg"] == 0.0


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_weights(tiny_file, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    loop.train(_config(tiny_file, straight, checkpoint_every=5), progress_bar=False)

    # Kill the second run mid-epoch, after its state was saved at step 10 (of 14 per epoch).
    killed = tmp_path / "killed"
    original = loop._Run._step
    calls = {"n": 0}

    def dying_step(self, index):
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt("killed")
        return original(self, index)

    monkeypatch.setattr(loop._Run, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_config(tiny_file, killed, checkpoint_every=5), progress_bar=False)
    monkeypatch.setattr(loop._Run, "_step", original)
    _, meta = checkpoint.load(killed / "last.safetensors")
    assert meta["progress"]["step"] == 15 and meta["progress"]["epoch"] == 1

    loop.train(_config(tiny_file, killed, checkpoint_every=5), progress_bar=False)
    a, b = _weights(straight / "last.safetensors"), _weights(killed / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key, value in _weights(straight / "best.safetensors").items():
        assert torch.equal(value, _weights(killed / "best.safetensors")[key])


@pytest.mark.slow
def test_cli_train_and_resume(tiny_file, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--data", str(tiny_file), "--out", str(out), "--model", "tiny", "--epochs", "1",
            "--batch-size", "16", "--threads", "1", "--quiet", "--regularizer", "sdi", "--lambda", "0.5"]
    assert cli.main(args) == 0
    assert "best checkpoint" in capsys.readouterr().out
    assert cli.main(args) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert cli.main(args[:-4] + ["--epochs", "2", "--resume", "--regularizer", "sdi", "--lambda", "0.5"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert cli.main(args[:-2] + ["--lambda", "2.0", "--epochs", "3", "--resume"]) == 2
    assert "config differs in ['lam']" in capsys.readouterr().err


def test_cli_train_flags_come_from_the_config(tiny_file, tmp_path, capsys):
    """Every field of TrainConfig but data/out is a flag of `zdc-sim train` (the flags are derived
    from the dataclass), and a flag's value reaches the config."""
    from dataclasses import fields

    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    flags = {o for action in train._actions for o in action.option_strings}
    missing = [f.name for f in fields(TrainConfig) if "--" + f.name.replace("_", "-") not in flags
               and f.name not in ("data", "out", "lam", "regularizer_options")]
    assert not missing, missing
    assert {"--lambda", "--regularizer-option", "--prefit-steps"} <= flags
    assert parser.parse_args(["train", "--prefit-steps", "7", "--plots", "false"]).prefit_steps == 7


def test_cli_evaluate_reports_and_plots(trained_run, tiny_file, tmp_path, capsys):
    out = trained_run
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.safetensors"), "--data", str(tiny_file),
                     "--ceiling", "--json", "--samples", "4"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    report = json.loads(printed[-1])
    assert {"ws_mean", "ws_channels", "ws_floor", "ratio_to_floor", "calibration", "spread_bias",
            "calibration_ceiling"} <= set(report)
    assert len(report["ws_channels"]) == 5 and report["ws_floor"] > 0
    assert report["ratio_to_floor"] == pytest.approx(report["ws_mean"] / report["ws_floor"])
    assert 0.0 < report["calibration_ceiling"] <= 1.0
    assert any("model / floor" in line for line in printed)
    assert len(report["ratio_channels"]) == 5 and report["ratio_interval"][0] < report["ratio_interval"][1]
    assert set(report["by_class"]) <= {"hadronic", "electromagnetic"} and report["by_class"]
    assert all(len(r["scale_channels"]) == 5 and min(r["scale_channels"]) > 0 for r in report["by_class"].values())
    assert report["ceiling"]["ratio_to_floor"] == report["ceiling_ratio_to_floor"]
    if report["em_particles"] >= 20:  # fewer showers give no figure
        assert report["ceiling"]["em_total_error"] < 0.1 and report["ceiling"]["em_centre_error_cm"] < 0.1
    else:
        assert "em_total_error" not in report and report["systematic"]["mean_photons"] >= 0

    plots = tmp_path / "plots"
    assert cli.main(["evaluate", "--checkpoint", str(out / "best.safetensors"), "--data", str(tiny_file),
                     "--samples", "4", "--bootstrap", "0", "--plots", str(plots)]) == 0
    for name in ("channels_by_class.png", "diversity.png", "mean_responses.png"):
        assert (plots / name).stat().st_size > 1000
    assert "bootstrap" not in capsys.readouterr().out

    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(tiny_file)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluation_simulates_in_chunks_with_the_draws_of_one_call(trained_run, tiny_file, monkeypatch):
    """The evaluation reduces the responses chunk by chunk (it would otherwise hold ~10 GB of images
    on 30,000 particles); the chunks, not aligned to the draws' blocks, give one call's responses."""
    from training import evaluate

    sim = Simulator.load(trained_run / "best.safetensors")
    feats, _, _ = evaluate.load_particles(tiny_file)
    monkeypatch.setattr(evaluate, "CHUNK_ROWS", 7)
    channels, centres = evaluate.simulated_channels_and_centres(sim, feats, 3, seed=5)
    whole = sim.simulate(np.repeat(feats, 3, axis=0), seed=5, extrapolate=True).counts
    assert channels.shape == (len(feats), 3, 5) and len(feats) * 3 > 2 * 7
    expected_channels, expected_centres = evaluate._channels_and_centres(whole, len(feats), 3)
    np.testing.assert_allclose(channels, expected_channels, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(centres, expected_centres, rtol=1e-5, atol=1e-5)
    assert channels.sum() > 0


def test_the_perfect_simulators_repeats_are_simulated_in_chunks_too(tiny_file, monkeypatch):
    """The ceiling's fresh reference repeats are reduced chunk by chunk as the model's are (all at
    once, 30,000 particles x 10 held 17.6 GB): no call simulates more than CHUNK_ROWS rows, every
    row is simulated once, and the channels are those of the counts it made."""
    from training import evaluate
    from zdc_sim import reference

    feats, pdg, _ = evaluate.load_particles(tiny_file)
    calls, simulate = [], reference.simulate

    def spy(rows, row_pdg, rng, detector="zn"):
        counts = simulate(rows, row_pdg, rng, detector)
        calls.append((len(rows), counts))
        return counts

    monkeypatch.setattr(evaluate, "CHUNK_ROWS", 7)
    monkeypatch.setattr(evaluate.reference, "simulate", spy)
    channels, centres = evaluate._reference_channels_and_centres(feats, pdg, 3, 5, "zn")
    assert max(n for n, _ in calls) <= 7 and sum(n for n, _ in calls) == len(feats) * 3 > 2 * 7
    whole = np.concatenate([c for _, c in calls])
    expected_channels, expected_centres = evaluate._channels_and_centres(whole, len(feats), 3)
    np.testing.assert_allclose(channels, expected_channels)
    np.testing.assert_allclose(centres, expected_centres)
    assert channels.shape == (len(feats), 3, 5) and channels.sum() > 0


def test_regularizer_table_from_run_records(trained_run, tiny_file, tmp_path, capsys):
    """bench/regularizer_table.py (make compare-regularizers) reads a run's evaluation.json, its
    checkpoint's recipe and intensity factors and its epochs' seconds; a model compared with itself
    on the same seed differs by exactly 0; an unfinished run is listed, not dropped; every row of
    the table has the header's cells."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regularizer_table", ROOT / "bench" / "regularizer_table.py")
    table_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_module)
    run = tmp_path / "sdi-0"
    run.mkdir()
    for name in ("best.safetensors", "metrics.jsonl"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    best = str(run / "best.safetensors")
    assert cli.main(["evaluate", "--checkpoint", best, "--data", str(tiny_file), "--samples", "4", "--ceiling",
                     "--json", "--compare", best]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["comparison"]["checkpoint"] == best and report["comparison"]["ratio_difference"] == 0.0
    (run / "evaluation.json").write_text(json.dumps(report) + "\n")
    seconds = sum(json.loads(line)["seconds"] for line in (run / "metrics.jsonl").read_text().splitlines())
    lines = table_module.table([run, tmp_path / "none-0"]).splitlines()
    row = next(line for line in lines if line.startswith("| sdi-0 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    metadata = checkpoint.load(best)[1]
    assert len(cells) == 13 and cells[2] == f"{metadata['epoch']}/{epochs}"
    assert cells[3] == f"{metadata.get('intensity_factor', 1.0):.3f} / {metadata.get('em_intensity_factor', 1.0):.3f}"
    assert cells[4] == f"{seconds / 60:.0f}"
    assert cells[5].startswith(f"**{report['ratio_to_floor']:.2f}**")
    assert cells[6] == "sdi-0: +0.00 (+0.00 to +0.00)"
    assert "| none-0 | not run yet |" in "\n".join(lines)
    assert any(line.startswith("| perfect simulator |") for line in lines)
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 5 and {len(line.split("|")[1:-1]) for line in rows} == {13}
    # --mapped reads the same run's mapped.safetensors and evaluation_mapped.json instead
    (run / "mapped.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    (run / "evaluation_mapped.json").write_text(json.dumps({**report, "ratio_to_floor": 0.5}) + "\n")
    mapped_row = next(line for line in table_module.table([run], mapped=True).splitlines() if line.startswith("| sdi-0 |"))
    assert mapped_row.split("|")[6].strip().startswith("**0.50**")
    plain_row = next(line for line in table_module.table([run]).splitlines() if line.startswith("| sdi-0 |"))
    assert plain_row == row and report["ratio_to_floor"] != 0.5


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "tiny", "epochs": 3, "lam": 0.5}))
    config = TrainConfig.build(str(path), data="d.root", out="o", epochs=5)
    assert config.epochs == 5 and config.lam == 0.5 and config.model == "tiny"
    path.write_text(json.dumps({"modle": "tiny"}))
    with pytest.raises(ConfigError, match="unknown keys \\['modle'\\]"):
        TrainConfig.build(str(path), data="d", out="o")
    with pytest.raises(ConfigError, match="'regularizer' is 'gan'"):
        TrainConfig(data="d", out="o", regularizer="gan")
    with pytest.raises(ConfigError, match="'data' is missing"):
        TrainConfig.build(None, out="o")


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_file, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "zdc_sim", "train", "--data", str(tiny_file),
         "--out", str(out), "--model", "tiny", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _, meta = checkpoint.load(out / "last.safetensors")
    assert meta["world_size"] == 2
    # 160 entries minus validation particles, split over 2 processes of 8: steps per epoch
    assert meta["progress"]["epoch"] == 2 and meta["progress"]["step"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ms", "dp", "ndiv", "iid"])
def test_every_regularizer_trains_with_finite_losses(tiny_file, tmp_path, method):
    out = tmp_path / method
    loop.train(_config(tiny_file, out, regularizer=method, epochs=1), progress_bar=False)
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["loss_reg"] > 0 and all(map(math.isfinite, (record["loss_d"], record["loss_g_adv"], record["loss_reg"])))
    meta = Simulator.load(out / "best.safetensors").metadata["training"]
    assert meta["regularizer"] == method and meta["lam"] is None


@pytest.mark.slow
def test_iid_resume_restores_its_encoder(tiny_file, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # Constant learning rates: a decay is planned over the configured epochs, which change here.
    loop.train(_config(tiny_file, straight, regularizer="iid", lr_decay=0), progress_bar=False)
    loop.train(_config(tiny_file, resumed, regularizer="iid", epochs=1, lr_decay=0), progress_bar=False)
    loop.train(_config(tiny_file, resumed, regularizer="iid", epochs=2, lr_decay=0), progress_bar=False)
    a, b = _weights(straight / "last.safetensors"), _weights(resumed / "last.safetensors")
    assert any(k.startswith("regularizer.encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("generator.", "regularizer.")))


def test_regularizer_config_is_validated(tiny_file, tmp_path):
    assert _config(tiny_file, tmp_path, regularizer="dp").weight == 5.0
    assert _config(tiny_file, tmp_path, regularizer="dp", lam=2.0).weight == 2.0
    with pytest.raises(ConfigError, match=r"'regularizer_options'.*got options \['beta'\]; expected only \['alpha'\]"):
        _config(tiny_file, tmp_path, regularizer="ndiv", regularizer_options={"beta": 1})
    with pytest.raises(ConfigError, match=r"'regularizer_options' is \{'space': 'embedding'\}; expected no 'space'"):
        _config(tiny_file, tmp_path, regularizer_options={"space": "embedding"})
    assert _config(tiny_file, tmp_path, sdi_space="embedding").regularizer_kwargs == {"space": "embedding"}
    with pytest.raises(ConfigError, match="'regularizer' is 'msgan'"):
        _config(tiny_file, tmp_path, regularizer="msgan")


def test_model_options_choose_the_structure(tiny_file, tmp_path):
    out = tmp_path / "halo"
    options = {"halo": True, "shape_zoom": True}
    loop.train(_config(tiny_file, out, epochs=1, model_options=options), progress_bar=False)
    simulator = Simulator.load(out / "best.safetensors")
    assert simulator.generator.config.halo and simulator.generator.config.shape_zoom
    assert simulator.generator.zoom[-1].weight.abs().max() > 0  # trained: the head starts at zero
    assert simulator.metadata["training"]["model_options"] == options
    assert np.isfinite(simulator.simulate(sim_features(tiny_file), seed=1).counts).all()
    # the ranges the run was trained on are recorded: its own particles are inside, a 1e30 GeV one is not
    assert simulator.metadata["feature_ranges"]["names"][0] == "energy"
    far = np.array([[1e30, 0, 0, 0, 0, 0, 1e30, 939.6, 0]], np.float32)
    assert simulator.outside_domain(far).tolist() == [True]
    with pytest.raises(ConfigError, match=r"training config: halo needs impact_frame"):
        _config(tiny_file, tmp_path, model_options={"halo": True, "impact_frame": False})
    with pytest.raises(ConfigError, match=r"'model_options' \{'colour': 1\}:.*colour"):
        _config(tiny_file, tmp_path, model_options={"colour": 1})


def test_each_class_reports_its_own_scale_per_channel():
    """EM responses generated 2 % high and hadronic ones 1 % low per channel: each class's mean
    generated / real counts reads its own factor, which one WS ratio would not name."""
    from training.evaluate import _scores

    rng = np.random.default_rng(3)
    pdg = np.repeat([22, 2112], 200)
    real = rng.gamma(400.0, 5.0, (400, 4, 5))  # 5 % spread: each class's mean known to 0.25 %
    generated = rng.gamma(400.0, 5.0, (400, 4, 5)) * np.where(pdg == 22, 1.02, 0.99)[:, None, None]
    report = _scores(real, generated, pdg)
    np.testing.assert_allclose(report["by_class"]["electromagnetic"]["scale_channels"], 1.02, atol=0.008)
    np.testing.assert_allclose(report["by_class"]["hadronic"]["scale_channels"], 0.99, atol=0.008)
