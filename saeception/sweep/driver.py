"""Carries out a sweep's plan: start Ray → open the parent run → search → report → confirm → close.

Each step is one function below; `run` reads as the list of them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from saeception.store.uris import redact

from ..config import to_dict
from .best import export_best, log_best_dataset
from .confirmation import ConfirmationInterrupted, confirm
from .identity import ID_KEY, identity, sweep_id, write_identity
from .leaks import sweeper_callback
from .orphans import close_orphans
from .plan import Plan
from .report import (
    NOTE,
    best_trials,
    fit_interrupted,
    log_cache_totals,
    log_sweep_plots,
    log_winner,
    print_summary,
    progress_callback,
    sweep_note,
    trial_rows,
)
from .resources import bundles, describe, offer, plan_concurrency, waits_for_nodes, worker_start_timeout
from .state import mark_study
from .tracking import (
    Tracker,
    TrackingUnavailable,
    run_tags,
    run_url,
    trials_url,
    ui_command,
    ui_url,
    unreachable,
)
from .vocab import VERDICT_TAG

# How long a trial's workers may wait for nodes the autoscaler adds (a GPU node boots and pulls the image).
AUTOSCALE_WAIT_S = 1800.0


@dataclass
class Session:
    """What the steps after Ray's start share."""

    tracker: Any
    parent: str
    spec: Any  # saeception.trainables.chain_trainable.TrialSpec
    concurrency: int
    trial_resources: Any  # tune.PlacementGroupFactory


def execute(p: Plan) -> int:
    ray_env(p)  # before Ray is imported: it reads RAY_AUTH_MODE once, at import
    import ray  # lazy: Ray is loaded only in the processes that use it

    started_ray = start_ray(p)
    s = None
    try:
        s = open_parent_run(p)
        rows, best, interrupted = search(p, s)
        if interrupted:
            return stop_interrupted(p, s)
        report(p, s, rows, best)
        confirmed = None
        if best and p.confirm.seeds > 0:
            try:
                confirmed = confirm(p, s.tracker, s.parent, s.spec, {**p.space.fixed, **best[0]["config"]},
                                    s.concurrency, s.trial_resources)
            except ConfirmationInterrupted:
                return stop_interrupted(p, s)
            verdict = s.tracker.client.get_run(s.parent).data.tags.get(VERDICT_TAG)
            s.tracker.set_tags(s.parent, {NOTE: sweep_note(p, rows, best, verdict, confirmed)})
        if best:
            export_best(p, s.tracker, s.parent, best[0], confirmed)
        return close(p, s, rows, best)
    except BaseException as e:
        lost = isinstance(e, Exception) and unreachable(e)
        if s is not None and not lost:  # with MLflow gone the run stays RUNNING and --resume marks it
            _close_stopped(s, e)
        if lost:
            raise TrackingUnavailable(p.mlflow_uri, e) from e
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _close_stopped(s: Session, error: BaseException) -> None:
    """The driver is stopping on an error: the parent run says why (FAILED) instead of staying RUNNING;
    --resume reopens it. If MLflow itself is the error, the run stays RUNNING and --resume marks it."""
    try:
        s.tracker.finish(s.parent, failed=f"driver stopped: {type(error).__name__}: {error}")
    except Exception as e:  # the original error is what the user must see; this one is logged
        logging.getLogger(__name__).warning("could not close the parent run %s: %s", s.parent, e)


