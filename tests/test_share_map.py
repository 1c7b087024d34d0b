"""The tower share map (zdc_sim/share_map.py): its interpolation, its fit on synthetic splits whose
spread is known, the region scaling that carries it into the image (ZN quadrants, ZP strips), its
refit command and its ONNX export; the same for the ZP's edge total map."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from zdc_sim import checkpoint, geometry, reference, share_map
from zdc_sim.errors import ConfigError
from zdc_sim.exports import onnx as onnx_export
from zdc_sim.models import Generator, ModelConfig, SIZES
from zdc_sim.simulator import Simulator

ZN, ZP = geometry.detector("zn"), geometry.detector("zp")


def test_interpolation_follows_numpy_inside_and_keeps_slope_one_outside():
    x = torch.tensor([[-1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([[-3.0, 0.0, 1.0], [0.0, 2.0, 4.0]])
    u = torch.tensor([-0.5, 2.0])
    got = share_map.interpolate(u, x, y)
    assert got.tolist() == pytest.approx([np.interp(-0.5, x[0], y[0]), np.interp(2.0, x[1], y[1])])
    outside = share_map.interpolate(torch.tensor([-3.0, 5.0]), x, y)
    assert outside.tolist() == pytest.approx([-3.0 - 2.0, 4.0 + 2.0])  # below: -3 + (-3 - -1); above: 4 + (5 - 3)


def synthetic_splits(n, spread, rng):
    """(impact (n, 2), energy, em, towers (n, 1, 4)): showers hitting x in 0.3-0.9 cm, y -0.3 cm
    (between and on bin centres), whose right and top shares have log odds 0.3 + spread x a
    standard normal, totals 2,500-7,500 counts."""
    logits = 0.3 + spread * rng.standard_normal((n, 2))
    right, top = 1 / (1 + np.exp(-logits[:, 0])), 1 / (1 + np.exp(-logits[:, 1]))
    total = rng.uniform(2500.0, 7500.0, (n, 1))
    towers = np.stack([(1 - right) * top, right * top, (1 - right) * (1 - top), right * (1 - top)], 1) * total
    impact = np.stack([rng.uniform(0.3, 0.9, n), np.full(n, -0.3)], 1)
    return impact, np.full(n, 2500.0), np.zeros(n, bool), towers[:, None]


def fitted_map(real_spread, generated_spread, n=12000):
    rng = np.random.default_rng(0)
    impact, energy, em, real = synthetic_splits(n, real_spread, rng)
    *_, generated = synthetic_splits(n, generated_spread, rng)
    knots = share_map.fit_knots(ZN, impact, energy, em, real, generated)
    module = share_map.TowerShareMap(ZN)
    for name, value in knots.items():
        getattr(module, name).copy_(torch.as_tensor(value))
    return module, knots


def test_a_too_narrow_split_is_widened_to_the_real_spread_and_the_rest_stays_identity():
    """Generated log odds spread 0.5 where real ones spread 1.0: mapped, fresh generated splits
    spread 1.0 (to 5 %) around the real centre; a bin with no showers (elsewhere on the face, or
    the EM class) maps every share to itself."""
    module, knots = fitted_map(real_spread=1.0, generated_spread=0.5)
    impact, energy, em, towers = synthetic_splits(4000, 0.5, np.random.default_rng(7))
    impact[:, 0] = np.random.default_rng(8).uniform(0.4, 0.8, len(impact))  # mostly between bin centres
    towers = torch.tensor(towers[:, 0], dtype=torch.float32)
    mapped = module.target_shares(towers, torch.tensor(impact, dtype=torch.float32),
                                  torch.tensor(energy, dtype=torch.float32), torch.tensor(em))
    log_odds = torch.logit(mapped).numpy()
    np.testing.assert_allclose(log_odds.std(0), 1.0, rtol=0.05)
    np.testing.assert_allclose(log_odds.mean(0), 0.3, atol=0.05)
    fitted = (knots["real_knots"] != knots["generated_knots"]).any(-1).reshape(2, -1)
    assert fitted[0].sum() > 0 and not fitted[1].any()  # hadronic bins only
    elsewhere = torch.tensor(np.tile([-3.0, 3.0], (len(towers), 1)), dtype=torch.float32)
    for impact_elsewhere, em_flag in ((elsewhere, torch.zeros(len(towers), dtype=torch.bool)),
                                      (torch.tensor(impact, dtype=torch.float32), torch.ones(len(towers), dtype=torch.bool))):
        same = module.target_shares(towers, impact_elsewhere, torch.tensor(energy, dtype=torch.float32), em_flag)
        np.testing.assert_allclose(same.numpy(), torch.stack(share_map.shares(towers, module.splits)[0], 1).numpy(), atol=1e-4)


def mapped_towers(module, detector, mean, impact, energy, em):
    """Run the map on mean images: (out, towers before, towers after, target shares, shares got)."""
    out = module(mean, impact, energy, em)
    masks = torch.tensor(detector.masks_flat[:4], dtype=torch.float32)
    before, after = mean.flatten(1) @ masks.T, out.flatten(1) @ masks.T
    target = module.target_shares(before, impact, energy, em)
    return out, before, after, target, torch.stack(share_map.shares(after, module.splits)[0], 1)


def test_the_image_carries_the_mapped_shares_with_its_total_and_in_quadrant_shape_kept():
    """forward scales whole quadrants: the towers of the result hold the target shares (the 2 x 2
    proportional fit converges), the towers' total and the ratio of any two fibres of one quadrant
    are unchanged, and a shower under MIN_TOWER_COUNTS is left as it is. A shower with nothing on
    one side stays finite (its factors are bounded)."""
    module, _ = fitted_map(real_spread=1.0, generated_spread=0.5)
    rng = np.random.default_rng(3)
    mean = torch.tensor(rng.gamma(2.0, 3.0, (64, 44, 44)), dtype=torch.float32)  # ~12,000 counts each
    mean[0] *= 1e-3  # ~12 counts: a graze
    mean[2, :, 22:] = 0.0  # nothing on the right: its right share cannot move, its top share can
    impact = torch.tensor(np.tile([0.5, -0.3], (64, 1)), dtype=torch.float32)
    energy, em = torch.full((64,), 2500.0), torch.zeros(64, dtype=torch.bool)
    out, before, after, target, got = mapped_towers(module, ZN, mean, impact, energy, em)
    assert torch.isfinite(out).all() and float(got[2, 0]) == 0.0
    assert float(got[2, 1]) == pytest.approx(float(target[2, 1]), abs=1e-4)
    assert abs(float(target[2, 1]) - float(share_map.shares(before, module.splits)[0][1][2])) > 1e-3
    np.testing.assert_allclose(got[3:].numpy(), target[3:].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1].numpy(), target[1].numpy(), atol=1e-4)
    np.testing.assert_allclose(after[1:].sum(1).numpy(), before[1:].sum(1).numpy(), rtol=1e-4)
    assert torch.equal(out[0], mean[0]) and not torch.allclose(out[1:], mean[1:])
    ratio = out[1:, :22, :22] / mean[1:, :22, :22]  # the top-left quadrant, one factor per shower
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # shares near 0 or 1 have infinite log odds in bf16
        lopsided = mean.clone()
        lopsided[:, :, :22] *= 1e-5  # right shares of ~1
        assert torch.isfinite(module(lopsided, impact, energy, em)).all()


def test_refit_share_map_writes_a_mapped_checkpoint(tiny_checkpoint, tiny_file, tmp_path, monkeypatch, capsys):
    """On the tiny training file (bins of 5 showers allowed): a new checkpoint whose config has the
    map on, the record of what it was fitted on, fitted knots, and the source left as it was; it
    loads and simulates, unlike the unmapped model; a refit of it gives the same knots. An installed
    shipped model is not rewritten in place."""
    from zdc_sim.cli import main

    monkeypatch.setattr(share_map, "MIN_SAMPLES", 5)
    monkeypatch.setattr(share_map, "MIN_TOWER_COUNTS", 0.0)
    original = tiny_checkpoint.read_bytes()
    out = tmp_path / "mapped.safetensors"
    assert main(["refit-share-map", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_file), "--out", str(out)]) == 0
    assert tiny_checkpoint.read_bytes() == original
    tensors, metadata = checkpoint.load(out)
    assert metadata["model"]["tower_share_map"] is True
    assert metadata["share_map_refit"]["samples"] == 2 and metadata["share_map_refit"]["bins_fitted"] > 0
    assert metadata["share_map_refit"]["particles"] == 40
    assert not torch.equal(tensors["generator.share_map.real_knots"], tensors["generator.share_map.generated_knots"])
    x, _ = reference.sample_particles(50, np.random.default_rng(2))
    mapped = Simulator.load(out).simulate(x, seed=1, extrapolate=True).counts
    assert np.isfinite(mapped).all() and not np.array_equal(mapped, Simulator.load(tiny_checkpoint).simulate(x, seed=1, extrapolate=True).counts)
    assert main(["refit-share-map", "--checkpoint", "zn", "--data", str(tiny_file)]) == 2  # no --out: refused
    assert "expected --out" in capsys.readouterr().err
    again = tmp_path / "again.safetensors"  # a map already there is dropped before the fit: the same knots
    assert main(["refit-share-map", "--checkpoint", str(out), "--data", str(tiny_file), "--out", str(again)]) == 0
    for name in ("generated_knots", "real_knots", "log_fraction_knots"):
        assert torch.equal(checkpoint.load(again)[0][f"generator.share_map.{name}"], tensors[f"generator.share_map.{name}"])


def test_the_zps_strips_get_their_nested_shares_exactly():
    """The ZP's split: the right half's share, then strip 2 within 1-2 and strip 4 within 3-4. With
    a map that widens every share, the strips of the result carry the mapped shares, each strip is
    scaled as a whole and the towers' total is kept."""
    module = share_map.TowerShareMap(ZP)
    with torch.no_grad():
        module.real_knots.copy_(module.generated_knots * 1.5 + 0.2)
    rng = np.random.default_rng(4)
    mean = torch.tensor(rng.gamma(2.0, 3.0, (32, 30, 56)), dtype=torch.float32)
    impact = torch.tensor(rng.uniform(-8, 8, (32, 2)), dtype=torch.float32)
    energy, em = torch.full((32,), 2500.0), torch.zeros(32, dtype=torch.bool)
    out, before, after, target, got = mapped_towers(module, ZP, mean, impact, energy, em)
    np.testing.assert_allclose(got.numpy(), target.numpy(), atol=1e-4)
    assert not np.allclose(target.numpy(), torch.stack(share_map.shares(before, module.splits)[0], 1).numpy(), atol=1e-2)
    np.testing.assert_allclose(after.sum(1).numpy(), before.sum(1).numpy(), rtol=1e-4)
    ratio = out[:, :, :14] / mean[:, :, :14]  # strip 1, one factor per shower
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), rtol=1e-4)


