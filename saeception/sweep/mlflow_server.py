"""The cluster head's MLflow server, started once: `python -m saeception.sweep.mlflow_server`.

Both cluster files run this after `ray start --head` (the one source of the start command, and what the
`ray up` test runs). It is idempotent: when a server already answers `/health` on the address it returns;
otherwise it starts `mlflow server` in its own session (it outlives the setup shell), waits until
`/health` answers and returns 0, or prints the server log's tail and returns 1. A `pgrep -f "mlflow
server"` guard cannot do this: it matches the shell running the guard itself, so the server never started.
With `--stop-with-ray HOST:PORT` (the head's GCS) a watchdog looks after the server it started: while Ray there
is up it restarts a server that dies (after a back-off that doubles from RESTART_BACKOFF_S up to
RESTART_BACKOFF_MAX_S while restarts keep failing, one log line per restart, so a crash loop shows in the server's
log), and once Ray is gone it stops the server: `ray down` (or `ray stop`) on an on-prem head then leaves no
MLflow behind; the cluster launcher has no stop hook.

    python -m saeception.sweep.mlflow_server --backend-store-uri sqlite:////var/lib/saeception/mlflow/mlflow.db \
        --artifacts-destination /mnt/nfs/saeception/mlflow/artifacts --log /var/lib/saeception/mlflow/server.log
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from saeception.store.uris import is_uri, redact

HOST, PORT = "127.0.0.1", 5000
START_TIMEOUT_S = 120.0
WATCH_EVERY_S, WATCH_MISSES = 5.0, 3  # the GCS unanswered for ~15 s: Ray is gone, not restarting
# A dead server is restarted after a back-off, doubled after every restart up to the cap; reset once a
# restarted server has lived RESTART_STABLE_S (a crash loop then restarts every few minutes, each time logged).
RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S, RESTART_STABLE_S = 5.0, 300.0, 600.0

log = logging.getLogger(__name__)


def healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when an MLflow server answers GET /health with 200 on host:port."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# What the server's environment defaults to, unless the caller's environment says otherwise. MLflow 3's server
# otherwise starts four `huey` job consumers (for MLflow's own GenAI jobs, which a sweep never submits) that
# together kept about 40% of a core busy while idle and doubled the server's start-up CPU (10.1 against 5.3
# CPU-seconds; BENCHMARKS.md 4b).
SERVER_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: this process's environment) with SERVER_ENV_DEFAULTS for what it does not set."""
    return {**SERVER_ENV_DEFAULTS, **(os.environ if environ is None else environ)}


def server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port), "--workers", "1"]


def spawn(backend_store_uri: str, artifacts_destination: str, log: Path, host: str = HOST,
          port: int = PORT) -> subprocess.Popen:
    """Starts `mlflow server` in its own session (its process group: stopped together), output appended to log."""
    with open(log, "ab") as out:
        return subprocess.Popen(server_command(backend_store_uri, artifacts_destination, host, port), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env(),
                                start_new_session=True)


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
    proc = spawn(backend_store_uri, artifacts_destination, log, host, port)
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


def _alive(server: subprocess.Popen | int) -> bool:
    """Whether the server process lives: a child of this process is polled (and so reaped), the server
    `ensure` started in another process is probed by pid."""
    if isinstance(server, subprocess.Popen):
        return server.poll() is None
    try:
        os.kill(server, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(server: subprocess.Popen | int) -> int:
    return server.pid if isinstance(server, subprocess.Popen) else server


def watch(server: subprocess.Popen | int, ray_up: Callable[[], bool], restart: Callable[[], subprocess.Popen],
          every_s: float = WATCH_EVERY_S, misses: int = WATCH_MISSES, backoff_s: float = RESTART_BACKOFF_S,
          backoff_max_s: float = RESTART_BACKOFF_MAX_S, stable_s: float = RESTART_STABLE_S,
          answering: Callable[[], bool] = lambda: False) -> None:
    """Looks after the server until Ray is gone. Every `every_s`: once `ray_up()` has been False `misses`
    times in a row, stops the server's process group and returns. A server that died while Ray is up is
    started again with `restart()` after `backoff_s` (doubled after each restart, at most `backoff_max_s`,
    back to `backoff_s` once a restarted server lived `stable_s`), each restart logged with its count; none
    is started while `answering()` says another server already serves the port."""
    missed, restarts, wait_s = 0, 0, backoff_s
    dead_since: float | None = None
    started_at = time.monotonic()
    while True:
        missed = 0 if ray_up() else missed + 1
        if missed >= misses:
            if _alive(server):
                log.info("Ray is gone: stopping the mlflow server (pid %d)", _pid(server))
                os.killpg(_pid(server), signal.SIGTERM)
            return
        now = time.monotonic()
        if _alive(server):
            if restarts and now - started_at >= stable_s:
                wait_s = backoff_s  # it runs again: a later death is not part of a crash loop
        elif missed == 0:  # Ray answered on this tick: the server died under a running cluster
            if dead_since is None:
                dead_since = now
                code = f" with code {server.returncode}" if isinstance(server, subprocess.Popen) else ""
                log.warning("the mlflow server (pid %d) exited%s while Ray is up; restarting it in %.1f s",
                            _pid(server), code, wait_s)
            if now - dead_since >= wait_s and not answering():
                restarts += 1
                server, dead_since, started_at = restart(), None, now
                log.warning("mlflow server restarted (restart %d, pid %d); the next restart waits %.1f s", restarts,
                            server.pid, min(wait_s * 2, backoff_max_s))
                wait_s = min(wait_s * 2, backoff_max_s)
        time.sleep(every_s)


def start_watchdog(server_pid: int, gcs: str, log_path: Path, server_args: list[str], every_s: float = WATCH_EVERY_S) -> None:
    """The watchdog as its own process (it outlives the setup shell), its lines appended to the server's log."""
    with open(log_path, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "saeception.sweep.mlflow_server", "--watch-pid", str(server_pid),
                          "--stop-with-ray", gcs, "--watch-every-s", str(every_s), *server_args], stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


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
    p.add_argument("--stop-with-ray", metavar="HOST:PORT", help="look after the server it starts: restart it while Ray's GCS there answers, stop it once Ray is gone")
    p.add_argument("--watch-pid", type=int, help=argparse.SUPPRESS)  # the watchdog's own process
    p.add_argument("--watch-every-s", type=float, default=WATCH_EVERY_S, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    missing = [f for f in ("backend_store_uri", "artifacts_destination", "log") if getattr(a, f) is None]
    if missing:
        p.error("required: " + ", ".join("--" + f.replace("_", "-") for f in missing))
    if a.watch_pid:
        if not a.stop_with_ray:
            p.error("--watch-pid needs --stop-with-ray")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s saeception.sweep.mlflow_server watchdog: %(message)s")
        watch(a.watch_pid, lambda: listening(a.stop_with_ray),
              lambda: spawn(a.backend_store_uri, a.artifacts_destination, a.log, a.host, a.port), a.watch_every_s,
              answering=lambda: healthy(a.host, a.port))
        return 0
    try:
        state, pid = ensure(a.backend_store_uri, a.artifacts_destination, a.log, a.host, a.port, a.timeout_s)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if pid is not None and a.stop_with_ray:
        start_watchdog(pid, a.stop_with_ray, a.log, ["--backend-store-uri", a.backend_store_uri, "--artifacts-destination",
                       a.artifacts_destination, "--log", str(a.log), "--host", a.host, "--port", str(a.port)], a.watch_every_s)
    print(f"mlflow server {state} on http://{a.host}:{a.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
