"""Work directories a killed process leaves behind are removed by the next one made on that host."""

import os
import subprocess
import sys

from saeception.store.scratch import remove_dead, work_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_directory_is_removed_and_a_live_ones_kept(tmp_path):
    """A SIGKILLed Train worker left its saeception-r0-* (a restored checkpoint, half a cycle) for good."""
    dead = tmp_path / f"saeception-r0-{_dead_pid()}-abcd"
    (dead / "restored").mkdir(parents=True)
    (dead / "restored" / "model.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f"saeception-r0-{os.getpid()}-efgh"
    live.mkdir()
    other = tmp_path / "saeception-r1-123-ijkl"  # another prefix: not this one's to judge
    other.mkdir()
    fresh = work_dir("saeception-r0", root=tmp_path)
    assert not dead.exists() and live.exists() and other.exists()
    assert fresh.name.startswith(f"saeception-r0-{os.getpid()}-") and fresh.is_dir()
    assert remove_dead("saeception-r0", root=tmp_path) == []
