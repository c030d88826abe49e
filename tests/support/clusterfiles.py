"""What the cluster-file tests share: Ray's own validation of a cluster file, and docs/cluster.md's
cluster command with the tests' values."""

from __future__ import annotations


def validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


# docs/cluster.md's cluster command ("Run on a cluster"), with the tests' values: same flags.
SWEEP_ON_CLUSTER = ["python", "-m", "saeception.sweep", "--address", "auto", "--storage", "{storage}",
                    "--space", "{space}", "--trials", "2", "--workers-per-trial", "1",
                    "--gpus-per-worker", "0", "--cpus-per-worker", "2", "--confirm-seeds", "0"]
