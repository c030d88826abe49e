"""The words a trial and the sweep driver share: report fields, MLflow tags, checkpoint and run names.

A leaf: it imports nothing of saeception, so both sides (saeception.trainables in the trial and Train
processes, the driver modules of saeception.sweep) take their names from here and never from each other.
"""

from __future__ import annotations

import os

# What every sweep under one --storage shares there; each sweep's own files are under <storage>/<name>/, so
# these are not sweep names.
RAY_DIR = "ray"  # Ray Tune's experiments: <storage>/ray/<name>
TRAIN_DIR = "train"  # Ray Train's runs and checkpoints: <storage>/train/<name>/<run>
CACHE_DIR = "cache"  # the stage cache's default
ARTIFACTS_DIR = "mlartifacts"  # a SQLite MLflow store's artifacts, beside it
STORAGE_PARTS = (RAY_DIR, TRAIN_DIR, CACHE_DIR, ARTIFACTS_DIR)

# Fields of rank 0's report that are for the relay (MlflowRelay), not for Tune.
HISTORY = "_saeception_history"  # JSON list of every cycle's metrics so far
RUN_KEY = "_saeception_run"  # which MLflow run (confirmation trials hold several)
TAGS = "_saeception_tags"  # JSON dict of tags for that run
SPLITS = "_saeception_splits"  # JSON {"data": data config, "splits": results.json's split identities}
SPREAD = "_saeception_sae_seeds"  # JSON list of the extra SAEs' metrics (confirmation, one arm of one seed)
RUN_STARTED = "_saeception_run_started"  # when that run's work began (seconds since the epoch): its MLflow start
REPORTED_AT = "_saeception_reported_at"  # when rank 0 made the report (seconds since the epoch)
# Fields Tune sees.
DIVERGED = "saeception_diverged"  # the chain's loss became NaN/inf: the reason
FINAL_CYCLE = "final_cycle"  # the trial's last cycle (chain.cycles): a result before it is not a finished trial
TRAIN_CONTROLLER = "saeception_train_controller"  # the trial's Ray Train controller (actor id): the driver's leak sweeper

# MLflow tags and metric prefixes.
STOPPED_AT = "saeception.stopped_at_cycle"  # a scheduler stopped the trial after this cycle (the driver closes it)
KEY_TAG = "saeception.confirm_key"  # which confirmation (winner + settings) a confirm/control run belongs to
TRAIN_RUN_TAG = "saeception.train_run"  # the Train run holding a confirmation arm's checkpoints
SAE_SEED_PREFIX = "sae_seed/"  # the extra SAEs' metrics on each confirmation arm's run, step = SAE seed 1..n
VERDICT_TAG = "saeception.verdict"  # the verdict line; .<control>.<metric> the verdicts
LAST_REPORT_TAG = "timing/last_report_at"  # when rank 0 made a run's last report: a confirmation arm's end

# The Optuna trial's user attribute naming its Tune trial.
TUNE_TRIAL_ATTR = "tune_trial_id"


def stopped_early(result: dict | None) -> bool:
    """Whether a trial's last result comes before its last cycle (a scheduler stopped it)."""
    if not result or FINAL_CYCLE not in result or "cycle" not in result:
        return False
    return int(result["cycle"]) < int(result[FINAL_CYCLE])


def arm_checkpoint(arm: str, seed: int) -> str:
    """Checkpoint name of a confirmation arm's last cycle (kept for the sweep's export)."""
    return f"confirm-{arm}-seed{seed}"


def confirm_run_name(attempt: str, seeds: list[int]) -> str:
    """The Train run (under <storage>/train/<name>) of a group of confirmation seeds in one attempt of a
    confirmation (its key and launch time: nothing is restored from another winner's or attempt's run)."""
    return f"confirm-{attempt}-seeds-" + "-".join(map(str, seeds))


def arm_run_key(key: str, arm: str, seed: int) -> str:
    """The MLflow child-run key of one (arm, seed) of confirmation `key`."""
    return f"{arm}-seed{seed}-{key}"


def checkpoint_uri(train_dir: str, run_name: str, checkpoint_name: str) -> str:
    """Where Ray Train stored a checkpoint reported with checkpoint_dir_name=checkpoint_name (train_dir: the
    sweep's <storage>/train/<name>, Plan.train_dir)."""
    return os.path.join(train_dir, run_name, checkpoint_name)
