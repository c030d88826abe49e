"""The sweep's winner where researchers use it: the best trial's last cycle (and each confirmation arm's,
on the first confirmation seed) exported with `saeception.export` (SAELens, sparsify, Hugging Face, a
model card) into `<storage>/best/` (the local SQLite directory for URI storage) and logged on the
parent run under `best/`, which then holds exactly this export (replace_logged); the best trial's data as the
parent run's MLflow dataset input.

A trial's files live in Ray Train's checkpoints (`<storage>/train/<train run>/<checkpoint>`); the run's
config comes from the sweep and its split identities from the tags the trial's run carries."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from saeception.eval.confirm import ARM_DOC, seed_values
from saeception.store.artifacts import ChainPaths, write_json
from saeception.store.uris import redact

from ..config import build_config, to_dict
from ..export import ExportError, export_run
from .plan import Plan
from .tracking import SPLIT_TAG
from .vocab import arm_checkpoint, arm_run_key, checkpoint_uri

log = logging.getLogger(__name__)

BEST = "best"  # the artifact folder on the parent run, and the local folder under the sweep directory
BEST_TAG = "saeception.best_artifact_path"  # the parent run's artifact folder holding the current winner's export
FAILED_TAG = "saeception.export_failed"
ARMS_DIR = "confirmation"  # best/confirmation/<arm>-seed<seed>/


def splits_from_tags(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{split: {"n", "ids_sha256"}} from a run's saeception.split.<split>.* tags ({} when absent)."""
    out = {}
    for split in ("train", "val", "test"):
        digest = tags.get(SPLIT_TAG.format(split, "sha256"))
        if digest:
            n = tags.get(SPLIT_TAG.format(split, "n"))
            out[split] = {"n": int(n) if n and n.isdigit() else n, "ids_sha256": digest}
    return out


def fetch_cycle(uri: str, dest_run: Path) -> Path:
    """Downloads a checkpointed cycle directory into `dest_run/cycle_NNN` (a run directory for the
    export); returns that directory. Raises FileNotFoundError when the checkpoint is not there."""
    import ray.train  # lazy: Ray is loaded only in the processes that use it


    staging = dest_run / "download"
    try:
        ray.train.Checkpoint(uri).to_directory(str(staging))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"checkpoint {uri} not found") from e
    if not (staging / "metrics.json").exists():
        raise FileNotFoundError(f"checkpoint {uri} holds no cycle (no metrics.json)")
    cycle = int(json.loads((staging / "metrics.json").read_text())["cycles"][-1]["cycle"])
    target = ChainPaths(dest_run).cycle(cycle).path
    staging.rename(target)
    return target


def _searched(p: Plan, trial: dict[str, Any]) -> str:
    space = yaml.safe_dump(p.space.to_dict()["params"], sort_keys=False, default_flow_style=None).rstrip()
    objectives = ", ".join(f"`{o.metric}` ({o.mode}, validation split, last cycle)" for o in p.space.objectives)
    values = ", ".join(f"`{m}` = {trial[m]:.4f}" for m in p.space.metrics if isinstance(trial.get(m), (int, float)))
    return (f"Sweep `{p.name}`: {p.search.trials} Optuna trials (TPE, seed {p.search.seed}) over\n\n```yaml\n{space}\n```\n\n"
            f"Objectives: {objectives}. The winner is trial `{trial['trial_id']}` ({values}); its sampled values:\n\n"
            + "\n".join(f"- `{k}`: {v}" for k, v in sorted(trial["config"].items())))


def _confirmation_md(p: Plan) -> str | None:
    f = p.sweep_dir / "confirmation.md"
    if not f.exists():
        return None

    arms = "; ".join(f"`{a}`: {ARM_DOC[a]}" for a in p.confirm.settings.controls)
    return (f"The best config (`best`) and its controls ({arms}) on {p.confirm.seeds} fresh seeds: mean ± sd per "
            "arm, and per control the paired difference best − control with its anytime-valid interval, wins/ties/"
            "losses in the metric's direction, the family-adjusted anytime p, the equivalence margin, the SAE-seed "
            "spread and the verdict (docs/evidence.md in the saeception repository). Test split unless `val_`.\n\n"
            + f.read_text())


def _export_one(p: Plan, tracker, parent: str, uri: str, values: dict[str, Any], run_key: str, out: Path,
                card_extra: dict[str, str]) -> dict[str, Path]:

    run = tracker.child_run_by_key(parent, run_key)
    splits = splits_from_tags(run.data.tags) if run is not None else {}
    with tempfile.TemporaryDirectory(prefix="saeception-best-") as tmp:
        cycle_dir = fetch_cycle(uri, Path(tmp))
        history = json.loads((cycle_dir / "metrics.json").read_text())["cycles"]
        write_json(Path(tmp) / "results.json", {"config": to_dict(build_config(values)), "splits": splits, "cycles": history})
        return export_run(cycle_dir, out, card_extra=card_extra, force=True)


