"""The Ray Tune trainable: one trial = one whole cycle chain, run by ONE TorchTrainer (DDP inside).

Inside the trial:  trial function -> TorchTrainer(name=f"train-{trial_id}") -> N workers, each calling
saeception.chain.run_chain under torch.distributed. Every rank calls ray.train.report once per cycle;
rank 0 attaches that cycle's directory as the checkpoint and logs the cycle to the trial's MLflow child
run. TuneReportCallback relays rank 0's report to Tune, so schedulers act per cycle. A restarted trial
(same trial id, same Train run name) resumes after its last checkpointed cycle and reuses its MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Metric key a worker reports when its chain diverged (NaN/inf loss).
DIVERGED = "saeception_diverged"


@dataclass
class TrialSpec:
    """What every trial of a sweep shares (passed with tune.with_parameters)."""

    fixed: dict[str, Any]
    storage: str  # absolute path or URI: Train runs and checkpoints go under <storage>/train
    mlflow_uri: str
    parent_run_id: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2


def _worker_context(loop_config: dict[str, Any]):
    import ray.train
    import ray.train.torch

    from saeception.tracking import Tracker

    rank = ray.train.get_context().get_world_rank()
    tracker = Tracker(loop_config["mlflow_uri"]) if rank == 0 else None
    work = Path(tempfile.mkdtemp(prefix=f"saeception-r{rank}-"))
    return rank, ray.train.torch.get_device(), tracker, work


def _log_cycle_dir(tracker, run_id: str, cycle_dir: Path) -> None:
    """Logs the history stored in a cycle directory; steps already in MLflow are skipped, so this is
    idempotent (restarts, and controls that inherit cycle 0, never log a cycle twice)."""
    from saeception.artifacts import CycleDir

    tracker.log_history(run_id, json.loads(CycleDir(cycle_dir).metrics.read_text())["cycles"])


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """One chain; rank 0 checkpoints every cycle, so a restarted trial resumes after its last cycle."""
    import ray.train

    from saeception.artifacts import ChainPaths
    from saeception.chain import ChainState, run_chain
    from saeception.config import build_config
    from saeception.errors import CorruptCycleError, DivergedError

    cfg = build_config(loop_config["values"])
    rank, device, tracker, work = _worker_context(loop_config)
    run_id = loop_config["run_id"]
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        restored = work / "restored"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, restored)
        try:
            resume_from = ChainState.load(restored, device)
        except CorruptCycleError as e:
            # Never load a damaged checkpoint: rebuild the chain from cycle 0 instead.
            log.warning("rejected checkpoint, restarting the chain: %s", e)
            if tracker is not None:
                tracker.set_tags(run_id, {"saeception.checkpoint_rejected": str(e)})
        if resume_from is not None and tracker is not None:
            _log_cycle_dir(tracker, run_id, restored)  # cycles reported before a crash but not yet logged
            tracker.set_tags(run_id, {"saeception.resumed_after_cycle": resume_from.history[-1]["cycle"]})

    reported = []

    def on_cycle(cycle: int, metrics: dict, cycle_dir: Path) -> None:
        reported.append(cycle)
        if rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(cycle_dir)),
                             checkpoint_dir_name=f"cycle_{cycle:03d}")
            _log_cycle_dir(tracker, run_id, cycle_dir)
        else:
            ray.train.report({"cycle": cycle})

    try:
        history = run_chain(cfg, ChainPaths(work / "run"), on_cycle=on_cycle, device=device, resume_from=resume_from)
        if not reported:
            # Restored from the final cycle's checkpoint: nothing left to run, but Tune needs the result.
            ray.train.report(history[-1] if rank == 0 else {"cycle": history[-1]["cycle"]})
    except DivergedError as e:
        # Reported, not raised: Ray Train would retry a raised error, and a diverging config diverges
        # again. Tune checks every result for the objective, so the metrics are there, as NaN.
        # The reason goes to the trial's MLflow run, where the trial function reads it back.
        from saeception.evaluate import VAL_METRIC_NAMES
        from saeception.tracking import FAILURE as TAG_FAILURE

        if tracker is not None:
            tracker.set_tags(run_id, {TAG_FAILURE: f"DivergedError: {e}"})
        ray.train.report({DIVERGED: str(e), **dict.fromkeys(VAL_METRIC_NAMES, float("nan"))})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _confirm_worker_loop(loop_config: dict[str, Any]) -> None:
    """All arms of each of its seeds (saeception.confirm.run_arms), one seed after another. A restart
    re-runs them; MLflow stays deduplicated (steps already logged are skipped)."""
    import ray.train

    from saeception.confirm import run_arms

    rank, device, tracker, work = _worker_context(loop_config)
    try:
        for seed in loop_config["seeds"]:
            run_ids = loop_config["run_ids"][str(seed)]

            def on_cycle(arm: str, cycle: int, metrics: dict, cycle_dir: Path, seed=seed, run_ids=run_ids) -> None:
                ray.train.report({"arm": arm, "seed": seed, "cycle": cycle, **(metrics if rank == 0 else {})})
                if rank == 0:
                    _log_cycle_dir(tracker, run_ids[arm], cycle_dir)

            run_arms(loop_config["values"], seed, work / f"seed{seed}", on_cycle=on_cycle, device=device)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fit(spec: TrialSpec, loop, loop_config: dict[str, Any], name: str, run_ids: list[str], tracker) -> None:
    """Runs one TorchTrainer for the trial and closes its MLflow runs (FAILED with the reason on error)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "mlflow_uri": spec.mlflow_uri},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=os.path.join(spec.storage, "train"),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    for run_id in run_ids:
        tracker.clear_failure(run_id)  # a restarted trial starts clean
    try:
        trainer.fit()
        for run_id in run_ids:
            reason = tracker.failure(run_id)
            if reason:
                from saeception.errors import DivergedError

                raise DivergedError(reason.removeprefix("DivergedError: "))
    except BaseException as e:
        for run_id in run_ids:
            tracker.finish(run_id, failed=f"{type(e).__name__}: {e}")
        raise
    for run_id in run_ids:
        tracker.finish(run_id)


