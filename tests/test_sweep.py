"""End to end through the CLI, exactly as a user runs it: a 2-trial x 1-cycle sweep, 2 DDP workers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = Path(__file__).parent / "spaces" / "tiny.yaml"


@pytest.mark.ray
def test_sweep_end_to_end(tmp_path, ray_env):
    storage = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saeception.sweep", "--space", str(TINY), "--trials", "2", "--storage", str(storage),
           "--num-cpus", "2", "--workers-per-trial", "2", "--cpus-per-worker", "0.5", "--name", "e2e", "--seed", "3",
           "--confirm-seeds", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ray_env, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 done, 0 stopped early, 0 running, 0 failed of 2" in r.stdout  # live progress

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("saeception")
    runs = client.search_runs([exp.experiment_id])
    roles = [x.data.tags.get("saeception.role") for x in runs]
    assert roles.count("confirm") == 3 and roles.count("control") == 6  # 3 seeds x (chosen config + 2 controls)
    # Every trial, confirmation and control run saw the same splits (data.split_seed, not the run's seed).
    split_tags = [{k: v for k, v in x.data.tags.items() if k.startswith("saeception.split.")}
                  for x in runs if x.data.tags.get("saeception.role") in ("trial", "confirm", "control")]
    assert len(split_tags) == 11 and len(split_tags[0]) == 3
    assert all(t == split_tags[0] for t in split_tags)
    parents = [x for x in runs if x.data.tags.get("saeception.role") == "sweep"]
    children = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "space.sae.k" in parent.data.params and parent.data.params["fixed.chain.cycles"] == "1"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert "sae.expansion_factor" in child.data.params and "sharpen.top_k_pct" in child.data.params
        assert child.data.params["searched.aux.weight"] == child.data.params["aux.weight"]
        for key in ("task_accuracy", "val_sae_u", "sae_csi", "explained_variance"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1], key
        assert [m.step for m in client.get_metric_history(child.info.run_id, "aux_cosine")] == [1]

    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{storage / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2

    printed = re.search(r"trial (\w+): val_sae_u ([0-9.]+)", r.stdout)
    assert printed, r.stdout
    best_id, best_value = printed.group(1), float(printed.group(2))
    assert abs(study.best_value - best_value) < 1e-4
    by_trial = {c.data.tags["saeception.trial_id"]: c for c in children}
    assert best_id in by_trial
    mlflow_values = {t: client.get_metric_history(c.info.run_id, "val_sae_u")[-1].value for t, c in by_trial.items()}
    assert max(mlflow_values, key=mlflow_values.get) == best_id
    assert abs(mlflow_values[best_id] - study.best_value) < 1e-9
    assert parent.data.tags["best_trial_id"] == best_id
    # The stage cache: the second trial reuses the first trial's fine-tuned model and activations.
    assert parent.data.metrics["cache_hits"] >= 2 and parent.data.metrics["cache_seconds_saved"] > 0
    assert "mlflow ui --backend-store-uri sqlite:///" in r.stdout and "--host 127.0.0.1" in r.stdout

    # Evidence: the confirmation table with both controls, in the CLI output and the parent run.
    assert "confirmation at the last cycle (3 seeds" in r.stdout
    assert re.search(r"\| 1 \| sae_u \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \| -?[0-9.]+ \(\d/3, p=", r.stdout)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"confirmation.md", "confirmation.json", "confirmation.png", "best_config.yaml"} <= artifacts
    parent = client.get_run(parent.info.run_id)
    assert "confirm_best_sae_u_mean" in parent.data.metrics and "confirm_p_random_sae_u" in parent.data.metrics
    assert len(study.trials) == 2  # confirmation runs stay outside the Optuna study

    # Per-trial plots, and the review notebook runs headless against this sweep's store.
    for child in children:
        assert "trial_metrics.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"objectives.png", "parallel_coordinates.png"} <= artifacts
    execute_review_notebook(f"sqlite:///{storage / 'mlflow.db'}", "e2e", tmp_path)


def execute_review_notebook(uri: str, sweep: str, workdir: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "review_sweep.ipynb", as_version=4)
    old = {k: os.environ.get(k) for k in ("SAECEPTION_TRACKING_URI", "SAECEPTION_SWEEP")}
    os.environ.update(SAECEPTION_TRACKING_URI=uri, SAECEPTION_SWEEP=sweep)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 3  # the sweep's plots and the trajectories
    text = "".join(o.get("text", "") for o in outputs)
    assert "| 1 | sae_u |" in text  # the confirmation table


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "review_sweep.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
