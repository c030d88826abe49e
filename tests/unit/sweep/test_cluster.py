"""Cluster files validate with Ray's own checks; a sweep spreads over a simulated two-node cluster."""

import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from clusterfiles import SWEEP_ON_CLUSTER, validate
from paths import REPO

CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_validates(path):
    config = yaml.safe_load(path.read_text())
    validate(config)
    text = path.read_text()
    assert "--host 127.0.0.1" in text and "saeception_head" in text


def _commands(config: dict, key: str) -> list[str]:
    return [" ".join(c.split()) for c in config.get(key, [])]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_node_starts_ray_with_the_one_token(path):
    """Ray 2.60's `ray start` turns token auth on only with RAY_AUTH_MODE=token (or a token already on the
    node): every start sets it, and every node gets the token of the machine running `ray up`."""
    config = yaml.safe_load(path.read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in _commands(config, key)
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts), starts
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("test -s ~/.ray/auth_token" in c for c in _commands(config, "setup_commands"))
    assert all("--dashboard-host=127.0.0.1" in c for c in starts if "--head" in c)
    # The node types go where sweeps plan from them, right after the head starts.
    head = _commands(config, "head_start_ray_commands")
    publish = next(i for i, c in enumerate(head) if "saeception.sweep.resources publish ~/ray_bootstrap_config.yaml" in c)
    assert publish > next(i for i, c in enumerate(head) if "ray start --head" in c)
    assert "RAY_AUTH_MODE=token" in head[publish]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_nodes_run_the_image_with_state_and_downloads_where_they_belong(path):
    config = yaml.safe_load(path.read_text())
    options = config["docker"]["run_options"]
    mounts = {o.split()[1].split(":")[0] for o in options if o.startswith("-v ")}
    env = dict(o.split()[1].split("=", 1) for o in options if o.startswith("-e "))
    shared = next(m for m in mounts if m.startswith(("/mnt/efs", "/mnt/nfs")))
    assert env["HF_HOME"].startswith(shared + "/"), "Hugging Face downloads on the shared filesystem"
    assert env["SAECEPTION_STATE_DIR"].startswith("/var/lib/saeception/") and "/var/lib/saeception" in mounts
    mlflow = " ".join(_commands(config, "head_start_ray_commands"))
    assert "--backend-store-uri sqlite:////var/lib/saeception/" in mlflow, "MLflow's database on the head's own disk"
    # Nothing is installed on a node: the image has it all.
    assert not any("pip install" in c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                   for c in _commands(config, key))
    assert config["docker"]["image"].rsplit("/", 1)[1] == image_tag()


def image_tag() -> str:
    """saeception:<version>-ray<ray>-py311-gpu, from pyproject.toml and the Dockerfile's base image."""
    import re

    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    base = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", (REPO / "Dockerfile").read_text(), re.M).group(1)
    return f"saeception:{version}-ray{base}-py311-gpu"


def test_dockerfile_builds_the_tag_the_cluster_files_run():
    import re

    from packaging.specifiers import SpecifierSet

    dockerfile = (REPO / "Dockerfile").read_text()
    ray_version = re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", dockerfile, re.M).group(1)
    assert f"ARG RAY_VERSION={ray_version}" in dockerfile and "--constraint" in dockerfile
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_range = next(d for d in deps if d.startswith("ray["))
    assert ray_version in SpecifierSet(ray_range.split("]", 1)[1]), (ray_version, ray_range)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    torch_range = next(d for d in deps if d.startswith("torch"))
    assert torch_version in SpecifierSet(torch_range.removeprefix("torch")), (torch_version, torch_range)
    for source in re.findall(r"^COPY --chown=\S+ (.+) /home/ray/", dockerfile, re.M):
        for item in source.split():
            assert (REPO / item).exists(), item
    assert "pip install -e" not in dockerfile and "editable" not in dockerfile.replace("not editable", "")
    tag = image_tag()
    assert f"docker build -t {tag} ." in dockerfile
    assert f"docker build -t {tag} ." in (REPO / "docs" / "cluster.md").read_text()
    # The build context is the package only: no .git, venvs, sweeps or secrets.
    assert (REPO / ".dockerignore").read_text().splitlines()[1] == "*"


SECRET_PATTERNS = [r"AKIA[0-9A-Z]{12,}", r"hf_[A-Za-z0-9]{20,}", r"(?i)(password|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{12,}",
                   r"://[^/\s:@]+:[^@\s]+@"]


@pytest.mark.parametrize("path", [*CLUSTER_FILES, REPO / "Dockerfile"], ids=lambda p: p.name)
def test_no_secret_is_written_into_cluster_files_or_the_image(path):
    import re

    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), pattern


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


def test_readme_cluster_command_uses_the_tested_flags():
    section = (REPO / "docs" / "cluster.md").read_text()
    for flag in (a for a in SWEEP_ON_CLUSTER if a.startswith("--")):
        assert flag in section, flag
    assert "ray job submit --address http://127.0.0.1:8265 --" in section


