"""Sweep CLI: python -m saeception.sweep — Optuna over Ray Tune, one trial = one chain, results in MLflow.

Everything that can be checked is checked before Ray starts: the space, the fixed config, the storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, parse_override
from .data import check_source
from .space import SearchSpace, load_space

log = logging.getLogger(__name__)

# The trial actor itself only waits on its TorchTrainer; it still must hold some CPU (Ray rejects 0).
TRIAL_CPU = 0.25
DEFAULT_SPACE = "search_spaces/default.yaml"
# Custom resource a cluster's head offers (cluster.yaml) so that trial drivers are placed there.
HEAD_RESOURCE = "saeception_head"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m saeception.sweep",
                                description="Run an SAE-ception hyperparameter sweep (Optuna over Ray Tune, MLflow tracking).")
    p.add_argument("--space", default=DEFAULT_SPACE, help=f"search-space YAML (default: {DEFAULT_SPACE})")
    p.add_argument("--trials", type=int, default=6, help="number of Optuna trials (default: 6)")
    p.add_argument("--storage", help="sweep directory or URI (default: ./sweeps/<name>); holds mlflow.db, optuna.db, Ray results and checkpoints")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite:///<storage>/mlflow.db)")
    p.add_argument("--experiment", default="saeception", help="MLflow experiment name (default: saeception)")
    p.add_argument("--name", help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep stored under --storage/--name")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    p.add_argument("--address", help="Ray cluster address, e.g. auto (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all); ignored with --address")
    p.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial (default: 1)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default: 0)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--scheduler", choices=("none", "asha"), default="none",
                   help="early stopping per cycle (asha: single-objective spaces only; default: none)")
    p.add_argument("--confirm-seeds", type=int, default=3,
                   help="re-run the best config and its controls (aux.weight=0, random targets) on N fresh seeds (default: 3; 0 skips)")
    p.add_argument("--cache", metavar="DIR_OR_URI", help="stage cache, shared by every node: a directory (local, NFS) or "
                   "an object-store URI (s3://, gs://, any fsspec URI) (default: <storage>/cache)")
    p.add_argument("--no-cache", action="store_true", help="recompute every stage (no stage cache)")
    p.add_argument("--cache-readonly", action="store_true", help="use --cache entries but never write (a shared cycle 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial, e.g. --set chain.cycles=1 (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's and saeception's logs")
    return p


@dataclass
class Plan:
    """Everything resolved from the CLI before Ray starts."""

    space: SearchSpace
    name: str
    storage: str  # absolute path or URI
    local_dir: Path  # where the SQLite stores live
    mlflow_uri: str
    optuna_uri: str
    args: argparse.Namespace
    cache_dir: str | None = None

    @property
    def ray_dir(self) -> str:
        return os.path.join(self.storage, "ray")


def _fail(message: str) -> None:
    raise ConfigError(message)


def plan(args: argparse.Namespace) -> Plan:
    from .tracking import sqlite_uri

    overrides = dict(parse_override(o) for o in args.overrides)
    space_path = Path(args.space)
    if args.space == DEFAULT_SPACE and not space_path.exists():
        space_path = Path(__file__).resolve().parents[1] / DEFAULT_SPACE  # run from outside the checkout
    space = load_space(space_path, overrides)
    base = space.config({})
    check_source(base.data, base.model.name)
    if args.trials < 1:
        _fail("--trials: must be >= 1")
    if args.workers_per_trial < 1:
        _fail("--workers-per-trial: must be >= 1")
    if args.cpus_per_worker <= 0:
        _fail("--cpus-per-worker: must be > 0")
    if args.gpus_per_worker < 0:
        _fail("--gpus-per-worker: must be >= 0")
    if args.confirm_seeds < 0:
        _fail("--confirm-seeds: must be >= 0 (0 skips confirmation)")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        _fail("--max-concurrent: must be >= 1")
    if args.scheduler == "asha" and len(space.objectives) > 1:
        _fail("--scheduler: asha needs a single-objective space; this one has "
              f"{len(space.objectives)} objectives")
    name = args.name or space.name
    if not name.replace("-", "").replace("_", "").isalnum():
        _fail(f"--name: {name!r} must be letters, digits, '-' or '_'")
    storage = args.storage or os.path.join("sweeps", name)
    if "://" in storage:
        local_dir = Path("sweeps", name).resolve()
    else:
        storage = str(Path(storage).expanduser().resolve())
        local_dir = Path(storage)
    exists = _tune_experiment_exists(os.path.join(storage, "ray", name))
    if args.resume and not exists:
        _fail(f"--resume: no sweep named {name!r} under {storage}")
    if not args.resume and exists:
        _fail(f"--name: a sweep named {name!r} already exists under {storage}; pass --resume to continue it, or choose another --name")
    _cache_dir(args, storage)  # its errors come before anything is created
    _check_writable(local_dir, "--storage")
    mlflow_uri = args.mlflow_uri or sqlite_uri(local_dir / "mlflow.db")
    cache_dir = _cache_dir(args, storage)
    return Plan(space, name, storage, local_dir, mlflow_uri, sqlite_uri(local_dir / "optuna.db"), args, cache_dir)


def _cache_dir(args: argparse.Namespace, storage: str) -> str | None:
    from .cache import check_uri, is_uri

    cache_dir = None
    if not args.no_cache:
        if args.cache and is_uri(args.cache):
            problem = check_uri(args.cache)
            if problem:
                _fail(f"--cache: {problem}")
            cache_dir = args.cache.rstrip("/")
        elif args.cache:
            cache_dir = str(Path(args.cache.removeprefix("file://")).expanduser().resolve())
            if args.cache_readonly and not Path(cache_dir).is_dir():
                _fail(f"--cache: {cache_dir} does not exist (needed with --cache-readonly)")
        elif is_uri(storage):
            problem = check_uri(storage)
            if problem:
                _fail(f"--storage: {problem} (or pass --no-cache)")
            cache_dir = storage.rstrip("/") + "/cache"
        else:
            cache_dir = str(Path(storage.removeprefix("file://")) / "cache")
    elif args.cache or args.cache_readonly:
        _fail("--no-cache: cannot be combined with --cache or --cache-readonly")
    return cache_dir


def _check_writable(path: Path, flag: str) -> None:
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        if not existed:
            _rmdir_new(path)
        raise ConfigError(f"{flag}: {path} is not writable ({e.strerror})") from None


def _rmdir_new(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _tune_experiment_exists(path: str) -> bool:
    if "://" in path:
        from ray.tune import Tuner

        return Tuner.can_restore(path)
    return Path(path, "tuner.pkl").exists() or any(Path(path).glob("experiment_state-*.json"))


def _concurrency(args: argparse.Namespace, cluster_cpus: float, cluster_gpus: float) -> int:
    per_trial_cpu = TRIAL_CPU + args.workers_per_trial * args.cpus_per_worker
    fit = int(cluster_cpus // per_trial_cpu)
    if args.gpus_per_worker > 0:
        fit = min(fit, int(cluster_gpus // (args.workers_per_trial * args.gpus_per_worker)))
    if fit < 1:
        _fail(f"--workers-per-trial: a trial needs {per_trial_cpu:g} CPUs and "
              f"{args.workers_per_trial * args.gpus_per_worker:g} GPUs; the cluster has {cluster_cpus:g} CPUs, {cluster_gpus:g} GPUs "
              "(lower --workers-per-trial / --cpus-per-worker / --gpus-per-worker)")
    return min(fit, args.max_concurrent or fit)


# --------------------------------------------------------------------------------------------------
# Progress and summary


def _progress_callback(p: Plan, total: int):
    from ray.tune import Callback

    metric, mode = p.space.metrics[0], p.space.modes[0]

    class Progress(Callback):
        def __init__(self):
            self.t0 = time.time()
            self.done, self.failed, self.running = set(), set(), set()
            self.best: tuple[float, str] | None = None
            self.last: dict[str, dict] = {}

        def _line(self, what: str) -> None:
            elapsed = time.time() - self.t0
            best = f"best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
            print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {len(self.done)} done, {len(self.running)} running, "
                  f"{len(self.failed)} failed of {total} | {best} | {what}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.add(trial.trial_id)
            self._line(f"started {trial.trial_id}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = result
            self._line(f"{trial.trial_id} finished cycle {result.get('cycle')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.done.add(trial.trial_id)
            # The objective is the last cycle's value, so "best" only moves when a trial completes.
            value = self.last.get(trial.trial_id, {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                if self.best is None or (value > self.best[0] if mode == "max" else value < self.best[0]):
                    self.best = (float(value), trial.trial_id)
            self._line(f"completed {trial.trial_id}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.failed.add(trial.trial_id)
            self._line(f"FAILED {trial.trial_id}")

    return Progress()


def pareto_front(rows: list[dict[str, Any]], metrics: list[str], modes: list[str]) -> list[dict[str, Any]]:
    """Rows not dominated by any other row (>= in every objective, > in one, after mode signs)."""
    signs = [1 if m == "max" else -1 for m in modes]
    vals = [[s * r[m] for m, s in zip(metrics, signs)] for r in rows]
    front = []
    for i, a in enumerate(vals):
        dominated = any(all(b_j >= a_j for a_j, b_j in zip(a, b)) and any(b_j > a_j for a_j, b_j in zip(a, b))
                        for j, b in enumerate(vals) if j != i)
        if not dominated:
            front.append(rows[i])
    return front


def best_trials(rows: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (several), among trials with finite values."""
    usable = [r for r in rows if not r["error"] and all(isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for m in space.metrics)]
    if not usable:
        return []
    if len(space.objectives) == 1:
        m, mode = space.metrics[0], space.modes[0]
        return [max(usable, key=lambda r: r[m]) if mode == "max" else min(usable, key=lambda r: r[m])]
    return sorted(pareto_front(usable, space.metrics, space.modes), key=lambda r: -r[space.metrics[0]])


