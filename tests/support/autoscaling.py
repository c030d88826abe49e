"""Ray's local autoscaling cluster, isolated for tests on a shared machine.

`ray.cluster_utils.AutoscalingCluster` drives Ray's fake multi-node provider (RAY_FAKE_CLUSTER=1): a real
head with a real autoscaler (monitor) that starts and stops real raylets on this machine as "nodes".
Two parts of it are replaced here: its `start()`/`shutdown()` run `ray stop --force`, which stops every
Ray process of this user on the machine (other test runs included), and its base config is read from
`fake_multi_node/example.yaml`, which Ray's wheel does not ship. So the same config is built inline, and
the head starts in its own RAY_TMPDIR on free ports with token authentication on; `shutdown` kills exactly
the processes under that RAY_TMPDIR.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from ray.cluster_utils import AutoscalingCluster
from raytools import free_port, kill_all

# Ray's fake_multi_node/example.yaml (Ray 2.60), less its node types.
BASE_CONFIG = {
    "cluster_name": "fake_multinode", "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
    "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
    "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
}


class IsolatedAutoscalingCluster(AutoscalingCluster):
    def __init__(self, head_resources: dict, worker_node_types: dict, **config_kwargs):
        from ray._private.services import get_node_ip_address

        self.ip = get_node_ip_address()
        self.port = free_port()
        self.dashboard_port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ras", dir="/tmp"))  # short: unix socket paths
        self.token = secrets.token_hex(16)
        super().__init__(head_resources, worker_node_types, **config_kwargs)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = copy.deepcopy(BASE_CONFIG)
        config["provider"]["gcs_address"] = self.address
        config["available_node_types"] = {
            **copy.deepcopy(worker_node_types),
            "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}}
        config.update(config_kwargs)
        return config

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def config_path(self) -> Path:
        return self.tmpdir / "autoscaling.json"

    def env(self, token: str | None = None) -> dict[str, str]:
        """The environment of a process on this cluster: its RAY_TMPDIR, token authentication on, and
        `python` this interpreter (a job's driver runs the head's `python`; on a `ray up` cluster, the image's)."""
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, "RAY_TMPDIR": str(self.tmpdir), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": token or self.token, "RAY_USAGE_STATS_ENABLED": "0",
                "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}

    def start(self, _system_config=None, override_env=None):
        self.config_path.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={self.port}",
               f"--autoscaling-config={self.config_path}", f"--num-cpus={head.pop('CPU')}",
               f"--num-gpus={head.pop('GPU', 0)}", f"--object-store-memory={head.pop('object_store_memory', 300 * 2**20)}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        env = {**self.env(), "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", **(override_env or {})}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")

    def shutdown(self):
        kill_all(str(self.tmpdir))
        import shutil

        shutil.rmtree(self.tmpdir, ignore_errors=True)
