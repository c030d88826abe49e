"""Benchmark 4b: what the head's MLflow server costs in CPU, with and without MLflow's job runners.

    python bench/mlflow_server_cpu.py [--rounds N] [--idle-s S]

Each round starts `mlflow server` (SQLite store in a fresh folder, one worker, a free loopback port) twice, with
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true (MLflow 3's default: it also starts `huey` job consumers) and =false
(what saeception.sweep.mlflow_server sets unless the environment says otherwise), alternating, and measures the
machine-wide CPU seconds (`/proc/stat`) from the start until `/health` answers, and the CPU per second over the
next S seconds with no request (idle). Run it on an otherwise idle machine; medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(jobs: bool, idle_s: float) -> tuple[float, float, float]:
    """(seconds to /health, CPU seconds until then, CPU per second while idle) for one server."""
    home, port = tempfile.mkdtemp(prefix="bench-mlflow-"), free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(jobs).lower()}
    cpu, t0 = busy_cpu_s(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{home}/m.db",
                             "--artifacts-destination", f"{home}/artifacts", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"mlflow server exited with {proc.returncode}") from None
                time.sleep(0.2)
        up, start_cpu = time.perf_counter() - t0, busy_cpu_s() - cpu
        cpu = busy_cpu_s()
        time.sleep(idle_s)
        return up, start_cpu, (busy_cpu_s() - cpu) / idle_s
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        time.sleep(2)  # its processes gone before the next measurement


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle-s", type=float, default=30.0)
    a = p.parse_args()
    rows: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(a.rounds):
        for jobs in (True, False):
            rows[jobs].append(measure(jobs, a.idle_s))
    print(f"{'job runners':<14}{'to /health s':>14}{'start CPU-s':>14}{'idle CPU/s':>12}")
    for jobs, runs in rows.items():
        up, cpu, idle = (statistics.median(x[i] for x in runs) for i in range(3))
        print(f"{'on' if jobs else 'off':<14}{up:>14.1f}{cpu:>14.1f}{idle:>12.3f}")


if __name__ == "__main__":
    main()