def test_a_mapped_model_exports_its_responses(tmp_path):
    """The map runs inside the exported graph: with a map that widens every hadronic split, ONNX
    Runtime gives the Simulator's responses, which differ from the unmapped model's."""
    from tests.conftest import save_tiny_model

    x, _ = reference.sample_particles(600, np.random.default_rng(3))
    for detector in ("zn", "zp"):
        edge = detector == "zp"  # and the ZP's edge total map, which widens every edge bin's totals
        path = save_tiny_model(tmp_path / f"mapped_{detector}.safetensors", detector, tower_share_map=True,
                               edge_total_map=edge)
        mapped = Simulator.load(path, device="cpu")
        knots = mapped.generator.share_map.generated_knots
        with torch.no_grad():
            mapped.generator.share_map.real_knots.copy_(knots * 1.5 + 0.2)
            if edge:
                edge_map = mapped.generator.edge_total_map
                zone = torch.tensor(share_map.edge_bins(ZP)).repeat(2)
                edge_map.real_knots[zone] = edge_map.generated_knots[zone] * 1.2 + 0.1
        session = ort.InferenceSession(str(onnx_export.write_onnx(mapped, tmp_path / detector)),
                                       providers=["CPUExecutionProvider"])
        responses, channels = session.run(["RESPONSES", "CHANNELS"], {"FEATURES": x, **mapped.random_inputs(len(x), seed=5)})
        want = mapped.simulate(x, seed=5, extrapolate=True)
        np.testing.assert_allclose(channels, want.channels, rtol=2e-3, atol=2.0)
        assert (responses != want.counts).mean() < 1e-3 and want.counts.sum() > 0
        plain = Simulator.load(save_tiny_model(tmp_path / f"plain_{detector}.safetensors", detector), device="cpu")
        assert not np.allclose(plain.simulate(x, seed=5, extrapolate=True).channels, want.channels)


