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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPEC_KEY = "__saeception__"


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
    extra_tags: dict[str, str] = field(default_factory=dict)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from saeception.artifacts import ChainPaths, CycleDir
    from saeception.chain import run_chain
    from saeception.config import build_config
    from saeception.tracking import Tracker

    cfg = build_config(loop_config["values"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    tracker = Tracker(loop_config["mlflow_uri"]) if rank == 0 else None
    run_id = loop_config["run_id"]
    work = Path(tempfile.mkdtemp(prefix=f"saeception-r{rank}-"))
    resume_from = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume_from = work / "restored"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_from)
        if tracker is not None:
            history = json.loads(CycleDir(resume_from).metrics.read_text())["cycles"]
            tracker.log_history(run_id, history)  # cycles reported before a crash but not yet logged

    def on_cycle(cycle: int, metrics: dict, cycle_dir: Path) -> None:
        if rank == 0:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(cycle_dir)),
                             checkpoint_dir_name=f"cycle_{cycle:03d}")
            tracker.log_history(run_id, [metrics])
        else:
            ray.train.report({"cycle": cycle})

    try:
        run_chain(cfg, ChainPaths(work / "run"), on_cycle=on_cycle, device=device, resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chain_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable. `config` holds the sampled dotted keys."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from saeception.config import build_config, to_flat_dict
    from saeception.tracking import Tracker

    sampled = {k: v for k, v in config.items() if k != SPEC_KEY}
    values = {**spec.fixed, **sampled}
    cfg = build_config(values)
    trial_id = ray.tune.get_context().get_trial_id()
    tracker = Tracker(spec.mlflow_uri)
    run_id = tracker.child_run(spec.parent_run_id, trial_id, role=spec.extra_tags.get("saeception.role", "trial"),
                               name=f"trial-{trial_id}", extra_tags=spec.extra_tags)
    tracker.log_params(run_id, {**to_flat_dict(cfg), **{f"searched.{k}": v for k, v in sampled.items()}})
    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"values": values, "run_id": run_id, "mlflow_uri": spec.mlflow_uri},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=os.path.join(spec.storage, "train"),
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except BaseException as e:
        tracker.finish(run_id, failed=f"{type(e).__name__}: {e}")
        raise
    tracker.finish(run_id)
