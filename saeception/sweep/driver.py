"""Carries out a sweep's plan: start Ray → open the parent run → search → report → confirm → close.

Each step is one function below; `run` reads as the list of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from .cli import TRIAL_CPU, Plan, concurrency_for

# Custom resource a cluster's head offers (cluster.yaml) so that trial drivers are placed there.
HEAD_RESOURCE = "saeception_head"


@dataclass
class Session:
    """What the steps after Ray's start share."""

    tracker: Any
    parent: str
    spec: Any  # saeception.trainables.chain_trainable.TrialSpec
    concurrency: int
    trial_resources: Any  # tune.PlacementGroupFactory


def run(p: Plan) -> int:
    import ray

    started_ray = start_ray(p)
    s = None
    try:
        s = open_parent_run(p)
        rows, best = search(p, s)
        report(p, s, rows, best)
        if best and p.args.confirm_seeds > 0:
            from .confirmation import confirm

            confirm(p, s.tracker, s.parent, s.spec, {**p.space.fixed, **best[0]["config"]}, s.concurrency, s.trial_resources)
        return close(p, s, rows, best)
    except BaseException as e:
        if s is not None:
            _close_stopped(s, e)
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _close_stopped(s: Session, error: BaseException) -> None:
    """The driver is stopping on an error: the parent run says why (FAILED) instead of staying RUNNING;
    --resume reopens it. If MLflow itself is the error, the run stays RUNNING and --resume marks it."""
    import logging

    try:
        s.tracker.finish(s.parent, failed=f"driver stopped: {type(error).__name__}: {error}")
    except Exception as e:  # the original error is what the user must see; this one is logged
        logging.getLogger(__name__).warning("could not close the parent run %s: %s", s.parent, e)


