"""The Ray Tune trainables: one trial = one TorchTrainer (DDP inside), never one per stage.

    trial function (head) -> TorchTrainer(name=f"train-{trial_id}") -> N workers running
    saeception.method.chain.run_chain under torch.distributed

Every rank calls ray.train.report once per cycle; rank 0 attaches that cycle's directory as the
checkpoint and adds the chain's history so far. `MlflowRelay`, a Train callback, runs in the Train
controller, which Ray places on the trial driver's node: it logs rank 0's report to the trial's MLflow
run (so workers never need to reach MLflow, which may listen on the head's loopback only) and forwards
the metrics to Tune, so schedulers act per cycle. A restarted trial (same trial id, same Train run
name) resumes after its last checkpointed cycle and reuses its MLflow run; logging skips cycles
already logged, so nothing is written twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.tune.integration.ray_train import TuneReportCallback

from saeception.config import build_config, to_flat_dict
from saeception.eval.confirm import run_arms, seed_values
from saeception.eval.evaluate import VAL_METRIC_NAMES
from saeception.method.chain import ChainState, run_chain, setup
from saeception.method.errors import CorruptCycleError, DivergedError
from saeception.store.artifacts import ChainPaths, CycleDir
from saeception.store.cache import CACHE_COUNTERS, open_cache
from saeception.store.scratch import work_dir
from saeception.store.uris import is_uri
from saeception.sweep.plots import TRAJECTORY_METRICS, trial_plot
from saeception.sweep.tracking import FAILURE, TIMING, Tracker, counter_tags
from saeception.sweep.vocab import (
    DIVERGED,
    FINAL_CYCLE,
    HISTORY,
    KEY_TAG,
    LAST_REPORT_TAG,
    REPORTED_AT,
    RUN_KEY,
    RUN_STARTED,
    SAE_SEED_PREFIX,
    SPLITS,
    SPREAD,
    STOPPED_AT,
    TAGS,
    TRAIN_CONTROLLER,
    TRAIN_RUN_TAG,
    arm_checkpoint,
    arm_run_key,
    confirm_run_name,
)

from .locks import lease_lock

log = logging.getLogger(__name__)

@dataclass
class TrialSpec:
    """What every trial of a sweep shares (passed with tune.with_parameters)."""

    fixed: dict[str, Any]
    train_dir: str  # absolute path or URI, <storage>/train/<sweep name>: the trial's Train runs and checkpoints
    mlflow_uri: str
    parent_run_id: str
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2
    cache_dir: str | None = None  # the shared stage cache (None: off)
    cache_readonly: bool = False
    run_tags: dict[str, str] | None = None  # source/git/user and version tags, resolved by the sweep driver
    # Seconds a trial's workers may wait for their nodes (None: Ray Train's default, 60 s); long when the
    # autoscaler must first add the nodes (sweep/resources.py).
    worker_start_timeout_s: float | None = None
    local_cluster: bool = False  # the sweep started its own one-node Ray (no --address)
    plots: bool = True  # each run's trial_metrics.png (--no-plots: none)


@dataclass
class LazyRun:
    """A child run the relay opens when its first report arrives (a confirmation arm), so that its start is when its
    work began and the arms of a trial do not all share the trial's start."""

    parent: str
    role: str
    tags: dict[str, str]
    params: dict[str, Any]


def open_run(tracker, run_ids: dict[str, str], lazy: dict[str, LazyRun], key: str, started: float | None) -> str:
    """The run of `key`: given in `run_ids`, or (a LazyRun) created now with its work's start `started`, or reused
    by key (a restarted controller, a re-run arm); added to `run_ids`."""
    if key not in run_ids:
        run = lazy[key]
        run_id = tracker.child_run(run.parent, key, role=run.role, name=key, extra_tags=run.tags, start_time=started)
        tracker.clear_failure(run_id)  # a re-run arm starts clean
        tracker.set_tags(run_id, {TRAIN_RUN_TAG: run.tags[TRAIN_RUN_TAG],  # a re-run attempt's checkpoints
                                  f"{TIMING}trainer_started_at": f"{time.time():.3f}"})
        tracker.log_params(run_id, run.params)
        run_ids[key] = run_id
    return run_ids[key]


