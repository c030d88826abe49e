"""train.strategy fsdp in a real one-trial sweep: a TorchTrainer of 2 gloo workers that shard the model."""

from __future__ import annotations

import os

import pytest
from helpers import fsdp_chain_values
from paths import REPO


@pytest.mark.ray(seconds=65)
@pytest.mark.fsdp
def test_a_one_trial_fsdp_sweep_on_two_workers(tmp_path, ray_env, neox_dir, text_csv):
    """The user's command, with a tiny GPT-NeoX text space: one trial, one TorchTrainer of 2 gloo workers
    that shard the model (train.strategy fsdp)."""
    import subprocess
    import sys

    import yaml

    space = tmp_path / "neox_tiny.yaml"
    fixed = {k: v for k, v in fsdp_chain_values(neox_dir, text_csv, "ddp").items() if k not in ("train.strategy", "device", "sae.k")}
    space.write_text(yaml.safe_dump({"name": "neox_tiny", "fixed": fixed,
                                     "params": {"sae.k": {"type": "int", "low": 2, "high": 6}},
                                     "objectives": [{"metric": "val_sae_u", "mode": "max"}]}))
    repo = REPO
    env = {**ray_env, "PYTHONPATH": os.pathsep.join(p for p in (str(repo), ray_env.get("PYTHONPATH")) if p)}
    storage = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "saeception.sweep", "--space", str(space), "--trials", "1",
                        "--storage", str(storage), "--num-cpus", "2", "--workers-per-trial", "2", "--cpus-per-worker", "0.5",
                        "--confirm-seeds", "0", "--no-cache", "--no-plots", "--set", "train.strategy=fsdp"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 done, 0 stopped early, 0 running, 0 failed of 1" in r.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    [trial] = [x for e in client.search_experiments() for x in client.search_runs([e.experiment_id])
               if x.data.tags.get("saeception.role") == "trial"]
    assert trial.info.status == "FINISHED" and trial.data.params["train.strategy"] == "fsdp"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "task_accuracy")] == [0, 1]
