"""`ray up` for real, as a user runs it, on this machine: the cluster launcher over SSH to an on-prem head at
127.0.0.1 (cluster-onprem.yaml's own commands, tests/support/rayup.py), token auth, MLflow on the head, a
sweep through `ray exec` and one through `ray job submit` (the dashboard's job API, token required), and
`ray down` leaving nothing behind. No worker node joins: on one machine its start commands' `ray stop` would
stop the head's Ray too (docs/development.md).

`ray stop`, which the cluster file runs on its node, stops every Ray process of this user on the machine:
run this test alone (`python -m pytest -m ray_up`), never beside another Ray job of yours.
"""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from paths import TINY
from raytools import kill_all, pids_mentioning
from rayup import generate, make_node, missing_tools, start_sshd


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _health(uri: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
            return r.status
    except OSError:
        return None


@pytest.mark.ray(seconds=135)
@pytest.mark.ray_up
@pytest.mark.mlflow_server
def test_ray_up_sweep_and_ray_down_on_this_machine(ray_alone_when_needed):
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (.ci/run installs Debian's openssh-server, rsync, netcat-openbsd)")
    node = make_node()
    ray = str(Path(sys.executable).parent / "ray")
    sshd = None
    try:
        image = generate(node)
        assert image["SAECEPTION_STATE_DIR"] == f"{node.head_disk}/sweeps"  # from the file's docker run -e options
        sshd = start_sshd(node, image)
        env = node.client_env()
        # The README's one-time steps on the user's machine (docs/cluster.md), as written there.
        subprocess.run(["bash", "-c", "(umask 077 && ray get-auth-token --generate) && mkdir -p ~/.saeception && "
                        "install -m 600 /dev/null ~/.saeception/secrets.env"], env=env, check=True, capture_output=True)

        up = _run([ray, "up", "-y", "--no-config-cache", str(node.cluster_file)], env, timeout=900)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        assert (node.home / ".ray" / "auth_token").read_text() == (node.client / ".ray" / "auth_token").read_text()

        # Token authentication is on: a client with another token cannot connect.
        intruder = _run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{node.gcs_port}')"],
                        {**env, "RAY_AUTH_TOKEN": "0" * 32}, timeout=120)
        assert intruder.returncode != 0 and "Authentication" in intruder.stdout + intruder.stderr, intruder.stderr[-2000:]
        assert _health(node.mlflow_uri) == 200, (node.head_disk / "mlflow" / "server.log").read_text()[-2000:]

        # docs/cluster.md's on-prem sweep, on the head (`ray exec`), with this test's small values (no plots: the
        # end-to-end test checks them; these two sweeps run while no other Ray test may).
        sweep = (f"python -m saeception.sweep --address auto --storage {node.nfs}/sweeps --mlflow-uri {node.mlflow_uri} "
                 f"--space {TINY} --trials 1 --confirm-seeds 0 --cpus-per-worker 1 --no-plots --name on-head")
        ran = _run([ray, "exec", str(node.cluster_file), sweep], env, timeout=900)
        assert ran.returncode == 0 and "sweep on-head: 1 trials finished" in ran.stdout, ran.stdout[-4000:] + ran.stderr[-3000:]
        from mlflow.tracking import MlflowClient

        client = MlflowClient(node.mlflow_uri)
        runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
        trials = [r for r in runs if r.data.tags.get("saeception.role") == "trial"]
        assert len(trials) == 1 and trials[0].info.status == "FINISHED"
        assert json.loads((node.nfs / "sweeps" / "on-head" / "sweep.json").read_text())["trials"] == 1
        assert (node.head_disk / "sweeps").is_dir()  # the Optuna study on the head's own disk (SAECEPTION_STATE_DIR)

        # docs/cluster.md's `ray job submit` through the dashboard's job API (what `ray dashboard` forwards): refused
        # without the cluster's token, run with it.
        job = [ray, "job", "submit", "--address", node.dashboard_uri, "--",
               *sweep.replace("--name on-head", "--name via-job").split()]
        refused = _run(job, {**env, "RAY_AUTH_TOKEN": "0" * 32}, timeout=120)
        assert refused.returncode != 0 and "Invalid authentication token" in refused.stdout + refused.stderr, refused.stderr[-2000:]
        submitted = _run(job, env, timeout=900)
        assert submitted.returncode == 0 and "sweep via-job: 1 trials finished" in submitted.stdout, \
            submitted.stdout[-4000:] + submitted.stderr[-3000:]
        runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
        assert {r.data.tags.get("saeception.sweep") for r in runs if r.data.tags.get("saeception.role") == "trial"} == \
            {"on-head", "via-job"}

        down = _run([ray, "down", "-y", str(node.cluster_file)], env, timeout=300)
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        # Its `ray stop` has run: what is left to check (the MLflow watchdog stops the server within ~15 s, nothing
        # of this cluster stays) cannot stop another test's Ray, which may start now.
        ray_alone_when_needed.close()
        sshd.terminate()
        sshd.wait(timeout=30)
        deadline = time.time() + 90  # the MLflow watchdog notices Ray is gone within ~15 s
        while pids_mentioning(str(node.base)) and time.time() < deadline:
            time.sleep(1)
        left = [(pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200])
                for pid in pids_mentioning(str(node.base)) if Path(f"/proc/{pid}").exists()]
        assert not left, left
        assert _health(node.mlflow_uri) is None
    finally:
        if sshd is not None and sshd.poll() is None:
            sshd.kill()
        kill_all(str(node.base))
        for state in Path("/tmp").glob(f"cluster-saeception-test-{node.base.name}*"):
            state.unlink(missing_ok=True)
        shutil.rmtree(node.base, ignore_errors=True)
