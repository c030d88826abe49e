"""Work directories that a killed process cannot leave behind for long.

A Train worker SIGKILLed mid-cycle never runs its `finally`: its work directory (a restored checkpoint, the
cycle being written, downloaded cache entries) stayed in /tmp for good. Each work directory's name carries
its process id, and making one first removes those of this host whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_dead(prefix: str, root: str | Path | None = None) -> list[Path]:
    """Removes `<root>/<prefix>-<pid>-*` whose process no longer runs; returns what it removed."""
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{prefix}-*-*"):
        pid = d.name[len(prefix) + 1:].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def work_dir(prefix: str, root: str | Path | None = None) -> Path:
    """A fresh `<root>/<prefix>-<this pid>-XXXX` (root: the temp dir), after removing dead processes' ones."""
    remove_dead(prefix, root)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir=root))