def ray_env(p: Plan) -> None:
    """The environment Ray must find when it is imported."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not p.verbose:
        # The terminal is the sweep's own lines. Tune's new output engine prints a configuration box, the results
        # folder and a TensorBoard hint into Ray's session folder for every Tuner even at verbose=0 (its legacy
        # engine prints nothing at 0); Ray warns that token authentication is on, which the sweep set up itself.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if p.resources.address:
        # Clusters started with `ray start` use token authentication (Ray's default since 2.59); a client
        # must say so before Ray is imported (it reads the mode once, at import; `execute` imported Ray
        # first, and a sweep started in a shell on the head was refused) to send its token
        # (~/.ray/auth_token or RAY_AUTH_TOKEN). Found by tests/system/test_ray_up.py.
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def start_ray(p: Plan) -> bool:
    """Connects to `--address` or starts a local Ray (after ray_env); True when this process started it."""
    import ray  # lazy: Ray is loaded only in the processes that use it

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": p.verbose, "logging_level": logging.INFO if p.verbose else logging.WARNING}
    if p.resources.address:
        ray.init(address=p.resources.address, **quiet)
    else:
        # With the dashboard (Ray's state API), Ray Train's placement-group cleaner sees when a stopped
        # trial's controller is gone and frees its resources; without it a trial that a scheduler stops
        # leaks its placement group and later trials wait for workers forever.
        private_token()
        ray.init(num_cpus=p.resources.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    return True


def private_token(path: Path | None = None) -> Path | None:
    """The token of the local Ray this sweep starts, readable by its owner only. Ray 2.60 starts a local cluster
    with token authentication and writes `~/.ray/auth_token` with the umask's mode (0644 usually): made here
    first, 0600, or made private if it is not. None when the token comes from the environment."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    from ray._private.authentication.authentication_token_generator import (  # lazy: Ray only where it starts
        generate_new_authentication_token,
    )

    path = path or Path.home() / ".ray" / "auth_token"
    if not path.exists():
        # Written whole under a private name, then linked into place: link is atomic and fails if the name
        # exists, so two sweeps starting at once on a fresh HOME both end up with the one complete token
        # (exists() then an O_EXCL open raised FileExistsError in the second one).
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(generate_new_authentication_token())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another sweep's token won: use it
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def open_parent_run(p: Plan) -> Session:
    """Sizes the trials for the cluster, opens (or, resuming, reopens) the sweep's parent run and logs
    what the sweep searches."""
    from ray import tune  # lazy: Ray is loaded only in the processes that use it

    from ..trainables.chain_trainable import TrialSpec  # lazy: the trainables import Ray at load

    res = p.resources
    # Planned from every node the cluster may have (the autoscaler's node types), not only those up now;
    # a request no node type can hold raises ConfigError (exit 2) before any trial starts.
    groups = offer()
    concurrency = plan_concurrency(res, groups, p.search.trials)
    if waits_for_nodes(groups):
        print(f"cluster: {describe(groups)}; trials wait for the nodes the autoscaler adds", flush=True)
    # On a cluster whose head offers HEAD_RESOURCE (cluster.yaml), trial drivers stay on the head.
    trial_resources = tune.PlacementGroupFactory([bundles(res, groups)[0]])
    sid = p.sweep_id = p.sweep_id or sweep_id(p.storage, p.name)
    # First launch, or a resumed one that grew --trials; the id stays the sweep's for good.
    write_identity(p.storage, p.name, {**identity(p.space, p.search, p.resources, p.confirm), ID_KEY: sid})
    tracker = Tracker(p.mlflow_uri)
    tags = run_tags()
    # (A SQLite store keeps a new experiment's artifacts beside it, never in MLflow's default ./mlruns of the
    # working directory, Ray's throw-away job directory: Tracker.experiment_id.)
    parent = tracker.sweep_run(p.experiment, p.name, reuse=p.search.resume, tags=tags, sweep_id=sid)
    space_dict = p.space.to_dict()
    tracker.log_params(parent, {**{f"space.{k}": yaml.safe_dump(v, default_flow_style=True).strip()
                                   for k, v in space_dict["params"].items()},
                                **{f"fixed.{k}": v for k, v in p.space.fixed.items()},
                                "objectives": ",".join(f"{o.metric}:{o.mode}" for o in p.space.objectives),
                                "trials": p.search.trials, "seed": p.search.seed, "workers_per_trial": res.workers_per_trial})
    p.sweep_dir.mkdir(parents=True, exist_ok=True)
    space_file = p.sweep_dir / "search_space.yaml"
    space_file.write_text(yaml.safe_dump(space_dict, sort_keys=False))
    tracker.log_artifact(parent, space_file)
    spec = TrialSpec(fixed=p.space.fixed, train_dir=p.train_dir, mlflow_uri=p.mlflow_uri, parent_run_id=parent,
                     workers=res.workers_per_trial, cpus_per_worker=res.cpus_per_worker,
                     gpus_per_worker=res.gpus_per_worker, cache_dir=p.cache_dir, cache_readonly=p.cache_readonly,
                     run_tags=tags, worker_start_timeout_s=worker_start_timeout(groups, AUTOSCALE_WAIT_S),
                     local_cluster=not res.address, plots=p.plots)
    return Session(tracker, parent, spec, concurrency, trial_resources)



