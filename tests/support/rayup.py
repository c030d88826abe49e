"""`ray up` on this machine: an sshd on loopback and an on-prem cluster file generated from cluster-onprem.yaml.

The generated file is cluster-onprem.yaml with what only a real LAN and Docker have replaced: the head is
127.0.0.1 reached through the test's sshd (a free port, `ssh_proxy_command`), no workers, no `docker:`
section (the node runs this checkout's venv instead of the image) and no `initialization_commands` (the
Docker host's `sudo mkdir`); the head's disk and the NFS export are folders of the test, and the GCS, dashboard
and MLflow ports free ones. Every setup and start command is the shipped file's own. What the image's
`docker run -e` options set, the sshd sets for the node's sessions (`SetEnv`), with the node's HOME: the
file mounts then land in the test's folders, not in the user's ~.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from paths import REPO
from raytools import free_port

SOURCE = REPO / "cluster-onprem.yaml"
SSHD = "/usr/sbin/sshd"


def missing_tools() -> list[str]:
    """What the test needs from the system (`.ci/run` installs Debian's openssh-server, rsync, netcat)."""
    return [t for t in (SSHD, "ssh", "ssh-keygen", "rsync", "nc") if shutil.which(t) is None and not Path(t).exists()]


@dataclass
class Node:
    base: Path  # everything of the test: /tmp/rup* (short: Ray's unix sockets live under it)
    ssh_port: int
    gcs_port: int
    mlflow_port: int
    dashboard_port: int

    @property
    def home(self) -> Path:  # the node's HOME
        return self.base / "node"

    @property
    def client(self) -> Path:  # the HOME of the machine running `ray up`
        return self.base / "client"

    @property
    def head_disk(self) -> Path:
        return self.base / "head-disk"

    @property
    def nfs(self) -> Path:
        return self.base / "nfs"

    @property
    def cluster_file(self) -> Path:
        return self.base / "cluster.yaml"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def dashboard_uri(self) -> str:  # the head's dashboard and job API (what `ray dashboard` forwards)
        return f"http://127.0.0.1:{self.dashboard_port}"

    def substitute(self, text: str) -> str:
        text = text.replace("/var/lib/saeception", str(self.head_disk)).replace("/mnt/nfs/saeception", str(self.nfs))
        text = text.replace("--dashboard-host=127.0.0.1", f"--dashboard-host=127.0.0.1 --dashboard-port={self.dashboard_port}")
        return re.sub(r"\b6379\b", str(self.gcs_port), text).replace("--port 5000", f"--port {self.mlflow_port}")

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of `ray up`/`ray exec`/`ray down` on the user's machine."""
        return {**os.environ, "HOME": str(self.client), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def image_env(config: dict, node: Node) -> dict[str, str]:
    """The `-e K=V` options of the cluster file's `docker run`, with the test's folders."""
    options = " ".join(config.get("docker", {}).get("run_options", []))
    return {k: node.substitute(v) for k, v in re.findall(r"-e (\w+)=(\S+)", options)}


def generate(node: Node) -> dict:
    """Writes node.cluster_file from cluster-onprem.yaml; returns the image's environment for the sshd."""
    config = yaml.safe_load(SOURCE.read_text())
    env = image_env(config, node)
    config.pop("docker")
    config["cluster_name"] = f"saeception-test-{node.base.name}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(node.base / "ssh" / "client"),
                      "ssh_proxy_command": f"nc 127.0.0.1 {node.ssh_port}"}
    config["initialization_commands"] = []
    node.cluster_file.write_text(node.substitute(yaml.safe_dump(config, sort_keys=False)))
    return env


def start_sshd(node: Node, env: dict[str, str]) -> subprocess.Popen:
    ssh = node.base / "ssh"
    ssh.mkdir()
    for key in ("hostkey", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / key)], check=True)
    shutil.copy(ssh / "client.pub", ssh / "authorized_keys")
    session = {"HOME": str(node.home), "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
               "RAY_TMPDIR": str(node.base / "rt"), "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
               "HF_HUB_OFFLINE": "1", **env}
    (ssh / "sshd_config").write_text("\n".join([
        f"Port {node.ssh_port}", "ListenAddress 127.0.0.1", f"HostKey {ssh / 'hostkey'}", f"PidFile {ssh / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh / 'authorized_keys'}", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "MaxStartups 50",
        "SetEnv " + " ".join(f"{k}={v}" for k, v in session.items())]) + "\n")
    # A login shell (Ray runs `bash --login -c -i …`) resets PATH in /etc/profile: the node's profile puts the
    # venv first again, as the image's PATH does.
    for profile in (".bash_profile", ".bashrc"):
        (node.home / profile).write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-f", str(ssh / "sshd_config"), "-E", str(ssh / "sshd.log")])
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", node.ssh_port)) == 0:
                return proc
        assert proc.poll() is None, (ssh / "sshd.log").read_text()
        time.sleep(0.2)
    raise AssertionError("sshd did not listen")


def make_node() -> Node:
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rup", dir="/tmp"))
    node = Node(base, free_port(), free_port(), free_port(), free_port())
    for d in (node.home, node.client, node.head_disk, node.nfs, base / "rt"):
        d.mkdir()
    return node