def chain_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable for a sweep trial. `config` holds the sampled dotted keys."""
    import ray.tune

    from saeception.config import build_config, to_flat_dict
    from saeception.tracking import Tracker

    sampled = dict(config)
    values = {**spec.fixed, **sampled}
    cfg = build_config(values)
    trial_id = ray.tune.get_context().get_trial_id()
    tracker = Tracker(spec.mlflow_uri)
    run_id = tracker.child_run(spec.parent_run_id, trial_id, role="trial", name=f"trial-{trial_id}")
    tracker.log_params(run_id, {**to_flat_dict(cfg), **{f"searched.{k}": v for k, v in sampled.items()}})
    _fit(spec, _worker_loop, {"values": values, "run_id": run_id}, f"train-{trial_id}", [run_id], tracker)


def confirm_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable for a group of confirmation seeds: the chosen config and its controls,
    each (arm, seed) its own MLflow child run. Seeds are grouped so that a small cluster pays one
    worker-group start for all of them, and a large one runs the groups in parallel."""
    from saeception.config import build_config, to_flat_dict
    from saeception.confirm import ARMS, arm_values
    from saeception.tracking import Tracker

    seeds = [int(s) for s in config["seeds"]]
    tracker = Tracker(spec.mlflow_uri)
    run_ids: dict[str, dict[str, str]] = {}
    for seed in seeds:
        run_ids[str(seed)] = {}
        for arm in ARMS:
            values = {**arm_values(spec.fixed, arm), "seed": seed}
            key = f"{arm}-seed{seed}"
            run_id = tracker.child_run(spec.parent_run_id, key, role="confirm" if arm == "best" else "control",
                                       name=key, extra_tags={"saeception.arm": arm, "saeception.seed": str(seed)})
            tracker.log_params(run_id, to_flat_dict(build_config(values)))
            run_ids[str(seed)][arm] = run_id
    _fit(spec, _confirm_worker_loop, {"values": spec.fixed, "seeds": seeds, "run_ids": run_ids},
         "confirm-seeds-" + "-".join(map(str, seeds)), [r for d in run_ids.values() for r in d.values()], tracker)
