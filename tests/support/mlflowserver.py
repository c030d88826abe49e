"""A real `mlflow server` on loopback for a test: SQLite backend and served artifacts under one folder,
stoppable and restartable on the same port (an outage). The port is bound once, by this object, and held until
`close()`: each server started gets that listening socket (uvicorn's `--fd`, as its standard input), and
`Unavailable` answers on it while the server is down, so no other process can take the port between them."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from raytools import kill_all, pids_mentioning

from saeception.sweep.mlflow_server import server_env


class MlflowServer:
    def __init__(self, home: Path):
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # the kernel's choice, held: bound, not guessed
        self.socket.listen(128)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = home / "mlflow.db"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 120) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.home / "artifacts"), "--host", "127.0.0.1", "--port",
               str(self.port), "--workers", "1", "--uvicorn-opts", "--fd 0"]
        self._log = open(self.home / "server.log", "a")
        # The held socket as the server's standard input (mlflow server passes it on to uvicorn, which
        # serves on fd 0 instead of binding --host/--port itself).
        self._proc = subprocess.Popen(cmd, stdin=self.socket.fileno(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.home,
                                      env=server_env())  # the head's server's environment
        deadline = time.time() + timeout_s
        while not self.healthy():
            assert self._proc.poll() is None and time.time() < deadline, self.log_tail()
            time.sleep(1)
        return self

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the server and its workers, SIGKILL to whatever is left. The port stays bound (this
        object's socket): a request waits in its backlog, answered by `Unavailable` or the next server."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_all(str(self.home))
        if self._log is not None:
            self._log.close()
        self._proc = self._log = None
        assert not pids_mentioning(str(self.home))

    def close(self) -> None:
        """stop(), and the port released."""
        self.stop()
        self.socket.close()

    def log_tail(self) -> str:
        path = self.home / "server.log"
        return path.read_text()[-2000:] if path.exists() else ""


class Unavailable:
    """What a proxy in front of a stopped MLflow server answers: 503 to every request, on the server's held
    socket, counting them (`with Unavailable(server.socket) as outage: ... outage.requests`)."""

    def __init__(self, listening: socket.socket):
        outage = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self):
                outage.requests += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _refuse

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(listening.getsockname(), Handler, bind_and_activate=False)
        self._httpd.socket.close()
        self._httpd.socket = listening  # already bound and listening; not closed here (its owner's)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Unavailable:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._thread.join()