def start_ray(p: Plan) -> bool:
    """Connects to `--address` or starts a local Ray; True when this process started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if p.args.address:
        # Clusters started with `ray start` use token authentication (Ray's default since 2.59); a client
        # must say so, before Ray is imported, to send its token (~/.ray/auth_token or RAY_AUTH_TOKEN).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    if p.args.address:
        ray.init(address=p.args.address, log_to_driver=p.args.verbose)
    else:
        ray.init(num_cpus=p.args.num_cpus, include_dashboard=False, log_to_driver=p.args.verbose)
    return True


def open_parent_run(p: Plan) -> Session:
    """Sizes the trials for the cluster, opens (or, resuming, reopens) the sweep's parent run and logs
    what the sweep searches."""
    import ray
    from ray import tune

    from ..trainables.chain_trainable import TrialSpec
    from .tracking import Tracker

    args = p.args
    res = ray.cluster_resources()
    concurrency = concurrency_for(args, res.get("CPU", 0), res.get("GPU", 0))
    # On a cluster whose head offers HEAD_RESOURCE (cluster.yaml), trial drivers stay on the head.
    trial_resources = tune.PlacementGroupFactory([{"CPU": TRIAL_CPU, **({HEAD_RESOURCE: 1} if res.get(HEAD_RESOURCE) else {})}])
    tracker = Tracker(p.mlflow_uri)
    parent = tracker.sweep_run(args.experiment, p.name, reuse=args.resume)
    space_dict = p.space.to_dict()
    tracker.log_params(parent, {**{f"space.{k}": yaml.safe_dump(v, default_flow_style=True).strip()
                                   for k, v in space_dict["params"].items()},
                                **{f"fixed.{k}": v for k, v in p.space.fixed.items()},
                                "objectives": ",".join(f"{o.metric}:{o.mode}" for o in p.space.objectives),
                                "trials": args.trials, "seed": args.seed, "workers_per_trial": args.workers_per_trial})
    space_file = p.local_dir / "search_space.yaml"
    space_file.write_text(yaml.safe_dump(space_dict, sort_keys=False))
    tracker.log_artifact(parent, space_file)
    spec = TrialSpec(fixed=p.space.fixed, storage=p.storage, mlflow_uri=p.mlflow_uri, parent_run_id=parent,
                     workers=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                     gpus_per_worker=args.gpus_per_worker, cache_dir=p.cache_dir, cache_readonly=args.cache_readonly)
    return Session(tracker, parent, spec, concurrency, trial_resources)


def search(p: Plan, s: Session) -> tuple[list[dict], list[dict]]:
    """The Optuna search over Ray Tune; returns every trial's row and the best trial(s)."""
    import optuna
    from ray import tune

    from ..trainables.chain_trainable import chain_trial
    from ..trainables.optuna_search import FailAwareOptunaSearch
    from .report import best_trials, progress_callback, trial_rows

    args = p.args
    trainable = tune.with_resources(tune.with_parameters(chain_trial, spec=s.spec), s.trial_resources)
    if args.resume:
        from .orphans import close_orphans

        # What the stopped driver left RUNNING with no Tune trial behind it is closed, not left forever.
        close_orphans(s.tracker, s.parent, os.path.join(p.ray_dir, p.name), p.optuna_uri, p.name)
        tuner = tune.Tuner.restore(os.path.join(p.ray_dir, p.name), trainable=trainable,
                                   resume_unfinished=True, resume_errored=True)
    else:
        single = len(p.space.objectives) == 1
        metric = p.space.metrics[0] if single else p.space.metrics
        mode = p.space.modes[0] if single else p.space.modes
        searcher = FailAwareOptunaSearch(
            space=p.space.suggest, metric=metric, mode=mode,
            sampler=optuna.samplers.TPESampler(seed=args.seed, constant_liar=s.concurrency > 1),
            storage=optuna.storages.RDBStorage(p.optuna_uri), study_name=p.name)
        scheduler = None
        if args.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            cycles = int(p.space.fixed.get("chain.cycles", 2))
            scheduler = ASHAScheduler(time_attr="cycle", metric=metric, mode=mode, max_t=max(cycles, 1), grace_period=1)
        run_config = tune.RunConfig(name=p.name, storage_path=p.ray_dir, callbacks=[progress_callback(p, args.trials)],
                                    verbose=0 if not args.verbose else 1)
        tuner = tune.Tuner(trainable, run_config=run_config,
                           tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=args.trials,
                                                       max_concurrent_trials=s.concurrency))
    print(f"sweep {p.name}: {args.trials} trials, up to {s.concurrency} at once, "
          f"{args.workers_per_trial} worker(s) per trial; storage {p.storage}", flush=True)
    rows = trial_rows(tuner.fit(), p.space)
    return rows, best_trials(rows, p.space)


def report(p: Plan, s: Session, rows: list[dict], best: list[dict]) -> None:
    """Prints the summary; logs the best config and the sweep's plots on the parent run."""
    from ..config import to_dict
    from .report import log_sweep_plots, print_summary

    print_summary(p, rows, best)
    if best:
        top = best[0]
        s.tracker.set_tags(s.parent, {"best_trial_id": ",".join(str(r["trial_id"]) for r in best)})
        s.tracker.log_metrics(s.parent, {f"best_{m}": top[m] for m in p.space.metrics})
        best_file = p.local_dir / "best_config.yaml"
        best_file.write_text(yaml.safe_dump(to_dict(p.space.config(top["config"])), sort_keys=False))
        s.tracker.log_artifact(s.parent, best_file)
    log_sweep_plots(p, s.tracker, s.parent, rows, best)


def close(p: Plan, s: Session, rows: list[dict], best: list[dict]) -> int:
    """Logs the cache totals, ends the parent run and prints how to open the results. 0 when a trial
    finished, 1 when none did."""
    from .report import log_cache_totals
    from .tracking import ui_command

    log_cache_totals(p, s.tracker, s.parent)
    failed = sum(r["error"] for r in rows)
    s.tracker.finish(s.parent, failed=None if best else f"no trial finished ({failed} failed)")
    print(f"\nopen the results: {ui_command(p.mlflow_uri)}")
    return 0 if best else 1

