"""The cluster head's MLflow server, started once: `python -m saeception.sweep.mlflow_server`.

Both cluster files run this after `ray start --head` (the one source of the start command, and what the
`ray up` test runs). It is idempotent: when a server already answers `/health` on the address it returns;
otherwise it starts `mlflow server` in its own session (it outlives the setup shell), waits until
`/health` answers and returns 0, or prints the server log's tail and returns 1. A `pgrep -f "mlflow
server"` guard cannot do this: it matches the shell running the guard itself, so the server never started.
With `--stop-with-ray HOST:PORT` (the head's GCS) a watchdog stops the server once Ray there is gone: `ray
down` (or `ray stop`) on an on-prem head then leaves no MLflow behind; the cluster launcher has no stop hook.

    python -m saeception.sweep.mlflow_server --backend-store-uri sqlite:////var/lib/saeception/mlflow/mlflow.db \
        --artifacts-destination /mnt/nfs/saeception/mlflow/artifacts --log /var/lib/saeception/mlflow/server.log
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from saeception.store.uris import is_uri, redact

HOST, PORT = "127.0.0.1", 5000
START_TIMEOUT_S = 120.0
WATCH_EVERY_S, WATCH_MISSES = 5.0, 3  # the GCS unanswered for ~15 s: Ray is gone, not restarting


def healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when an MLflow server answers GET /health with 200 on host:port."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port), "--workers", "1"]


def ensure(backend_store_uri: str, artifacts_destination: str, log: Path, host: str = HOST, port: int = PORT,
           timeout_s: float = START_TIMEOUT_S) -> tuple[str, int | None]:
    """Starts the server unless one answers; ('running', None) or ('started', its pid). RuntimeError (with
    the log's tail) when the started server exits or does not answer within timeout_s."""
    if healthy(host, port):
        return "running", None
    if backend_store_uri.startswith("sqlite:////"):
        Path(backend_store_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not is_uri(artifacts_destination):
        Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(server_command(backend_store_uri, artifacts_destination, host, port), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(host, port):
            return "started", proc.pid
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; {log} ends:\n{_tail(log)}")
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer http://{host}:{port}/health within {timeout_s:.0f} s; "
                       f"{log} ends:\n{_tail(log)}")


def listening(address: str, timeout_s: float = 2.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def watch(server_pid: int, gcs: str, every_s: float = WATCH_EVERY_S, misses: int = WATCH_MISSES) -> None:
    """Stops the server's process group when `gcs` has not answered `misses` times in a row; returns when
    the server is gone (stopped here or by itself)."""
    missed = 0
    while True:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        missed = 0 if listening(gcs) else missed + 1
        if missed >= misses:
            os.killpg(server_pid, signal.SIGTERM)
            return
        time.sleep(every_s)


def start_watchdog(server_pid: int, gcs: str, log: Path, every_s: float = WATCH_EVERY_S) -> None:
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "saeception.sweep.mlflow_server", "--watch-pid", str(server_pid),
                          "--stop-with-ray", gcs, "--watch-every-s", str(every_s)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)


def _tail(log: Path, lines: int = 20) -> str:
    return redact("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m saeception.sweep.mlflow_server", description=__doc__.splitlines()[0])
    p.add_argument("--backend-store-uri", help="MLflow's run store (sqlite:////abs/path on the head's disk)")
    p.add_argument("--artifacts-destination", help="where the server stores artifacts (NFS path or s3://…)")
    p.add_argument("--log", type=Path, help="the server's log file (appended to)")
    p.add_argument("--host", default=HOST, help=f"address to serve on (default: {HOST}, the head's loopback only)")
    p.add_argument("--port", type=int, default=PORT, help=f"port (default: {PORT})")
    p.add_argument("--timeout-s", type=float, default=START_TIMEOUT_S, help="how long to wait for /health")
    p.add_argument("--stop-with-ray", metavar="HOST:PORT", help="stop the server it starts once Ray's GCS there is gone")
    p.add_argument("--watch-pid", type=int, help=argparse.SUPPRESS)  # the watchdog's own process
    p.add_argument("--watch-every-s", type=float, default=WATCH_EVERY_S, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.watch_pid:
        watch(a.watch_pid, a.stop_with_ray, a.watch_every_s)
        return 0
    missing = [f for f in ("backend_store_uri", "artifacts_destination", "log") if getattr(a, f) is None]
    if missing:
        p.error("required: " + ", ".join("--" + f.replace("_", "-") for f in missing))
    try:
        state, pid = ensure(a.backend_store_uri, a.artifacts_destination, a.log, a.host, a.port, a.timeout_s)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if pid is not None and a.stop_with_ray:
        start_watchdog(pid, a.stop_with_ray, a.log, a.watch_every_s)
    print(f"mlflow server {state} on http://{a.host}:{a.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
