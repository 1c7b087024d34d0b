"""Every README block marked `<!-- runnable -->` runs as written, in order, in a fresh folder (the
blocks use tiny data: a few seconds each). `.venv/bin/` is this interpreter's folder."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)```", re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_fits_on_a_screen_and_has_runnable_blocks():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220
    kinds = [kind for kind, _ in runnable_blocks()]
    assert kinds.count("bash") >= 3 and kinds.count("python") >= 1


@pytest.mark.slow
def test_runnable_readme_blocks_run_as_written(tmp_path):
    (tmp_path / "data").mkdir()
    bin_dir = str(Path(sys.executable).parent) + "/"
    for kind, code in runnable_blocks():
        if kind == "python":
            commands = [[sys.executable, "-c", code]]
        else:
            commands = [["bash", "-c", line.replace(".venv/bin/", bin_dir)] for line in code.splitlines()
                        if line.strip() and not line.startswith("#")]
        for command in commands:
            result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{command[-1]}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert (tmp_path / "data/demo.sim.root").stat().st_size > 0 and (tmp_path / "runs/demo/best.safetensors").exists()
