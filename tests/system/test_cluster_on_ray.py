"""Cluster files validate with Ray's own checks; a sweep spreads over a simulated two-node cluster."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from clusterfiles import SWEEP_ON_CLUSTER
from paths import REPO, TINY
from raytools import kill_all

SIMULATED_CLUSTER = """
import subprocess, sys
from ray.cluster_utils import Cluster

# dashboard_port None: the first free port from 8265 on (Cluster's default binds 8265 or fails, and another test's
# Ray may hold it: the suite runs two tests at once).
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"saeception_head": 1000},
                                                        "dashboard_port": None})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    sweep = [sys.executable, "-m", "saeception.sweep", *sys.argv[1:], "--address", cluster.address]
    sys.exit(subprocess.run(sweep).returncode)
finally:
    cluster.shutdown()
"""


@pytest.mark.ray(seconds=60)
def test_sweep_on_a_simulated_two_node_cluster(tmp_path):
    """Two Ray nodes on this machine (ray.cluster_utils.Cluster); storage shared by path."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # Like a `ray up` cluster: token authentication on.
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    storage = tmp_path / "shared"
    try:
        r = subprocess.run([sys.executable, "-c", SIMULATED_CLUSTER, "--space", str(TINY), "--trials", "2",
                            "--storage", str(storage), "--confirm-seeds", "0", "--max-concurrent", "2", "--no-plots"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        kill_all(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    trials = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert all(t.data.metrics.get("task_accuracy") is not None for t in trials)
    nodes = {t.data.tags["saeception.worker_node"] for t in trials}
    assert len(nodes) == 2, "the two trials' workers ran on the two nodes"


LOCK_ACTOR_FROM_A_WORKER_NODE = """
import ray, sys
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_port": None})  # as above
try:
    cluster.add_node(num_cpus=1, resources={"worker_node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=1)
    def take_a_lock():  # a trial's Train worker: on the worker node, inside its placement group
        from saeception.trainables.locks import lease_lock

        with lease_lock("k" * 64):
            return ray.get_runtime_context().get_node_id()

    group = placement_group([{"CPU": 1, "worker_node": 0.1}])
    ray.get(group.ready())
    worker = ray.get(take_a_lock.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        group, placement_group_capture_child_tasks=True)).remote())
    # This cluster's, by address: without one the state API looks for "the" Ray on the machine, and refuses to
    # choose when another test's is up.
    (actor,) = [a for a in list_actors(address=cluster.address, filters=[("class_name", "=", "_Locks")]) if a.state == "ALIVE"]
    print(actor.node_id == cluster.head_node.node_id, worker != actor.node_id)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.ray
def test_the_cache_lock_actor_lives_on_the_head(tmp_path):
    """Created from a worker node's process (in a placement group, as Train's workers are), the detached 0-CPU
    lock actor landed on that node: the autoscaler removing it took every cache lock down with it
    (ActorDiedError in the trials waiting on it)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        r = subprocess.run([sys.executable, "-c", LOCK_ACTOR_FROM_A_WORKER_NODE], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    finally:
        kill_all(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["True", "True"], r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.ray(seconds=115)
@pytest.mark.autoscaling
def test_sweep_fills_an_autoscaling_cluster(tmp_path):
    """Ray's local autoscaling cluster: a head too small for any trial worker (1 CPU) and a worker type
    that starts at 0 nodes. The sweep, submitted as a Ray job with token authentication on, plans from the
    published node types, the autoscaler adds the nodes, the trials run there and finish."""
    from autoscaling import IsolatedAutoscalingCluster

    cluster = IsolatedAutoscalingCluster(
        head_resources={"CPU": 1, "saeception_head": 1000},
        worker_node_types={"cpu_worker": {"resources": {"CPU": 2, "object_store_memory": 200 * 2**20}, "node_config": {},
                                          "min_workers": 0, "max_workers": 2}})
    storage = tmp_path / "shared"
    try:
        cluster.start()
        env = cluster.env()
        # What the cluster files run on the head after `ray start`.
        pub = subprocess.run([sys.executable, "-m", "saeception.sweep.resources", "publish", str(cluster.config_path),
                              "--address", cluster.address], env=env, capture_output=True, text=True, timeout=120)
        assert pub.returncode == 0 and "cpu_worker: 2 x (CPU 2)" in pub.stdout, pub.stdout + pub.stderr

        # Token authentication is on: without the token, neither a driver nor the job API gets in.
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=30)
        assert refused.value.code == 401
        intruder = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{cluster.address}')"],
                                  env=cluster.env(token="0" * 32), capture_output=True, text=True, timeout=120)
        assert intruder.returncode != 0 and "Authentication" in intruder.stderr + intruder.stdout

        # A request no node type can ever hold: exit 2 naming the flag, before any trial.
        gpu = subprocess.run([sys.executable, "-m", "saeception.sweep", "--address", cluster.address, "--storage",
                              str(tmp_path / "gpu"), "--space", str(TINY), "--gpus-per-worker", "1", "--confirm-seeds", "0"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        err = gpu.stderr.strip().splitlines()
        assert gpu.returncode == 2 and len(err) == 1 and err[0].startswith("error: --gpus-per-worker: no node type"), \
            gpu.stdout[-2000:] + gpu.stderr[-2000:]
        assert "cpu_worker: 2 x (CPU 2)" in err[0] and not (tmp_path / "gpu" / "tiny" / "sweep.json").exists()

        sweep = [a.format(storage=storage, space=TINY) for a in SWEEP_ON_CLUSTER]
        job = subprocess.run(["ray", "job", "submit", "--address", cluster.dashboard_url, "--", *sweep],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        out = job.stdout + job.stderr
        assert job.returncode == 0 and "2 done, 0 stopped early, 0 running, 0 failed of 2" in out, out[-4000:]
        assert "trials wait for the nodes the autoscaler adds" in out and "up to 2 at once" in out, out[-4000:]
    finally:
        cluster.shutdown()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    trials = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    # The fake provider names the nodes it adds f…f00001, f…f00002, … (the head is f…f00000).
    nodes = {t.data.tags["saeception.worker_node"] for t in trials}
    assert all(n.startswith("f" * 51) and n[51:].isdigit() and int(n[51:]) > 0 for n in nodes), nodes


