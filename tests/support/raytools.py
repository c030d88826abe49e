"""Start nothing here; make sure every Ray process a test started under its RAY_TMPDIR is gone."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def pids_mentioning(fragment: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if fragment in cmd or fragment in env:
            pids.append(int(proc.name))
    return pids


def pids_titled(title: str, fragment: str) -> list[int]:
    """Processes mentioning `fragment` whose command line starts with `title`: Ray names its workers by the
    actor they hold (`ray::RayTrainWorker...`), so this finds them in milliseconds, without the state API."""
    out = []
    for pid in pids_mentioning(fragment):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title.encode()):
                out.append(pid)
        except OSError:
            continue  # gone meanwhile
    return out


def kill_all(fragment: str, grace_s: float = 5.0) -> None:
    """Ray's processes can ignore SIGTERM: ask, wait, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_mentioning(fragment):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and pids_mentioning(fragment):
            time.sleep(0.2)


def free_port() -> int:
    """A port nothing listens on now, on any interface (for a test's own servers)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]

