"""Cluster files validate with Ray's own checks; a sweep spreads over a simulated two-node cluster."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from raytools import kill_all

REPO = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "spaces" / "tiny.yaml"
CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_validates(path):
    config = yaml.safe_load(path.read_text())
    validate(config)
    text = path.read_text()
    assert "rayproject/ray:2.60" in text and "-gpu" in text
    assert "--host 127.0.0.1" in text and "saeception_head" in text
    assert "RAY_AUTH_MODE" not in text  # token authentication left at Ray's default (on)


def test_invalid_cluster_file_is_rejected():
    config = yaml.safe_load(CLUSTER_FILES[0].read_text())
    config["max_worker"] = 1  # a typo: Ray's schema allows no unknown top-level field
    from jsonschema.exceptions import ValidationError

    with pytest.raises(ValidationError, match="max_worker"):
        validate(config)


def test_both_variants_ship():
    names = {p.name for p in CLUSTER_FILES}
    assert {"cluster.yaml", "cluster-onprem.yaml"} <= names
    assert yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())["provider"]["type"] == "local"


SIMULATED_CLUSTER = """
import subprocess, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"saeception_head": 1000}})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    sweep = [sys.executable, "-m", "saeception.sweep", *sys.argv[1:], "--address", cluster.address]
    sys.exit(subprocess.run(sweep).returncode)
finally:
    cluster.shutdown()
"""


@pytest.mark.ray
def test_sweep_on_a_simulated_two_node_cluster(tmp_path):
    """Two Ray nodes on this machine (ray.cluster_utils.Cluster); storage shared by path."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # Like a `ray up` cluster: token authentication on.
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    storage = tmp_path / "shared"
    try:
        r = subprocess.run([sys.executable, "-c", SIMULATED_CLUSTER, "--space", str(TINY), "--trials", "2",
                            "--storage", str(storage), "--confirm-seeds", "0", "--max-concurrent", "2"],
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
