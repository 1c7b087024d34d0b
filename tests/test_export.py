import subprocess
import sys

import numpy as np
import pytest
import uproot

from zdc_sim import export, features, geometry, rootio, reference
from zdc_sim.errors import RootFileError, ZdcError
from zdc_sim.simulator import Simulator



def write_particles(path, n=50, seed=5, tree="zdc"):
    feats, _ = reference.sample_particles(n, np.random.default_rng(seed))
    types = {name: np.dtype(np.float32) for name in features.NAMES}
    with rootio.RootWriter(path, types, tree=tree) as w:
        w.write({name: feats[:, i] for i, name in enumerate(features.NAMES)})
    return features.validate(feats)


@pytest.fixture(scope="module")
def sim(tiny_checkpoint):
    return Simulator.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def both(sim, tiny_zp_checkpoint):
    return {"zn": sim, "zp": Simulator.load(tiny_zp_checkpoint, device="cpu")}


def _arrays(path, tree="zdc"):
    with uproot.open(path) as f:
        return f[tree].arrays(library="np")


def test_round_trip_branch_by_branch_both_detectors(tmp_path, both):
    feats = write_particles(tmp_path / "in.root", n=200)
    result = export.export_file(tmp_path / "in.root", tmp_path / "out.root", both, seed=3, chunk_size=16, progress=False)
    assert result.entries == 200
    out = _arrays(tmp_path / "out.root")
    per_detector = [f"{kind}_{d}" for d in ("zn", "zp") for kind in ("response", "channels", "out_of_domain", "reached")]
    assert sorted(out) == sorted(list(features.NAMES) + per_detector)
    for i, name in enumerate(features.NAMES):
        np.testing.assert_array_equal(out[name], feats[:, i])
    for det, shape in (("zn", (44, 44)), ("zp", (30, 56))):
        response = out[f"response_{det}"]
        assert response.shape == (200, *shape) and response.dtype == np.float32
        seed = export.detector_seed(3, det)
        np.testing.assert_allclose(response, both[det].simulate(feats, seed=seed, extrapolate=True).counts, rtol=1e-5)
        np.testing.assert_allclose(out[f"channels_{det}"], geometry.channel_sums(response), rtol=1e-5)
        np.testing.assert_array_equal(out[f"reached_{det}"], geometry.reaches(feats, det))
        assert not response[~out[f"reached_{det}"]].any()
    assert out["reached_zn"].any() and out["reached_zp"].any() and not (out["reached_zn"] & out["reached_zp"]).all()
    prov = rootio.read_provenance(tmp_path / "out.root")
    assert prov["seed"] == 3 and prov["entries"] == 200 and prov["detectors"] == ["zn", "zp"]
    assert prov["model_versions"] == {d: s.model_version for d, s in both.items()}
    assert prov["model_checksums"]["zp"].startswith("sha256:") and prov["input_checksum"].startswith("sha256:")
    assert not list(tmp_path.glob(".*"))  # no partial file or manifest left


def test_one_detector_export_is_the_simulators_output(tmp_path, sim):
    feats = write_particles(tmp_path / "in.root")
    export.export_file(tmp_path / "in.root", tmp_path / "out.root", sim, seed=3, chunk_size=16, progress=False)
    out = _arrays(tmp_path / "out.root")
    assert "response_zp" not in out
    np.testing.assert_allclose(out["response_zn"], sim.simulate(feats, seed=3, extrapolate=True).counts, rtol=1e-5)


def test_output_does_not_depend_on_chunk_size_and_channels_only(tmp_path, sim):
    write_particles(tmp_path / "in.root", n=40)
    for chunk in (7, 1000):
        export.export_file(tmp_path / "in.root", tmp_path / f"c{chunk}.root", sim, seed=9, chunk_size=chunk, progress=False)
    a, b = _arrays(tmp_path / "c7.root"), _arrays(tmp_path / "c1000.root")
    np.testing.assert_allclose(a["response_zn"], b["response_zn"], rtol=1e-5)
    export.export_file(tmp_path / "in.root", tmp_path / "ch.root", sim, seed=9, channels_only=True, progress=False)
    c = _arrays(tmp_path / "ch.root")
    assert "response_zn" not in c
    np.testing.assert_allclose(c["channels_zn"], a["channels_zn"], rtol=1e-5)


def test_resume_after_an_interrupt_gives_the_same_file(tmp_path, sim):
    write_particles(tmp_path / "in.root", n=50)
    export.export_file(tmp_path / "in.root", tmp_path / "straight.root", sim, seed=4, chunk_size=10, progress=False)
    calls = []

    def interrupted(raw, draws):
        calls.append(len(raw))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return sim.simulate_draws(raw, draws)

    out = tmp_path / "resumed.root"
    with pytest.raises(KeyboardInterrupt):
        export.export_file(tmp_path / "in.root", out, sim, seed=4, chunk_size=10, progress=False,
                           simulate={"zn": interrupted})
    assert not out.exists() and export.partial_path(out).exists()
    with pytest.raises(ZdcError, match=r"other \['seed'\]"):
        export.export_file(tmp_path / "in.root", out, sim, seed=5, chunk_size=10, progress=False, resume=True)
    result = export.export_file(tmp_path / "in.root", out, sim, seed=4, chunk_size=10, progress=False, resume=True)
    assert 10 <= result.resumed_from <= 30 and result.entries == 50
    a, b = _arrays(tmp_path / "straight.root"), _arrays(out)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
    assert not export.partial_path(out).exists()


