"""Helpers shared by the sweep benchmarks: run the real CLI, read the results back from MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(args: list[str], storage: Path, cwd: Path = REPO) -> float:
    """Runs `python -m saeception.sweep` as a user would, from `cwd` (whose `saeception` it imports: `-m` puts
    the working directory first on sys.path); returns its wall time in seconds."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "saeception.sweep", "--storage", str(storage), *args], env=env,
                           cwd=cwd, capture_output=True, text=True)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall


def trial_runs(storage: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("saeception")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("saeception.role") == "sweep")
    return client, parent, [r for r in runs if r.data.tags.get("saeception.role") == "trial"]