def _trial_rows(results, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.metrics is None:
            continue
        config = {k: v for k, v in (r.config or {}).items() if not k.startswith("__")}
        row = {"trial_id": r.metrics.get("trial_id"), "error": r.error is not None, "config": config,
               "cycle": r.metrics.get("cycle")}
        for m in ("task_accuracy", "sae_u", *space.metrics):
            row[m] = r.metrics.get(m)
        rows.append(row)
    return rows


def _print_summary(p: Plan, rows: list[dict], best: list[dict]) -> None:
    print()
    print(f"sweep {p.name}: {sum(not r['error'] for r in rows)} trials finished, {sum(r['error'] for r in rows)} failed")
    title = "best trial" if len(p.space.objectives) == 1 else "Pareto front"
    print(f"{title} (objectives at the last cycle, validation split; test metrics for reporting):")
    for r in best:
        objs = ", ".join(f"{m} {r[m]:.4f}" for m in p.space.metrics)
        test = ", ".join(f"{m} {r[m]:.4f}" for m in ("task_accuracy", "sae_u") if isinstance(r.get(m), float))
        print(f"  trial {r['trial_id']}: {objs} | test: {test}")
        print(f"    {' '.join(f'{k}={_fmt(v)}' for k, v in sorted(r['config'].items()))}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------------------
# Run


def run(p: Plan) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if p.args.address:
        # Clusters started with `ray start` use token authentication (Ray's default since 2.59); a client
        # must say so, before Ray is imported, to send its token (~/.ray/auth_token or RAY_AUTH_TOKEN).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import optuna
    import ray
    from ray import tune

    from trainables.chain_trainable import TrialSpec, chain_trial
    from trainables.optuna_search import FailAwareOptunaSearch

    from .tracking import Tracker, ui_command

    args = p.args
    started_ray = not ray.is_initialized()
    if started_ray:
        if args.address:
            ray.init(address=args.address, log_to_driver=args.verbose)
        else:
            ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=args.verbose)
    try:
        res = ray.cluster_resources()
        concurrency = _concurrency(args, res.get("CPU", 0), res.get("GPU", 0))
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
        trainable = tune.with_resources(tune.with_parameters(chain_trial, spec=spec), trial_resources)
        single = len(p.space.objectives) == 1
        metric = p.space.metrics[0] if single else p.space.metrics
        mode = p.space.modes[0] if single else p.space.modes
        searcher = FailAwareOptunaSearch(
            space=p.space.suggest, metric=metric, mode=mode,
            sampler=optuna.samplers.TPESampler(seed=args.seed, constant_liar=concurrency > 1),
            storage=optuna.storages.RDBStorage(p.optuna_uri), study_name=p.name)
        scheduler = None
        if args.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            cycles = int(p.space.fixed.get("chain.cycles", 2))
            scheduler = ASHAScheduler(time_attr="cycle", metric=metric, mode=mode, max_t=max(cycles, 1), grace_period=1)
        progress = _progress_callback(p, args.trials)
        run_config = tune.RunConfig(name=p.name, storage_path=os.path.join(p.storage, "ray"), callbacks=[progress],
                                    verbose=0 if not args.verbose else 1)
        if args.resume:
            tuner = tune.Tuner.restore(os.path.join(p.ray_dir, p.name), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(trainable, run_config=run_config,
                               tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=args.trials,
                                                           max_concurrent_trials=concurrency))
        print(f"sweep {p.name}: {args.trials} trials, up to {concurrency} at once, "
              f"{args.workers_per_trial} worker(s) per trial; storage {p.storage}", flush=True)
        results = tuner.fit()
        rows = _trial_rows(results, p.space)
        best = best_trials(rows, p.space)
        _print_summary(p, rows, best)
        if best:
            from .config import to_dict

            top = best[0]
            tracker.set_tags(parent, {"best_trial_id": ",".join(str(r["trial_id"]) for r in best)})
            tracker.log_metrics(parent, {f"best_{m}": top[m] for m in p.space.metrics})
            best_file = p.local_dir / "best_config.yaml"
            best_file.write_text(yaml.safe_dump(to_dict(p.space.config(top["config"])), sort_keys=False))
            tracker.log_artifact(parent, best_file)
        _log_sweep_plots(p, tracker, parent, rows, best)
        if best and args.confirm_seeds > 0:
            _confirm(p, tracker, parent, spec, {**p.space.fixed, **best[0]["config"]}, concurrency, trial_resources)
        _log_cache_totals(p, tracker, parent)
        failed = sum(r["error"] for r in rows)
        tracker.finish(parent, failed=None if best else f"no trial finished ({failed} failed)")
        print(f"\nopen the results: {ui_command(p.mlflow_uri)}")
        return 0 if best else 1
    finally:
        if started_ray:
            ray.shutdown()


def _log_cache_totals(p: Plan, tracker, parent: str) -> None:
    """Sums each trial's final cache_* counters into the parent run (and prints them)."""
    if p.cache_dir is None:
        return
    keys = ("cache_hits", "cache_misses", "cache_bytes_read", "cache_bytes_written", "cache_seconds_saved", "cache_seconds_building")
    totals = dict.fromkeys(keys, 0.0)
    for run in tracker.children(parent):
        for k in keys:
            totals[k] += run.data.metrics.get(k, 0.0)
    tracker.log_metrics(parent, totals)
    tracker.set_tags(parent, {"saeception.cache_dir": p.cache_dir})
    print(f"stage cache {p.cache_dir}: {int(totals['cache_hits'])} hits, {int(totals['cache_misses'])} misses, "
          f"{totals['cache_seconds_saved']:.0f} s of stage work saved", flush=True)


def _log_sweep_plots(p: Plan, tracker, parent: str, rows: list[dict], best: list[dict]) -> None:
    """Objective(s) over trials, the Pareto front (several objectives), Optuna's parameter importances
    and a parallel-coordinates view, as PNGs on the parent run."""
    import optuna

    from .plots import importance_plot, objective_plot, parallel_plot, pareto_plot

    done = [r for r in rows if not r["error"]]
    files = [objective_plot(done, p.space.metrics, p.space.modes, p.local_dir / "objectives.png")]
    if len(p.space.objectives) > 1 and best:
        files.append(pareto_plot(done, best, p.space.metrics, p.local_dir / "pareto_front.png"))
    params = [q.key for q in p.space.params]
    files.append(parallel_plot(done, params, p.space.metrics[0], p.local_dir / "parallel_coordinates.png"))
    study = optuna.load_study(study_name=p.name, storage=p.optuna_uri)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 3:
        for i, metric in enumerate(p.space.metrics):
            try:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=lambda t, i=i: t.values[i])
            except (ValueError, RuntimeError) as e:  # e.g. no parameter common to all trials varies
                log.warning("parameter importances for %s skipped: %s", metric, e)
                tracker.set_tags(parent, {f"saeception.importance_skipped.{metric}": str(e)[:500]})
                continue
            if imp:
                files.append(importance_plot(imp, metric, p.local_dir / f"importance_{metric}.png"))
    else:
        tracker.set_tags(parent, {"saeception.importance_skipped": f"needs >= 3 complete trials, has {len(complete)}"})
    for f in files:
        tracker.log_artifact(parent, f)


