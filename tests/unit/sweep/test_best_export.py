"""The sweep's export of its winner (saeception.sweep.best) without a Ray cluster: a real chain's cycle laid
out as Ray Train checkpoints it (<storage>/train/train-<trial id>/cycle_NNN), exported and logged under
best/ on the parent run; a missing checkpoint is reported and tagged, not raised."""

import json
import shutil
from pathlib import Path

import pytest
from paths import TINY as TINY_PATH

from saeception.method.chain import run_chain
from saeception.store.artifacts import ChainPaths
from saeception.sweep import cli as sweep
from saeception.sweep.best import BEST_TAG, export_best
from saeception.sweep.tracking import Tracker

TINY = str(TINY_PATH)
SAMPLED = {"sae.kind": "topk", "sae.k": 4, "sae.expansion_factor": 2, "sharpen.top_k_pct": 5.0, "aux.weight": 1.0}


@pytest.fixture
def finished_trial(tmp_path):
    """A plan, an MLflow parent run with the trial's child run (split tags as the relay sets them) and the
    trial's last cycle where Ray Train keeps it."""
    storage = tmp_path / "sweep"
    p = sweep.plan(sweep.parser().parse_args(["--space", TINY, "--storage", str(storage), "--confirm-seeds", "0"]))
    run_dir = tmp_path / "run"
    run_chain(p.space.config({**SAMPLED, "device": "cpu"}), ChainPaths(run_dir))
    shutil.copytree(run_dir / "cycle_001", Path(p.train_dir) / "train-t1" / "cycle_001")
    tracker = Tracker(p.mlflow_uri)
    parent = tracker.sweep_run(p.experiment, p.name, reuse=False)
    child = tracker.child_run(parent, "t1", role="trial", name="trial-t1")
    results = json.loads((run_dir / "results.json").read_text())
    tracker.log_dataset(child, results["config"]["data"], results["splits"])
    return p, tracker, parent, {"trial_id": "t1", "cycle": 1, "config": SAMPLED, "val_sae_u": 0.5}, results


def test_best_trial_is_exported_and_logged_under_best(finished_trial, tmp_path):
    p, tracker, parent, trial, results = finished_trial
    out = export_best(p, tracker, parent, trial, None)
    assert out == p.local_dir / p.name / "best"
    assert {"README.md", "saelens", "sparsify", "classifier"} <= {x.name for x in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "## What was searched" in card and "`sae.k`: 4" in card and "`val_sae_u` = 0.5000" in card
    assert results["splits"]["test"]["ids_sha256"] in card  # the split hashes, from the trial run's tags
    logged = {a.path for a in tracker.client.list_artifacts(parent, "best")}
    assert {"best/README.md", "best/latents.html", "best/saelens", "best/sparsify", "best/classifier"} <= logged
    saelens = {a.path for a in tracker.client.list_artifacts(parent, "best/saelens")}
    assert saelens == {"best/saelens/cfg.json", "best/saelens/sae_weights.safetensors", "best/saelens/sparsity.safetensors"}


def test_a_missing_checkpoint_is_reported_and_tagged(finished_trial, capsys):
    p, tracker, parent, trial, _ = finished_trial
    assert export_best(p, tracker, parent, {**trial, "trial_id": "gone"}, None) is None
    assert "export of the best trial failed: checkpoint" in capsys.readouterr().out
    assert "train-gone" in tracker.client.get_run(parent).data.tags["saeception.export_failed"]


def logged_files(tracker, run_id: str, path: str) -> set[str]:
    """Every artifact file under `path` on the run, relative to `path`."""
    out = set()
    for a in tracker.client.list_artifacts(run_id, path):
        out |= {f"{a.path}/{f}" for f in logged_files(tracker, run_id, a.path)} if a.is_dir else {a.path}
    return {f.removeprefix(path + "/") for f in out}


def local_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def log_stale(tracker, parent: str, tmp_path: Path, folder: str = "best") -> None:
    """What an earlier winner's export left in MLflow: a sparsify folder named otherwise and a file this one lacks."""
    stale = tmp_path / "stale"
    (stale / "sparsify" / "sae").mkdir(parents=True, exist_ok=True)
    (stale / "sparsify" / "sae" / "cfg.json").write_text("{}")
    (stale / "old_winner.txt").write_text("trial t0")
    tracker.log_artifacts(parent, stale, folder)


def test_a_re_export_leaves_exactly_the_current_winner_under_best(finished_trial, tmp_path, capsys):
    """MLflow's best/ holds exactly the current export: an earlier winner's files are deleted through the artifact
    repository first (a local sqlite store here), and the tag names the folder."""
    p, tracker, parent, trial, _ = finished_trial
    log_stale(tracker, parent, tmp_path)
    assert "old_winner.txt" in logged_files(tracker, parent, "best")
    for _ in range(2):  # a resumed sweep exports again
        out = export_best(p, tracker, parent, trial, None)
        assert logged_files(tracker, parent, "best") == local_files(out) and "sparsify/hidden.1/cfg.json" in local_files(out)
        assert tracker.client.get_run(parent).data.tags[BEST_TAG] == "best"
    assert "MLflow artifacts best/ of the parent run" in capsys.readouterr().out
    # A failed export leaves no earlier winner's files in MLflow either (the local folder is gone too).
    assert export_best(p, tracker, parent, {**trial, "trial_id": "gone"}, None) is None
    tags = tracker.client.get_run(parent).data.tags
    assert not logged_files(tracker, parent, "best") and BEST_TAG not in tags and "saeception.export_failed" in tags
    export_best(p, tracker, parent, trial, None)  # and a later success clears the failure
    assert "saeception.export_failed" not in tracker.client.get_run(parent).data.tags


def test_a_store_that_cannot_delete_gets_a_versioned_folder_named_by_the_tag(finished_trial, tmp_path, monkeypatch, capsys):
    """Where the artifact store cannot delete (Databricks, DBFS, FTP: MLflow raises "Not implemented yet"), the
    export goes to the first empty best-<n>/, the tag names it, and a line says so."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    def cannot(self, artifact_path=None):
        raise MlflowException("Not implemented yet")

    monkeypatch.setattr(LocalArtifactRepository, "delete_artifacts", cannot)
    p, tracker, parent, trial, _ = finished_trial
    log_stale(tracker, parent, tmp_path)
    log_stale(tracker, parent, tmp_path, "best-2")
    out = export_best(p, tracker, parent, trial, None)
    assert tracker.client.get_run(parent).data.tags[BEST_TAG] == "best-3"
    assert logged_files(tracker, parent, "best-3") == local_files(out)
    assert "cannot delete the parent run's earlier best/ (LocalArtifactRepository: Not implemented yet); this export " \
           "is logged under best-3/" in capsys.readouterr().out
