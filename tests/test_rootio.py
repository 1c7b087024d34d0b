import json

import awkward as ak
import numpy as np
import pytest
import uproot

from zdc_sim import cli, rootio
from zdc_sim import features as F
from zdc_sim.errors import RootFileError


def raw_branches(parts, response=None):
    """Standard-schema branches written with plain uproot, so tests can build broken files."""
    out = rootio.flatten_parts(parts)
    if response is not None:
        out["response_zn"] = response
    return out


def write_raw(path, branches, tree="zdc"):
    with uproot.recreate(path) as f:
        types = {k: (v.type if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:]))) for k, v in branches.items()}
        f.mktree(tree, types)
        f[tree].extend(branches)
    return path


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_round_trip_preserves_every_column(tmp_path, tiny_parts):
    path = tmp_path / "d.root"
    assert rootio.write_dataset(path, [tiny_parts], provenance={"seed": 3}) == len(tiny_parts["pdg"])
    chunks = list(rootio.iterate(path, step_size=50, parts=rootio.PARTS))
    assert [len(c["pdg"]) for c in chunks] == [50, 50, 50, 10]
    for part, values in tiny_parts.items():
        got = np.concatenate([c[part] for c in chunks])
        assert got.dtype == values.dtype
        np.testing.assert_array_equal(got, values)
    assert rootio.read_provenance(path) == {"seed": 3}
    assert leftovers(tmp_path, {"d.root"}) == []


def test_written_file_is_a_plain_ttree(tiny_file):
    with uproot.open(tiny_file) as f:
        assert f.classnames() == {"zdc;1": "TTree", "provenance;1": "TObjString"}
        tree = f["zdc"]
        assert tree["response_zn"].typename == "float[44][44]" and tree["response_zp"].typename == "float[30][56]"
        assert tree["energy"].typename == "float" and tree["pdg"].typename == "int32_t"
        assert tree["particle_id"].typename == "int64_t"
        assert not any(k.startswith("n") and k != "particle_id" for k in tree.keys())  # no counter branches


def test_reading_only_some_parts(tiny_file, tiny_parts):
    chunk = next(rootio.iterate(tiny_file, parts=(rootio.FEATURES, rootio.PDG)))
    assert set(chunk) == {rootio.FEATURES, rootio.PDG}
    np.testing.assert_array_equal(chunk[rootio.FEATURES], tiny_parts[rootio.FEATURES])


def test_branch_map_reads_other_names(tmp_path, tiny_parts):
    renamed = {("E" if k == "energy" else "img" if k == "response_zn" else k): v for k, v in raw_branches(tiny_parts).items()}
    path = write_raw(tmp_path / "other.root", renamed, tree="events")
    schema = rootio.Schema.from_branch_map({"tree": "events", "branches": {"energy": "E", "response": "img"}})
    chunk = next(rootio.iterate(path, schema))
    np.testing.assert_array_equal(chunk[rootio.RESPONSE], tiny_parts[rootio.RESPONSE])
    with pytest.raises(ValueError, match="unknown keys"):
        rootio.Schema.from_branch_map({"branches": {"enrgy": "E"}})


def test_a_file_from_before_the_zp_is_read_as_zn_data(tmp_path, tiny_parts):
    """Files written before the ZP existed hold the ZN's responses in a branch named `response`."""
    branches = {("response" if k == "response_zn" else k): v for k, v in raw_branches(tiny_parts).items()
                if k != "response_zp"}
    path = write_raw(tmp_path / "old.root", branches)
    chunk = next(rootio.iterate(path))
    np.testing.assert_array_equal(chunk[rootio.RESPONSE_ZN], tiny_parts[rootio.RESPONSE_ZN])
    with pytest.raises(RootFileError, match="missing branch.*response_zp"):
        next(rootio.iterate(path, parts=(rootio.FEATURES, rootio.RESPONSE_ZP)))