def _confirm(p: Plan, tracker, parent: str, spec, values: dict[str, Any], concurrency: int,
             trial_resources) -> None:
    """Runs the chosen config and its controls on fresh seeds (outside the Optuna study), then logs
    and prints mean ± sd per arm and the paired differences."""
    import dataclasses

    from ray import tune

    from trainables.chain_trainable import confirm_trial

    from .config import build_config
    from .confirm import ARMS, SUMMARY_METRICS, confirm_seeds, format_table, summarize
    from .plots import confirmation_plot

    seeds = confirm_seeds(build_config(values).seed, p.args.confirm_seeds)
    print(f"\nconfirming the best config on seeds {seeds} with controls aux.weight=0 and sharpen.strategy=random", flush=True)
    name = f"{p.name}-confirm"
    trainable = tune.with_resources(tune.with_parameters(confirm_trial, spec=dataclasses.replace(spec, fixed=values)),
                                    trial_resources)
    path = os.path.join(p.ray_dir, name)
    if p.args.resume and _tune_experiment_exists(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        groups = [seeds[i::concurrency] for i in range(min(concurrency, len(seeds)))]
        tuner = tune.Tuner(trainable, param_space={"seeds": tune.grid_search(groups)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           run_config=tune.RunConfig(name=name, storage_path=p.ray_dir, verbose=0))
    tuner.fit()
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {a: {} for a in ARMS}
    metrics = tuple(dict.fromkeys((*SUMMARY_METRICS, *p.space.metrics)))
    for run in tracker.children(parent):
        tags = run.data.tags
        if tags.get("saeception.arm") not in ARMS or run.info.status != "FINISHED":
            continue
        per_cycle: dict[int, dict[str, float]] = {}
        for m, steps in tracker.histories(run.info.run_id, metrics).items():
            for step, value in steps.items():
                per_cycle.setdefault(step, {})[m] = value
        results[tags["saeception.arm"]][int(tags["saeception.seed"])] = per_cycle
    if not all(results[a] for a in ARMS):
        print("confirmation incomplete: some arms failed; see the control/confirm runs in MLflow", flush=True)
        return
    rows = summarize(results, metrics)
    table = format_table(rows)
    (p.local_dir / "confirmation.md").write_text(format_table(rows, last_cycle_only=False) + "\n")
    (p.local_dir / "confirmation.json").write_text(json.dumps(rows, indent=1))
    confirmation_plot(rows, p.local_dir / "confirmation.png")
    for f in ("confirmation.md", "confirmation.json", "confirmation.png"):
        tracker.log_artifact(parent, p.local_dir / f)
    for r in rows:
        stats = {f"confirm_{a}_{r['metric']}_{s}": r[f"{a}_{s}"] for a in ARMS for s in ("mean", "sd")}
        for c in ("aux0", "random"):
            if f"diff_{c}_mean" in r:
                stats.update({f"confirm_diff_{c}_{r['metric']}": r[f"diff_{c}_mean"], f"confirm_p_{c}_{r['metric']}": r[f"p_{c}"]})
        tracker.log_metrics(parent, stats, step=r["cycle"])
    print(f"\nconfirmation at the last cycle ({len(seeds)} seeds; mean ± sd; test split unless val_):")
    print(table, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        p = plan(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(p)


if __name__ == "__main__":
    sys.exit(main())
