"""docs/cluster.md says where Ray's launcher leaves clear-text copies of the token and secrets.env on every host
(issue #38: Ray's behaviour, documented, not changed): pinned to the Ray installed, so a move breaks this test."""

import inspect

import yaml
from paths import REPO


def test_the_documented_host_copies_are_where_ray_puts_file_mounts():
    from ray.autoscaler._private.command_runner import DockerCommandRunner
    from ray.autoscaler.sdk import get_docker_host_mount_location

    doc = (REPO / "docs" / "cluster.md").read_text()
    for path in sorted(REPO.glob("cluster*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert "docker" in config and set(config["file_mounts"]) == {"~/.ray/auth_token", "~/.saeception/secrets.env"}
    assert get_docker_host_mount_location("<cluster_name>") == "/tmp/ray_tmp_mount/<cluster_name>"
    # The copy is an rsync to the host's mount folder (mode kept), then a bind mount into the container.
    rsync_up = inspect.getsource(DockerCommandRunner.run_rsync_up)
    assert "_get_docker_host_mount_location" in rsync_up and 'target.lstrip("/")' in rsync_up
    for target in ("~/.ray/auth_token", "~/.saeception/secrets.env"):
        assert f"/tmp/ray_tmp_mount/<cluster_name>/{target}" in doc or f"…/{target}" in doc, target
    assert "`/tmp/ray_tmp_mount/<cluster_name>/~/.ray/auth_token`" in doc