def test_compression_is_chosen_and_does_not_change_values(tmp_path, sim):
    write_particles(tmp_path / "in.root", n=30)
    for spec in ("none", "zstd:1"):
        export.export_file(tmp_path / "in.root", tmp_path / f"{spec[:4]}.root", sim, seed=2, compression=spec, progress=False)
    with uproot.open(tmp_path / "none.root") as plain, uproot.open(tmp_path / "zstd.root") as packed:
        assert plain.file.fCompress % 100 == 0 and packed.file.fCompress == 501  # ROOT's code: 100 * algorithm + level
        energy = plain["zdc"]["energy"]
        assert energy.compressed_bytes == energy.uncompressed_bytes  # the default stores baskets as they are
        for name in ("energy", "response_zn", "channels_zn"):
            np.testing.assert_array_equal(plain["zdc"][name].array(library="np"), packed["zdc"][name].array(library="np"))
    with pytest.raises(ZdcError, match="compression 'gzip:1' is not understood; expected 'none' or .*zstd"):
        export.export_file(tmp_path / "in.root", tmp_path / "bad.root", sim, compression="gzip:1", progress=False)
    with pytest.raises(ZdcError, match="LEVEL 1-9"):
        rootio.parse_compression("zlib:0")
    assert not (tmp_path / "bad.root").exists() and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("make_bad,words", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"root" * 100), "not a readable ROOT file"),
    (lambda p: p.write_bytes(open(p.with_name("in.root"), "rb").read()[:3000]), "corrupt"),
])
def test_bad_input_leaves_no_output(tmp_path, sim, make_bad, words):
    write_particles(tmp_path / "in.root", n=2000)
    bad = tmp_path / "bad.root"
    make_bad(bad)
    with pytest.raises(RootFileError, match=words):
        export.export_file(bad, tmp_path / "out.root", sim, seed=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.root", "in.root"][not bad.exists():]


def test_missing_branch_is_named(tmp_path, sim):
    with rootio.RootWriter(tmp_path / "in.root", {"energy": np.float32}) as w:
        w.write({"energy": np.ones(3, np.float32)})
    with pytest.raises(RootFileError, match="missing branch.*'vx'"):
        export.export_file(tmp_path / "in.root", tmp_path / "out.root", sim, progress=False)
    assert not (tmp_path / "out.root").exists()


def test_several_inputs_on_an_in_process_dask_cluster_one_bad(tmp_path, tiny_checkpoint):
    write_particles(tmp_path / "a.root", n=30)
    (tmp_path / "c.root").write_bytes(b"not root at all" * 10)
    rows = export.export_many([str(tmp_path / "a.root"), str(tmp_path / "c.root")], tmp_path / "new" / "out",
                              checkpoints=[str(tiny_checkpoint)], workers=1, processes=False, seed=2)
    assert [r["ok"] for r in rows] == [True, False] and "not a readable ROOT file" in rows[1]["error"]
    assert sorted(p.name for p in (tmp_path / "new" / "out").iterdir()) == ["a.zdcsim.root"]
    assert "1 of 2 inputs exported; 1 failed" in export.format_summary(rows)


@pytest.mark.slow
def test_cli_several_inputs_on_dask_one_bad(tmp_path, tiny_checkpoint):
    write_particles(tmp_path / "a.root", n=30)
    write_particles(tmp_path / "events.root", n=20, tree="events")
    (tmp_path / "c.root").write_bytes(b"not root at all" * 10)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, "-m", "zdc_sim", "export", str(tmp_path / "a.root"), str(tmp_path / "c.root"),
                          "--out", str(out), "--seed", "2", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                          "--detectors", "zn",
                          "--workers", "2", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "1 of 2 inputs exported; 1 failed" in run.stdout and "not a readable ROOT file" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.zdcsim.root"]
    assert _arrays(out / "a.zdcsim.root")["channels_zn"].shape == (30, 5)
    # one input with another tree name
    run = subprocess.run([sys.executable, "-m", "zdc_sim", "export", str(tmp_path / "events.root"), "--tree", "events",
                          "--out", str(tmp_path / "e.root"), "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                          "--detectors", "zn",
                          "--compression", "lz4:4", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert _arrays(tmp_path / "e.root", "events")["response_zn"].shape == (20, 44, 44)
    with uproot.open(tmp_path / "e.root") as f:
        assert f.file.fCompress == 404
    run = subprocess.run([sys.executable, "-m", "zdc_sim", "export", str(tmp_path / "a.root"), str(tmp_path / "events.root"),
                          "--out", str(out), "--compression", "fast"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "compression 'fast' is not understood" in run.stderr


def test_particles_outside_the_trained_ranges_are_flagged_not_fatal(tmp_path, sim):
    feats, _ = reference.sample_particles(300, np.random.default_rng(9))
    feats = feats[geometry.reaches(feats, "zn")][:30]  # particles that reach the ZN: their ranges count
    feats[[4, 17], features.INDEX["mass"]] = 1e6  # two impossible particles among 30
    types = {name: np.dtype(np.float32) for name in features.NAMES}
    with rootio.RootWriter(tmp_path / "in.root", types) as w:
        w.write({name: feats[:, i] for i, name in enumerate(features.NAMES)})
    result = export.export_file(tmp_path / "in.root", tmp_path / "out.root", sim, seed=1, chunk_size=8, progress=False)
    assert result.entries == 30 and result.out_of_domain == 2
    out = _arrays(tmp_path / "out.root")
    assert np.flatnonzero(out["out_of_domain_zn"]).tolist() == [4, 17]
    assert rootio.read_provenance(tmp_path / "out.root")["out_of_domain"] == 2
    assert "2 outside the trained feature ranges" in export.format_summary([{**result.__dict__, "ok": True, "error": None}])