def test_the_map_needs_the_impact_frame():
    with pytest.raises(ConfigError, match="impact_frame"):
        ModelConfig(**{**SIZES["tiny"].to_dict(), "impact_frame": False, "tower_share_map": True})
    with pytest.raises(ConfigError, match="edge_total_map needs impact_frame"):
        ModelConfig(**{**SIZES["tiny"].to_dict(), "impact_frame": False, "edge_total_map": True})
    for detector in ("zn", "zp"):
        Generator(ModelConfig(**{**SIZES["tiny"].to_dict(), "detector": detector, "tower_share_map": True}))


def synthetic_totals(impact_x, spread, rng):
    """(P, 2) all-counts totals of showers of 2,500 GeV whose log deposited fraction is log 5 +
    spread x a standard normal (12,500 counts at the median)."""
    return 2500.0 * np.exp(np.log(5.0) + spread * rng.standard_normal((len(impact_x), 2)))


def test_the_edge_total_map_widens_edge_totals_and_leaves_the_interior_alone():
    """Generated log fractions spread 0.15 where real ones spread 0.3, at the ZP's beam-side edge
    (x -12.2 to -11.8 cm) and in the middle of the face (-1 to 1 cm): mapped, fresh generated edge
    totals spread 0.3 (to 5 %) around the real median; in the middle, outside the edge zone, every
    factor is 1 (to float rounding), as for an EM shower (no EM showers fitted); exactly 1 for a
    sample under 50 counts."""
    rng = np.random.default_rng(0)
    n = 12000
    impact_x = np.concatenate([rng.uniform(-12.2, -11.8, n), rng.uniform(-1.0, 1.0, n)])
    energy, em = np.full(2 * n, 2500.0), np.zeros(2 * n, bool)
    knots = share_map.fit_edge_knots(ZP, impact_x, energy, em, synthetic_totals(impact_x, 0.3, rng),
                                     synthetic_totals(impact_x, 0.15, rng))
    module = share_map.EdgeTotalMap(ZP)
    for name, value in knots.items():
        getattr(module, name).copy_(torch.as_tensor(value))
    fresh = torch.tensor(synthetic_totals(impact_x, 0.15, np.random.default_rng(9))[:, 0], dtype=torch.float32)
    x, e = torch.tensor(impact_x, dtype=torch.float32), torch.tensor(energy, dtype=torch.float32)
    factors = module.factors(fresh, x, e, torch.zeros(2 * n, dtype=torch.bool))
    mapped = torch.log(fresh * factors / e)
    assert float(mapped[:n].std()) == pytest.approx(0.3, rel=0.05)
    assert float(mapped[:n].median()) == pytest.approx(np.log(5.0), abs=0.02)
    torch.testing.assert_close(factors[n:], torch.ones(n), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.factors(fresh[:n], x[:n], e[:n], torch.ones(n, dtype=torch.bool)), torch.ones(n),
                               rtol=0, atol=1e-6)
    assert torch.equal(module.factors(torch.full((3,), 40.0), x[:3], e[:3], torch.zeros(3, dtype=torch.bool)), torch.ones(3))
    image = torch.rand(4, 30, 56) * 10 + 5  # ~12,000 counts each: the image is scaled as a whole
    out = module(image, torch.stack([x[:4], torch.zeros(4)], 1), e[:4], torch.zeros(4, dtype=torch.bool))
    ratio = out / image
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), rtol=1e-5) and not torch.allclose(out, image)