class MlflowRelay(TuneReportCallback):
    """Logs rank 0's reports to MLflow, then forwards them (without the relay's fields) to Tune."""

    def __init__(self, mlflow_uri: str, run_ids: dict[str, str], lazy: dict[str, LazyRun] | None = None):
        super().__init__()
        self.mlflow_uri, self.run_ids, self.lazy = mlflow_uri, dict(run_ids), lazy or {}
        self._tracker = None
        self._with_dataset: set[str] = set()

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = dict(metrics[0])
        history = json.loads(first.pop(HISTORY, "[]"))
        tags = json.loads(first.pop(TAGS, "{}"))
        data = json.loads(first.pop(SPLITS, "null"))
        spread = json.loads(first.pop(SPREAD, "[]"))
        reported = first.pop(REPORTED_AT, None) or time.time()
        self._tracker = self._tracker or Tracker(self.mlflow_uri)
        run_id = open_run(self._tracker, self.run_ids, self.lazy, first.pop(RUN_KEY, ""), first.pop(RUN_STARTED, None))
        if data and run_id not in self._with_dataset:
            self._tracker.log_dataset(run_id, data["data"], data["splits"])
            self._with_dataset.add(run_id)
        if DIVERGED in first:
            tags[FAILURE] = f"DivergedError: {first[DIVERGED]}"
        if tags:
            self._tracker.set_tags(run_id, tags)
        if history:
            self._tracker.log_history(run_id, history)
        for j, m in enumerate(spread, 1):
            self._tracker.log_metrics(run_id, {SAE_SEED_PREFIX + k: v for k, v in m.items()
                                               if isinstance(v, (int, float)) and k != "cycle"}, step=j)
        counters = {k: v for k, v in first.items() if k in CACHE_COUNTERS}
        if counters:  # cumulative per trial, as tags (not charts): the last value is the trial's total
            self._tracker.set_tags(run_id, counter_tags(counters))
        self._tracker.set_tags(run_id, {LAST_REPORT_TAG: f"{reported:.3f}"})
        # Which controller this trial's is: the driver kills one that outlives its trial (sweep/leaks.py).
        first[TRAIN_CONTROLLER] = ray.get_runtime_context().get_actor_id()
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def _rank0_report(rank: int, metrics: dict, cycle_dir: Path | None, run_key: str = "", tags: dict | None = None,
                  checkpoint: bool = False, history: list[dict] | None = None, checkpoint_name: str | None = None,
                  started: float | None = None) -> None:
    """Every rank reports; rank 0 adds the history (from the cycle directory), the run's data and
    splits (from its results.json), tags and checkpoint (named checkpoint_name, default cycle_NNN)."""
    import ray.train  # lazy: Ray is loaded only in the processes that use it


    if rank != 0:
        ray.train.report({"cycle": metrics.get("cycle")})
        return
    if history is None and cycle_dir is not None:
        history = json.loads(CycleDir(cycle_dir).metrics.read_text())["cycles"]
    payload = {**metrics, HISTORY: json.dumps(history or []), RUN_KEY: run_key, TAGS: json.dumps(tags or {}),
               REPORTED_AT: time.time(), **({RUN_STARTED: started} if started is not None else {})}
    results = cycle_dir.parent / "results.json" if cycle_dir is not None else None
    if results is not None and results.exists():
        run = json.loads(results.read_text())
        payload[SPLITS] = json.dumps({"data": run["config"]["data"], "splits": run.get("splits", {})})
    if checkpoint:
        ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(str(cycle_dir)),
                         checkpoint_dir_name=checkpoint_name or f"cycle_{metrics['cycle']:03d}")
    else:
        ray.train.report(payload)