def export_best(p: Plan, tracker, parent: str, trial: dict[str, Any], confirmation: dict[str, Any] | None) -> Path | None:
    """Exports the best trial (and the confirmation arms of `confirmation["seed"]`) into
    `<local dir>/<name>/best/` and logs that folder on the parent run under best/, replacing an earlier
    export there (replace_logged). An export that cannot be made (e.g. the model's source is not readable here)
    is reported, tagged saeception.export_failed on the parent run (its earlier export removed: forget_logged),
    and the sweep's results stand. Returns the local folder, None when it failed."""

    values = {**p.space.fixed, **trial["config"]}
    out = p.sweep_dir / BEST
    extra = {"What was searched": _searched(p, trial)}
    table = _confirmation_md(p)
    if table:
        extra["Confirmation on fresh seeds"] = table
    extra["Where this came from"] = (f"MLflow: parent run `{parent}` of experiment `{p.experiment}` at `{redact(p.mlflow_uri)}`, "
                                     f"trial `{trial['trial_id']}`. Ray storage: `{redact(p.storage)}`.")
    try:
        if out.exists():
            shutil.rmtree(out)  # a resumed sweep re-exports
        uri = checkpoint_uri(p.train_dir, f"train-{trial['trial_id']}", f"cycle_{int(trial['cycle']):03d}")
        written = _export_one(p, tracker, parent, uri, values, str(trial["trial_id"]), out, extra)
        if confirmation:
            seed = int(confirmation["seed"])
            for arm in confirmation["arms"]:
                key = f"{arm}-seed{seed}"
                arm_extra = {"Confirmation arm": f"Arm `{arm}` of the confirmation, seed {seed}: {ARM_DOC[arm]}.", **extra}
                uri = checkpoint_uri(p.train_dir, confirmation["train_runs"][arm], arm_checkpoint(arm, seed))
                _export_one(p, tracker, confirmation["run"], uri, seed_values(values, arm, seed),
                            arm_run_key(confirmation["key"], arm, seed), out / ARMS_DIR / key, arm_extra)
    except Exception as e:  # noqa: BLE001 - any export failure is reported and tagged; the sweep's results stand
        what = redact(str(e) if isinstance(e, ExportError | FileNotFoundError) else f"{type(e).__name__}: {e}")
        print(f"export of the best trial failed: {what}", flush=True)
        tracker.set_tags(parent, {FAILED_TAG: what[:5000]})
        forget_logged(tracker, parent)
        return None
    folder = replace_logged(tracker, parent, out)
    if FAILED_TAG in tracker.client.get_run(parent).data.tags:  # an earlier attempt's (a resumed sweep)
        tracker.client.delete_tag(parent, FAILED_TAG)
    print(f"exported the best trial to {out} ({', '.join(written)}) and MLflow artifacts {folder}/ of the parent run", flush=True)
    return out


def delete_logged(tracker, run_id: str, path: str) -> str | None:
    """Deletes the run's artifacts under `path` through MLflow's artifact repository (its client has no delete;
    the repositories of the local store, the tracking server's proxied artifacts, S3, GCS, Azure Blob, HDFS and
    SFTP have one; Databricks, DBFS, FTP and ADLS raise "not implemented", and a plugin may do nothing).
    Returns None when nothing is left there, else why not."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow only where runs are written
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # lazy: as above

    if not tracker.client.list_artifacts(run_id, path):
        return None
    repo = get_artifact_repository(tracker.client.get_run(run_id).info.artifact_uri, tracking_uri=tracker.uri)
    try:
        repo.delete_artifacts(path)
    except (NotImplementedError, MlflowException) as e:
        if isinstance(e, MlflowException) and "not implemented" not in str(e).lower():
            raise
        return f"{type(repo).__name__}: {e}"
    left = tracker.client.list_artifacts(run_id, path)
    return f"{type(repo).__name__} left {left[0].path}" if left else None


def replace_logged(tracker, run_id: str, local: Path) -> str:
    """Logs the folder `local` on the run so that one artifact folder holds exactly it: best/, after deleting
    what an earlier export left there (a resumed sweep whose winner changed, one that now has no sparsify
    export). Where the artifact store cannot delete, best/ keeps the earlier files and the export goes to the
    first empty best-<n>/ instead, with a printed line. Tag BEST_TAG names the folder; returns it."""
    folder, n = BEST, 1
    kept = delete_logged(tracker, run_id, BEST)
    if kept:
        while True:
            n += 1
            folder = f"{BEST}-{n}"
            if not tracker.client.list_artifacts(run_id, folder):
                break
        print(f"MLflow cannot delete the parent run's earlier {BEST}/ ({kept}); this export is logged under "
              f"{folder}/, named by the tag {BEST_TAG}", flush=True)
    tracker.log_artifacts(run_id, local, folder)
    tracker.set_tags(run_id, {BEST_TAG: folder})
    return folder


def forget_logged(tracker, run_id: str) -> None:
    """No winner's export (it failed): best/ is emptied where the store can delete, and BEST_TAG is removed, so
    MLflow never shows an earlier winner as the current one."""
    delete_logged(tracker, run_id, BEST)
    if BEST_TAG in tracker.client.get_run(run_id).data.tags:
        tracker.client.delete_tag(run_id, BEST_TAG)


def log_best_dataset(tracker, parent: str, trial_id: str) -> None:
    """The best trial's data (its dataset inputs and split tags) on the parent run as well."""
    run = tracker.child_run_by_key(parent, trial_id)
    if run is None:
        return
    splits = splits_from_tags(run.data.tags)
    params = run.data.params
    data = {k.removeprefix("data."): v for k, v in params.items() if k.startswith("data.")}
    if splits and data.get("name"):
        tracker.log_dataset(parent, data, splits)