def test_refit_with_the_edge_total_map(tiny_zp_checkpoint, tmp_path, monkeypatch):
    """On a tiny ZP training file (bins of 5 showers allowed), with the untrained model's impact head
    set to put every shower at the beam-side edge (x -12 cm): the checkpoint gets both maps, the
    edge map fitted in its zone only; a refit without the flag keeps it (the same knots), and the
    model simulates responses that differ from those of the share map alone."""
    from tests.conftest import make_parts
    from zdc_sim import rootio
    from zdc_sim.cli import main

    monkeypatch.setattr(share_map, "MIN_SAMPLES", 5)
    monkeypatch.setattr(share_map, "MIN_TOWER_COUNTS", 0.0)
    data = tmp_path / "zp.root"
    rootio.write_dataset(data, [make_parts(60, 4, seed=5, reaching="zp")], provenance={"seed": 5})
    tensors, metadata = checkpoint.load(tiny_zp_checkpoint)
    edge_model = tmp_path / "edge_model.safetensors"
    checkpoint.save(edge_model, {**tensors, "generator.impact_weight": torch.zeros_like(tensors["generator.impact_weight"]),
                                 "generator.impact_bias": torch.tensor([-12.0, 0.0])},
                    {k: v for k, v in metadata.items() if k not in ("format", "code_version")})
    both, share_only, again = tmp_path / "both.safetensors", tmp_path / "share.safetensors", tmp_path / "again.safetensors"
    common = ["--checkpoint", str(edge_model), "--data", str(data)]
    assert main(["refit-share-map", *common, "--out", str(both), "--edge-total-map"]) == 0
    assert main(["refit-share-map", *common, "--out", str(share_only)]) == 0
    tensors, metadata = checkpoint.load(both)
    assert metadata["model"]["edge_total_map"] is True and metadata["share_map_refit"]["edge_bins_fitted"] > 0
    assert checkpoint.load(share_only)[1]["model"]["edge_total_map"] is False
    fitted = (tensors["generator.edge_total_map.real_knots"] != tensors["generator.edge_total_map.generated_knots"]).any(1)
    assert fitted.any() and not (fitted & ~torch.tensor(share_map.edge_bins(ZP)).repeat(2)).any()
    assert main(["refit-share-map", "--checkpoint", str(both), "--data", str(data), "--out", str(again)]) == 0
    for name in ("generated_knots", "real_knots"):
        key = f"generator.edge_total_map.{name}"
        assert torch.equal(checkpoint.load(again)[0][key], tensors[key])
    x, _ = reference.sample_particles(400, np.random.default_rng(2))
    x = x[geometry.reaches(x, "zp")]
    got = Simulator.load(both).simulate(x, seed=1, extrapolate=True).channels  # every impact in the fitted bin
    assert np.isfinite(got).all() and not np.allclose(got, Simulator.load(share_only).simulate(x, seed=1, extrapolate=True).channels)
