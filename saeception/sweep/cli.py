"""The sweep's command line: flags, and the plan resolved from them before Ray starts.

Everything that can be checked is checked here: the space, the fixed config, the storage. `driver.run`
then carries the plan out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, parse_override
from ..validate import check_dir, check_space
from .space import SearchSpace, load_space, resolve_space

log = logging.getLogger(__name__)

# The trial actor itself only waits on its TorchTrainer; it still must hold some CPU (Ray rejects 0).
TRIAL_CPU = 0.25
DEFAULT_SPACE = "default"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m saeception.sweep",
                                description="Run an SAE-ception hyperparameter sweep (Optuna over Ray Tune, MLflow tracking).")
    p.add_argument("--space", default=DEFAULT_SPACE, help="search-space YAML file, or the name of a shipped space (default, multi_objective, gpt2_sst2, "
                   f"gpt2_ag_news) (default: {DEFAULT_SPACE})")
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
    space = load_space(resolve_space(args.space), overrides)
    check_space(space)  # every value the space can sample, against the data and model it names
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
    _check_run_flags(args, space)
    name = args.name or space.name
    if not name.replace("-", "").replace("_", "").isalnum():
        _fail(f"--name: {name!r} must be letters, digits, '-' or '_'")
    storage = args.storage or os.path.join("sweeps", name)
    if "://" in storage:
        local_dir = Path("sweeps", name).resolve()
    else:
        storage = str(Path(storage).expanduser().resolve())
        local_dir = Path(storage)
    exists = tune_experiment_exists(os.path.join(storage, "ray", name))
    if args.resume and not exists:
        _fail(f"--resume: no sweep named {name!r} under {storage}")
    if not args.resume and exists:
        _fail(f"--name: a sweep named {name!r} already exists under {storage}; pass --resume to continue it, or choose another --name")
    _cache_dir(args, storage)  # its errors come before anything is created
    check_dir(local_dir, "--storage")
    _check_writable(local_dir, "--storage")
    mlflow_uri = args.mlflow_uri or sqlite_uri(local_dir / "mlflow.db")
    cache_dir = _cache_dir(args, storage)
    return Plan(space, name, storage, local_dir, mlflow_uri, sqlite_uri(local_dir / "optuna.db"), args, cache_dir)


def _cache_dir(args: argparse.Namespace, storage: str) -> str | None:
    from ..cache import check_uri, is_uri

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
            if not args.cache_readonly:
                check_dir(cache_dir, "--cache")
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


def _check_run_flags(args: argparse.Namespace, space: SearchSpace) -> None:
    """Flags that must fit each other, the space and (for a local Ray) this machine."""
    if not args.experiment.strip():
        _fail("--experiment: must be a non-empty MLflow experiment name")
    if args.mlflow_uri is not None:
        scheme, sep, rest = args.mlflow_uri.partition("://")
        if not sep or not scheme:
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
    import torch

    concurrency_for(args, args.num_cpus or os.cpu_count() or 1, torch.cuda.device_count())


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
    if "://" in path:
        from ray.tune import Tuner

        return Tuner.can_restore(path)
    return Path(path, "tuner.pkl").exists() or any(Path(path).glob("experiment_state-*.json"))


def concurrency_for(args: argparse.Namespace, cluster_cpus: float, cluster_gpus: float) -> int:
    per_trial_cpu = TRIAL_CPU + args.workers_per_trial * args.cpus_per_worker
    fit = int(cluster_cpus // per_trial_cpu)
    if args.gpus_per_worker > 0:
        fit = min(fit, int(cluster_gpus // (args.workers_per_trial * args.gpus_per_worker)))
    if fit < 1:
        _fail(f"--workers-per-trial: a trial needs {per_trial_cpu:g} CPUs and "
              f"{args.workers_per_trial * args.gpus_per_worker:g} GPUs; the cluster has {cluster_cpus:g} CPUs, {cluster_gpus:g} GPUs "
              "(lower --workers-per-trial / --cpus-per-worker / --gpus-per-worker)")
    return min(fit, args.max_concurrent or fit)


def main(argv: list[str] | None = None) -> int:
    from .driver import run

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        p = plan(args)
        return run(p)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