def asha(p: Plan, metric, mode):
    """ASHA over cycles: a trial below its rung's cutoff at cycle 1, 4, ... is stopped early. At its last
    cycle a trial ends by itself (stop_last_trials False): ASHA's default STOP at max_t killed it while its
    Train controller was shutting down, so its run FAILED with ActorDiedError though Optuna had it COMPLETE,
    and its worker group's resources could leak (the next trial's workers never started; seen in 1 of 5
    runs of the asha test)."""
    from ray.tune.schedulers import ASHAScheduler  # lazy: Ray is loaded only in the processes that use it

    cycles = int(p.space.fixed.get("chain.cycles", 2))
    return ASHAScheduler(time_attr="cycle", metric=metric, mode=mode, max_t=max(cycles, 1), grace_period=1,
                         stop_last_trials=False)


def search(p: Plan, s: Session) -> tuple[list[dict], list[dict], bool]:
    """The Optuna search over Ray Tune; returns every trial's row, the best trial(s) and whether the
    search was interrupted (Ctrl-C) before every trial ended."""
    import optuna  # lazy: Optuna only where the study is opened
    from ray import tune  # lazy: Ray is loaded only in the processes that use it
    from ray.tune.search import ConcurrencyLimiter  # lazy: Ray is loaded only in the processes that use it

    from ..trainables.chain_trainable import chain_trial  # lazy: the trainables import Ray at load
    from ..trainables.optuna_search import (  # lazy: the trainables import Ray at load
        CredentialSafeRDBStorage,
        FailAwareOptunaSearch,
        SweepSearch,
    )

    search = p.search
    if not p.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in RDB with name: …"
    trainable = tune.with_resources(tune.with_parameters(chain_trial, spec=s.spec), s.trial_resources)
    # Opened here, so that Ray's pickled searcher (its copy holds the URL without a password) reconnects.
    storage = CredentialSafeRDBStorage(p.optuna_uri)
    SweepSearch.budgets[p.name] = search.trials
    if search.resume:
        # What the stopped driver left RUNNING with no Tune trial behind it is closed, not left forever.
        close_orphans(s.tracker, s.parent, os.path.join(p.ray_dir, p.name), p.optuna_uri, p.name)
        tuner = tune.Tuner.restore(os.path.join(p.ray_dir, p.name), trainable=trainable,
                                   resume_unfinished=True, resume_errored=True)
        mark_study(p.optuna_uri, p.name, p.sweep_id)  # a study an older saeception left unmarked
    else:
        single = len(p.space.objectives) == 1
        metric = p.space.metrics[0] if single else p.space.metrics
        mode = p.space.modes[0] if single else p.space.modes
        searcher = FailAwareOptunaSearch(
            space=p.space.suggest, metric=metric, mode=mode,
            sampler=optuna.samplers.TPESampler(seed=search.seed, constant_liar=s.concurrency > 1),
            storage=storage, study_name=p.name, constraints=p.space.constraints)
        mark_study(p.optuna_uri, p.name, p.sweep_id)  # created (or loaded) by the searcher just now
        scheduler = asha(p, metric, mode) if search.scheduler == "asha" else None
        run_config = tune.RunConfig(name=p.name, storage_path=p.ray_dir,
                                    callbacks=[progress_callback(p, search.trials, s.tracker, s.parent), sweeper_callback()],
                                    verbose=1 if p.verbose else 0)
        # Wrapped here (not by Tune) so that a resumed sweep can grow its budget (SweepSearch).
        search_alg = SweepSearch(ConcurrencyLimiter(searcher, max_concurrent=s.concurrency), p.name)
        tuner = tune.Tuner(trainable, run_config=run_config,
                           tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=search.trials,
                                                       reuse_actors=reuse_actors(search.scheduler)))
    print(f"sweep {p.name}: {search.trials} trials, up to {s.concurrency} at once, "
          f"{p.resources.workers_per_trial} worker(s) per trial; storage {redact(p.storage)}", flush=True)
    results = tuner.fit()
    rows = trial_rows(results, p.space)
    interrupted = fit_interrupted(results, search.trials, scheduled=search.scheduler != "none")
    return rows, best_trials(rows, p.space), interrupted