def _worker_context(loop_config: dict[str, Any]):
    import ray.train  # lazy: Ray is loaded only in the processes that use it
    import ray.train.torch  # lazy: Ray is loaded only in the processes that use it



    rank = ray.train.get_context().get_world_rank()
    work = work_dir(f"saeception-r{rank}")  # a killed worker's directory is removed by the next one here
    cache_dir = loop_config.get("cache_dir")
    cache = None
    if cache_dir:
        # An object-store cache has no file locks: builders serialise on the cluster-wide lease lock, and
        # entries are downloaded into the worker's work dir, removed with it.
        cache = open_cache(cache_dir, readonly=loop_config.get("cache_readonly", False), scratch=work / "cache",
                           lock=lease_lock if is_uri(cache_dir) else None)
    return rank, ray.train.torch.get_device(), work, cache


def _with_cache_stats(metrics: dict, cache) -> dict:
    return {**metrics, **cache.stats.as_metrics()} if cache is not None else metrics


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """One chain; rank 0 checkpoints every cycle, so a restarted trial resumes after its last cycle."""
    entered = time.time()
    import ray  # lazy: Ray is loaded only in the processes that use it
    import ray.train  # lazy: Ray is loaded only in the processes that use it


    cfg = build_config(loop_config["values"])
    rank, device, work, cache = _worker_context(loop_config)
    # When the worker's own work starts (for the overhead benchmark, bench/ray_overhead.py).
    resume_from, tags = None, {"saeception.worker_node": ray.get_runtime_context().get_node_id(),
                               f"{TIMING}worker_entered_at": f"{entered:.3f}",
                               f"{TIMING}worker_started_at": f"{time.time():.3f}"}
    checkpoint, prepared = ray.train.get_checkpoint(), None
    if checkpoint is not None:
        restored = work / "restored"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, restored)
        prepared = setup(cfg)  # the model the checkpoint's weights must fit (run_chain goes on with it)
        try:
            resume_from = ChainState.load(restored, device, model=prepared.tap.model)
            tags["saeception.resumed_after_cycle"] = str(resume_from.history[-1]["cycle"])
        except CorruptCycleError as e:
            # Never load a damaged checkpoint: rebuild the chain from cycle 0 instead.
            log.warning("rejected checkpoint, restarting the chain: %s", e)
            tags["saeception.checkpoint_rejected"] = str(e)
    reported = []

    def on_cycle(cycle: int, metrics: dict, cycle_dir: Path) -> None:
        _rank0_report(rank, _with_cache_stats({**metrics, FINAL_CYCLE: cfg.chain.cycles}, cache), cycle_dir,
                      tags=tags if not reported else None, checkpoint=True)
        reported.append(cycle)

    try:
        history = run_chain(cfg, ChainPaths(work / "run"), on_cycle=on_cycle, device=device, resume_from=resume_from,
                            prepared=prepared, cache=cache)
        if not reported:
            # Restored from the final cycle's checkpoint: nothing left to run, but Tune needs the result.
            _rank0_report(rank, {**history[-1], FINAL_CYCLE: cfg.chain.cycles}, None, tags=tags, history=history)
    except DivergedError as e:
        # Reported, not raised: Ray Train would retry a raised error, and a diverging config diverges
        # again. Tune checks every result for the objective, so the metrics are there, as NaN.
        ray.train.report({DIVERGED: str(e), **dict.fromkeys(VAL_METRIC_NAMES, float("nan"))})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _confirm_worker_loop(loop_config: dict[str, Any]) -> None:
    """All arms of each of its seeds (saeception.eval.confirm.run_arms), one seed after another. An arm whose
    chain diverges is reported for its own run (FAILED with the reason) and the other arms go on. A
    restart re-runs them; MLflow stays deduplicated (cycles already logged are skipped)."""
    import ray.train  # lazy: Ray is loaded only in the processes that use it


    rank, device, work, cache = _worker_context(loop_config)
    last = build_config(loop_config["values"]).chain.cycles
    key, arms = loop_config["key"], tuple(loop_config["arms"])
    # The arms run one after another: an arm's work began when the previous arm's last report went out (or its
    # seed began). Its first report carries that time, its MLflow run's start.
    began: dict[str, float] = {}
    last_event = [time.time()]

    def started(run_key: str) -> float:
        began.setdefault(run_key, last_event[0])
        return began[run_key]

    try:
        for seed in loop_config["seeds"]:
            export = seed == loop_config.get("export_seed")

            def on_cycle(arm: str, cycle: int, metrics: dict, cycle_dir: Path, seed=seed, export=export) -> None:
                # The history carries cycle 0 into the controls' runs (they inherit it from `best`). The
                # export seed's last cycle of each arm is checkpointed: the sweep exports it.
                keep = export and cycle == last
                run_key = arm_run_key(key, arm, seed)
                _rank0_report(rank, _with_cache_stats({"arm": arm, "seed": seed, **metrics}, cache), cycle_dir,
                              run_key=run_key, checkpoint=keep, checkpoint_name=arm_checkpoint(arm, seed) if keep else None,
                              started=started(run_key))
                last_event[0] = time.time()

            def on_diverged(arm: str, reason: str, seed=seed) -> None:
                run_key = arm_run_key(key, arm, seed)
                _rank0_report(rank, {DIVERGED: reason}, None, run_key=run_key, started=started(run_key))
                last_event[0] = time.time()

            def on_spread(arm: str, spread: list[dict], seed=seed) -> None:
                if rank == 0:
                    ray.train.report({SPREAD: json.dumps(spread), RUN_KEY: arm_run_key(key, arm, seed),
                                      REPORTED_AT: time.time()})
                else:
                    ray.train.report({})
                last_event[0] = time.time()

            run_arms(loop_config["values"], seed, work / f"seed{seed}", on_cycle=on_cycle, device=device, cache=cache,
                     arms=arms, sae_seeds=int(loop_config.get("sae_seeds", 0)), on_diverged=on_diverged,
                     on_spread=on_spread)
    finally:
        shutil.rmtree(work, ignore_errors=True)


