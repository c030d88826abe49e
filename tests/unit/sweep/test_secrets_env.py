"""The cluster files read ~/.saeception/secrets.env with its values taken literally (issue #38): sourced as
shell, `pa$$w0rd$x` arrived as `pa<pid>w0rd`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import REPO

from saeception.sweep.secrets_env import main, read_secrets

CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "pa$$w0rd$x", "HF_TOKEN": "hf_`id` \\n $(id)", "AWS_SECRET_ACCESS_KEY": "a 'b' \"c\"",
           "PGPASSWORD": "with=equals#and-hash"}
FILE = ("# secrets: KEY=value\n\nMLFLOW_TRACKING_PASSWORD=pa$$w0rd$x\nexport HF_TOKEN=\"hf_`id` \\n $(id)\"\n"
        "AWS_SECRET_ACCESS_KEY=a 'b' \"c\"\nPGPASSWORD='with=equals#and-hash'\n")


def _readers(path: Path) -> list[str]:
    """The part of each node command that reads the secrets file: its leading `&&` steps up to the read."""
    config = yaml.safe_load(path.read_text())
    readers = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[key]:
            steps = " ".join(command.split()).split(" && ")
            last = max((i for i, s in enumerate(steps) if "secrets" in s), default=None)
            if last is not None:
                readers.append(" && ".join(steps[:last + 1]))
    return readers


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_node_command_gets_each_secret_exactly_as_written(path, tmp_path):
    readers = _readers(path)
    assert len(readers) == 3, readers  # ray start on the head and on workers, and the MLflow server
    (tmp_path / ".saeception").mkdir()
    (tmp_path / ".saeception" / "secrets.env").write_text(FILE)
    keys = " ".join(sorted(SECRETS))
    show = f"python -c 'import json, os, sys; print(json.dumps({{k: os.environ.get(k) for k in sys.argv[1:]}}))' {keys}"
    for reader in readers:
        ran = subprocess.run(["bash", "-c", f"{reader} && {show}"], env=_env(tmp_path), capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == SECRETS, reader


def test_a_line_that_is_not_key_value_stops_the_node_command_naming_the_line_not_its_value(tmp_path, capsys):
    (tmp_path / ".saeception").mkdir()
    secrets = tmp_path / ".saeception" / "secrets.env"
    secrets.write_text("HF_TOKEN=ok\nhunter2-pasted-alone\n")
    assert main([str(secrets)]) == 2
    err = capsys.readouterr().err
    assert f"{secrets}:2: expected KEY=value" in err and "hunter2" not in err
    reader = _readers(CLUSTER_FILES[0])[0]
    ran = subprocess.run(["bash", "-c", f"{reader} && echo started"], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode != 0 and "started" not in ran.stdout and ":2: expected KEY=value" in ran.stderr
    with pytest.raises(ValueError, match="1: expected"):
        read_secrets(_write(tmp_path / "bad.env", "1KEY=x\n"))
    assert main([str(tmp_path / "missing.env")]) == 2


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