def reuse_actors(scheduler: str) -> bool:
    """Whether Tune runs a trial in the actor of one that ended (a new actor and the trial function's imports
    cost ~4 s per trial here, BENCHMARKS.md 4; each trial still gets its own Tune session, Train controller and
    report queue). Not when a scheduler stops trials: a stopped trial's thread is still in `fit` while its Train
    run is torn down, Tune's reset waits only TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) for it, and when that runs
    out the next trial is not given a new actor but fails ("Trainable runner reuse requires reset_config() to
    be implemented and return True"): an ASHA sweep on a busy machine lost its last trial so."""
    return scheduler == "none"


def stop_interrupted(p: Plan, s: Session) -> int:
    """An interrupted search or confirmation (Ctrl-C): no verdict and no export (and, for a search, no
    report); the parent run is KILLED, the sweep can be resumed. Exit code 130, as for SIGINT."""
    s.tracker.set_tags(s.parent, {"saeception.interrupted": "true"})
    s.tracker.client.set_terminated(s.parent, status="KILLED")
    print(f"\nsweep {p.name} interrupted; continue it with: {p.resume_command}", flush=True)
    return 130


def report(p: Plan, s: Session, rows: list[dict], best: list[dict]) -> None:
    """Prints the summary; logs the best config and the sweep's plots on the parent run."""
    print_summary(p, rows, best)
    if best:
        top = best[0]
        log_best_dataset(s.tracker, s.parent, str(top["trial_id"]))
        s.tracker.set_tags(s.parent, {"best_trial_id": ",".join(str(r["trial_id"]) for r in best)})
        s.tracker.log_metrics(s.parent, {f"best_{m}": top[m] for m in p.space.metrics})
        log_winner(s.tracker, s.parent, top)
        best_file = p.sweep_dir / "best_config.yaml"
        best_file.write_text(yaml.safe_dump(to_dict(p.space.config(top["config"])), sort_keys=False))
        s.tracker.log_artifact(s.parent, best_file)
    s.tracker.set_tags(s.parent, {NOTE: sweep_note(p, rows, best)})
    log_sweep_plots(p, s.tracker, s.parent, rows, best)


def close(p: Plan, s: Session, rows: list[dict], best: list[dict]) -> int:
    """Logs the cache totals, ends the parent run and prints how to open the results. 0 when a trial
    finished, 1 when none did."""
    log_cache_totals(p, s.tracker, s.parent)
    failed = sum(r["error"] for r in rows)
    s.tracker.finish(s.parent, failed=None if best else f"no trial finished ({failed} failed)")
    exp_id = s.tracker.experiment_id(p.experiment)
    server = p.mlflow_uri.startswith(("http://", "https://"))
    base = redact(p.mlflow_uri) if server else "http://127.0.0.1:5000"
    objective, mode = p.space.objectives[0].metric, p.space.objectives[0].mode
    print("\nopen the results: " + (f"{redact(ui_url(p.mlflow_uri, exp_id))}" if server else
                                    f"{redact(ui_command(p.mlflow_uri))}\n  then {ui_url(base, exp_id)}"))
    print(f"  the answer (verdict, winner, comparisons): {run_url(base, exp_id, s.parent)}\n"
          f"  the trials side by side, best first: {trials_url(base, exp_id, p.sweep_id, objective, mode)}")
    return 0 if best else 1

