"""The one way the project writes a file: to a temporary name beside the target, flushed to disk,
then renamed over it, so a reader sees the old file or the complete new one, never half of one.

A process killed mid-write (SIGKILL, power loss) cannot clean up: it leaves its temporary file,
`.NAME.<pid>.<random>.tmp`, beside the target. The next write of that target removes every such
file whose process no longer runs, so leftovers live only until the target is written again.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files of `target` left by processes that no longer run; returns them."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        pid = path.name[len(target.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(target, temporary: Path | None = None, keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends normally it is flushed to disk and
    renamed to `target`. When the block raises, the temporary file is removed and `target` is
    untouched, except for exceptions of the `keep_on` types, which keep a fixed `temporary` (an
    export's resumable partial file). The target's folder is created if it is missing."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(temporary) if temporary is not None else _temporary(target)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent, directory=True)
    except BaseException as exc:
        if not isinstance(exc, keep_on):
            tmp.unlink(missing_ok=True)
        raise


def write_text(target, text: str) -> None:
    """Write a small text file (results, manifests) atomically."""
    with atomic_output(target) as tmp:
        tmp.write_text(text)
