import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from zdc_sim import checkpoint, reference, rootio
from zdc_sim.atomic import atomic_output, remove_stale, write_text


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_output_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("fails mid-write")
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    write_text(target, "new")
    assert target.read_text() == "new" and _leftovers(tmp_path) == []


def test_temporary_files_of_running_writers_are_kept(tmp_path):
    target = tmp_path / "out.txt"
    mine = tmp_path / f".out.txt.{os.getpid()}.abcd1234.tmp"  # this process runs: not stale
    mine.write_text("in flight")
    assert remove_stale(target) == [] and mine.exists()


WRITERS = {
    "root": """
        from zdc_sim import reference, rootio
        chunk = next(reference.generate(20, 1, seed=0)).parts()
        with rootio.RootWriter(TARGET, rootio.dataset_branch_types()) as writer:
            writer.write(rootio.flatten_parts(chunk))
            writer._flush()
            print("writing", flush=True)
            time.sleep(60)
    """,
    "checkpoint": """
        import safetensors.torch, torch
        from zdc_sim import checkpoint
        def slow_save(tensors, path, metadata):
            open(path, "wb").write(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
        checkpoint.save_file = slow_save
        checkpoint.save(TARGET, {"w": torch.zeros(3)}, {})
    """,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_killed_writer_leaves_nothing_after_the_next_write(tmp_path, kind):
    target = tmp_path / ("data.root" if kind == "root" else "model.safetensors")
    script = "import time\nTARGET = " + repr(str(target)) + "\n" + textwrap.dedent(WRITERS[kind])
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not target.exists() and len(_leftovers(tmp_path)) == 1  # what a kill leaves: one hidden .tmp

    if kind == "root":
        chunk = next(reference.generate(20, 1, seed=1)).parts()
        assert rootio.write_dataset(target, [chunk]) == 20
        assert rootio.num_entries(target) == 20
    else:
        checkpoint.save(target, {"w": torch.ones(3)}, {"note": "again"})
        tensors, meta = checkpoint.load(target)
        assert torch.equal(tensors["w"], torch.ones(3)) and meta["note"] == "again"
    assert _leftovers(tmp_path) == []  # the next write of the target removed the dead writer's file
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