def test_zp_responses_are_read_with_their_own_shape(tmp_path, tiny_parts):
    path = write_raw(tmp_path / "zp.root", raw_branches(tiny_parts))
    chunk = next(rootio.iterate(path, parts=(rootio.RESPONSE_ZP,)))
    assert chunk[rootio.RESPONSE_ZP].shape == (len(tiny_parts["pdg"]), 30, 56)
    narrow = {**raw_branches(tiny_parts), "response_zp": np.ascontiguousarray(tiny_parts[rootio.RESPONSE_ZP][:, :, :44])}
    with pytest.raises(RootFileError, match="wrong response type.*response_zp.*float\\[30\\]\\[56\\].*ZP"):
        next(rootio.iterate(write_raw(tmp_path / "narrow.root", narrow), parts=(rootio.RESPONSE_ZP,)))


def test_jagged_response_of_1936_values_is_accepted(tmp_path, tiny_parts):
    flat = ak.Array(list(tiny_parts[rootio.RESPONSE].reshape(len(tiny_parts["pdg"]), -1)))
    path = write_raw(tmp_path / "jagged.root", raw_branches(tiny_parts, ak.values_astype(flat, np.float32)))
    chunk = next(rootio.iterate(path))
    np.testing.assert_array_equal(chunk[rootio.RESPONSE], tiny_parts[rootio.RESPONSE])


# --- every bad-file case: the error names what was wrong, and a conversion writes nothing --------

