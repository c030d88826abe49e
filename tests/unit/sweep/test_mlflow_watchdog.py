"""The head's MLflow watchdog: a server that dies while Ray is up comes back; a crash loop backs off, each
restart logged; once Ray is gone the server is stopped (issue #38)."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from saeception.sweep import mlflow_server as ms


def _until(predicate, timeout_s: float, every_s: float = 0.3) -> bool:
    deadline = time.time() + timeout_s
    while not predicate() and time.time() < deadline:
        time.sleep(every_s)
    return predicate()


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.mlflow_server
def test_a_killed_mlflow_server_is_restarted_while_ray_is_up_and_stopped_once_ray_is_gone(tmp_path, caplog):
    """The watchdog exited when the server died, so nothing but `ray up` (whose `ray stop` ends running sweeps)
    started it again. The real server's process group is killed; the watchdog starts a new one that answers."""
    from raytools import free_port

    caplog.set_level(logging.INFO, logger=ms.__name__)
    port, log = free_port(), tmp_path / "server.log"
    backend, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")
    state, first = ms.ensure(backend, artifacts, log, port=port)
    assert state == "started"
    ray_up = threading.Event()  # stands in for the head's GCS answering: set while Ray is up
    ray_up.set()
    restarted: list[subprocess.Popen] = []

    def restart() -> subprocess.Popen:
        restarted.append(ms.spawn(backend, artifacts, log, port=port))
        return restarted[-1]

    watchdog = threading.Thread(target=ms.watch, args=(first, ray_up.is_set, restart), daemon=True,
                                kwargs={"every_s": 0.2, "misses": 2, "backoff_s": 0.5,
                                        "answering": lambda: ms.healthy("127.0.0.1", port)})
    watchdog.start()
    try:
        _killpg(first)  # the server and its workers, as the OOM killer would end them
        try:
            os.waitpid(first, 0)  # reaped, as init reaps it on the head (its starter has exited there)
        except ChildProcessError:
            pass
        assert _until(lambda: not ms.healthy("127.0.0.1", port), 30)
        assert _until(lambda: ms.healthy("127.0.0.1", port), 240, 1.0), log.read_text()[-3000:]
        assert len(restarted) == 1 and restarted[0].pid != first
        assert f"the mlflow server (pid {first}) exited while Ray is up" in caplog.text
        assert "mlflow server restarted (restart 1," in caplog.text
        ray_up.clear()  # `ray down`: the watchdog stops the restarted server and returns
        watchdog.join(60)
        assert not watchdog.is_alive()
        assert restarted[0].wait(60) is not None
        assert not ms.healthy("127.0.0.1", port)
    finally:
        ray_up.clear()
        for pid in (first, *(p.pid for p in restarted)):
            _killpg(pid)


def test_a_server_that_keeps_dying_is_restarted_with_a_growing_back_off_each_restart_logged(caplog):
    """A crash loop (a server that exits at once) is visible: one line per restart, and the waits double to the cap."""
    caplog.set_level(logging.INFO, logger=ms.__name__)
    starts: list[float] = []

    def restart() -> subprocess.Popen:
        starts.append(time.monotonic())
        if len(starts) == 5:
            ray_up.clear()
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)

    ray_up = threading.Event()
    ray_up.set()
    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait()
    ms.watch(dead, ray_up.is_set, restart, every_s=0.02, misses=2, backoff_s=0.1, backoff_max_s=0.4)
    assert len(starts) == 5
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.4, gaps  # 0.1, then 0.2, 0.4, 0.4 (the cap)
    lines = [r.getMessage() for r in caplog.records if "restarted" in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == [f"mlflow server restarted (restart {i}" for i in range(1, 6)]
    assert "exited with code 3 while Ray is up" in caplog.text


def test_the_server_starts_without_mlflows_job_runners_unless_the_environment_asks():
    """MLflow's job runners (four `huey` consumers, for jobs a sweep never submits) are off by default; a user's
    own MLFLOW_SERVER_ENABLE_JOB_EXECUTION wins."""
    assert ms.server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert ms.server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    assert ms.server_env({"PATH": "/x"})["PATH"] == "/x"
