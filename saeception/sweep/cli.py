"""The sweep's command line: flags, and the plan resolved from them before Ray starts.

Everything that can be checked is checked here: the space, the fixed config, the storage. `driver.execute`
then carries the plan out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from saeception.data.tasks import check_source
from saeception.eval.confirm import CONTROLS, DEFAULT_CONTROLS, with_controls
from saeception.store.uris import after_scheme, check_uri, is_uri, local_path, redact
from saeception.store.uris import scheme as uri_scheme

from ..config import ConfigError, build_config, flatten, parse_override, read_yaml
from ..validate import Checker, check_dir, check_space
from . import memory_plan
from .identity import check_resume, hold_lock, identity, sweep_id
from .plan import Confirmation, Plan, Resources, Search
from .redact import install_log_filter
from .resources import check_local_resources
from .space import SearchSpace, load_space, resolve_space, shipped_spaces
from .state import STATE_ENV, check_mlflow, check_optuna_storage, check_study_owner, state_dir
from .tracking import DEFAULT_EXPERIMENT, TrackingUnavailable, absolute_uri, credentials_to_env, sqlite_uri
from .vocab import CACHE_DIR, RAY_DIR, STORAGE_PARTS

log = logging.getLogger(__name__)

DEFAULT_SPACE = "default"
DEFAULT_STORAGE = "sweeps"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m saeception.sweep",
                                description="Run an SAE-ception hyperparameter sweep (Optuna over Ray Tune, MLflow tracking).")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search-space YAML file, or the name of a shipped space "
                   f"({', '.join(sorted(shipped_spaces()))}) (default: {DEFAULT_SPACE})")
    p.add_argument("--config", metavar="BASE.yaml", help="a run config (python -m saeception.run --config) as the base of "
                   "every trial; the space's fixed: values and --set override it")
    p.add_argument("--trials", type=int, default=6, help="number of Optuna trials (default: 6)")
    p.add_argument("--storage", help="directory or URI shared by sweeps (default: ./sweeps); holds mlflow.db, optuna.db, the stage "
                   "cache, Ray results and checkpoints, and each sweep's own files under <storage>/<name>/")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<storage>/mlflow.db; "
                   "with a URI storage, sqlite:///<state dir>/mlflow.db)")
    p.add_argument("--optuna-storage", metavar="URL", help="Optuna RDB storage URL: sqlite:////abs/path, postgresql://…, "
                   "mysql://… (default: sqlite:///<storage>/optuna.db; with a URI storage, sqlite:///<state dir>/optuna.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME, else saeception)")
    p.add_argument("--name", help="sweep name (default: the space's name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep stored under --storage/--name")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    p.add_argument("--address", help="Ray cluster address, e.g. auto (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all); ignored with --address")
    p.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial (default: 1)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default: 0)")
    p.add_argument("--gpu-memory-gb", type=float, metavar="GB", help="memory of one GPU in GB (10^9 bytes, as sold: "
                   "80 for an H100 80GB): the plan refuses a space whose estimated peak per worker (saeception/parallel/memory.py, "
                   "every combination it can sample) exceeds 90%% of a worker's share; needs --gpus-per-worker > 0 "
                   "(default: no check)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--scheduler", choices=("none", "asha"), default="none",
                   help="early stopping per cycle (asha: single-objective spaces only; default: none)")
    p.add_argument("--confirm-seeds", type=int, default=3,
                   help="re-run the best config and its controls on N fresh seeds and decide (default: 3; 0 skips)")
    p.add_argument("--confirm-controls", metavar="ARM,...", help="the control arms of the confirmation, comma-separated, "
                   f"from {', '.join(CONTROLS)} (default: the space's confirm.controls, else {', '.join(DEFAULT_CONTROLS)})")
    p.add_argument("--cache", metavar="DIR_OR_URI", help="stage cache, shared by every node: a directory (local, NFS) or "
                   "an object-store URI (s3://, gs://, any fsspec URI) (default: <storage>/cache)")
    p.add_argument("--no-cache", action="store_true", help="recompute every stage (no stage cache)")
    p.add_argument("--cache-readonly", action="store_true", help="use --cache entries but never write (a shared cycle 0)")
    p.add_argument("--no-plots", action="store_true", help="skip Optuna's views of the study (PNGs on the parent run, "
                   "a few seconds after the search; optuna-dashboard and the notebooks read the study itself) and each "
                   "trial's and arm's trial_metrics.png (its metrics are on the run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config key for every trial, e.g. --set chain.cycles=1 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved base config, the first sampled trial configs, "
                   "resources per trial and concurrency; start nothing, write nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's and saeception's logs")
    return p


def _fail(message: str) -> None:
    raise ConfigError(message)


def plan(args: argparse.Namespace) -> Plan:
    overrides = dict(parse_override(o) for o in args.overrides)
    base_values = None
    if getattr(args, "config", None):
        base_values = flatten(read_yaml(args.config))
        build_config(base_values)  # its own errors first, named by key as python -m saeception.run names them
    space = load_space(resolve_space(args.space), overrides, base_values)
    checker = Checker()
    check_space(space, checker)  # every value the space can sample, against the data and model it names
    if not any(q.key.startswith("data.") or q.key == "model.name" for q in space.params):
        base = space.config({})
        note = check_source(base.data, base.model.name)  # a hub dataset that cannot be reached: a note, not an error
        if note:
            print(f"note: {note}", file=sys.stderr)
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
    try:
        settings = with_controls(space.confirm, args.confirm_controls)
    except ConfigError as e:
        _fail(str(e).replace("confirm.controls:", "--confirm-controls:") if getattr(args, "confirm_controls", None) else str(e))
    if args.max_concurrent is not None and args.max_concurrent < 1:
        _fail("--max-concurrent: must be >= 1")
    if args.scheduler == "asha" and len(space.objectives) > 1:
        _fail("--scheduler: asha needs a single-objective space; this one has "
              f"{len(space.objectives)} objectives")
    search = Search(trials=args.trials, seed=args.seed, scheduler=args.scheduler, resume=args.resume)
    resources = Resources(workers_per_trial=args.workers_per_trial, cpus_per_worker=float(args.cpus_per_worker),
                          gpus_per_worker=float(args.gpus_per_worker), max_concurrent=args.max_concurrent,
                          address=args.address, num_cpus=args.num_cpus, gpu_memory_gb=getattr(args, "gpu_memory_gb", None))
    confirmation = Confirmation(seeds=args.confirm_seeds, settings=settings)
    _check_run_flags(args, space, resources, search)
    memory_plan.check_flags(resources)
    memory = memory_plan.check(space, resources, checker)  # --gpu-memory-gb against every combination's estimate
    name = args.name or space.name
    if not name.replace("-", "").replace("_", "").isalnum():
        _fail(f"--name: {name!r} must be letters, digits, '-' or '_'")
    if name in STORAGE_PARTS:
        _fail(f"--name: {name!r} is a folder every sweep under a storage shares ({', '.join(STORAGE_PARTS)}); choose another")
    storage = args.storage or DEFAULT_STORAGE
    if is_uri(storage):
        if redact(storage) != storage:
            _fail(f"--storage: {redact(storage)} has credentials in it, which Ray would write into its experiment state; "
                  "give them in the environment instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)")
    else:
        storage = str(local_path(storage).resolve())
    # The SQLite stores: beside a path storage, unless the cluster's own disk is named (the cluster files
    # set SAECEPTION_STATE_DIR: SQLite on NFS is unsafe); always there for a URI storage.
    local_dir = state_dir(name, storage) if is_uri(storage) or os.environ.get(STATE_ENV) else Path(storage)
    exists = tune_experiment_exists(os.path.join(storage, RAY_DIR, name))
    if args.resume and not exists:
        _fail(f"--resume: no sweep named {name!r} under {redact(storage)}")
    if args.address:
        # On a cluster the command line is stored in Ray's job table, which anyone holding the cluster's token reads.
        for flag, value, how in (("--cache", args.cache, "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or use the nodes' "
                                  "instance profile)"), ("--optuna-storage", args.optuna_storage, "PGPASSWORD (PostgreSQL)")):
            if value and redact(value) != value:
                _fail(f"{flag}: a credential in the URI would be kept in the cluster's job table (Ray stores a job's "
                      f"whole command line, readable with the cluster's token); put {how} into ~/.saeception/secrets.env "
                      "(docs/cluster.md) and give the URI without it")
    _cache_dir(args, storage)  # its errors come before anything is created
    dry_run = getattr(args, "dry_run", False)
    # Stores given on the command line must answer before anything is written (the defaults, SQLite
    # files beside the sweep, are created below).
    mlflow_uri = absolute_uri(args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(local_dir / "mlflow.db"))
    given_mlflow = bool(args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    credentials = credentials_to_env(mlflow_uri, env={}) != mlflow_uri
    if credentials and args.address:
        _fail("--mlflow-uri: credentials in the URI would reach only this driver, not the cluster's trial processes; "
              "put MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) into "
              "~/.saeception/secrets.env (docs/cluster.md) and give the URI without them")
    if args.optuna_storage:
        check_optuna_storage(args.optuna_storage)
    if given_mlflow:
        check_mlflow(mlflow_uri)
    if credentials:  # MLflow's own variables from here on (the dry run only prints the URI)
        mlflow_uri = redact(mlflow_uri) if dry_run else credentials_to_env(mlflow_uri)
        if not dry_run and os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ["MLFLOW_TRACKING_URI"] = credentials_to_env(os.environ["MLFLOW_TRACKING_URI"])
    experiment = args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    check_dir(local_dir, "--storage")
    cache_dir = _cache_dir(args, storage)
    optuna_uri = args.optuna_storage or sqlite_uri(local_dir / "optuna.db")
    planned = Plan(space, name, storage, local_dir, mlflow_uri, optuna_uri, search, resources, confirmation, cache_dir,
                   args.cache_readonly, experiment, args.verbose, memory=memory, plots=not args.no_plots)
    if dry_run:  # starts and writes nothing
        return planned
    _check_writable(local_dir, "--storage" if local_dir == Path(storage) else STATE_ENV)
    if not is_uri(storage) and local_dir != Path(storage):
        _check_writable(Path(storage), "--storage")  # the state dir holds the databases; the storage the rest
    planned.lock = hold_lock(storage, name)
    if not args.resume and tune_experiment_exists(os.path.join(storage, RAY_DIR, name)):
        _fail(f"--name: a sweep named {name!r} already exists under {redact(storage)}; pass --resume to continue it, or choose another --name")
    if args.resume:
        check_resume(identity(space, search, resources, confirmation), storage, name)
    if not args.optuna_storage:
        check_optuna_storage(optuna_uri)
    planned.sweep_id = sweep_id(storage, name)
    check_study_owner(optuna_uri, name, planned.sweep_id)
    if not given_mlflow:
        check_mlflow(mlflow_uri)
    return planned


def _cache_dir(args: argparse.Namespace, storage: str) -> str | None:
    cache_dir = None
    if not args.no_cache:
        if args.cache and is_uri(args.cache):
            problem = check_uri(args.cache)  # the whole URI, as every trial will open it
            if problem:
                _fail(f"--cache: {redact(args.cache)}: {problem}")
            cache_dir = args.cache.rstrip("/")
        elif args.cache:
            cache_dir = str(local_path(args.cache).resolve())
            if args.cache_readonly and not Path(cache_dir).is_dir():
                _fail(f"--cache: {cache_dir} does not exist (needed with --cache-readonly)")
            if not args.cache_readonly:
                check_dir(cache_dir, "--cache")
        elif is_uri(storage):
            problem = check_uri(storage)
            if problem:
                _fail(f"--storage: {problem} (or pass --no-cache)")
            cache_dir = f"{storage.rstrip('/')}/{CACHE_DIR}"
        else:
            cache_dir = str(Path(storage) / CACHE_DIR)
    elif args.cache or args.cache_readonly:
        _fail("--no-cache: cannot be combined with --cache or --cache-readonly")
    return cache_dir


def _check_run_flags(args: argparse.Namespace, space: SearchSpace, resources: Resources, search: Search) -> None:
    """Flags that must fit each other, the space and (for a local Ray) this machine."""
    if args.experiment is not None and not args.experiment.strip():
        _fail("--experiment: must be a non-empty MLflow experiment name")
    if args.mlflow_uri is not None:
        scheme = uri_scheme(args.mlflow_uri)
        rest = after_scheme(args.mlflow_uri)
        if not scheme:
            _fail(f"--mlflow-uri: {args.mlflow_uri!r} must be a URI (sqlite:////abs/path/mlflow.db, http://host:port, ...)")
        if scheme == "sqlite":
            if not rest.startswith("//"):
                # Ray Tune runs trials in other working directories: a relative database would be another file.
                _fail(f"--mlflow-uri: {args.mlflow_uri} names a relative path; use an absolute one (sqlite:////abs/path/mlflow.db)")
            check_dir(Path(rest[1:]).parent, "--mlflow-uri")
    if space.fixed.get("device") == "cuda" and args.gpus_per_worker <= 0:
        _fail("fixed.device: cuda, but --gpus-per-worker is 0: a trial trains on the device Ray Train gives it "
              "(pass --gpus-per-worker > 0)")
    if args.address:
        return  # the cluster's size is known once connected (driver.open_parent_run)
    if args.num_cpus is not None and args.num_cpus < 1:
        _fail("--num-cpus: must be >= 1")
    check_local_resources(resources, search.trials)


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


def tune_experiment_exists(path: str) -> bool:
    if is_uri(path):
        from ray.tune import Tuner  # lazy: Ray is loaded only in the processes that use it

        return Tuner.can_restore(path)
    return Path(path, "tuner.pkl").exists() or any(Path(path).glob("experiment_state-*.json"))


def main(argv: list[str] | None = None) -> int:
    from .driver import execute  # lazy: the driver loads Ray; flags and errors answer without it

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if not args.verbose:  # MLflow logs at INFO through its own handler (e.g. when it creates a database)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # An MLflow imported before this call (a notebook, a test process) has read the variable already.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    install_log_filter()
    try:
        p = plan(args)
        if args.dry_run:
            from .dry_run import describe  # lazy: the driver loads Ray; flags and errors answer without it

            print(describe(p))
            return 0
        return execute(p)
    except ConfigError as e:
        # From the plan, or from the checks that need the cluster (its resources), before any trial runs.
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except TrackingUnavailable as e:
        # The search's state is in Ray's storage and the Optuna study: nothing is lost but the logging.
        print(f"error: {redact(str(e))}.\nThe sweep's state is kept; once the server answers, continue it with: "
              f"{p.resume_command}", file=sys.stderr)
        return 1
    except Exception:
        # Any other error: its traceback, masked (Python's own printing of it would show a URI's credentials).
        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1