HEALTH_CHECK_INTERVAL_S = 0.2


def train_env(spec: TrialSpec) -> dict[str, str]:
    """Ray Train's settings a trial sets in its environment where the user has not."""
    env = {
        # The controller polls its worker group every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): up to
        # that much dead time when the workers come up and again when they finish.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(HEALTH_CHECK_INTERVAL_S),
    }
    if spec.local_cluster:
        # Ray Train starts a preemption watcher actor per trial (a process of its own, ~1.3 s of CPU here) that
        # polls for nodes being drained (spot instances on a cloud cluster); the local Ray the sweep started is
        # one node that nothing drains. On a cluster (--address) the watcher stays on.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    if spec.worker_start_timeout_s:
        # Waiting for a node the autoscaler is adding is not a failure (each 60 s timeout counts against
        # controller_failure_limit).
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(spec.worker_start_timeout_s)
    return env


def name_the_cluster() -> None:
    """RAY_ADDRESS set to this trial's Ray in this process and in what Ray Train starts for it.

    Ray Train's placement-group cleaner (an actor per trial) asks Ray's state API whether the trial's controller
    is alive, giving no address. With two Ray instances on one machine (two local sweeps at once, or a sweep
    beside any other Ray) the API refuses to choose ("Found multiple active Ray instances"), the cleaner's thread
    dies, and a stopped trial's placement group is never freed: the ASHA test's later trials waited for workers
    for good. Ray Train hands the variables named in its ENV_VARS_TO_PROPAGATE to the controller's runtime
    environment, which the actors it starts (the cleaner among them) inherit."""
    import ray  # lazy: Ray is loaded only in the processes that use it
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE  # lazy: as above

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")


