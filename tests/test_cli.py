import json
from pathlib import Path

import numpy as np

from zdc_sim import cli, rootio


def test_generate_is_deterministic_and_inspect_reports(tmp_path, capsys):
    a, b = tmp_path / "a.root", tmp_path / "b.root"
    for out in (a, b):
        assert cli.main(["data", "generate", "--particles", "300", "--repeats", "3", "--seed", "11",
                         "--out", str(out), "--quiet"]) == 0
    assert "wrote 900 entries" in capsys.readouterr().out
    ra = np.concatenate([c[rootio.RESPONSE] for c in rootio.iterate(a)])
    rb = np.concatenate([c[rootio.RESPONSE] for c in rootio.iterate(b)])
    np.testing.assert_array_equal(ra, rb)
    assert rootio.read_provenance(a)["seed"] == 11

    assert cli.main(["data", "inspect", str(a), "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert set(summaries) == {"zn", "zp"}
    summary = summaries["zn"]
    assert summary["entries"] == 900 and summary["particles"] == 300 and summary["repeats"] == 3
    assert sum(summary["particles_by_type"].values()) == 300
    spread = summary["median_relative_spread"]
    assert spread["hadronic"]["median"] > 3 * spread["electromagnetic"]["median"]
    assert summary["median_total_miss"] < 0.01 * summary["median_total_hit"]
    assert set(summary["channels"]) == {f"channel_{k}" for k in range(1, 6)}
    assert summary["features"]["pz"]["std"] > 1000 and abs(summary["features"]["pz"]["mean"]) < 300  # both sides
    zp = summaries["zp"]
    assert set(zp["median_relative_spread"]) >= {"proton", "hadronic"} and zp["hit_fraction"] < summary["hit_fraction"]

    assert cli.main(["data", "inspect", str(a)]) == 0
    text = capsys.readouterr().out
    assert "hadronic / electromagnetic spread ratio" in text and "channel_5" in text and "(ZP responses)" in text


def test_convert_renames_branches(tmp_path, tiny_file, capsys):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"tree": "zdc"}))
    out = tmp_path / "copy.root"
    assert cli.main(["data", "convert", str(tiny_file), "--branch-map", str(mapping), "--out", str(out)]) == 0
    np.testing.assert_array_equal(next(rootio.iterate(out))[rootio.RESPONSE], next(rootio.iterate(tiny_file))[rootio.RESPONSE])


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert cli.main(["data", "inspect", str(tmp_path / "missing.root")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad_map = tmp_path / "m.json"
    bad_map.write_text("{not json")
    assert cli.main(["data", "inspect", str(tmp_path / "x.root"), "--branch-map", str(bad_map)]) == 2
    assert "cannot read it as JSON" in capsys.readouterr().err
    assert cli.main(["data", "generate", "--particles", "0", "--seed", "1", "--out", str(tmp_path / "z.root")]) == 2
    assert "at least 1 particle" in capsys.readouterr().err
    assert not (tmp_path / "z.root").exists()


def test_serve_with_a_missing_or_broken_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, tiny_checkpoint):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(tiny_checkpoint).read_bytes()[:1000])
    other = tmp_path / "model.pt"
    other.write_bytes(b"PK\x03\x04 a zip, as torch.save writes")
    for path, words in ((tmp_path / "missing.safetensors", "does not exist"), (truncated, "not a readable safetensors"),
                        (other, "not a readable safetensors")):
        assert cli.main(["serve", "--checkpoint", str(path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and words in err, err
    assert cli.main(["serve", "--host", "0.0.0.0", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "no api_token is set" in capsys.readouterr().err