def test_readme_gpu_sweep_plans_from_cluster_yaml_before_any_gpu_node_is_up():
    """docs/cluster.md's command on cluster.yaml: at launch only the CPU head is up (min_workers: 0); planned
    from the node types that `publish` reports, 8 trials run at once on the 8 GPU workers the autoscaler may add."""
    from saeception.sweep.plan import Resources
    from saeception.sweep.resources import NodeGroup, groups_from_launcher_config, plan_concurrency

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    groups = groups_from_launcher_config(config)
    head = next(g for g in groups if g.name == config["head_node_type"])
    head.live = 1
    res = Resources(workers_per_trial=1, gpus_per_worker=1.0, cpus_per_worker=4.0)
    assert plan_concurrency(res, groups, 64) == 8
    with pytest.raises(Exception, match="^--gpus-per-worker"):  # what the head alone offered before
        plan_concurrency(res, [NodeGroup("head", head.resources, 1, live=1)], 64)


def _mlflow_start(config: dict) -> str:
    (start,) = [c for c in _commands(config, "head_start_ray_commands") if "mlflow" in c]
    return start


def test_both_cluster_files_start_mlflow_with_the_one_command():
    """One source: the cluster files differ only in where artifacts go."""
    starts = {p.name: _mlflow_start(yaml.safe_load(p.read_text())) for p in CLUSTER_FILES}
    assert all("python -m saeception.sweep.mlflow_server" in s for s in starts.values())
    shapes = {re.sub(r"--artifacts-destination \S+", "--artifacts-destination X", s) for s in starts.values()}
    assert len(shapes) == 1, starts


@pytest.mark.mlflow_server
def test_the_head_command_starts_mlflow_once_and_it_answers(tmp_path):
    """The head's start command, as cluster-onprem.yaml spells it (cluster.yaml's is the same but for the
    artifact store: the test above; the head's disk and artifact store moved under tmp_path, a free port): the
    first run starts a server that answers /health, the second finds it, and once the GCS it watches is gone
    (`ray down`) the server stops. The old `pgrep -f "mlflow server" || …` guard matched its own shell and
    started nothing."""
    from raytools import free_port, pids_mentioning

    path, port = REPO / "cluster-onprem.yaml", free_port()
    gcs = socket.socket()  # stands in for the head's GCS: the server lives while it answers
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    command = _mlflow_start(yaml.safe_load(path.read_text())).replace("/var/lib/saeception", str(tmp_path / "head"))
    command = re.sub(r"--artifacts-destination \S+", f"--artifacts-destination {tmp_path / 'artifacts'}", command)
    assert "--stop-with-ray 127.0.0.1:6379" in command
    command = command.replace("127.0.0.1:6379", f"127.0.0.1:{gcs.getsockname()[1]}") + f" --port {port} --watch-every-s 0.3"
    (tmp_path / ".saeception").mkdir()
    (tmp_path / ".saeception" / "secrets.env").write_text("")
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        first = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=180)
        assert first.returncode == 0 and f"mlflow server started on http://127.0.0.1:{port}" in first.stdout, first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
        # Without MLflow's job runners (four `huey` consumers, ~40% of a core busy while idle; BENCHMARKS.md 4b).
        assert [pid for pid in pids_mentioning(str(tmp_path)) if b"huey" in Path(f"/proc/{pid}/cmdline").read_bytes()] == []
        again = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "mlflow server running" in again.stdout, again
        assert (tmp_path / "head" / "mlflow" / "mlflow.db").exists()
        gcs.close()  # `ray down`: Ray is gone, and the watchdog stops the server
        deadline = time.time() + 30
        while _answers(port) and time.time() < deadline:
            time.sleep(0.3)
        assert not _answers(port), "the MLflow server outlived Ray"
    finally:
        gcs.close()
        subprocess.run(["pkill", "-f", str(tmp_path / "head")], check=False)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_the_token_step_writes_a_file_only_its_owner_reads(tmp_path):
    """docs/cluster.md's step, run as written: Ray writes the token with the umask's mode (0644 without it)."""
    (step,) = [line.split("#")[0].strip() for line in (REPO / "docs" / "cluster.md").read_text().splitlines()
               if "get-auth-token --generate" in line and line.startswith("    ")]
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", step], env=env, check=True, capture_output=True, timeout=120)
    token = tmp_path / ".ray" / "auth_token"
    assert token.stat().st_size > 0 and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_ray_down_keeps_the_head_s_databases_as_docs_cluster_md_says():
    """`ray down` on AWS must not delete the MLflow runs and Optuna studies: they live on the head's root
    volume (/var/lib/saeception), so cluster.yaml stops nodes instead of terminating them (Ray's AWS provider
    then reuses the stopped head at the next `ray up`), and its head is not a spot instance (AWS cannot stop
    one). docs/cluster.md's "What survives `ray down`" table covers both cluster files."""
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert aws["provider"]["type"] == "aws" and aws["provider"]["cache_stopped_nodes"] is True
    head = aws["available_node_types"][aws["head_node_type"]]["node_config"]
    assert "InstanceMarketOptions" not in head, "a spot head is terminated by `ray down`"
    stores = " ".join(_commands(aws, "head_start_ray_commands")) + " ".join(aws["docker"]["run_options"])
    assert "sqlite:////var/lib/saeception/" in stores and "SAECEPTION_STATE_DIR=/var/lib/saeception/" in stores
    doc = (REPO / "docs" / "cluster.md").read_text()
    table = doc[doc.index("**What survives `ray down`.**"):doc.index("**Security: what is protected, and how.**")]
    assert all(f"`{p.name}`" in table for p in CLUSTER_FILES) and "cache_stopped_nodes: true" in table