def chain_trainer(*args, **kwargs):
    """A TorchTrainer that starts no Ray Data dataset manager when it is given no datasets (a chain reads its own
    data). Ray Train 2.60's `DatasetsCallback` starts a `DatasetManager` actor for every run, datasets or not: a
    process per trial that imports Ray Data and pandas (~1 CPU-second here) and serves nothing. With datasets
    the trainer is TorchTrainer's own."""
    from ray.train.torch import TorchTrainer  # lazy: Ray is loaded only in the processes that use it
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # lazy: as above

    class ChainTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return ChainTrainer(*args, **kwargs)


def _fit(spec: TrialSpec, loop, loop_config: dict[str, Any], name: str, run_ids: dict[str, str], tracker,
         keep_checkpoints: int | None = 2, per_run_failures: bool = False, lazy: dict[str, LazyRun] | None = None) -> None:
    """Runs one TorchTrainer for the trial and closes its MLflow runs (FAILED with the reason on error).
    keep_checkpoints: how many of the latest checkpoints Ray keeps (None: all). per_run_failures: a run
    whose chain diverged is closed FAILED and the others FINISHED (the confirmation's arms), instead of
    the trial failing, each ended at its last report. lazy: runs the relay opens at their first report (those
    that never reported have no run)."""
    import ray.train  # lazy: Ray is loaded only in the processes that use it

    for key, value in train_env(spec).items():  # the controller inherits them (Ray Train propagates RAY_TRAIN_*)
        os.environ.setdefault(key, value)  # unless the user set them
    name_the_cluster()
    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    trainer = chain_trainer(
        loop,
        train_loop_config={**loop_config, "cache_dir": spec.cache_dir, "cache_readonly": spec.cache_readonly},
        scaling_config=ray.train.ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=spec.train_dir,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures, controller_failure_limit=3),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            callbacks=[MlflowRelay(spec.mlflow_uri, run_ids, lazy)],
        ),
    )
    for run_id in run_ids.values():
        tracker.clear_failure(run_id)  # a restarted trial starts clean
        tracker.set_tags(run_id, {f"{TIMING}trainer_started_at": f"{time.time():.3f}"})
    try:
        trainer.fit()
        for run_id in run_ids.values():
            reason = tracker.failure(run_id)
            if reason and not per_run_failures:
                raise DivergedError(reason.removeprefix("DivergedError: "))
    except BaseException as e:
        if per_run_failures and interrupted(e):
            # The confirmation's arms: the driver closes the ones that did not finish KILLED once Tune returns, and
            # --resume runs them again. Closing them FAILED here raced that pass (a Ctrl-C CI run saw one FAILED).
            raise
        for run_id in _opened(tracker, run_ids, lazy).values():
            _close(tracker, run_id, failed=f"{type(e).__name__}: {e}")
        raise
    finished = time.time()
    for run_id in _opened(tracker, run_ids, lazy).values():
        tracker.set_tags(run_id, {f"{TIMING}trainer_finished_at": f"{finished:.3f}"})
        if spec.plots:
            _log_trial_plot(tracker, run_id)
        if per_run_failures:  # an arm ends at its last report, not when the trial's last arm does
            last = tracker.client.get_run(run_id).data.tags.get(LAST_REPORT_TAG)
            _close(tracker, run_id, failed=tracker.failure(run_id), end_time=float(last) if last else None)
        else:
            _close(tracker, run_id)


def _opened(tracker, run_ids: dict[str, str], lazy: dict[str, LazyRun] | None) -> dict[str, str]:
    """The trial's runs: those it was given and the lazy ones the relay opened (found by key)."""
    found = {key: tracker.child_run_by_key(run.parent, key) for key, run in (lazy or {}).items()}
    return {**run_ids, **{key: r.info.run_id for key, r in found.items() if r is not None}}


