"""Faults on Ray, really done: a sweep whose stage cache holds a file in an entry's place. Run it alone with its
marker (`storage_faults`); the Ray-free faults are tests/unit/sweep/test_faults.py. The driver SIGKILLed right
after a trial started (`orphans`) shares the driver-kill test's sweep in test_reliability_on_ray.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faults import stage_keys
from paths import REPO
from paths import TINY as TINY_SPACE

from saeception.store.cache import StageCache

# ---- Ray: a sweep with a file in a cache entry's place ----


def _sweep_cmd(storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saeception.sweep", "--space", str(TINY_SPACE), "--storage", str(storage),
            "--name", "flt", "--confirm-seeds", "0", "--num-cpus", "2", "--no-plots", *extra]


def _env(ray_env: dict, **extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), ray_env.get("PYTHONPATH", "")) if p)
    return {**ray_env, "PYTHONPATH": path, **extra}


@pytest.mark.ray(seconds=40)
@pytest.mark.storage_faults
def test_sweep_finishes_when_a_cache_entry_is_a_file(tmp_path, ray_env):
    import yaml
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "s"
    fixed = {**yaml.safe_load(TINY_SPACE.read_text())["fixed"], "chain.cycles": 0}
    keys = stage_keys(fixed)  # cycle 0's model and activations do not depend on the searched SAE settings
    cache = StageCache(storage / "cache")
    for stage in ("finetune", "extract"):
        cache.entry(keys[stage]).parent.mkdir(parents=True, exist_ok=True)
        cache.entry(keys[stage]).write_text("in the way")
    r = subprocess.run(_sweep_cmd(storage, "--trials", "1", "--set", "chain.cycles=0"), env=_env(ray_env), cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    trial = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    assert len(trial) == 1 and trial[0].info.status == "FINISHED"
    assert trial[0].data.tags["cache/misses"] == "3" and trial[0].data.tags["cache/write_errors"] == "0"
    assert all(cache.lookup(keys[s]) is not None for s in ("finetune", "extract"))  # rebuilt where the files were
