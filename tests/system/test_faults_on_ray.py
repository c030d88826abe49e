"""Faults on Ray, each really done: a sweep whose stage cache holds a file in an entry's place, a sweep driver
SIGKILLed right after a trial started. Run one alone with its marker (`storage_faults`, `orphans`); the
Ray-free faults are tests/unit/sweep/test_faults.py."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import stage_keys
from paths import REPO
from paths import TINY as TINY_SPACE

from saeception.store.cache import StageCache

# ---- Ray: a sweep with a file in a cache entry's place; a driver SIGKILLed after a trial started ----


def _sweep_cmd(storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saeception.sweep", "--space", str(TINY_SPACE), "--storage", str(storage),
            "--name", "flt", "--confirm-seeds", "0", "--num-cpus", "2", "--no-plots", *extra]


def _env(ray_env: dict, **extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), ray_env.get("PYTHONPATH", "")) if p)
    return {**ray_env, "PYTHONPATH": path, **extra}


@pytest.mark.ray
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


def _trial_runs(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            return [r[0] for r in con.execute(
                "select run_uuid from tags where key = 'saeception.role' and value = 'trial' order by run_uuid")]
        except sqlite3.OperationalError:
            return []


@pytest.mark.ray
@pytest.mark.driver_kill
@pytest.mark.orphans
def test_driver_killed_right_after_a_trial_started_leaves_nothing_running(tmp_path, ray_env):
    """The driver is SIGKILLed as soon as the second trial's MLflow run exists. Two trials run at once;
    Tune adds one trial per step (TUNE_MAX_PENDING_TRIALS_PG) and saves its state only at its first step
    (TUNE_GLOBAL_CHECKPOINT_S), so the second trial is in no saved state: the window the issue names,
    made certain. After --resume: no MLflow run and no Optuna trial is RUNNING; the orphan is FAILED
    (saeception.failure = orphaned) and not counted; the parent run says its driver died."""
    import optuna
    from mlflow.tracking import MlflowClient
    from raytools import kill_all

    storage = tmp_path / "s"
    cmd = _sweep_cmd(storage, "--trials", "2", "--set", "chain.cycles=0", "--max-concurrent", "2", "--cpus-per-worker", "0.5")
    window = {"TUNE_GLOBAL_CHECKPOINT_S": "1000000000", "TUNE_MAX_PENDING_TRIALS_PG": "1"}
    proc = subprocess.Popen(cmd, env=_env(ray_env, **window), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while len(_trial_runs(storage / "mlflow.db")) < 2:
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read() if proc.poll() is not None else ""
            proc.kill()
            raise AssertionError(f"the second trial never started: {out[-3000:]}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kill_all(ray_env["RAY_TMPDIR"])  # the machine is gone: its Ray processes with it

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("saeception").experiment_id
    running = [x.info.run_id for x in client.search_runs([exp]) if x.info.status == "RUNNING"]
    study = optuna.load_study(study_name="flt", storage=f"sqlite:///{storage / 'optuna.db'}")
    assert running and any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)  # the half-told state

    r = subprocess.run(cmd + ["--resume"], env=_env(ray_env), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = client.search_runs([exp])
    assert [x.info.status for x in runs if x.info.status == "RUNNING"] == []
    trials = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    orphans = [x for x in trials if x.data.tags.get("saeception.failure") == "orphaned"]
    assert len(orphans) == 1 and orphans[0].info.status == "FAILED"
    assert sum(x.info.status == "FINISHED" for x in trials) == 2  # the sweep still ran the trials it was asked for
    parent = [x for x in runs if x.data.tags.get("saeception.role") == "sweep"][0]
    assert parent.info.status == "FINISHED" and "saeception.interrupted" in parent.data.tags
    study = optuna.load_study(study_name="flt", storage=f"sqlite:///{storage / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["saeception.failure"] == "orphaned"
    assert failed[0].user_attrs["tune_trial_id"] == orphans[0].data.tags["saeception.trial_id"]