def interrupted(e: BaseException) -> bool:
    """Whether `fit` ended because the run was stopped, not because it failed: its Train controller (or a worker)
    died under it (Ctrl-C reaches every Ray process of the sweep; a node went away), or the process is exiting."""
    import ray.exceptions  # lazy: Ray is loaded only in the processes that use it

    return isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.TaskCancelledError, KeyboardInterrupt, SystemExit))


def _close(tracker, run_id: str, failed: str | None = None, end_time: float | None = None) -> None:
    """Ends the trial's run, unless the driver closed it: a trial a scheduler stopped (KILLED,
    saeception.stopped_at_cycle; the tag may come before the status) or a confirmation arm a Ctrl-C stopped
    (KILLED). The trial's actor going away (its controller's death raised here) must not overwrite that."""
    run = tracker.client.get_run(run_id)
    if STOPPED_AT not in run.data.tags and run.info.status != "KILLED":
        tracker.finish(run_id, failed=failed, end_time=end_time)


def _log_trial_plot(tracker, run_id: str) -> None:
    """trial_metrics.png on the run, titled with the run's name as the MLflow UI lists it."""
    history = tracker.histories(run_id, TRAJECTORY_METRICS)
    if history:
        title = tracker.client.get_run(run_id).info.run_name
        with tempfile.TemporaryDirectory() as d:
            tracker.log_artifact(run_id, trial_plot(history, Path(d) / "trial_metrics.png", title=title))


def chain_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable for a sweep trial. `config` holds the sampled dotted keys."""
    import ray.tune  # lazy: Ray is loaded only in the processes that use it


    sampled = dict(config)
    values = {**spec.fixed, **sampled}
    cfg = build_config(values)
    started = time.time()
    trial_id = ray.tune.get_context().get_trial_id()
    tracker = Tracker(spec.mlflow_uri)
    run_id = tracker.child_run(spec.parent_run_id, trial_id, role="trial", name=f"trial-{trial_id}", extra_tags=spec.run_tags)
    tracker.set_tags(run_id, {f"{TIMING}trial_started_at": f"{started:.3f}"})
    tracker.log_params(run_id, {**to_flat_dict(cfg), **{f"searched.{k}": v for k, v in sampled.items()}})
    _fit(spec, _worker_loop, {"values": values}, f"train-{trial_id}", {"": run_id}, tracker)


def confirm_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable for a group of confirmation seeds: the chosen config and its controls,
    each (arm, seed) its own MLflow child run, tagged with the confirmation's key. Seeds are grouped so
    that a small cluster pays one worker-group start for all of them, and a large one runs the groups in
    parallel."""
    seeds = [int(s) for s in config["seeds"]]
    key, arms = config["key"], list(config["arms"])
    train_run = confirm_run_name(config["attempt"], seeds)
    tracker = Tracker(spec.mlflow_uri)
    # Each arm's run is opened by the relay when the arm's first report arrives (with the arm's own start), so the
    # MLflow UI shows each arm's real duration.
    lazy = {arm_run_key(key, arm, seed): LazyRun(
        parent=spec.parent_run_id, role="confirm" if arm == "best" else "control",
        tags={**(spec.run_tags or {}), "saeception.arm": arm, "saeception.seed": str(seed), KEY_TAG: key,
              TRAIN_RUN_TAG: train_run},
        params=to_flat_dict(build_config(seed_values(spec.fixed, arm, seed)))) for seed in seeds for arm in arms}
    _fit(spec, _confirm_worker_loop, {"values": spec.fixed, "seeds": seeds, "export_seed": config.get("export_seed"),
                                      "key": key, "arms": arms, "sae_seeds": int(config.get("sae_seeds", 0))},
         train_run, {}, tracker, keep_checkpoints=None, per_run_failures=True, lazy=lazy)