def truncated(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    path = tmp_path / "truncated.root"
    path.write_bytes(data[: len(data) // 2])
    return path


def text_file(path):
    path.write_text("hello, not ROOT")
    return path


def bad_files():
    def with_nan(parts):
        response = parts[rootio.RESPONSE].copy()
        response[5, 3, 4] = np.nan
        return raw_branches(parts, response)

    def with_inf_feature(parts):
        branches = raw_branches(parts)
        branches["vz"] = branches["vz"].copy()
        branches["vz"][7] = np.inf
        return branches

    def without_vz(parts):
        branches = raw_branches(parts)
        del branches["vz"]
        return branches

    def narrow(parts):
        return raw_branches(parts, np.ascontiguousarray(parts[rootio.RESPONSE][:, :, :43]))

    def double(parts):
        return raw_branches(parts, parts[rootio.RESPONSE].astype(np.float64))

    def short_jagged(parts):
        values = [r.ravel() for r in parts[rootio.RESPONSE]]
        values[3] = values[3][:100]
        return raw_branches(parts, ak.values_astype(ak.Array(values), np.float32))

    return {
        "not_root": (lambda tmp, tf, parts: text_file(tmp / "x.root"),
                     ["not a readable ROOT file", "x.root"]),
        "truncated": (lambda tmp, tf, parts: truncated(tmp, tf), ["truncated", "truncated.root", "tree 'zdc'"]),
        "missing_tree": (lambda tmp, tf, parts: write_raw(tmp / "t.root", raw_branches(parts), tree="events"),
                         ["missing tree", "tree 'zdc'", "trees ['events']"]),
        "missing_branch": (lambda tmp, tf, parts: write_raw(tmp / "b.root", without_vz(parts)),
                           ["missing branch", "branch 'vz'", "the 'vz' column", "closest"]),
        "wrong_shape": (lambda tmp, tf, parts: write_raw(tmp / "s.root", narrow(parts)),
                        ["wrong response type", "branch 'response_zn'", "float[44][44]", "found float[44][43]"]),
        "wrong_dtype": (lambda tmp, tf, parts: write_raw(tmp / "d.root", double(parts)),
                        ["wrong response type", "float[44][44]", "found double[44][44]"]),
        "short_jagged": (lambda tmp, tf, parts: write_raw(tmp / "j.root", short_jagged(parts)),
                         ["wrong response shape", "1936 values per entry", "found 100 values at entry 3"]),
        "nan_response": (lambda tmp, tf, parts: write_raw(tmp / "n.root", with_nan(parts)),
                         ["non-finite response", "branch 'response_zn'", "nan at entry 5, pixel (3, 4)"]),
        "inf_feature": (lambda tmp, tf, parts: write_raw(tmp / "i.root", with_inf_feature(parts)),
                        ["invalid particle features", "row 7", "'vz'", "finite"]),
    }


@pytest.mark.parametrize("case", sorted(bad_files()))
def test_bad_file_raises_named_error_and_writes_nothing(case, tmp_path, tiny_file, tiny_parts, capsys):
    make, words = bad_files()[case]
    bad = make(tmp_path, tiny_file, tiny_parts)
    before = set(p.name for p in tmp_path.iterdir())
    with pytest.raises(RootFileError) as err:
        for _ in rootio.iterate(bad, step_size=64):
            pass
    for word in words:
        assert word in str(err.value), (word, str(err.value))

    # The same file through a command that writes: exit code 2, the message, and no output at all.
    identity = tmp_path / "map.json"
    identity.write_text(json.dumps({"tree": "zdc"}))
    out = tmp_path / "converted.root"
    assert cli.main(["data", "convert", str(bad), "--branch-map", str(identity), "--out", str(out)]) == 2
    assert words[0] in capsys.readouterr().err
    assert set(p.name for p in tmp_path.iterdir()) == before | {"map.json"}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RootFileError, match="no such file: file '.*nothere.root'"):
        next(rootio.iterate(tmp_path / "nothere.root"))


def test_corrupt_basket_is_reported(tmp_path, tiny_file):
    data = bytearray(tiny_file.read_bytes())
    # Overwrite bytes in the middle of the response baskets (compressed data) with garbage.
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
    path = tmp_path / "corrupt.root"
    path.write_bytes(bytes(data))
    with pytest.raises(RootFileError, match="truncated or corrupt file.*zlib.error.*decompressing"):
        for _ in rootio.iterate(path):
            pass


def test_writer_leaves_nothing_when_a_chunk_is_bad(tmp_path, tiny_parts):
    bad = dict(tiny_parts)
    bad[rootio.RESPONSE] = tiny_parts[rootio.RESPONSE].copy()
    bad[rootio.RESPONSE][0, 0, 0] = np.inf
    path = tmp_path / "out.root"
    with pytest.raises(RootFileError, match="non-finite values.*branch 'response_zn'"):
        rootio.write_dataset(path, [tiny_parts, bad])
    assert leftovers(tmp_path, set()) == []


def test_writer_keeps_the_previous_file_when_interrupted(tmp_path, tiny_parts):
    path = tmp_path / "out.root"
    rootio.write_dataset(path, [tiny_parts])
    before = path.read_bytes()

    def chunks():
        yield tiny_parts
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rootio.write_dataset(path, chunks())
    assert path.read_bytes() == before and leftovers(tmp_path, {"out.root"}) == []


def test_writer_rejects_wrong_shapes_and_branches(tmp_path, tiny_parts):
    types = rootio.dataset_branch_types()
    branches = rootio.flatten_parts(tiny_parts)
    with pytest.raises(RootFileError, match="wrong shape.*branch 'response_zn'.*shape \\(44, 44\\)"):
        with rootio.RootWriter(tmp_path / "a.root", types) as w:
            w.write({**branches, "response_zn": branches["response_zn"][:, :40]})
    with pytest.raises(RootFileError, match="wrong branches"):
        with rootio.RootWriter(tmp_path / "b.root", types) as w:
            w.write({k: v for k, v in branches.items() if k != "pdg"})
    assert leftovers(tmp_path, set()) == []


def test_writer_fills_baskets_of_the_requested_size(tmp_path, tiny_parts):
    path = tmp_path / "baskets.root"
    with rootio.RootWriter(path, rootio.dataset_branch_types(), basket_entries=100) as w:
        for start in range(0, 160, 10):
            w.write({k: v[start : start + 10] for k, v in rootio.flatten_parts(tiny_parts).items()})
    with uproot.open(path) as f:
        assert f["zdc"]["energy"].num_baskets == 2  # 100 + 60, not 16 small baskets


def test_validation_matches_the_features_module(tmp_path, tiny_parts):
    parts = dict(tiny_parts)
    parts[rootio.FEATURES] = tiny_parts[rootio.FEATURES].copy()
    parts[rootio.FEATURES][2, F.INDEX["energy"]] = -1.0
    path = write_raw(tmp_path / "neg.root", raw_branches(parts))
    with pytest.raises(RootFileError, match="row 2, feature 'energy'.*energy > 0"):
        next(rootio.iterate(path))
