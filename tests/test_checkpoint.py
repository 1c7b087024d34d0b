import pytest
import torch

from zdc_sim import checkpoint
from zdc_sim.checkpoint import CheckpointError


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "sub" / "model.safetensors"
    tensors = {"a.weight": torch.randn(3, 4), "rng": torch.arange(5, dtype=torch.uint8)}
    checkpoint.save(path, tensors, {"model": {"width": 4}, "metrics": [1.5, None]})
    loaded, meta = checkpoint.load(path)
    assert set(loaded) == set(tensors)
    torch.testing.assert_close(loaded["a.weight"], tensors["a.weight"])
    assert meta["model"] == {"width": 4} and meta["metrics"] == [1.5, None]
    assert meta["format"] == checkpoint.FORMAT and "code_version" in meta
    assert checkpoint.unprefixed("a", loaded).keys() == {"weight"}


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, {"w": torch.ones(2)}, {"version": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": torch.zeros(2)}, {"version": 2})
    tensors, meta = checkpoint.load(path)
    assert meta["version"] == 1 and tensors["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint.load(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="no zdc-sim metadata"):
        checkpoint.load(foreign)
    truncated = tmp_path / "truncated.safetensors"
    checkpoint.save(truncated, {"w": torch.ones(1000)}, {})
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        checkpoint.load(truncated)
